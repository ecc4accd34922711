"""The HDF5 dataset format (docs/design.md section 3) and its rules, checked from metadata
first, then values, by the loader and the writers (``datasets``, ``convert``).

A file holds one dataset; rows are time steps ordered by episode (``T`` rows, ``N`` agents):

==================== ======= ======================= ==========================================
dataset              dtype   shape                   notes
==================== ======= ======================= ==========================================
observations         float32 [T, N, obs_dim]         per-agent, zero-padded to the largest agent
actions              float32 [T, N, act_dim]         continuous, already scaled to [-1, 1]
                     int64   [T, N]                  discrete, in [0, n_actions)
rewards              float32 [T]                     team reward
terminals            bool    [T]                     episode ended, no bootstrap
truncations          bool    [T]                     episode cut (time limit), bootstrap
states               float32 [T, state_dim]          optional (default: observations flattened)
next_states          float32 [T, state_dim]          optional (default: see OfflineDataset)
avail_actions        bool    [T, N, n_actions]       optional, discrete only
next_observations    float32 [T, N, obs_dim]         optional
==================== ======= ======================= ==========================================

File attributes: ``format_version`` (1), ``env`` (any non-empty string; a spec of a registered
environment family, ``mamujoco/<scenario>-<agent_conf>``, ``smax/<map>`` or one added with
``vgm2p_fast.envs.register_family``, must follow that family's syntax and action space, and is
what evaluation builds; any other name, ``vmas/navigation`` or ``my-sim``, trains without
evaluation), ``n_agents``, ``action_space`` (``continuous`` or ``discrete``), ``n_actions``
(discrete), ``action_low``/``action_high`` (continuous: the bounds of the environment before
scaling, ``[act_dim]`` for all agents or ``[N, act_dim]`` per agent). The last row of every
episode has ``terminals`` or ``truncations`` set; in particular the last row of the file does.

Every broken rule is a one-line :class:`DatasetError` naming the dataset or attribute, what was
expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import envs

FORMAT_VERSION = 1

_ENV_HELP = envs.spec_help()  # the registered families' syntax, named when `env` is missing

# Dataset name -> (dtype, shape template). Template symbols are sizes shared across datasets:
# the first dataset that shows one fixes it, every later one must agree.
_FLOAT, _BOOL, _LONG = np.dtype(np.float32), np.dtype(np.bool_), np.dtype(np.int64)
_LAYOUT = {
    "observations": (_FLOAT, ("T", "N", "obs_dim")),
    "rewards": (_FLOAT, ("T",)),
    "terminals": (_BOOL, ("T",)),
    "truncations": (_BOOL, ("T",)),
    "states": (_FLOAT, ("T", "state_dim")),
    "next_states": (_FLOAT, ("T", "state_dim")),
    "avail_actions": (_BOOL, ("T", "N", "n_actions")),
    "next_observations": (_FLOAT, ("T", "N", "obs_dim")),
}
_CONT_ACTIONS = (_FLOAT, ("T", "N", "act_dim"))
_DISC_ACTIONS = (_LONG, ("T", "N"))
_REQUIRED = ("observations", "actions", "rewards", "terminals", "truncations")
_OPTIONAL = ("states", "next_states", "avail_actions", "next_observations")
_ROW_FIELDS = _REQUIRED + _OPTIONAL
_RESERVED_ATTRS = ("format_version", "env", "n_agents", "action_space", "n_actions",
                   "action_low", "action_high")


class DatasetError(ValueError):
    """A dataset file (or the arrays given to :func:`write_dataset`) breaks a rule of the format.

    One-line message: ``'<file>: <dataset or attribute>: expected ..., found ...'``; the parts
    are kept as ``source``, ``key``, ``expected`` and ``found``.
    """

    def __init__(self, source: object, key: str, expected: str, found: str) -> None:
        self.source, self.key, self.expected, self.found = str(source), key, expected, found
        one_line = " ".join(f"{self.source}: {key}: expected {expected}, found {found}".split())
        super().__init__(one_line)


# --------------------------------------------------------------------------------------- rules
def _shape_text(template: tuple[str, ...], dims: Mapping[str, int]) -> str:
    known = ", ".join(str(dims[s]) if s in dims else "*" for s in template)
    return f"shape [{', '.join(template)}] = ({known})"


def _check_layout(src: str, attrs: Mapping[str, Any],
                  specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, Any]:
    """Attributes, dtypes, ranks and sizes, from metadata only (before any value is read).

    ``specs``: dataset name -> (shape, dtype). Returns the sizes ``T, N, obs_dim, state_dim``,
    ``act_dim``/``n_actions`` and the decoded attributes.
    """
    version = attrs.get("format_version")
    if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
        raise DatasetError(src, "attribute format_version", f"an integer (current format "
                           f"{FORMAT_VERSION})", "none" if version is None else repr(version))
    if not 1 <= int(version) <= FORMAT_VERSION:
        raise DatasetError(src, "attribute format_version", f"1..{FORMAT_VERSION} (newer files "
                           "need a newer vgm2p_fast)", str(int(version)))
    env = attrs.get("env")
    env = env.decode() if isinstance(env, bytes) else env
    if not isinstance(env, str) or not env.strip():
        found = ("none" if env is None else repr(env) if isinstance(env, str)
                 else f"{env} (type {type(env).__name__}, not a string)")
        raise DatasetError(src, "attribute env", f"a non-empty string naming the environment: "
                           f"{_ENV_HELP}", found)
    # Any name trains; one of a registered family must be a spec evaluation can build (a typo
    # such as 'mamujoco/HalfCheetah' fails here, not after training) with its action space.
    family = envs.find_family(env)
    if family is not None:
        try:
            envs.parse_env_spec(env)
        except ValueError:
            raise DatasetError(src, "attribute env", f"{family.describe()} (a {family.name} "
                               f"environment)", repr(env)) from None
    space = attrs.get("action_space")
    space = space.decode() if isinstance(space, bytes) else space
    if family is not None and space != family.action_space:
        raise DatasetError(src, "attribute action_space", f"{family.action_space!r} (env {env})",
                           "none" if space is None else repr(space))
    if space not in ("continuous", "discrete"):
        raise DatasetError(src, "attribute action_space", "'continuous' or 'discrete'",
                           "none" if space is None else repr(space))
    dims: dict[str, int] = {}
    meta: dict[str, Any] = {"env": env, "discrete": space == "discrete", "dims": dims,
                            "format_version": int(version)}
    for name in ("n_agents", *(("n_actions",) if meta["discrete"] else ())):
        val = attrs.get(name)
        if (not isinstance(val, (int, np.integer)) or isinstance(val, (bool, np.bool_))
                or int(val) < 1):
            raise DatasetError(src, f"attribute {name}", "a positive integer",
                               "none" if val is None else repr(val))
        dims["N" if name == "n_agents" else name] = int(val)
    if meta["discrete"]:
        for name in ("action_low", "action_high"):
            if name in attrs:
                raise DatasetError(src, f"attribute {name}", "no bounds for discrete actions",
                                   repr(attrs[name]))
    else:
        n, bounds = dims["N"], []
        for name in ("action_low", "action_high"):
            val = attrs.get(name)
            arr = None if val is None else np.asarray(val)
            if (arr is None or arr.ndim not in (1, 2) or arr.size == 0
                    or arr.dtype.kind not in "fiu" or (arr.ndim == 2 and arr.shape[0] != n)):
                raise DatasetError(src, f"attribute {name}", f"a float array [act_dim] (all "
                                   f"agents) or [n_agents = {n}, act_dim] (per agent)",
                                   "none" if arr is None else
                                   f"{arr.tolist()!r} (shape {arr.shape}, dtype {arr.dtype})")
            if not np.isfinite(arr).all():
                raise DatasetError(src, f"attribute {name}", "finite values", repr(arr.tolist()))
            bounds.append(arr.astype(np.float32))
        low, high = bounds
        if low.shape != high.shape or not (low < high).all():
            raise DatasetError(src, "attribute action_high", f"values > action_low "
                               f"{low.tolist()} (same shape {low.shape})",
                               f"{high.tolist()!r} (shape {high.shape})")
        meta["action_low"], meta["action_high"] = low, high
        dims["act_dim"] = low.shape[-1]
    layout = dict(_LAYOUT, actions=_DISC_ACTIONS if meta["discrete"] else _CONT_ACTIONS)
    for name in _ROW_FIELDS:
        dtype, template = layout[name]
        if name not in specs:
            if name in _REQUIRED:
                present = ", ".join(sorted(specs)) or "none"
                raise DatasetError(src, name, f"a {dtype} dataset of {_shape_text(template, dims)}",
                                   f"no such dataset (datasets: {present})")
            continue
        if name == "avail_actions" and not meta["discrete"]:
            raise DatasetError(src, name, "no availability mask for continuous actions",
                               f"a dataset of shape {tuple(specs[name][0])}")
        shape, found_dtype = tuple(specs[name][0]), np.dtype(specs[name][1])
        if found_dtype != dtype:
            raise DatasetError(src, name, f"dtype {dtype}", f"dtype {found_dtype}")
        if len(shape) != len(template):
            raise DatasetError(src, name, f"rank {len(template)}, {_shape_text(template, dims)}",
                               f"rank {len(shape)}, shape {shape}")
        if name == "next_states" and "state_dim" not in dims:
            # Without `states`, a state is the observations of all agents concatenated.
            dims["state_dim"] = dims["N"] * dims["obs_dim"]
        for sym, size in zip(template, shape):
            if sym not in dims:
                if size < 1:
                    raise DatasetError(src, name, f"at least one row and {sym} >= 1",
                                       f"shape {shape}")
                dims[sym] = size
            elif dims[sym] != size:
                why = {"T": " (rows of observations: a truncated or misaligned dataset)",
                       "N": " (attribute n_agents)", "n_actions": " (attribute n_actions)",
                       "act_dim": " (last dim of action_low)"}.get(sym, "")
                raise DatasetError(src, name, f"{_shape_text(template, dims)}{why}",
                                   f"shape {shape}")
    return meta


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _where(idx: tuple[int, ...]) -> str:
    return f"row {idx[0]}" + (f", agent {idx[1]}" if len(idx) > 1 else "")


def _check_values(src: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Finite floats, actions in range and available, and a closed last episode (vectorised)."""
    for name, arr in arrays.items():
        if arr.dtype == _FLOAT and not np.isfinite(arr).all():
            bad = ~np.isfinite(arr)
            idx = _first(bad)
            raise DatasetError(src, name, "finite values", f"{int(bad.sum())} NaN/inf values "
                               f"(first at {_where(idx)}: {arr[idx]})")
    actions = arrays["actions"]
    if meta["discrete"]:
        k = meta["dims"]["n_actions"]
        bad = (actions < 0) | (actions >= k)
        if bad.any():
            idx = _first(bad)
            raise DatasetError(src, "actions", f"integers in [0, n_actions = {k})",
                               f"{int(bad.sum())} outside (first at {_where(idx)}: "
                               f"{actions[idx]})")
        avail = arrays.get("avail_actions")
        if avail is not None:
            taken = np.take_along_axis(avail, actions[..., None], axis=-1)[..., 0]
            if not taken.all():
                idx = _first(~taken)
                raise DatasetError(src, "avail_actions", "every action taken to be available",
                                   f"{int((~taken).sum())} taken actions marked unavailable "
                                   f"(first at {_where(idx)}: action {actions[idx]})")
    else:
        bad = np.abs(actions) > 1.0
        if bad.any():
            idx = _first(bad)
            raise DatasetError(src, "actions", "values in [-1, 1] (continuous actions scaled "
                               "by action_low/action_high)", f"{int(bad.sum())} outside (first "
                               f"at {_where(idx)}, dim {idx[2]}: {actions[idx]})")
    last = len(arrays["rewards"]) - 1
    if not (arrays["terminals"][last] or arrays["truncations"][last]):
        raise DatasetError(src, "terminals/truncations", f"the last row ({last}) to end an "
                           "episode (terminals or truncations set)",
                           "both False: the last episode is incomplete")
