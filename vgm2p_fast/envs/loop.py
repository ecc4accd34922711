"""The stepping loop every family shares: ``rollout``, ``evaluate`` and the sizes a policy sees.

Time limits: an episode that ends because of the environment's step limit (MaMuJoCo's
``TimeLimit``, SMAX's ``max_steps`` with both teams alive) or of ``max_steps`` below is a
**truncation**; anything else that ends it is a **terminal** (no bootstrap; docs/design.md
section 1.1).

Determinism: episode ``e`` of a run with seed ``s`` always starts from the same environment seed
(the env's ``reset`` gets ``(s, e)``), whatever ``n_envs`` is, and ``evaluate``/``rollout`` seed
torch with ``s`` (inside ``torch.random.fork_rng``) so that a stochastic ``act_fn`` is
reproducible too.

``rollout`` is the one stepping loop; ``evaluate`` summarises it and the dataset generators
(``benchmarks/datasets/``) record it (``record=True``) in the HDF5 layout of docs/design.md
section 3.
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

import numpy as np
import torch

from .._checks import check_tensor
from .base import ActFn, BatchedEnv
from .registry import EnvFamily, check_installed, get_family, parse_env_spec

_SIZES = ("n_agents", "obs_dim", "state_dim", "action_dim", "episode_limit")


def _check_env(env: BatchedEnv, family: EnvFamily, spec: str) -> None:
    """The sizes and bounds of a freshly built env (a user's make_fn may get them wrong)."""
    where = f"env {spec}: the env family {family.name!r}'s make_fn returned"
    see = "(see vgm2p_fast.envs.BatchedEnv)"
    for key in ("discrete", *_SIZES, "n_actions", "action_low", "action_high", "reset", "step"):
        if not hasattr(env, key):
            raise ValueError(f"{where} an object without {key!r} {see}")
    for key in _SIZES:
        val = getattr(env, key)
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{where} {key} = {val!r}; expected an int >= 1 {see}")
    if bool(env.discrete) != (family.action_space == "discrete"):
        raise ValueError(f"{where} discrete = {env.discrete!r}; the family is registered as "
                         f"{family.action_space} {see}")
    if env.discrete:
        if env.n_actions != env.action_dim:
            raise ValueError(f"{where} n_actions = {env.n_actions!r}; expected action_dim = "
                             f"{env.action_dim} (the number of actions K) {see}")
        return
    low, high = np.asarray(env.action_low, float), np.asarray(env.action_high, float)
    shapes = ((env.action_dim,), (env.n_agents, env.action_dim))
    if low.shape not in shapes or high.shape != low.shape or not (low < high).all():
        raise ValueError(f"{where} action_low/action_high of shapes {low.shape}/{high.shape}; "
                         f"expected finite bounds, low < high, of shape {shapes[0]} or "
                         f"{shapes[1]} {see}")


def _check_arrays(env: BatchedEnv, spec: str, B: int) -> None:
    """obs/state/avail after the first reset: shapes and dtypes the loop relies on."""
    want = {"obs": ((B, env.n_agents, env.obs_dim), np.float32),
            "state": ((B, env.state_dim), np.float32)}
    if env.discrete:
        want["avail"] = ((B, env.n_agents, env.n_actions), np.bool_)
    for key, (shape, dtype) in want.items():
        arr = getattr(env, key)
        if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
            found = (f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray)
                     else type(arr).__name__)
            raise ValueError(f"env {spec}: {key}: expected a numpy {np.dtype(dtype)} array of "
                             f"shape {shape} after reset, found {found} "
                             f"(see vgm2p_fast.envs.BatchedEnv)")


def _make(spec: str, n_envs: int) -> BatchedEnv:
    """A checked env of ``n_envs`` slots for ``spec``."""
    family_name, name = parse_env_spec(spec)
    family = get_family(family_name)
    check_installed(family)
    env = family.make(name, n_envs)
    _check_env(env, family, spec)
    return env


def _step_outputs(out: Any, B: int, spec: str) -> tuple[np.ndarray, ...]:
    """``env.step``'s (rewards, terminals, truncations, wins) as [B] float32/bool arrays."""
    if not isinstance(out, tuple) or len(out) != 4:
        raise ValueError(f"env {spec}: step: expected a tuple (rewards, terminals, truncations, "
                         f"wins), found {type(out).__name__} (see vgm2p_fast.envs.BatchedEnv)")
    arrays = [np.asarray(x, dtype) for x, dtype in zip(out, (np.float32, bool, bool, bool))]
    for key, arr in zip(("rewards", "terminals", "truncations", "wins"), arrays):
        if arr.shape != (B,):
            raise ValueError(f"env {spec}: step: expected {key} of shape ({B},), found shape "
                             f"{arr.shape} (see vgm2p_fast.envs.BatchedEnv)")
    return tuple(arrays)


