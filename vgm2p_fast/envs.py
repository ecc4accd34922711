"""Evaluation environments, exactly as the datasets record them (DESIGN section 6).

Two families, named by a spec string (the ``env`` attribute of a dataset):

- ``mamujoco/<scenario>-<agent_conf>`` (``mamujoco/HalfCheetah-2x3``, ``mamujoco/Hopper-3x1``,
  ``mamujoco/HalfCheetah-6x1``, ``mamujoco/Ant-2x4``): ``gymnasium_robotics.mamujoco_v1.
  parallel_env(scenario, agent_conf)`` with its default ``agent_obsk`` (1). Agents in
  ``env.possible_agents`` order; per-agent observations zero-padded **at the end** to the
  largest agent's size; state = ``env.state()``; the team reward is the (shared) reward of any
  agent. Actions: the policy emits them in the environment's bounds (``action_low/high``); a
  dataset stores them scaled to ``[-1, 1]``: ``a01 = 2 (a - low) / (high - low) - 1``. Agents
  with fewer action dimensions than the largest ignore the padded trailing dimensions (stored
  as 0).
- ``smax/<map>`` (``smax/3m``, ``smax/2s3z``): ``jaxmarl.make("HeuristicEnemySMAX",
  scenario=map_name_to_scenario(map))`` with default options, on CPU jax; observations = the
  env's per-agent vectors, state = ``world_state``, availability =
  ``env.get_avail_actions(state)``, team reward = ``ally_0``'s reward (all allies get the same
  one). A batch of environments is one ``jax.jit(jax.vmap(step))`` call. An episode is *won*
  when every enemy is dead and an ally is alive.

Time limits: an episode that ends because of the environment's step limit (MaMuJoCo's
``TimeLimit``, SMAX's ``max_steps`` with both teams alive) or of ``max_steps`` below is a
**truncation**; anything else that ends it is a **terminal** (no bootstrap, DESIGN 1.1).

Determinism: episode ``e`` of a run with seed ``s`` always starts from the same environment seed
(``SeedSequence([s, e])`` for MuJoCo, ``fold_in(PRNGKey(s), e)`` for SMAX), whatever ``n_envs``
is, and ``evaluate``/``rollout`` seed torch with ``s`` (inside ``torch.random.fork_rng``) so that
a stochastic ``act_fn`` is reproducible too.

``rollout`` is the one stepping loop; ``evaluate`` summarises it and the dataset generator
(``benchmarks/datasets/mamujoco.py``) records it (``record=True``) in the HDF5 layout of
DESIGN section 3.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ._checks import check_tensor

FAMILIES = ("mamujoco", "smax")
INSTALL_HINT = "pip install -e '.[envs]'"
_PACKAGES = {"mamujoco": "gymnasium-robotics", "smax": "jaxmarl"}
# <scenario>-<agent_conf>: agent_conf is "<agents>x<segments>" plus optional letters ("2x4d"),
# or Humanoid's "9|8" (what gymnasium-robotics' get_parts_and_edges accepts).
_MAMUJOCO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)-([0-9][0-9A-Za-z|]*)$")
_SMAX_RE = re.compile(r"^[0-9A-Za-z_]+$")
# Batch sizes when n_envs is not given. MuJoCo envs are stepped one after the other in Python
# (~0.1 ms a step), SMAX's batch in one vmapped call (measured for 3m: 0.34 ms for 4 envs,
# 3.5 ms for 64): either way the batch mostly amortises act_fn (one policy call per step).
_DEFAULT_N_ENVS = {"mamujoco": 16, "smax": 64}

ActFn = Callable[..., torch.Tensor]


class EnvUnavailableError(RuntimeError):
    """The package an environment family needs (the ``envs`` extra) is not installed."""


def parse_env_spec(spec: str) -> tuple[str, str]:
    """``"mamujoco/HalfCheetah-2x3"`` -> ``("mamujoco", "HalfCheetah-2x3")``.

    Raises ValueError for anything that is not ``mamujoco/<scenario>-<agent_conf>`` or
    ``smax/<map>``.
    """
    if not isinstance(spec, str):
        raise ValueError(f"spec: expected a string such as 'mamujoco/HalfCheetah-2x3' or "
                         f"'smax/3m', found {type(spec).__name__}")
    family, sep, name = spec.partition("/")
    if not sep or family not in FAMILIES:
        raise ValueError(f"spec: expected '<family>/<name>' with family in {FAMILIES} (e.g. "
                         f"'mamujoco/HalfCheetah-2x3', 'smax/3m'), found {spec!r}")
    if family == "mamujoco" and not _MAMUJOCO_RE.match(name):
        raise ValueError(f"spec: expected 'mamujoco/<scenario>-<agent_conf>' such as "
                         f"'mamujoco/HalfCheetah-2x3', found {spec!r}")
    if family == "smax" and not _SMAX_RE.match(name):
        raise ValueError(f"spec: expected 'smax/<map>' such as 'smax/3m', found {spec!r}")
    return family, name


def _import(family: str, module: str) -> Any:
    """Import an optional dependency, or raise EnvUnavailableError with the install command."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return importlib.import_module(module)
    except ImportError as exc:
        raise EnvUnavailableError(
            f"{family} environments need the package {_PACKAGES[family]} ({module} is not "
            f"importable: {exc}); install the extra with `{INSTALL_HINT}`") from exc
    finally:
        # gymnasium-robotics 1.4.2 prints a notice about Adroit reward versions on import
        # (farama_notifications): not about MaMuJoCo, so drop it; pass anything else on.
        kept = [line for line in printed.getvalue().splitlines(keepends=True)
                if "AdroitHand" not in line]
        sys.stderr.write("".join(kept))


