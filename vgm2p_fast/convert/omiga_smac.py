"""OMIGA's SMAC datasets: a folder of per-episode files (``data/<map>/<quality>/``).

Follows ZhengYinan-AIR/OMIGA, branch ``SMAC``: ``framework/utils.py`` ``get_episode`` (each
file of ``glob(data_dir + "*")`` is one ``torch.load``-ed episode) and ``load_data`` (an
episode is a list over agents of lists over steps ``[g, o, a, r, d, ava]``; an episode whose
agents have different lengths is skipped, "invalid data"), and ``framework/buffer.py``
``ReplayBuffer.insert``, which records them: ``g`` the agent's global state, ``o`` its
observation, ``a`` = ``[action id]``, ``r`` = ``[team reward]`` (a copy per agent: team rule),
``d`` its done flag, ``ava`` its available actions; an episode is stored when every agent is
done. The data itself is the MADT release (``readme.md``); its files are not public here, so
the fixtures follow this code.

- ``g [L, N, G]`` -> ``states [L, N * G]`` (the agents' states concatenated, as the SMAC
  branch's ``models/omiga_model.py`` ``MixNet.forward`` does), ``o`` -> ``observations``,
  ``a`` -> ``actions [L, N]``, ``ava`` -> ``avail_actions``.
- Each file ends its episode. No truncation flag: a terminal, unless ``--episode-limit N``
  (the map's SMAC limit, e.g. 150 for 6h_vs_8z) says an episode of exactly N steps was cut.
- Files are read in name order (``glob`` order is the file system's; sorting makes a
  conversion reproducible). They load with ``torch.load(weights_only=True)``, numpy arrays
  allowed: a data file cannot run code.

Default label ``smacv1_omiga/<map>`` (OG-MARL's name for this environment,
``og_marl/wrapped_environments/smacv1_omiga.py``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import DatasetError
from ._episodes import Options, Rows, Source, team_reward

_STEP = ("g", "o", "a", "r", "d", "ava")


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def _is_torch_file(p: Path) -> bool:
    """torch.save's zip format, or its legacy format (a pickle: first byte 0x80)."""
    if zipfile.is_zipfile(p):
        return True
    with p.open("rb") as f:
        return f.read(1) == b"\x80"


def detect(path: Path) -> bool:
    files = _files(path) if path.is_dir() else []
    return bool(files) and _is_torch_file(files[0])


def _load(p: Path) -> Any:
    import torch
    from numpy._core import multiarray  # pickles name it numpy.core (1.x) or numpy._core (2.x)

    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"),
                    (multiarray.scalar, f"{module}.scalar")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = " ".join(str(exc).split())[:200]
        raise DatasetError(p, "file", "an episode saved by torch.save (lists of numbers and "
                           "numpy arrays)", f"{type(exc).__name__}: {first}") from None


def _episode(p: Path, data: Any, opts: Options) -> Rows | None:
    """Rows of one episode file; None for an episode OMIGA's ``load_data`` skips."""
    if (not isinstance(data, (list, tuple)) or not data
            or not all(isinstance(tr, (list, tuple)) and tr for tr in data)):
        raise DatasetError(p, "episode", "a list over agents of lists over steps "
                           "[g, o, a, r, d, ava]", f"a {type(data).__name__}")
    if len({len(tr) for tr in data}) != 1:
        return None  # load_data: agents of different lengths -> "invalid data", skipped
    fields = {}
    for j, name in enumerate(_STEP):
        try:
            x = np.asarray([[step[j] for step in tr] for tr in data])  # [N, L, ...]
        except (IndexError, TypeError, ValueError) as exc:
            raise DatasetError(p, name, f"step entry {j} of [g, o, a, r, d, ava], of one shape "
                               "for every step", f"{type(exc).__name__}: {exc}") from None
        fields[name] = np.swapaxes(x, 0, 1)  # [L, N, ...]
    length = fields["o"].shape[0]
    for name in _STEP:
        x = fields[name]
        if name in ("a", "r") and x.ndim == 3 and x.shape[2] == 1:
            fields[name] = x = x[..., 0]  # ReplayBuffer.insert stores [action], [reward]
        rank = 2 if name in ("a", "r", "d") else 3
        if x.ndim != rank:
            raise DatasetError(p, name, f"{'a number' if rank == 2 else 'a vector'} per agent "
                               "and step", f"shape {x.shape} over [steps, agents, ...]")
    act = fields["a"]
    if act.dtype.kind == "f" and (act == np.round(act)).all():
        act = act.astype(np.int64)
    terminals = np.zeros(length, bool)
    truncations = np.zeros(length, bool)
    if opts.episode_limit is not None and length > opts.episode_limit:
        raise DatasetError(p, "episode", f"at most {opts.episode_limit} steps "
                           "(--episode-limit)", f"{length} steps")
    (truncations if length == opts.episode_limit else terminals)[-1] = True
    return {"observations": fields["o"], "actions": act,
            "rewards": team_reward(p, "r", fields["r"], opts.reward),
            "states": fields["g"].reshape(length, -1), "avail_actions": fields["ava"] != 0,
            "terminals": terminals, "truncations": truncations}


def open_source(path: Path, opts: Options) -> Source:
    """Open a folder of OMIGA SMAC episode files (one file in memory at a time)."""
    files = _files(path) if path.is_dir() else []
    if not files:
        raise DatasetError(path, "episodes", "a folder of per-episode files", "no files")
    first = _episode(files[0], _load(files[0]), opts)
    row_bytes = 1 if first is None else sum(x[:1].nbytes for x in first.values())
    notes: list[str] = []

    def chunks(max_rows: int) -> Iterator[Rows]:
        batch: list[Rows] = []
        skipped = 0
        for p in files:
            ep = _episode(p, _load(p), opts)
            if ep is None:
                skipped += 1
                continue
            batch.append(ep)
            if sum(len(e["rewards"]) for e in batch) >= max_rows:
                yield {k: np.concatenate([e[k] for e in batch]) for k in batch[0]}
                batch = []
        if batch:
            yield {k: np.concatenate([e[k] for e in batch]) for k in batch[0]}
        notes.append(f"read {len(files)} episode files" + (
            f", skipped {skipped} whose agents have different lengths (as OMIGA does)"
            if skipped else ""))

    return Source(path=path, env=f"smacv1_omiga/{path.parent.name}", chunks=chunks, rows=None,
                  row_bytes=row_bytes, notes=notes)