@functools.cache
def _info(family: EnvFamily, spec: str) -> dict:
    # Keyed by the family record too: a family registered again (replace=True) is rebuilt.
    env = _make(spec, 1)
    info = {"env": spec, "n_agents": env.n_agents, "obs_dim": env.obs_dim,
            "state_dim": env.state_dim, "action_dim": env.action_dim, "discrete": env.discrete,
            "episode_limit": env.episode_limit}
    if env.discrete:
        info["n_actions"] = env.n_actions
    else:
        info["action_low"] = np.asarray(env.action_low, np.float32).tolist()
        info["action_high"] = np.asarray(env.action_high, np.float32).tolist()
    return info


def env_info(spec: str) -> dict:
    """Sizes of ``spec`` as a policy sees them (builds one env; cached per spec).

    Keys: ``env``, ``n_agents``, ``obs_dim`` (padded to the largest agent), ``state_dim``,
    ``action_dim`` (continuous: the largest agent's action size; discrete: K), ``discrete``,
    ``episode_limit`` (the environment's step limit), and ``action_low``/``action_high``
    (continuous: the bounds before scaling to [-1, 1], a list of ``action_dim`` floats, or
    ``N`` such lists for a family with per-agent bounds) or ``n_actions`` (discrete, = K).
    Raises ValueError for a spec of no registered family, EnvUnavailableError when the
    family's package is missing.
    """
    return copy.deepcopy(_info(get_family(parse_env_spec(spec)[0]), spec))


class EnvMismatchError(ValueError):
    """Data (or a policy) whose sizes disagree with an environment; ``key`` names the field,
    ``expected`` is the environment's value and ``found`` the data's."""

    def __init__(self, key: str, expected: str, found: str) -> None:
        self.key, self.expected, self.found = key, expected, found
        super().__init__(f"{key}: expected {expected}, found {found}")


def check_compatible(spec: str, *, n_agents: int, obs_dim: int, discrete: bool,
                     action_dim: int, action_low: Any = None, action_high: Any = None) -> dict:
    """Raise EnvMismatchError at the first size of the data that ``spec`` does not have.

    Checked in order: ``action_space`` (``discrete``), ``n_agents``, ``obs_dim``,
    ``action_dim`` (continuous) or ``n_actions`` (discrete: ``action_dim`` = K), then, for
    continuous data that gives them, ``action_low``/``action_high`` (``[action_dim]`` or
    ``[N, action_dim]``; compared per agent after broadcasting, to 1e-6: the policy rescales
    to the data's bounds, the env clips to its own). ``state_dim`` is not compared: the
    policy acts on observations, and a dataset's default states (observations concatenated)
    differ from the env's. Returns :func:`env_info` of ``spec`` (building the env).
    """
    info = env_info(spec)
    space = "discrete" if info["discrete"] else "continuous"
    if bool(discrete) != info["discrete"]:
        raise EnvMismatchError("action_space", f"{space!r} (env {spec})",
                               repr("discrete" if discrete else "continuous"))
    fields = [("n_agents", n_agents), ("obs_dim", obs_dim),
              ("n_actions" if discrete else "action_dim", action_dim)]
    for key, val in fields:
        want = info["n_actions" if key == "n_actions" else key]
        if val != want:
            raise EnvMismatchError(key, f"{want} (env {spec})", str(val))
    shape = (info["n_agents"], info["action_dim"])
    for key, val in (("action_low", action_low), ("action_high", action_high)):
        if discrete or val is None:
            continue
        mine = np.broadcast_to(np.asarray(info[key], np.float64), shape)
        theirs = np.asarray(val, np.float64)
        if theirs.shape not in (shape, shape[1:]) or not np.allclose(
                np.broadcast_to(theirs, shape), mine, rtol=1e-6, atol=1e-6):
            raise EnvMismatchError(key, f"{info[key]} (env {spec})",
                                   str(theirs.tolist()))
    return info