@contextlib.contextmanager
def quiet_mujoco_compile() -> Iterator[None]:
    """Drop MuJoCo's deprecation warning for gymnasium's ``settotalmass`` XML attribute.

    MuJoCo 4 prints it on every model compile (once per env) and appends it to a
    ``MUJOCO_LOG.TXT`` in the working directory; any other MuJoCo warning still reaches Python's
    ``warnings``.
    """
    mujoco = importlib.import_module("mujoco")
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(
        lambda msg: None if "settotalmass" in msg else warnings.warn(msg, stacklevel=1))
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def _episode_seed(seed: int, episode: int) -> int:
    """Environment seed of episode ``episode`` of a run seeded ``seed`` (batch-independent)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class _MaMuJoCo:
    """A batch of ``n`` MaMuJoCo parallel envs stepped in turn; arrays are numpy, (B, ...)."""

    discrete = False

    def __init__(self, name: str, n: int) -> None:
        mamujoco = _import("mamujoco", "gymnasium_robotics").mamujoco_v1
        scenario, agent_conf = _MAMUJOCO_RE.match(name).groups()
        try:
            with quiet_mujoco_compile():
                self.envs = [mamujoco.parallel_env(scenario, agent_conf)
                             for _ in range(max(n, 1))]
        except Exception as exc:  # the library raises bare Exception/NotImplementedError
            raise ValueError(f"spec: mamujoco/{name} is not a MaMuJoCo scenario/agent_conf "
                             f"({type(exc).__name__}: {exc})") from exc
        env = self.envs[0]
        self.agents = list(env.possible_agents)
        obs_dims = [env.observation_space(a).shape[0] for a in self.agents]
        act_dims = [env.action_space(a).shape[0] for a in self.agents]
        self.n_agents = len(self.agents)
        self.obs_dim, self.action_dim = max(obs_dims), max(act_dims)
        self.obs_dims, self.act_dims = obs_dims, act_dims
        self.state_dim = int(env.state().shape[0])
        self.n_actions = None
        self.episode_limit = int(env.single_agent_env.spec.max_episode_steps)
        # Bounds per padded dim; every agent that has dim j must agree on it (true for all
        # gymnasium MuJoCo tasks: HalfCheetah/Hopper/Ant are [-1, 1], Humanoid [-0.4, 0.4]).
        low = np.full(self.action_dim, np.nan)
        high = np.full(self.action_dim, np.nan)
        for a, d in zip(self.agents, act_dims):
            space = env.action_space(a)
            for bound, new in ((low, space.low), (high, space.high)):
                known = ~np.isnan(bound[:d])
                if np.any(known & (bound[:d] != new)):
                    raise ValueError(f"spec: mamujoco/{name}: agents have different bounds for "
                                     f"the same action dimension; not supported")
                bound[:d] = new
        self.action_low = np.nan_to_num(low, nan=-1.0).astype(np.float32)
        self.action_high = np.nan_to_num(high, nan=1.0).astype(np.float32)
        B = len(self.envs)
        self.obs = np.zeros((B, self.n_agents, self.obs_dim), np.float32)
        self.state = np.zeros((B, self.state_dim), np.float32)
        self.avail = None

    def _write_obs(self, b: int, obs: dict[str, np.ndarray]) -> None:
        for i, (a, d) in enumerate(zip(self.agents, self.obs_dims)):
            self.obs[b, i, :d] = obs[a]
            self.obs[b, i, d:] = 0.0   # zero padding at the end (DESIGN 6)
        self.state[b] = self.envs[b].state()

    def reset(self, slots: list[int], seeds: list[tuple[int, int]]) -> None:
        for b, (seed, episode) in zip(slots, seeds):
            obs, _ = self.envs[b].reset(seed=_episode_seed(seed, episode))
            self._write_obs(b, obs)

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, ...]:
        """actions: (B, N, D) in bounds -> rewards, terminals, truncations, wins (all (B,))."""
        B = len(self.envs)
        rew = np.zeros(B, np.float32)
        term = np.zeros(B, bool)
        trunc = np.zeros(B, bool)
        for b in np.flatnonzero(active):
            act = {a: actions[b, i, :d].astype(np.float64)
                   for i, (a, d) in enumerate(zip(self.agents, self.act_dims))}
            obs, r, te, tr, _ = self.envs[b].step(act)
            a0 = self.agents[0]
            rew[b], term[b], trunc[b] = r[a0], te[a0], tr[a0] and not te[a0]
            self._write_obs(b, obs)
        return rew, term, trunc, np.zeros(B, bool)


@functools.cache
def _smax_functions(map_name: str) -> tuple[Any, Callable, Callable, Callable]:
    """(env, shapes of a batched reset, jitted masked reset, jitted batched step) for one map.

    Compiling SMAX's step takes ~8 s and its reset ~4 s per batch size on this 2-core CPU
    (runs take ~0.3 ms a step for 4 envs), so everything that touches a batch is in these two
    jitted functions, and batches are padded to a power of two (_Smax) to reuse them.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")   # CPU jax; torch owns any GPU
    jax = _import("smax", "jax")
    jnp = jax.numpy
    jaxmarl = _import("smax", "jaxmarl")
    smax = _import("smax", "jaxmarl.environments.smax")
    try:
        scenario = smax.map_name_to_scenario(map_name)
    except KeyError as exc:
        raise ValueError(f"spec: smax/{map_name} is not a SMAX map ({exc})") from exc
    env = jaxmarl.make("HeuristicEnemySMAX", scenario=scenario)
    agents, n_allies = list(env.agents), env.num_allies

    def observe(obs, state):
        avail = env.get_avail_actions(state)
        return (jnp.stack([obs[a] for a in agents]), obs["world_state"],
                jnp.stack([avail[a] for a in agents]).astype(bool))

    def reset_one(seed, episode):
        # Episode e of a run seeded s: key fold_in(PRNGKey(s), e), whatever the batch.
        key, k_reset = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), episode))
        obs, state = env.reset(k_reset)
        return (key, state, *observe(obs, state))

    def reset(mask, seeds, episodes, carry):
        """Slots with ``mask`` restart; carry = (keys, state, obs, world_state, avail)."""
        new = jax.vmap(reset_one)(seeds, episodes)
        return jax.tree.map(
            lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, carry)

    def step_one(key, state, actions):
        key, k_step = jax.random.split(key)
        obs, state, rewards, dones, _ = env.step_env(
            k_step, state, {a: actions[i] for i, a in enumerate(agents)})
        alive = state.state.unit_alive
        allies, enemies = alive[:n_allies].any(), alive[n_allies:].any()
        done = dones["__all__"]
        # The env's step limit with both teams standing is a time-out: a truncation.
        trunc = done & allies & enemies
        return ((key, state, *observe(obs, state)),
                (rewards[agents[0]], done & ~trunc, trunc, done & allies & ~enemies))

    shapes = functools.partial(jax.eval_shape, jax.vmap(reset_one))
    # Optimisation level 0 compiles ~30% faster (measured 7.6 -> 5.3 s for the step of 3m)
    # and runs as fast: the graph is many small ops, where LLVM's passes buy nothing.
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return (env, shapes, jax.jit(reset, compiler_options=fast),
            jax.jit(jax.vmap(step_one), compiler_options=fast))


