"""The ``mamujoco`` family: ``mamujoco/<scenario>-<agent_conf>`` (docs/design.md section 6).

``gymnasium_robotics.mamujoco_v1.parallel_env(scenario, agent_conf)`` with its default
``agent_obsk`` (1). Agents in ``env.possible_agents`` order; per-agent observations zero-padded
**at the end** to the largest agent's size; state = ``env.state()``; the team reward is the
(shared) reward of any agent. Actions: the policy emits them in the environment's bounds
(``action_low/high``); a dataset stores them scaled to ``[-1, 1]``:
``a01 = 2 (a - low) / (high - low) - 1``. Agents with fewer action dimensions than the largest
ignore the padded trailing dimensions (stored as 0). Episode ``e`` of a run seeded ``s`` resets
with ``episode_seed(s, e)``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from collections.abc import Iterator

import numpy as np

from .base import episode_seed
from .registry import import_optional, parse_env_spec, register_family

# <scenario>-<agent_conf>: agent_conf is "<agents>x<segments>" plus optional letters ("2x4d"),
# or Humanoid's "9|8" (what gymnasium-robotics' get_parts_and_edges accepts).
_SPEC = re.compile(r"([A-Za-z][A-Za-z0-9]*)-([0-9][0-9A-Za-z|]*)")


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


class _MaMuJoCo:
    """A batch of ``n`` MaMuJoCo parallel envs stepped in turn; arrays are numpy, (B, ...)."""

    discrete = False

    def __init__(self, name: str, n: int) -> None:
        mamujoco = import_optional("mamujoco", "gymnasium_robotics").mamujoco_v1
        scenario, agent_conf = _SPEC.fullmatch(name).groups()
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
            self.obs[b, i, d:] = 0.0   # zero padding at the end (docs/design.md section 6)
        self.state[b] = self.envs[b].state()

    def reset(self, slots: list[int], seeds: list[tuple[int, int]]) -> None:
        for b, (seed, episode) in zip(slots, seeds):
            obs, _ = self.envs[b].reset(seed=episode_seed(seed, episode))
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


# MuJoCo envs are stepped one after the other in Python (~0.1 ms a step): 16 of them mostly
# amortise act_fn (one policy call per step).
register_family("mamujoco", _MaMuJoCo, action_space="continuous", pattern=_SPEC,
                syntax="mamujoco/<scenario>-<agent_conf>", example="mamujoco/HalfCheetah-2x3",
                requires=("gymnasium_robotics",), package="gymnasium-robotics",
                install="pip install -e '.[mamujoco]'", default_n_envs=16)