def _check_actions(actions: object, rows: int, env: BatchedEnv,
                   avail: np.ndarray | None) -> np.ndarray:
    """act_fn's output as numpy, validated (shape, dtype, range, availability)."""
    if env.discrete:
        a = check_tensor("act_fn output", actions, shape=(rows, env.n_agents),
                         dtypes=(torch.int64, torch.int32)).detach().cpu().numpy()
        if a.min() < 0 or a.max() >= env.n_actions:
            raise ValueError(f"act_fn output: expected action ids in [0, {env.n_actions}), "
                             f"found values in [{a.min()}, {a.max()}]")
        chosen = np.take_along_axis(avail, a[..., None], axis=-1)[..., 0]
        if not chosen.all():
            b, i = np.argwhere(~chosen)[0]
            raise ValueError(f"act_fn output: row {b}, agent {i} chose action {a[b, i]}, which "
                             f"avail marks unavailable ({int((~chosen).sum())} such choices)")
        return a
    a = check_tensor("act_fn output", actions, shape=(rows, env.n_agents, env.action_dim),
                     dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16))
    a = a.detach().float().cpu().numpy()
    if not np.isfinite(a).all():
        raise ValueError("act_fn output: expected finite actions, found NaN or inf")
    # MuJoCo clips ctrl to its range anyway; clipping here makes the recorded action the one
    # the simulator executed.
    return np.clip(a, env.action_low, env.action_high)


_RECORD_KEYS = ("observations", "actions", "rewards", "terminals", "truncations", "states",
                "next_observations", "next_states", "avail_actions")


