"""What every reader shares: episode ends, the team reward, agent padding, chunked reading.

The readers turn each source layout into rows of our format (DESIGN section 3); the rules
here are the ones the issue states, written once:

- Episode ends. Formats with separate flags (OG-MARL vaults): a row ends an episode when every
  agent's flag is set; a row with both a terminal and a truncation is a terminal (no bootstrap
  past a real end). Formats with one done flag and no truncation flag (OMAR, OMIGA, MADiff
  without ``discounts.npy``): :func:`ends_from_done` with ``--episode-limit N``; an episode of
  exactly N rows ended by the time limit (truncation), a shorter one by termination.
- Rows after the last finished episode are dropped (our format refuses an open last episode).
- Team reward from per-agent rewards (:func:`team_reward`): ``team`` (default) requires every
  agent to carry the same value, the team reward is that value (not the sum: N copies of one
  reward are one reward); ``mean`` or ``sum`` combine rewards that really differ.
- Heterogeneous agents are zero-padded at the end to the largest agent (DESIGN section 6);
  OG-MARL pads some observations with -inf, which becomes 0 too (:func:`zero_neg_inf`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import DatasetError

REWARD_MODES = ("team", "mean", "sum")
# Rows per chunk are sized by bytes: 64 MiB of source rows keeps a chunk (read, converted and
# written: ~3 copies) near 200 MB whatever the row width, and the HDF5 writes large.
CHUNK_BYTES = 64 << 20

Rows = dict[str, np.ndarray]


@dataclass
class Source:
    """A source opened by a reader, ready to stream.

    ``chunks(max_rows)`` yields dicts of row arrays in our format (``observations [t, N, O]``,
    ``actions``, ``rewards [t]``, ``terminals``/``truncations [t]``, optional ``states``,
    ``next_states``, ``avail_actions``, ``next_observations``); each chunk ends at an episode
    end and holds about ``max_rows`` rows (more when one episode is longer). ``rows``: rows it
    will yield (None when unknown before reading, for the progress bar). ``env``: the label
    the source's own layout suggests (``--env`` overrides). ``n_actions``: discrete sources.
    ``notes``: what the reader did that the report should say (ids stripped, rows dropped).
    """

    path: Path
    env: str
    chunks: Callable[[int], Iterator[Rows]]
    rows: int | None
    row_bytes: int
    n_actions: int | None = None
    notes: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """Conversion choices a reader needs (the CLI's flags)."""

    uid: str | None = None
    episode_limit: int | None = None
    reward: str = "team"


def ends_from_flags(terminal: np.ndarray, truncation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T]`` bool terminals and truncations from two flags; terminal wins on a row with both."""
    terminal = np.asarray(terminal, bool)
    return terminal, np.asarray(truncation, bool) & ~terminal


def ends_from_done(src: os.PathLike | str, name: str, done: np.ndarray,
                   limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Episode ends of a format with one done flag ``[T]`` and no truncation flag.

    An episode ends at a done row, or when it reaches ``limit`` rows. An episode of exactly
    ``limit`` rows is a truncation (the time limit ended it), a shorter one that ends at a done
    row a terminal. A done row more than ``limit`` rows after the previous end means the limit
    is wrong for this data: refused, naming ``name``. Vectorised: 5M rows take ~0.1 s.
    """
    done = np.asarray(done, bool)
    if limit is None:
        return done.copy(), np.zeros_like(done)
    t = np.arange(done.shape[0])
    starts = np.concatenate([[0], np.flatnonzero(done) + 1])  # first row after each done
    pos = t - starts[np.cumsum(done) - done]  # rows since the last done (0 at its next row)
    over = done & (pos >= limit)
    if over.any():
        row = int(np.argmax(over))
        raise DatasetError(src, name, f"episodes of at most {limit} rows (--episode-limit)",
                           f"an episode of {int(pos[row]) + 1} rows ending at row {row}")
    truncation = pos % limit + 1 == limit  # the episode's length, counting this row, is limit
    return done & ~truncation, truncation


def finished_episodes(src: os.PathLike | str, name: str, done: np.ndarray,
                      limit: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`ends_from_done`, cut after the last finished episode: ``[K]`` terminals and
    truncations for the ``K`` rows kept, and the report's notes."""
    terminals, truncations = ends_from_done(src, name, done, limit)
    kept = kept_rows(terminals, truncations)
    require_episodes(src, kept, name)
    notes = [f"episodes end at {name} or after {limit} rows (--episode-limit)"]
    if kept < done.shape[0]:
        notes.append(f"dropped {done.shape[0] - kept} rows after the last finished episode")
    return terminals[:kept], truncations[:kept], notes


def kept_rows(terminals: np.ndarray, truncations: np.ndarray) -> int:
    """Rows up to and including the last episode end (0 when no episode ends)."""
    ends = np.flatnonzero(terminals | truncations)
    return int(ends[-1]) + 1 if ends.size else 0


def require_episodes(src: os.PathLike | str, kept: int, what: str) -> None:
    if kept == 0:
        raise DatasetError(src, what, "at least one finished episode", "no row ends an episode")


def check_episode_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"episode_limit: expected a positive integer, found {limit!r}")


def team_reward(src: os.PathLike | str, name: str, r: np.ndarray, mode: str,
                first_row: int = 0) -> np.ndarray:
    """``[T]`` float32 team reward from ``r``: ``[T]`` (already one), ``[T, 1]`` or ``[T, N]``.

    ``mode``: ``team`` requires every agent's value to be equal (each carries a copy of the team
    reward) and returns that value; ``mean``/``sum`` average/add over agents. ``first_row``:
    the source row of ``r[0]``, for the error message.
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"reward: expected one of {REWARD_MODES}, found {mode!r}")
    r = np.asarray(r, np.float32)
    if r.ndim == 1:
        return r
    if r.ndim != 2:
        raise DatasetError(src, name, "per-row rewards [T] or per-agent rewards [T, N]",
                           f"shape {r.shape}")
    if mode == "mean":
        return r.mean(axis=1)
    if mode == "sum":
        return r.sum(axis=1)
    differ = (r != r[:, :1]).any(axis=1)
    if differ.any():
        row = int(np.argmax(differ))
        raise DatasetError(src, name, "the same reward for every agent (a team reward; "
                           "--reward mean or --reward sum combines per-agent rewards)",
                           f"{int(differ.sum())} rows where agents differ (first: row "
                           f"{first_row + row}: {r[row].tolist()})")
    return r[:, 0].copy()


def zero_neg_inf(x: np.ndarray) -> tuple[np.ndarray, int]:
    """``x`` with -inf (OG-MARL's padding of missing features) replaced by 0; and how many."""
    pad = np.isneginf(x)
    n = int(pad.sum())
    if n:
        x = np.where(pad, np.zeros((), x.dtype), x)
    return x, n


def pad_agents(parts: Sequence[np.ndarray], dtype: type = np.float32) -> np.ndarray:
    """Stack per-agent ``[t, d_i]`` arrays into ``[t, N, max d_i]``, zero-padded at the end."""
    width = max(p.shape[1] for p in parts)
    out = np.zeros((parts[0].shape[0], len(parts), width), dtype)
    for i, p in enumerate(parts):
        out[:, i, :p.shape[1]] = p
    return out


def windows(ends: np.ndarray, max_rows: int) -> Iterator[tuple[int, int]]:
    """Row windows ``[a, b)`` that each end at an episode end, of about ``max_rows`` rows.

    ``ends``: ``[E]`` sorted last rows of the episodes. A window takes whole episodes up to
    ``max_rows``; one longer episode makes a window of its own.
    """
    a = 0
    while a <= (int(ends[-1]) if ends.size else -1):
        i = int(np.searchsorted(ends, a + max_rows - 1, side="right")) - 1
        if i < 0 or ends[i] < a:  # no episode ends within max_rows: take the next one whole
            i = int(np.searchsorted(ends, a, side="left"))
        b = int(ends[i]) + 1
        yield a, b
        a = b


def stream(read: Callable[[int, int], Rows], terminals: np.ndarray,
           truncations: np.ndarray) -> Callable[[int], Iterator[Rows]]:
    """``Source.chunks`` for a reader with random access to rows: ``read(a, b)`` gives rows
    ``[a, b)`` of every field but the flags, which are known up front (``[T]`` bool)."""

    def chunks(max_rows: int) -> Iterator[Rows]:
        for a, b in windows(np.flatnonzero(terminals | truncations), max_rows):
            rows = read(a, b)
            rows["terminals"], rows["truncations"] = terminals[a:b], truncations[a:b]
            yield rows

    return chunks


class NpyRows:
    """A ``.npy`` array read by row ranges with plain file reads.

    Not ``np.load(mmap_mode="r")``: the pages of a mapped file count in the process's RSS as
    they are touched (3.2 GB peak converting a 3 GB source); reads into fresh arrays free
    each chunk after it is written. ``x[a:b]`` reads rows ``[a, b)``; ``np.asarray(x)`` all.
    """

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"a C-ordered numeric array of rank >= 1, found shape {shape}, "
                             f"dtype {dtype}, fortran_order {fortran}")
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        self._row_items = int(np.prod(shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError(f"NpyRows: expected a slice of rows, found {rows!r}")
        a, b, _ = rows.indices(self.shape[0])
        b = max(a, b)
        x = np.fromfile(self.path, dtype=self.dtype, count=(b - a) * self._row_items,
                        offset=self._offset + a * self._row_items * self.dtype.itemsize)
        if x.size != (b - a) * self._row_items:
            raise DatasetError(self.path, self.path.name, f"rows {a}..{b - 1} of shape "
                               f"{self.shape}", f"a truncated file ({x.size} values read)")
        return x.reshape(b - a, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def npy(src: Path, name: str) -> NpyRows:
    """A ``.npy`` file of ``src``, read chunk by chunk (:class:`NpyRows`)."""
    path = src / name
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in src.glob("*.npy"))) or "none"
        raise DatasetError(path, name, "a .npy file", f"no such file (.npy files: {present})")
    try:
        return NpyRows(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(path, name, "a readable .npy array", f"{type(exc).__name__}: "
                           f"{exc}") from None


def check_rows(path: os.PathLike | str, name: str, x: np.ndarray, rows: int, rank: int,
               what: str) -> None:
    """Refuse an array that lacks ``rows`` rows or has another rank than ``rank``."""
    if x.ndim != rank or x.shape[0] != rows:
        raise DatasetError(path, name, f"{what} with {rows} rows", f"shape {tuple(x.shape)}")
