"""The ``smax`` family: ``smax/<map>`` such as ``smax/3m`` (docs/design.md section 6).

``jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(map))`` with default
options, on CPU jax; observations = the env's per-agent vectors, state = ``world_state``,
availability = ``env.get_avail_actions(state)``, team reward = ``ally_0``'s reward (all allies
get the same one). A batch of environments is one ``jax.jit(jax.vmap(step))`` call. An episode
is *won* when every enemy is dead and an ally is alive; the env's step limit with both teams
standing is a truncation. Episode ``e`` of a run seeded ``s`` starts from the key
``fold_in(PRNGKey(s), e)``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .registry import import_optional, register_family


@functools.cache
def _smax_functions(map_name: str) -> tuple[Any, Callable, Callable, Callable]:
    """(env, shapes of a batched reset, jitted masked reset, jitted batched step) for one map.

    Compiling SMAX's step takes ~8 s and its reset ~4 s per batch size on this 2-core CPU
    (runs take ~0.3 ms a step for 4 envs), so everything that touches a batch is in these two
    jitted functions, and batches are padded to a power of two (_Smax) to reuse them.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")   # CPU jax; torch owns any GPU
    jax = import_optional("smax", "jax")
    jnp = jax.numpy
    jaxmarl = import_optional("smax", "jaxmarl")
    smax = import_optional("smax", "jaxmarl.environments.smax")
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


def smax_env(map_name: str) -> Any:
    """The jaxmarl ``HeuristicEnemySMAX`` env of ``smax/<map_name>`` that evaluation steps
    (cached; for code that needs the env itself, e.g. its heuristic policy)."""
    return _smax_functions(map_name)[0]


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


# SMAX's batch is one vmapped call (measured for 3m: 0.34 ms a step for 4 envs, 3.5 ms for
# 64), so a larger default batch than MuJoCo's: it mostly amortises act_fn.
register_family("smax", _Smax, action_space="discrete", pattern=r"[0-9A-Za-z_]+",
                syntax="smax/<map>", example="smax/3m", requires=("jax", "jaxmarl"),
                package="jaxmarl", install="pip install -e '.[smax]'", default_n_envs=64)