def rollout(act_fn: ActFn, spec: str, episodes: int, seed: int = 0, n_envs: int | None = None,
            *, record: bool = True, max_steps: int | None = None, pass_state: bool = False,
            progress: bool = False) -> dict:
    """Run ``episodes`` episodes of ``spec`` with ``act_fn``; the loop under ``evaluate``.

    ``act_fn(obs [B, N, obs_dim] float32, avail [B, N, K] bool | None)`` returns actions in the
    environment's bounds (continuous, ``[B, N, action_dim]`` float) or ids (discrete,
    ``[B, N]`` long); with ``pass_state=True`` it is called as ``act_fn(obs, avail, state)``
    with ``state [B, state_dim]`` float32 (a behaviour policy that acts on the global state).
    ``B`` is the number of running episodes (``n_envs`` at most; fewer at the end).
    ``max_steps`` truncates episodes earlier than the environment's own limit.

    Returns ``returns``, ``lengths`` (and ``wins``, discrete families) per episode, in episode
    order; with ``record=True`` also the steps of all episodes, concatenated in episode order,
    in the layout of docs/design.md section 3: ``observations [T, N, obs_dim]``, ``actions``
    (continuous ``[T, N, action_dim]`` scaled to ``[-1, 1]`` by the env's bounds, per agent
    when they are ``[N, action_dim]``; discrete ``[T, N]`` int64), ``rewards [T]``,
    ``terminals [T]``, ``truncations [T]``, ``states``/``next_states [T, state_dim]``,
    ``next_observations [T, N, obs_dim]`` and ``avail_actions [T, N, K]`` (discrete) as numpy.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes: expected an int >= 1, found {episodes!r}")
    if n_envs is not None and (not isinstance(n_envs, int) or n_envs < 1):
        raise ValueError(f"n_envs: expected None or an int >= 1, found {n_envs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps: expected None or an int >= 1, found {max_steps!r}")
    family = get_family(parse_env_spec(spec)[0])
    B = min(episodes, n_envs or family.default_n_envs)
    env = _make(spec, B)
    limit = min(max_steps or env.episode_limit, env.episode_limit)
    slot_episode = np.full(B, -1)
    steps = np.zeros(B, np.int64)
    ret = np.zeros(B, np.float64)
    returns, lengths, wins = [0.0] * episodes, [0] * episodes, [False] * episodes
    buffers: list[dict[str, list]] = [{k: [] for k in _RECORD_KEYS} for _ in range(B)]
    recorded: list[dict[str, np.ndarray] | None] = [None] * episodes
    next_episode = 0

    def start(slots: list[int]) -> None:
        nonlocal next_episode
        slots = slots[: episodes - next_episode]
        if not slots:
            return
        ids = list(range(next_episode, next_episode + len(slots)))
        next_episode += len(slots)
        env.reset(slots, [(seed, e) for e in ids])
        slot_episode[slots] = ids
        steps[slots] = 0
        ret[slots] = 0.0

    start(list(range(B)))
    _check_arrays(env, spec, B)
    # Seed torch for a stochastic act_fn without touching the caller's RNG streams.
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        while (slot_episode >= 0).any():
            active = slot_episode >= 0
            rows = np.flatnonzero(active)
            obs = torch.from_numpy(env.obs[rows])
            avail = None if env.avail is None else torch.from_numpy(env.avail[rows])
            args = (obs, avail, torch.from_numpy(env.state[rows])) if pass_state else (obs, avail)
            act = _check_actions(act_fn(*args), len(rows), env,
                                 None if env.avail is None else env.avail[rows])
            full = np.zeros((B, *act.shape[1:]), act.dtype)
            full[rows] = act
            if record:
                before = {"observations": env.obs[rows].copy(), "states": env.state[rows].copy(),
                          "avail_actions": None if env.avail is None else env.avail[rows].copy()}
            rew, term, trunc, won = _step_outputs(env.step(full, active), B, spec)
            steps[rows] += 1
            ret[rows] += rew[rows]
            trunc = trunc | ((steps >= limit) & ~term)
            done = active & (term | trunc)
            for j, b in enumerate(rows):
                if record:
                    buf = buffers[b]
                    buf["observations"].append(before["observations"][j])
                    buf["states"].append(before["states"][j])
                    if env.discrete:
                        buf["avail_actions"].append(before["avail_actions"][j])
                        buf["actions"].append(act[j])
                    else:
                        buf["actions"].append(_scale_to_unit(act[j], env))
                    buf["rewards"].append(rew[b])
                    buf["terminals"].append(term[b])
                    buf["truncations"].append(trunc[b] and not term[b])
                    buf["next_observations"].append(env.obs[b].copy())
                    buf["next_states"].append(env.state[b].copy())
                if done[b]:
                    e = int(slot_episode[b])
                    returns[e], lengths[e], wins[e] = float(ret[b]), int(steps[b]), bool(won[b])
                    if record:
                        recorded[e] = {k: np.stack(v) for k, v in buffers[b].items() if v}
                        buffers[b] = {k: [] for k in _RECORD_KEYS}
                    slot_episode[b] = -1
                    if progress:
                        print(f"[{spec}] episode {e + 1}/{episodes}: return {ret[b]:.2f}, "
                              f"length {steps[b]}", file=sys.stderr, flush=True)
            start([int(b) for b in np.flatnonzero(done)])
    out: dict[str, Any] = {"returns": returns, "lengths": lengths}
    if env.discrete:
        out["wins"] = wins
    if record:
        out.update({k: np.concatenate([r[k] for r in recorded]) for k in recorded[0]})
    return out


def _scale_to_unit(a: np.ndarray, env: BatchedEnv) -> np.ndarray:
    """(N, D) actions in bounds ([D] or [N, D]) -> [-1, 1]; dims an agent does not have (the
    env's optional ``act_dims``) are stored as 0."""
    unit = 2.0 * (a - env.action_low) / (env.action_high - env.action_low) - 1.0
    for i, d in enumerate(getattr(env, "act_dims", None) or ()):
        unit[i, d:] = 0.0
    return unit.astype(np.float32)


def evaluate(act_fn: ActFn, spec: str, episodes: int, seed: int = 0, n_envs: int | None = None,
             progress: bool = False, *, max_steps: int | None = None) -> dict:
    """Evaluate ``act_fn`` on ``episodes`` episodes of ``spec`` (see :func:`rollout` for act_fn).

    Deterministic for a given ``seed`` (and ``n_envs``, when ``act_fn`` samples noise).
    Returns ``returns`` and ``lengths`` (lists, episode order), ``return_mean``,
    ``return_std`` (population std), ``episodes``, ``env``, ``seed`` and, for discrete families,
    ``win_rate`` (fraction of episodes won) and ``wins``.
    """
    out = rollout(act_fn, spec, episodes, seed, n_envs, record=False, max_steps=max_steps,
                  progress=progress)
    r = np.asarray(out["returns"])
    res = {"env": spec, "seed": seed, "episodes": episodes, "returns": out["returns"],
           "lengths": out["lengths"], "return_mean": float(r.mean()),
           "return_std": float(r.std())}
    if "wins" in out:
        res["wins"] = out["wins"]
        res["win_rate"] = float(np.mean(out["wins"]))
    return res
