"""The small valid datasets the dataset-layer tests break, copy and load (``test_datasets.py``,
``test_dataset_container.py``): their arrays, a writer of both files, and h5py edits of a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from vgm2p_fast.datasets import write_dataset

T, N, OBS, ACT, K, STATE = 40, 3, 5, 2, 4, 7
# Episode ends: a terminal at row 9, a truncation at row 24, a terminal on the last row.
ENDS = {"terminals": (9, T - 1), "truncations": (24,)}


def make_arrays(discrete: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    flags = {k: np.isin(np.arange(T), rows) for k, rows in ENDS.items()}
    out = dict(
        observations=rng.normal(size=(T, N, OBS)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        states=rng.normal(size=(T, STATE)).astype(np.float32),
        **flags,
    )
    if discrete:
        avail = rng.random((T, N, K)) < 0.6
        actions = rng.integers(0, K, size=(T, N))
        avail[np.arange(T)[:, None], np.arange(N)[None, :], actions] = True
        out.update(actions=actions, avail_actions=avail, env="smax/3m")
    else:
        out.update(actions=rng.uniform(-1, 1, (T, N, ACT)).astype(np.float32),
                   env="mamujoco/Hopper-3x1", action_low=np.array([-2.0, -1.0]),
                   action_high=np.array([2.0, 0.5]))
    return out


def write_valid(root: Path) -> dict[str, Path]:
    """A valid small continuous and a valid small discrete dataset (written by write_dataset)."""
    paths = {}
    for kind in ("continuous", "discrete"):
        paths[kind] = root / f"{kind}.h5"
        write_dataset(paths[kind], **make_arrays(kind == "discrete"))
    return paths


def broken_copy(valid_files, tmp_path, kind: str, edit) -> Path:
    """A copy of the valid ``kind`` file with ``edit(h5py.File)`` applied: one broken rule."""
    path = tmp_path / f"broken-{kind}.h5"
    shutil.copy(valid_files[kind], path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def rewrite(name, fn):
    """Edit that rewrites dataset ``name`` as ``fn(old values)``."""
    def edit(f):
        data = fn(f[name][()])
        del f[name]
        f.create_dataset(name, data=data)
    return edit


def set_at(name, index, value):
    return rewrite(name, lambda a: (a.__setitem__(index, value), a)[1])
