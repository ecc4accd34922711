"""Convert the offline MARL datasets users already have to our HDF5 format (DESIGN section 3).

One reader per source layout, each following the loading code of the project that publishes
it (the module docstrings cite the repository, file and function):

============ ================================================ ===================================
format       SOURCE (what the source project's loader reads)  module
============ ================================================ ===================================
vault        OG-MARL ``<scenario>.vlt`` (``--uid``) or a uid  :mod:`vgm2p_fast.convert.vault`
madiff       MADiff ``data/<env>/<map>/<quality>/`` of .npy   :mod:`vgm2p_fast.convert.madiff`
omar         OMAR ``seed_<k>_data/`` of per-agent .npy        :mod:`vgm2p_fast.convert.omar`
omiga        OMIGA MaMuJoCo ``<task>-<quality>.hdf5``         :mod:`vgm2p_fast.convert.omiga`
omiga-smac   OMIGA SMAC folder of per-episode files           :mod:`vgm2p_fast.convert.omiga_smac`
============ ================================================ ===================================

The shared rules (episode ends, dropped unfinished rows, the team reward, padding) live in
:mod:`vgm2p_fast.convert._episodes`; :class:`~vgm2p_fast.convert._writer.StreamWriter` writes
chunk by chunk, so a source larger than memory converts with memory bounded by one chunk
(~64 MiB of source rows). Malformed sources raise :class:`~vgm2p_fast.datasets.DatasetError`,
one line naming the file and the field. The data layer (:mod:`vgm2p_fast.datasets`) imports
nothing from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..datasets import DatasetError
from . import madiff, omar, omiga, omiga_smac, vault
from ._episodes import CHUNK_BYTES, REWARD_MODES, Options, Rows, check_episode_limit

# Detection order matters: a vault and a MADiff folder are recognised by named files; an
# OMIGA SMAC folder only by holding torch files, so it is tried last.
FORMATS: dict[str, ModuleType] = {"vault": vault, "madiff": madiff, "omar": omar,
                                  "omiga": omiga, "omiga-smac": omiga_smac}
_LAYOUTS = ("a vault (<uid>/metadata.json), a MADiff folder (obs.npy, path_lengths.npy), an "
            "OMAR folder (obs_0.npy, acs_0.npy, rews_0.npy), an OMIGA .hdf5 (s, o, a, r, d) or "
            "an OMIGA SMAC folder of torch.save episode files")


def detect_format(source: str | os.PathLike) -> str:
    """The format name of ``source`` (``--format auto``); DatasetError when none fits."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(path, "source", "an existing file or folder", "no such path")
    for name, reader in FORMATS.items():
        if reader.detect(path):
            return name
    kind = "a folder" if path.is_dir() else "a file"
    raise DatasetError(path, "format", f"one of the layouts --format auto knows: {_LAYOUTS}",
                       f"{kind} matching none (pass --format to name it)")


def _bounds(low: Any, high: Any, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[act_dim]`` or per-agent ``[N, act_dim]`` bounds from flat lists (row-major)."""
    if (low is None) != (high is None):
        raise ValueError("action_low, action_high: expected both or neither, found one")
    n, act_dim = actions.shape[1:]
    out = []
    for name, val in (("action_low", low), ("action_high", high)):
        arr = np.asarray(val, np.float64).reshape(-1)
        if arr.size == act_dim:
            out.append(arr)
        elif arr.size == n * act_dim:
            out.append(arr.reshape(n, act_dim))
        else:
            raise ValueError(f"{name}: expected {act_dim} values (act_dim) or {n * act_dim} "
                             f"(N x act_dim, agent by agent), found {arr.size}")
    return out[0], out[1]


def _rescale(rows: Rows, low: np.ndarray, high: np.ndarray) -> Rows:
    """Continuous actions from the environment's ``[low, high]`` to ``[-1, 1]``."""
    rows["actions"] = 2.0 * (rows["actions"] - low) / (high - low) - 1.0
    return rows


def convert(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    env: str | None = None,
    uid: str | None = None,
    episode_limit: int | None = None,
    reward: str = "team",
    action_low: Any = None,
    action_high: Any = None,
    compression: str | None = "gzip",
    progress: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> str:
    """Convert ``source`` to a dataset file at ``out`` (atomically); returns a one-line report.

    ``format``: a name of :data:`FORMATS` or ``auto``. ``env``: the file's ``env`` label, any
    string (default: the label the source layout implies, e.g. ``smac_v1/3m`` for an OG-MARL
    ``smac_v1`` vault; it names the environment the data was recorded in, which this cannot
    check). ``uid``: the dataset inside a vault. ``episode_limit``: for formats without a
    truncation flag (an episode of exactly that many rows was cut by the time limit).
    ``reward``: ``team`` (agents must carry the same reward), ``mean`` or ``sum``.
    ``action_low``/``action_high``: environment bounds of continuous actions stored outside
    ``[-1, 1]`` (``act_dim`` or ``N * act_dim`` values); they are rescaled as
    ``2 (a - low) / (high - low) - 1`` and the bounds recorded. ``progress``: a tqdm bar.
    ``chunk_bytes``: source bytes per chunk, which bounds the memory used.
    """
    from ._writer import StreamWriter  # h5py/tqdm only when converting

    if reward not in REWARD_MODES:
        raise ValueError(f"reward: expected one of {REWARD_MODES}, found {reward!r}")
    check_episode_limit(episode_limit)
    path = Path(source).expanduser()
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"format: expected auto or one of {sorted(FORMATS)}, found {fmt!r}")
    if not path.exists():
        raise DatasetError(path, "source", "an existing file or folder", "no such path")
    src = FORMATS[fmt].open_source(path, Options(uid=uid, episode_limit=episode_limit,
                                                 reward=reward))
    label = env if env is not None else src.env
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    with StreamWriter(out, src=src.path, env=label, compression=compression,
                      n_actions=src.n_actions, total=src.rows, progress=progress,
                      attrs={"source": str(src.path), "source_format": fmt,
                             "converted_by": "vgm2p data convert", **src.attrs}) as writer:
        for rows in src.chunks(max(1, chunk_bytes // max(1, src.row_bytes))):
            if action_low is not None or action_high is not None:
                if rows["actions"].dtype.kind in "iu":
                    raise ValueError("action_low/action_high: expected none for discrete "
                                     f"actions ({fmt} source {src.path})")
                if bounds is None:
                    bounds = _bounds(action_low, action_high, rows["actions"])
                    writer.set_bounds(*bounds)
                rows = _rescale(rows, *bounds)
            writer.write(rows)
        if src.notes:
            writer.add_attrs(conversion_notes="; ".join(src.notes))
        stats = writer.close()
    notes = "; ".join([f"{fmt} {src.path}", f"env {label}", *src.notes])
    return (f"wrote {out}: {stats['transitions']:,} transitions, {stats['episodes']:,} episodes "
            f"({stats['terminals']:,} terminals, {stats['truncations']:,} truncations), return "
            f"mean {stats['return_mean']:.4g} ({notes})")


__all__ = ["FORMATS", "REWARD_MODES", "convert", "detect_format"]