class _Smax:
    """A batch of ``n`` SMAX envs stepped by one vmapped, jitted call.

    The jitted batch is ``n`` rounded up to a power of two (one compilation serves n_envs 3 and
    4); the extra slots never start an episode and their outputs are dropped.
    """

    discrete = True

    def __init__(self, name: str, n: int) -> None:
        self.env, shapes, self._reset, self._step = _smax_functions(name)
        self.jax = jax = sys.modules["jax"]
        env = self.env
        self.n = max(n, 1)
        self.padded = 1 << (self.n - 1).bit_length()
        self.n_agents = env.num_allies
        zeros = np.zeros(self.padded, np.uint32)
        # The carry starts as zeros of the right shapes: the first reset fills every used slot.
        self._carry = jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype),
                                   shapes(zeros, zeros))
        obs, world = self._carry[2], self._carry[3]
        self.obs_dim, self.state_dim = int(obs.shape[-1]), int(world.shape[-1])
        self.n_actions = self.action_dim = int(env.action_space(env.agents[0]).n)
        self.episode_limit = int(env.max_steps)
        self.action_low = self.action_high = None
        self._publish()

    def _publish(self) -> None:
        """Copy the used slots' observations, world states and masks to numpy."""
        self.obs, self.state, self.avail = (np.array(x[: self.n]) for x in self._carry[2:])

    def reset(self, slots: list[int], seeds: list[tuple[int, int]]) -> None:
        mask = np.zeros(self.padded, bool)
        seed_arr = np.zeros(self.padded, np.uint32)
        ep_arr = np.zeros(self.padded, np.uint32)
        mask[slots] = True
        for b, (seed, episode) in zip(slots, seeds):
            seed_arr[b], ep_arr[b] = seed & 0xFFFFFFFF, episode
        self._carry = self._reset(mask, seed_arr, ep_arr, self._carry)
        self._publish()

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, ...]:
        """actions: (B, N) int -> rewards, terminals, truncations, wins (all (B,)).

        Finished and padding slots are stepped too (one vmapped call); they get "stop", the
        action that is always available, and their outputs are ignored.
        """
        padded = np.full((self.padded, self.n_agents), self.env.num_movement_actions - 1,
                         np.int32)
        padded[: self.n][active] = actions[active]
        keys, state = self._carry[:2]
        self._carry, outs = self._step(keys, state, padded)
        self._publish()
        rew, term, trunc, won = (np.asarray(x)[: self.n] for x in outs)
        return rew.astype(np.float32), term, trunc, won


