"""Offline multi-agent datasets: loading and writing the HDF5 format (docs/design.md section 3),
and the whole dataset resident as tensors with batches sampled by index.

The format (the datasets, attributes and rules of a file) is described in ``_format.py``.

:func:`load_dataset` checks every rule before it returns (vectorised: 0.05-0.2 s of checks per
1M rows on 2 cores) and refuses a file with a one-line :class:`DatasetError` naming the dataset
or attribute, what was expected and what was found. :func:`write_dataset` runs the same checks
before it writes, so it never produces a file the loader would refuse.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import envs
from ._format import (
    _BOOL,
    _CONT_ACTIONS,
    _DISC_ACTIONS,
    _FLOAT,
    _LAYOUT,
    _LONG,
    _RESERVED_ATTRS,
    _ROW_FIELDS,
    FORMAT_VERSION,
    DatasetError,
    _check_layout,
    _check_values,
)

BUNDLED_DEFAULT = "halfcheetah-2x3-small"
DATA_DIR_ENV = "VGM2P_DATA_DIR"
_BUNDLED_DIR = Path(__file__).resolve().parent / "data"


# ----------------------------------------------------------------------------------- container
@dataclass(eq=False)
class OfflineDataset:
    """A whole offline dataset as tensors (rows = time steps ordered by episode).

    Shapes: ``observations [T, N, obs_dim]`` float32; ``actions [T, N, act_dim]`` float32 in
    ``[-1, 1]`` (continuous) or ``[T, N]`` int64 (discrete); ``rewards [T]`` float32 (team);
    ``terminals``/``truncations [T]`` bool; ``states``/``next_states [T, state_dim]`` float32;
    ``avail_actions [T, N, K]`` bool or None; ``next_observations [T, N, obs_dim]`` or None;
    ``action_low``/``action_high`` float32 (continuous; None for discrete), as the file has
    them: ``[act_dim]`` (bounds shared by all agents) or ``[N, act_dim]`` (per-agent bounds;
    ``torch.broadcast_to(ds.action_low, (N, act_dim))`` gives that shape in both cases).
    ``env`` is the file's string; it need not name an environment the library can build
    (``vgm2p_fast.envs.evaluation_status(ds.env)`` says whether evaluation can run).

    Defaults when the file lacks them: ``states`` = the observations of all agents concatenated
    (a view, no copy). ``next_states`` = ``next_observations`` flattened when the file has those
    and no ``states`` (exact); otherwise the next row's state inside an episode, and at an
    episode's last row the row's own state. That last-row value matters only for a truncation:
    GAE bootstraps ``gamma * V(next_state)`` there (a terminal has no bootstrap), so a truncated
    episode bootstraps from its last state instead of the unseen next one; store
    ``next_states`` or ``next_observations`` to make it exact.

    The constructor does not validate: build datasets with :func:`load_dataset`.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminals: torch.Tensor
    truncations: torch.Tensor
    states: torch.Tensor
    next_states: torch.Tensor
    avail_actions: torch.Tensor | None
    next_observations: torch.Tensor | None
    env: str
    n_agents: int
    discrete: bool
    n_actions: int | None
    action_low: torch.Tensor | None
    action_high: torch.Tensor | None
    source: str
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # the file's other attributes
    pinned: bool = False  # rows live in page-locked host memory (see `to`)

    # -------------------------------------------------------------------- sizes
    @property
    def device(self) -> torch.device:
        return self.observations.device

    @property
    def dones(self) -> torch.Tensor:
        """``[T]`` bool: the episode ends at this row (``terminals | truncations``)."""
        return self.terminals | self.truncations

    @property
    def n_transitions(self) -> int:
        return self.observations.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[2]

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def action_dim(self) -> int:
        """``act_dim`` (continuous) or the number of actions ``K`` (discrete)."""
        return int(self.n_actions) if self.discrete else self.actions.shape[2]

    @functools.cached_property
    def episode_starts(self) -> torch.Tensor:
        """``[E]`` long: the first row of each episode."""
        ends = self.dones.nonzero().squeeze(1)
        return torch.cat([ends.new_zeros(1), ends[:-1] + 1])

    @functools.cached_property
    def episode_ids(self) -> torch.Tensor:
        """``[T]`` long: the episode each row belongs to (0..E-1)."""
        dones = self.dones.long()
        return torch.cumsum(dones, 0) - dones

    @property
    def n_episodes(self) -> int:
        return self.episode_starts.shape[0]

    def episode_returns(self) -> torch.Tensor:
        """``[E]`` float64: undiscounted sum of the team reward of each episode."""
        out = torch.zeros(self.n_episodes, dtype=torch.float64, device=self.device)
        return out.index_add_(0, self.episode_ids, self.rewards.double())

    def episode_lengths(self) -> torch.Tensor:
        """``[E]`` long: rows per episode."""
        return torch.bincount(self.episode_ids, minlength=self.n_episodes)

    # -------------------------------------------------------------------- device
    def to(self, device: str | torch.device, pin_memory: bool = False) -> OfflineDataset:
        """The dataset with every tensor on ``device`` (a new object; ``self`` is unchanged).

        On CUDA the whole dataset lives in GPU memory and batches never cross the bus (1M
        mamujoco rows take ~0.3 GB). ``pin_memory=True`` with a CPU ``device`` is for datasets
        larger than GPU memory: the rows are page-locked and :meth:`batch` gathers into pinned
        memory, so ``batch[k].to("cuda", non_blocking=True)`` is a truly asynchronous copy.
        """
        device = torch.device(device)
        if pin_memory and device.type != "cpu":
            raise ValueError(f"pin_memory: expected a cpu device (pinned host memory feeds a "
                             f"GPU), found device {device}")
        if pin_memory and not torch.cuda.is_available():
            raise ValueError("pin_memory: expected a machine with CUDA (page-locked memory is "
                             "for host-to-GPU copies), found torch.cuda.is_available() False")

        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            x = x.to(device)
            return x.pin_memory() if pin_memory else x

        moved = {f: move(getattr(self, f)) for f in (*_ROW_FIELDS, "action_low", "action_high")}
        return dataclasses.replace(self, **moved, pinned=pin_memory)

    # -------------------------------------------------------------------- sampling
    def sample_indices(self, batch_size: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """``[batch_size]`` long row indices, uniform with replacement, on the dataset's device
        (one ``torch.randint``; ``generator`` must live on that device too)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, found {batch_size!r}")
        dev = self.device
        if generator is not None and generator.device.type != dev.type:
            raise ValueError(f"generator: expected a generator on {dev.type} (the dataset's "
                             f"device), found one on {generator.device}")
        return torch.randint(self.n_transitions, (batch_size,), generator=generator, device=dev)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``idx`` (``[B]`` long, same device) of every per-row tensor, plus ``dones``.

        Keys: ``observations [B, N, obs_dim]``, ``actions``, ``rewards``, ``terminals``,
        ``truncations``, ``dones``, ``states``, ``next_states [B, state_dim]``, and
        ``avail_actions``/``next_observations`` when present. Indices are not bounds-checked
        here (that would synchronise with the GPU every step): use :meth:`sample_indices`.
        """
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            found = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx: expected an int64/int32 tensor of row indices, found {found}")
        out = {}
        for name in _ROW_FIELDS:
            x = getattr(self, name)
            if x is None:
                continue
            # index_select, not x[idx]: on CPU advanced indexing measured 10-25x slower here
            # (4096 of 1M rows of 34 floats: ~1 ms vs ~80 us on 2 cores).
            rows = (torch.empty((idx.shape[0], *x.shape[1:]), dtype=x.dtype, pin_memory=True)
                    if self.pinned else None)
            out[name] = torch.index_select(x, 0, idx, out=rows)
        out["dones"] = out["terminals"] | out["truncations"]
        return out

    # -------------------------------------------------------------------- report
    def summary(self) -> dict[str, Any]:
        """Sizes and episode statistics (``vgm2p data info``); JSON-serialisable."""
        ret = self.episode_returns()
        lengths = self.episode_lengths().double()
        out: dict[str, Any] = {
            "env": self.env, "source": self.source, "agents": self.n_agents,
            "action_space": "discrete" if self.discrete else "continuous",
            "obs_dim": self.obs_dim, "state_dim": self.state_dim, "action_dim": self.action_dim,
            "transitions": self.n_transitions, "episodes": self.n_episodes,
            "terminals": int(self.terminals.sum()), "truncations": int(self.truncations.sum()),
            # Population std (ddof 0), as OG-MARL reports it; 0 for a single episode.
            "return_mean": float(ret.mean()), "return_std": float(ret.std(correction=0)),
            "return_min": float(ret.min()), "return_max": float(ret.max()),
            "episode_length_mean": float(lengths.mean()),
            "episode_length_min": int(lengths.min()), "episode_length_max": int(lengths.max()),
        }
        if not self.discrete:
            out["action_low"] = self.action_low.tolist()
            out["action_high"] = self.action_high.tolist()
        return out

    def check_env(self, spec: str | None = None) -> dict[str, Any]:
        """Check this dataset against environment ``spec`` (default: its own ``env``).

        Builds the environment (``vgm2p_fast.envs.env_info``; measured on 2 cores: 0.5 s for
        MaMuJoCo Hopper, 8 s for SMAX 3m, mostly importing jax) and compares, in order, the
        action space, ``n_agents``, ``obs_dim``, ``action_dim`` or ``n_actions`` and, for
        continuous actions, ``action_low``/``action_high`` (per agent). Raises a one-line
        :class:`DatasetError` naming the first field that differs (``'<file>: obs_dim:
        expected 9 (env mamujoco/Hopper-3x1), found 12'``). Returns the environment's
        ``env_info``. Call it only when ``envs.evaluation_status(spec)`` is available:
        otherwise it raises ValueError (no such family) or EnvUnavailableError.
        """
        spec = self.env if spec is None else spec
        try:
            return envs.check_compatible(
                spec, n_agents=self.n_agents, obs_dim=self.obs_dim, discrete=self.discrete,
                action_dim=self.action_dim,
                action_low=None if self.discrete else self.action_low.cpu().numpy(),
                action_high=None if self.discrete else self.action_high.cpu().numpy())
        except envs.EnvMismatchError as exc:
            raise DatasetError(self.source, exc.key, exc.expected, exc.found) from None


def _default_next_states(states: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
    """Next row's state inside an episode; the row's own state at an episode's last row."""
    nxt = torch.empty_like(states)
    nxt[:-1] = states[1:]
    ends = dones.nonzero().squeeze(1)  # E rows: index them rather than mask all T rows
    return nxt.index_copy_(0, ends, states.index_select(0, ends))


def _build(src: str, meta: Mapping[str, Any], arrays: dict[str, np.ndarray],
           attrs: Mapping[str, Any]) -> OfflineDataset:
    t = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
    obs = t["observations"]
    states = t.get("states")
    next_states = t.get("next_states")
    if next_states is None and states is None and "next_observations" in t:
        next_states = t["next_observations"].reshape(obs.shape[0], -1)
    if states is None:
        states = obs.reshape(obs.shape[0], -1)  # a view: no copy
    if next_states is None:
        next_states = _default_next_states(states, t["terminals"] | t["truncations"])
    dims = meta["dims"]
    low, high = meta.get("action_low"), meta.get("action_high")
    return OfflineDataset(
        observations=obs, actions=t["actions"], rewards=t["rewards"],
        terminals=t["terminals"], truncations=t["truncations"], states=states,
        next_states=next_states, avail_actions=t.get("avail_actions"),
        next_observations=t.get("next_observations"), env=meta["env"], n_agents=dims["N"],
        discrete=meta["discrete"], n_actions=dims.get("n_actions"),
        action_low=None if low is None else torch.from_numpy(low),
        action_high=None if high is None else torch.from_numpy(high),
        source=src, attrs={k: v for k, v in attrs.items() if k not in _RESERVED_ATTRS},
    )


# ---------------------------------------------------------------------------------- locations
def data_dir() -> Path:
    """The cache directory of named datasets: ``$VGM2P_DATA_DIR`` or
    ``~/.cache/vgm2p_fast/datasets``."""
    raw = os.environ.get(DATA_DIR_ENV)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "vgm2p_fast" / "datasets"


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts: bundled datasets, then cached ones (sorted, unique)."""
    names: list[str] = []
    for folder in (_BUNDLED_DIR, data_dir()):
        if folder.is_dir():
            names += sorted(p.stem for p in folder.glob("*.h5") if p.stem not in names)
    return names


def _resolve(path_or_name: str | os.PathLike) -> Path:
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    name = str(path_or_name)
    stem = name[:-3] if name.endswith(".h5") else name
    if "/" not in stem and os.sep not in stem:
        for folder in (_BUNDLED_DIR, data_dir()):
            if (folder / f"{stem}.h5").is_file():
                return folder / f"{stem}.h5"
    known = ", ".join(list_datasets()) or "none installed"
    raise DatasetError(name, "file", f"an existing path or a dataset name ({known})",
                       f"neither (no such file, and no {stem}.h5 in {_BUNDLED_DIR} or "
                       f"{data_dir()} (${DATA_DIR_ENV}))")


# -------------------------------------------------------------------------------------- load
def load_dataset(path_or_name: str | os.PathLike) -> OfflineDataset:
    """Load and validate a dataset file (docs/design.md section 3) into CPU tensors.

    ``path_or_name``: a path, or a name looked up as ``<name>.h5`` among the bundled datasets
    (``vgm2p_fast/data``), then in :func:`data_dir`. Every rule is checked before anything is
    returned: attributes, dtypes, ranks, agent and row counts from the file's metadata first
    (nothing is read from a file with the wrong layout), then NaN/inf, action ranges and
    availability, and the end flag of the last episode. Raises :class:`DatasetError` (one line)
    on the first broken rule.
    """
    path = _resolve(path_or_name)
    src = str(path)
    if path.is_dir():
        raise DatasetError(src, "file", "an HDF5 file", "a directory")
    if path.stat().st_size == 0:
        raise DatasetError(src, "file", "an HDF5 file", "an empty file (0 bytes)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(src, "file", "a readable HDF5 file", f"{type(exc).__name__}: {exc} "
                           "(truncated, corrupt or not HDF5)") from None
    with f:
        attrs = dict(f.attrs)
        specs = {}
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset):
                specs[name] = (obj.shape, obj.dtype)
            elif name in _ROW_FIELDS:
                raise DatasetError(src, name, "a dataset", f"a {type(obj).__name__}")
        meta = _check_layout(src, attrs, specs)
        arrays = {}
        for name in _ROW_FIELDS:
            if name in specs:
                try:
                    arrays[name] = f[name][()]
                except (OSError, ValueError, RuntimeError) as exc:
                    raise DatasetError(src, name, "readable data", f"{type(exc).__name__}: "
                                       f"{exc} (a truncated or corrupt file)") from None
    _check_values(src, meta, arrays)
    return _build(src, meta, arrays, attrs)


# ------------------------------------------------------------------------------------- write
def _as_array(name: str, x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (np.ndarray, list, tuple)):
        return np.asarray(x)
    raise ValueError(f"{name}: expected a numpy array or torch tensor, found {type(x).__name__}")


def _coerce(src: str, name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Lossless-enough conversions the writer makes for the caller: any real numbers -> float32,
    integers -> int64, 0/1 numbers -> bool. Anything else is left for the checks to refuse."""
    kind = arr.dtype.kind
    if dtype == _FLOAT and kind in "fiu":
        return arr.astype(np.float32, copy=False)
    if dtype == _LONG and kind in "iu":
        return arr.astype(np.int64, copy=False)
    if dtype == _BOOL and kind in "fiu":
        if not np.isin(arr, (0, 1)).all():
            raise DatasetError(src, name, "bool values (or numbers 0/1)",
                               f"values {np.unique(arr)[:8].tolist()}")
        return arr.astype(np.bool_)
    return arr


def write_dataset(
    path: str | os.PathLike,
    *,
    observations: Any,
    actions: Any,
    rewards: Any,
    terminals: Any,
    truncations: Any,
    env: str,
    n_agents: int | None = None,
    states: Any = None,
    next_states: Any = None,
    avail_actions: Any = None,
    next_observations: Any = None,
    n_actions: int | None = None,
    action_low: Any = None,
    action_high: Any = None,
    compression: str | None = "gzip",
    **extra_attrs: Any,
) -> None:
    """Write a dataset file that :func:`load_dataset` accepts, atomically (temp file +
    ``os.replace``: a crash never leaves a half-written file under ``path``).

    Arrays are numpy arrays or torch tensors with the shapes of the format (``vgm2p_fast._format``).
    The writer converts real numbers to float32, integer actions to int64 and 0/1 flags to
    bool; integer ``actions`` mean a discrete dataset (``n_actions`` defaults to
    ``avail_actions.shape[-1]``), float ones a continuous dataset, already scaled to ``[-1, 1]``
    (``action_low``/``action_high``: ``[act_dim]`` or per agent ``[N, act_dim]``; a missing one
    is -1/+1 in the other's shape, ``[act_dim]`` when both are missing). ``env`` is any
    non-empty string (see ``vgm2p_fast._format``). ``n_agents`` defaults to
    ``observations.shape[1]``. The same checks as the loader run first: a :class:`DatasetError`
    names what is wrong and nothing is written. ``compression``: ``gzip`` (level 4, with the
    shuffle filter), ``lzf`` or None. ``extra_attrs`` become file attributes (provenance, ...).
    """
    src = str(path)
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression: expected 'gzip', 'lzf' or None, found {compression!r}")
    clash = sorted(set(extra_attrs) & set(_RESERVED_ATTRS))
    if clash:
        raise ValueError(f"extra_attrs: expected names other than the format's attributes, "
                         f"found {clash}")
    given = {"observations": observations, "actions": actions, "rewards": rewards,
             "terminals": terminals, "truncations": truncations, "states": states,
             "next_states": next_states, "avail_actions": avail_actions,
             "next_observations": next_observations}
    raw = {k: _as_array(k, v) for k, v in given.items() if v is not None}
    discrete = raw["actions"].dtype.kind in "iu"
    layout = dict(_LAYOUT, actions=_DISC_ACTIONS if discrete else _CONT_ACTIONS)
    arrays = {k: _coerce(src, k, a, layout[k][0]) for k, a in raw.items()}
    attrs: dict[str, Any] = {"format_version": FORMAT_VERSION, "env": env,
                             "action_space": "discrete" if discrete else "continuous"}
    obs_shape = arrays["observations"].shape
    attrs["n_agents"] = n_agents if n_agents is not None else (
        obs_shape[1] if len(obs_shape) > 1 else None)
    if discrete:
        if n_actions is None and "avail_actions" in arrays:
            n_actions = arrays["avail_actions"].shape[-1]
        attrs["n_actions"] = n_actions
    else:
        act_shape = arrays["actions"].shape
        given = {k: _coerce(src, f"attribute {k}", _as_array(k, v), _FLOAT)
                 for k, v in (("action_low", action_low), ("action_high", action_high))
                 if v is not None}
        # A missing bound defaults to -1/+1 in the shape of the other one ([act_dim] or
        # [N, act_dim]), or [act_dim] when neither is given.
        shape = next((a.shape for a in given.values()),
                     (act_shape[-1] if len(act_shape) == 3 else 1,))
        for key, default in (("action_low", -1.0), ("action_high", 1.0)):
            attrs[key] = given.get(key, np.full(shape, default, np.float32))
    attrs = {k: v for k, v in attrs.items() if v is not None}
    specs = {k: (a.shape, a.dtype) for k, a in arrays.items()}
    meta = _check_layout(src, attrs, specs)
    _check_values(src, meta, arrays)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    opts = {"compression": compression} if compression else {}
    if compression == "gzip":
        opts.update(compression_opts=4, shuffle=True)
    try:
        with h5py.File(tmp, "w") as f:
            for name, arr in arrays.items():
                # ~1 MiB chunks of whole rows: large enough for fast sequential reads and
                # decompression, small enough to stay in the HDF5 chunk cache.
                rows = max(1, min(arr.shape[0], (1 << 20) // max(1, arr[:1].nbytes)))
                chunks = (rows, *arr.shape[1:]) if compression else None
                f.create_dataset(name, data=arr, chunks=chunks, **opts)
            for key, val in {**attrs, **extra_attrs}.items():
                f.attrs[key] = val
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
