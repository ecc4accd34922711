"""OMIGA's MaMuJoCo datasets: one ``<scenario>-<agent_conf>-<quality>.hdf5`` file.

Follows ZhengYinan-AIR/OMIGA (master) ``datasets/offline_dataset.py`` ``ReplayBuffer.load``:
datasets ``s``, ``o``, ``a``, ``r``, ``d``, read whole, with ``d[:, 0]`` the done flag and
``r`` one value per row (``r.reshape(-1, 1)``); ``run_mujoco.py`` (``env_name`` =
``scenario-agent_conf-data_type``, the environment's ``episode_limit`` 1000) and
``envs/ma_mujoco/multiagent_mujoco/mujoco_multi.py`` ``MujocoMulti`` (how the data was made:
per-agent rewards and dones are copies, actions are in [-1, 1] (``NormalizedActions``),
``get_obs``/``get_state`` give every agent the normalised full state with its one-hot id).

- ``o [T, N, O]`` -> ``observations`` (kept as stored: OMIGA normalises each agent's vector
  after appending the id, so the id columns are no longer one-hot and cannot be stripped).
- ``s [T, N, S]`` -> ``states [T, N * S]``: the agents' states concatenated, as OMIGA's
  ``MixNet.forward`` concatenates them (``networks/network.py``).
- ``a [T, N, A]`` -> ``actions``; ``r [T]``, ``[T, 1]`` or per agent ``[T, N(, 1)]`` (team
  rule) -> ``rewards``.
- ``d [T, k]`` (or ``[T]``): column 0 is the done flag, set at an episode's last row; the
  wrapped gym ``TimeLimit`` sets it at the time limit too. OMIGA's loader trains only on rows
  with ``d == 0``, pairing row i with row i + 1; we keep every row and end the episode there.
  No truncation flag: an episode of exactly ``--episode-limit`` rows (default 1000) is a
  truncation, a shorter one a terminal; ``d`` never set just cuts every 1000 rows.

Default label ``mamujoco_omiga/<scenario>-<agent_conf>`` (OG-MARL's name for this
environment, ``og_marl/wrapped_environments/mamujoco_omiga.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ..datasets import DatasetError
from ._episodes import (
    Options,
    Rows,
    Source,
    check_rows,
    finished_episodes,
    stream,
    team_reward,
)

EPISODE_LIMIT = 1000  # OMIGA run_mujoco.py env_args "episode_limit"
_KEYS = ("s", "o", "a", "r", "d")


def detect(path: Path) -> bool:
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return all(k in f for k in _KEYS)


def open_source(path: Path, opts: Options) -> Source:
    """Open an OMIGA ``.hdf5`` file (datasets are sliced chunk by chunk, not read whole)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(path, "file", "a readable HDF5 file", f"{type(exc).__name__}: "
                           f"{exc}") from None
    missing = [k for k in _KEYS if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        raise DatasetError(path, missing[0], "OMIGA's datasets s, o, a, r, d",
                           f"no such dataset (datasets: {', '.join(sorted(f)) or 'none'})")
    s, o, a, r, d = (f[k] for k in _KEYS)
    t = o.shape[0]
    check_rows(path, "o", o, t, 3, "[T, N, obs_dim] observations")
    n = o.shape[1]
    check_rows(path, "s", s, t, 3, "[T, N, state_dim] states")
    check_rows(path, "a", a, t, 3, "[T, N, act_dim] actions")
    if s.shape[1] != n or a.shape[1] != n:
        bad = "s" if s.shape[1] != n else "a"
        raise DatasetError(path, bad, f"{n} agents (o has {n})", f"shape {f[bad].shape}")
    if r.shape[0] != t or int(np.prod(r.shape[1:])) not in (1, n):
        raise DatasetError(path, "r", f"{t} rows of one team reward or {n} per-agent rewards",
                           f"shape {r.shape}")
    if d.ndim not in (1, 2) or d.shape[0] != t:
        raise DatasetError(path, "d", f"[T] or [T, k] done flags with {t} rows",
                           f"shape {d.shape}")
    done = np.asarray(d[:, 0] if d.ndim == 2 else d[:]) != 0  # offline_dataset.py: d[:, 0]
    limit = EPISODE_LIMIT if opts.episode_limit is None else opts.episode_limit
    terminals, truncations, notes = finished_episodes(path, "d", done, limit)

    def read(lo: int, hi: int) -> Rows:
        rew = np.asarray(r[lo:hi]).reshape(hi - lo, -1)
        return {"observations": o[lo:hi], "actions": a[lo:hi],
                "states": np.asarray(s[lo:hi]).reshape(hi - lo, -1),
                "rewards": team_reward(path, "r", rew[:, 0] if rew.shape[1] == 1 else rew,
                                       opts.reward, lo)}

    stem = path.stem.rsplit("-", 1)[0] if path.stem.count("-") >= 2 else path.stem
    row_bytes = sum(int(np.prod(x.shape[1:])) * x.dtype.itemsize for x in (s, o, a, r))
    rows = stream(read, terminals, truncations)

    def chunks(max_rows: int) -> Iterator[Rows]:
        try:
            yield from rows(max_rows)
        finally:  # the file stays open while streaming, and no longer
            f.close()

    return Source(path=path, env=f"mamujoco_omiga/{stem}", chunks=chunks, rows=terminals.size,
                  row_bytes=row_bytes, notes=notes)