def _make(spec: str, n_envs: int) -> _MaMuJoCo | _Smax:
    family, name = parse_env_spec(spec)
    return _MaMuJoCo(name, n_envs) if family == "mamujoco" else _Smax(name, n_envs)


@functools.cache
def _info(spec: str) -> dict:
    env = _make(spec, 1)
    info = {"env": spec, "n_agents": env.n_agents, "obs_dim": env.obs_dim,
            "state_dim": env.state_dim, "action_dim": env.action_dim, "discrete": env.discrete,
            "episode_limit": env.episode_limit}
    if env.discrete:
        info["n_actions"] = env.n_actions
    else:
        info["action_low"] = env.action_low.tolist()
        info["action_high"] = env.action_high.tolist()
    return info


def env_info(spec: str) -> dict:
    """Sizes of ``spec`` as a policy sees them.

    Keys: ``env``, ``n_agents``, ``obs_dim`` (padded to the largest agent), ``state_dim``,
    ``action_dim`` (continuous: the largest agent's action size; discrete: K), ``discrete``,
    ``episode_limit`` (the environment's step limit), and ``action_low``/``action_high``
    (continuous: list of ``action_dim`` floats, the bounds before scaling to [-1, 1]) or
    ``n_actions`` (discrete, = K).
    """
    info = _info(spec)
    return {k: (list(v) if isinstance(v, list) else v) for k, v in info.items()}


