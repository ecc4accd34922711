"""Write converted rows to our HDF5 format chunk by chunk, checked as the loader checks them.

:func:`vgm2p_fast.datasets.write_dataset` takes whole arrays; a source larger than memory
cannot give those. :class:`StreamWriter` appends chunks to resizable HDF5 datasets and runs the
format's own checks (``_format._check_layout`` and ``_format._check_values``, the functions
:func:`~vgm2p_fast.datasets.load_dataset` runs) on every chunk before writing it. Each chunk
ends at an episode end, so the check that the last row closes an episode holds per chunk, and
the file the writer leaves behind is one the loader accepts. Like ``write_dataset`` it writes
a temporary file and renames it at the end: a failed conversion leaves nothing under ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._format import FORMAT_VERSION, DatasetError, _check_layout, _check_values
from ._episodes import Rows

_FLOAT_FIELDS = ("observations", "rewards", "states", "next_states", "next_observations")
_BOOL_FIELDS = ("terminals", "truncations", "avail_actions")


def _coerce(rows: Rows) -> Rows:
    """The format's dtypes: float32 values, bool flags, int64 (discrete) or float32 actions."""
    out = {}
    for name, x in rows.items():
        x = np.asarray(x)
        if name in _FLOAT_FIELDS:
            x = x.astype(np.float32, copy=False)
        elif name in _BOOL_FIELDS:
            x = x.astype(np.bool_, copy=False)
        elif name == "actions":
            x = x.astype(np.int64 if x.dtype.kind in "iu" else np.float32, copy=False)
        out[name] = x
    return out


class StreamWriter:
    """Append chunks of rows (dicts of ``[t, ...]`` arrays, each ending at an episode end).

    ``src``: what error messages name (the source being converted). ``env``: the file's label.
    ``n_actions`` (discrete; default: ``avail_actions.shape[-1]``), ``action_low``/
    ``action_high`` (continuous; default -1/+1 per dimension): as in ``write_dataset``.
    ``attrs``: extra file attributes (provenance). ``progress``: a tqdm bar of ``total`` rows.
    """

    def __init__(self, out: str | os.PathLike, *, src: str | os.PathLike, env: str,
                 compression: str | None = "gzip", n_actions: int | None = None,
                 action_low: np.ndarray | None = None, action_high: np.ndarray | None = None,
                 attrs: dict[str, Any] | None = None, total: int | None = None,
                 progress: bool = False) -> None:
        if compression not in ("gzip", "lzf", None):
            raise ValueError(f"compression: expected 'gzip', 'lzf' or None, found "
                             f"{compression!r}")
        self.out, self.src, self.env = Path(out), str(src), env
        self._compression, self._n_actions = compression, n_actions
        self._bounds = action_low, action_high
        self._extra = dict(attrs or {})
        self._attrs: dict[str, Any] | None = None
        self._meta: dict[str, Any] | None = None
        self.rows = 0
        self.returns: list[np.ndarray] = []  # [E] per chunk: undiscounted episode returns
        self.terminals = self.truncations = 0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        self._file: h5py.File | None = h5py.File(self._tmp, "w")
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="rows", unit_scale=True, desc="vgm2p data convert",
                         disable=not progress, dynamic_ncols=True)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None or self._file is not None:  # failed, or never closed
            self.abort()

    def abort(self) -> None:
        """Drop the temporary file: nothing is left under ``out``."""
        self._bar.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ writing
    def set_bounds(self, low: np.ndarray, high: np.ndarray) -> None:
        """The environment bounds of continuous actions (before the first chunk)."""
        if self._attrs is not None:
            raise ValueError("set_bounds: expected a call before the first chunk")
        self._bounds = low, high

    def add_attrs(self, **attrs: Any) -> None:
        """More file attributes (written at :meth:`close`)."""
        self._extra.update(attrs)

    def _first(self, rows: Rows) -> None:
        """Fix the file attributes and create resizable datasets from the first chunk."""
        discrete = rows["actions"].dtype.kind in "iu"
        attrs: dict[str, Any] = {"format_version": FORMAT_VERSION, "env": self.env,
                                 "action_space": "discrete" if discrete else "continuous",
                                 "n_agents": int(rows["observations"].shape[1])}
        if discrete:
            k = self._n_actions
            if k is None and "avail_actions" in rows:
                k = int(rows["avail_actions"].shape[-1])
            if k is not None:
                attrs["n_actions"] = int(k)
        else:
            act_dim = int(rows["actions"].shape[-1])
            for key, val, default in zip(("action_low", "action_high"), self._bounds,
                                         (-1.0, 1.0)):
                attrs[key] = (np.full(act_dim, default, np.float32) if val is None
                              else np.asarray(val, np.float32))
        self._attrs = attrs
        opts: dict[str, Any] = {"compression": self._compression} if self._compression else {}
        if self._compression == "gzip":
            opts.update(compression_opts=4, shuffle=True)
        for name, x in rows.items():
            row_bytes = max(1, x[:1].nbytes)
            # ~1 MiB chunks of whole rows, as write_dataset makes them (fast sequential reads).
            chunk = (max(1, (1 << 20) // row_bytes), *x.shape[1:])
            self._file.create_dataset(name, shape=(0, *x.shape[1:]), maxshape=(None, *x.shape[1:]),
                                      dtype=x.dtype, chunks=chunk, **opts)

    def write(self, rows: Rows) -> None:
        """Check one chunk as the loader would, then append it."""
        rows = _coerce(rows)
        if self._attrs is None:
            self._first(rows)
        if set(rows) != set(self._file):
            raise ValueError(f"chunk fields {sorted(rows)} differ from the first chunk's "
                             f"{sorted(self._file)}")
        a, t = self.rows, int(rows["rewards"].shape[0])
        try:
            self._meta = _check_layout(self.src, self._attrs,
                                       {k: (x.shape, x.dtype) for k, x in rows.items()})
            _check_values(self.src, self._meta, rows)
        except DatasetError as exc:  # the checks count rows from the chunk's first row
            raise DatasetError(exc.source, exc.key, exc.expected,
                               f"{exc.found} (in converted rows {a}..{a + t - 1})") from None
        for name, x in rows.items():
            ds = self._file[name]
            ds.resize(a + t, axis=0)
            ds[a:a + t] = x
        dones = rows["terminals"] | rows["truncations"]
        starts = np.concatenate([[0], np.flatnonzero(dones)[:-1] + 1])
        self.returns.append(np.add.reduceat(rows["rewards"].astype(np.float64), starts))
        self.terminals += int(rows["terminals"].sum())
        self.truncations += int(rows["truncations"].sum())
        self.rows += t
        self._bar.update(t)

    def close(self) -> dict[str, Any]:
        """Write the attributes, rename the file into place; returns the summary numbers."""
        if self._attrs is None:
            raise DatasetError(self.src, "rows", "at least one finished episode", "none")
        for key, val in {**self._attrs, **self._extra}.items():
            self._file.attrs[key] = val
        self._file.close()
        self._file = None
        self._bar.close()
        os.replace(self._tmp, self.out)
        ret = np.concatenate(self.returns)
        return {"transitions": self.rows, "episodes": int(ret.size),
                "terminals": self.terminals, "truncations": self.truncations,
                "return_mean": float(ret.mean()), "return_min": float(ret.min()),
                "return_max": float(ret.max())}
