"""OG-MARL-style system: :class:`MeanFlowSystem`, ``select_actions`` over per-agent dicts.

OG-MARL's evaluation loops (and PettingZoo parallel envs, which OG-MARL wraps) pass per-agent
dicts of numpy arrays: ``observations[agent] (obs_i,)`` and, for discrete envs, 0/1
``legals[agent] (K,)``; the system answers ``actions[agent]``. ``MeanFlowSystem`` does that with
one batched network evaluation for all agents. Observations shorter than the policy's
``obs_dim`` are zero-padded at the end (the convention of the datasets, docs/design.md
section 6), and an agent with fewer action dimensions than the policy gets its leading
``action_dims[agent]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..policy import MeanFlowPolicy
from ..policy.sampling import resolve_noise
from . import act_batched


class MeanFlowSystem:
    """A MeanFlowPolicy behind OG-MARL's ``select_actions(observations, legals)``.

    Args:
        policy: the trained MeanFlowPolicy.
        agents: agent ids in the policy's agent order (``env.possible_agents``).
        action_dims: continuous only: per-agent action sizes (default: the policy's
            ``action_dim`` for every agent).
        guidance: test-time guidance w (1 = off).
        seed: seeds a private torch generator for the noise (reproducible runs); None uses
            torch's global RNG.
        noise: initial noise, ``auto`` (zero for a discrete policy, its mode; sample for a
            continuous one), ``sample`` or ``zero`` (``act_batched``).
    """

    def __init__(self, policy: MeanFlowPolicy, agents: Sequence[str], *,
                 action_dims: Mapping[str, int] | None = None, guidance: float = 1.0,
                 seed: int | None = None, noise: str = "auto") -> None:
        if not isinstance(policy, MeanFlowPolicy):
            raise ValueError(f"policy: expected a vgm2p_fast.MeanFlowPolicy, found "
                             f"{type(policy).__name__}")
        self.agents = list(agents)
        if len(self.agents) != policy.n_agents or len(set(self.agents)) != len(self.agents):
            raise ValueError(f"agents: expected {policy.n_agents} distinct ids (the policy's "
                             f"n_agents), found {self.agents}")
        dims = dict.fromkeys(self.agents, policy.action_dim)
        if action_dims is not None:
            if policy.discrete:
                raise ValueError("action_dims: expected None for a discrete policy")
            if set(action_dims) != set(self.agents) or not all(
                    1 <= int(d) <= policy.action_dim for d in action_dims.values()):
                raise ValueError(f"action_dims: expected a size in [1, {policy.action_dim}] for "
                                 f"each of {self.agents}, found {dict(action_dims)}")
            dims = {a: int(action_dims[a]) for a in self.agents}
        self.policy, self.action_dims, self.guidance = policy.eval(), dims, float(guidance)
        resolve_noise(noise, policy.discrete)
        self.noise = noise
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(policy.obs_mean.device).manual_seed(seed)

    def _stack(self, name: str, arrays: Mapping[str, object], width: int, pad: bool
               ) -> torch.Tensor:
        """dict[agent, (width_i,) or (B, width_i)] -> [B, N, width] float32 (zero-padded)."""
        missing = [a for a in self.agents if a not in arrays]
        if missing:
            raise ValueError(f"{name}: expected an entry for every agent {self.agents}, "
                             f"missing {missing}")
        rows = [np.asarray(arrays[a], dtype=np.float32) for a in self.agents]
        shapes = {a: r.shape for a, r in zip(self.agents, rows)}
        lead = {s[:-1] for s in shapes.values()}
        if len(lead) != 1 or len(next(iter(lead))) > 1 or any(
                s[-1] > width or (not pad and s[-1] != width) for s in shapes.values()):
            size = f"at most {width}" if pad else f"{width}"
            raise ValueError(f"{name}: expected per-agent arrays of shape (size,) or (B, size) "
                             f"with one B and size {size}, found {shapes}")
        out = np.zeros((*next(iter(lead)), len(rows), width), np.float32)
        for i, r in enumerate(rows):
            out[..., i, : r.shape[-1]] = r
        return torch.from_numpy(out)

    def select_actions(self, observations: Mapping[str, object],
                       legals: Mapping[str, object] | None = None) -> dict[str, np.ndarray]:
        """Actions for every agent.

        Args:
            observations: {agent: (obs_i,) or (B, obs_i)} array-likes, obs_i <= obs_dim.
            legals: discrete only: {agent: (K,) or (B, K)} 0/1 or bool; None = all legal.

        Returns:
            {agent: action}: discrete int64 ids, shape () or (B,); continuous float32 in the
            policy's bounds, shape (action_dims[agent],) or (B, action_dims[agent]).
        """
        p = self.policy
        obs = self._stack("observations", observations, p.obs_dim, pad=True)
        avail = None
        if legals is not None:
            if not p.discrete:
                raise ValueError("legals: expected None for a continuous policy, found a dict")
            avail = self._stack("legals", legals, p.action_dim, pad=False) != 0
            if avail.shape[:-1] != obs.shape[:-1]:
                raise ValueError(f"legals: expected the observations' batch shape "
                                 f"{tuple(obs.shape[:-2])}, found {tuple(avail.shape[:-2])}")
        actions = act_batched(p, obs, avail, guidance=self.guidance,
                              generator=self.generator, noise=self.noise).numpy()
        if p.discrete:
            return {a: actions[..., i] for i, a in enumerate(self.agents)}
        return {a: actions[..., i, : self.action_dims[a]] for i, a in enumerate(self.agents)}