def mamujoco_action_index(spec: str) -> np.ndarray:
    """(N, action_dim) int64: the single-agent action index each agent's action dim drives.

    ``-1`` marks padding. ``joint[..., idx]`` (with padding zeroed) maps a single-agent action of
    the underlying gymnasium task (``HalfCheetah-v5``) to the multi-agent one, as
    ``env.map_global_action_to_local_actions`` does.
    """
    family, name = parse_env_spec(spec)
    if family != "mamujoco":
        raise ValueError(f"spec: expected a mamujoco/ spec, found {spec!r}")
    env = _MaMuJoCo(name, 1)
    idx = np.full((env.n_agents, env.action_dim), -1, np.int64)
    for i, partition in enumerate(env.envs[0].agent_action_partitions):
        for j, node in enumerate(partition):
            idx[i, j] = node.act_ids
    return idx


def _check_actions(actions: object, rows: int, env: _MaMuJoCo | _Smax,
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

    Returns ``returns``, ``lengths`` (and ``wins``, smax) per episode, in episode order; with
    ``record=True`` also the steps of all episodes, concatenated in episode order, in the
    layout of DESIGN section 3: ``observations [T, N, obs_dim]``, ``actions`` (continuous
    ``[T, N, action_dim]`` scaled to ``[-1, 1]``; discrete ``[T, N]`` int64), ``rewards [T]``,
    ``terminals [T]``, ``truncations [T]``, ``states``/``next_states [T, state_dim]``,
    ``next_observations [T, N, obs_dim]`` and ``avail_actions [T, N, K]`` (smax) as numpy.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes: expected an int >= 1, found {episodes!r}")
    if n_envs is not None and (not isinstance(n_envs, int) or n_envs < 1):
        raise ValueError(f"n_envs: expected None or an int >= 1, found {n_envs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps: expected None or an int >= 1, found {max_steps!r}")
    family, _ = parse_env_spec(spec)
    B = min(episodes, n_envs or _DEFAULT_N_ENVS[family])
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
            rew, term, trunc, won = env.step(full, active)
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


def _scale_to_unit(a: np.ndarray, env: _MaMuJoCo) -> np.ndarray:
    """(N, D) actions in bounds -> [-1, 1]; dims an agent does not have are stored as 0."""
    unit = 2.0 * (a - env.action_low) / (env.action_high - env.action_low) - 1.0
    for i, d in enumerate(env.act_dims):
        unit[i, d:] = 0.0
    return unit.astype(np.float32)


def evaluate(act_fn: ActFn, spec: str, episodes: int, seed: int = 0, n_envs: int | None = None,
             progress: bool = False, *, max_steps: int | None = None) -> dict:
    """Evaluate ``act_fn`` on ``episodes`` episodes of ``spec`` (see :func:`rollout` for act_fn).

    Deterministic for a given ``seed`` (and ``n_envs``, when ``act_fn`` samples noise).
    Returns ``returns`` and ``lengths`` (lists, episode order), ``return_mean``,
    ``return_std`` (population std), ``episodes``, ``env``, ``seed`` and, for smax,
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
