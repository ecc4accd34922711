"""The peers of ``benchmarks/peers/__init__.py``: an MLP actor (floor), a 10-step flow policy
and a 200-step DDPM policy, all on a :class:`vgm2p_fast.MeanFlowPolicy`'s network."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from vgm2p_fast import MeanFlowPolicy
from vgm2p_fast._checks import check_tensor
from vgm2p_fast.ops.linear_jvp import linear_jvp_ref


def _rescale(policy: MeanFlowPolicy, x: torch.Tensor) -> torch.Tensor:
    """[-1, 1]-clipped x -> the policy's action bounds (as ``ops.cfg_sample`` decodes)."""
    low, high = policy.action_low.to(x.dtype), policy.action_high.to(x.dtype)
    return low + (x.clamp(-1.0, 1.0) + 1.0) * (0.5 * (high - low))


class MLPActor(nn.Module):
    """Deterministic actor ``a = low + (tanh(MLP([o | id])) + 1) (high - low) / 2``: the floor.

    Hidden sizes, activation and parameter layout (shared with a one-hot id, or per agent) are
    the policy's; the layers run through the same ``linear_jvp`` torch path. Continuous only.
    """

    def __init__(self, policy: MeanFlowPolicy) -> None:
        super().__init__()
        if policy.discrete:
            raise ValueError("policy: expected a continuous MeanFlowPolicy, found a discrete one")
        self.policy = policy  # shapes, bounds and layout helpers; its weights are not used
        share, n = policy.share_parameters, policy.n_agents
        sizes = [policy.obs_dim + (n if share else 0), *policy.config["hidden_dims"],
                 policy.action_dim]
        group = () if share else (n,)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's initialisation, as the policy's
            self.weights.append(nn.Parameter(torch.empty(*group, fan_out, fan_in)
                                             .uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(*group, fan_out).uniform_(-bound, bound)))

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, N, obs_dim] -> actions [B, N, D] in the policy's bounds."""
        p = self.policy
        x = obs
        if p.share_parameters:
            x = torch.cat([obs, p.agent_ids.to(obs.dtype).expand(obs.shape[0], -1, -1)], -1)
        h = p._layout(x)
        weights = list(self.weights._parameters.values())
        biases = list(self.biases._parameters.values())
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = linear_jvp_ref(h, w, b, None,
                               "identity" if i == len(weights) - 1 else p.activation)[0]
        return _rescale(p, torch.tanh(p._unlayout(h, obs.shape[0])))


class FlowPolicy:
    """Flow-matching policy: trained with ``policy.flow_matching_loss`` (``u(z_t, t, t)`` fits
    ``e - x``) and sampled with ``n_steps`` Euler steps of that instantaneous velocity from
    t = 1 to 0: ``policy.act(obs, n_steps=n_steps, mean_velocity=False)``."""

    def __init__(self, policy: MeanFlowPolicy, n_steps: int = 10) -> None:
        self.policy, self.n_steps = policy, n_steps

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, cond: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return self.policy.flow_matching_loss(obs, actions, cond, generator=generator)[0]

    def act(self, obs: torch.Tensor, *, noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """obs [B, N, obs_dim] -> actions [B, N, D] (``n_steps`` network evaluations)."""
        return self.policy.act(obs, n_steps=self.n_steps, mean_velocity=False, noise=noise,
                               generator=generator)


def cosine_alphas_cumprod(n_steps: int, s: float = 0.008) -> torch.Tensor:
    """Diffuser's ``cosine_beta_schedule`` as cumulative products (float64, (n_steps,)):
    ``abar_k = f(k + 1) / f(0)``, ``f(x) = cos(((x / (K + 1)) + s) / (1 + s) * pi / 2)^2``, with
    each ``beta_k = 1 - abar_k / abar_{k-1}`` clipped to [0, 0.999]."""
    steps = n_steps + 1
    x = torch.linspace(0, steps, steps, dtype=torch.float64)
    f = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(0, 0.999)
    return torch.cumprod(1 - betas, 0)


class DDPMPolicy:
    """Epsilon-prediction DDPM policy (MADiff / DoF style) on the policy's network.

    ``eps(x_k, k | o, id, c) = u(x_k, r = t_k, t = t_k | o, id, c)`` with ``t_k = (k + 1) / K``.
    Training: ``x_k = sqrt(abar_k) x + sqrt(1 - abar_k) e``, loss ``mean sum_d (eps - e)^2``.
    Sampling (ancestral, Diffuser's ``p_sample`` with ``clip_denoised``), k = K-1 .. 0:
    ``x0 = clip((x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k), -1, 1)``,
    ``x_{k-1} = c1_k x0 + c2_k x_k + sigma_k n`` (posterior mean and std, no noise at k = 0).
    """

    def __init__(self, policy: MeanFlowPolicy, n_steps: int = 200) -> None:
        if policy.discrete:
            raise ValueError("policy: expected a continuous MeanFlowPolicy, found a discrete one")
        self.policy, self.n_steps = policy, n_steps
        abar = cosine_alphas_cumprod(n_steps)
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        beta = 1 - abar / prev
        self.abar = abar
        # python floats: the sampling loop uses one scalar of each per step
        self.c1 = (beta * prev.sqrt() / (1 - abar)).tolist()
        self.c2 = ((1 - prev) * (1 - beta).sqrt() / (1 - abar)).tolist()
        self.sigma = (beta * (1 - prev) / (1 - abar)).sqrt().tolist()
        self.rsqrt_abar = abar.rsqrt().tolist()
        self.sqrt_recip_m1 = (1 / abar - 1).sqrt().tolist()

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, cond: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """obs [B, N, obs_dim], actions [B, N, D] in [-1, 1], cond [B] tokens (None: null)."""
        p = self.policy
        batch = obs.shape[0]
        k = torch.randint(0, self.n_steps, (batch,), generator=generator)
        abar = self.abar.to(obs.dtype)[k].view(-1, 1, 1)
        e = torch.randn(actions.shape, generator=generator, dtype=obs.dtype)
        x_k = abar.sqrt() * actions + (1 - abar).sqrt() * e
        t = ((k + 1).to(obs.dtype) / self.n_steps).unsqueeze(1).expand(batch, p.n_agents)
        cond = torch.full((batch,), p.null_token) if cond is None else cond
        eps = p.average_velocity(x_k, t, t, obs, cond)
        return (eps - e).square().sum(-1).mean()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None, eps_fn=None) -> torch.Tensor:
        """obs [B, N, obs_dim] -> actions [B, N, D] in the bounds (``n_steps`` evaluations).

        ``eps_fn(x_k, k)`` replaces the network (tests use the exact epsilon of a known
        distribution); by default the network runs the policy's folded execution path.
        """
        p = self.policy
        obs = p._check_obs(obs)
        shape = (obs.shape[0], p.n_agents, p.action_dim)
        x = (torch.randn(shape, dtype=obs.dtype, device=obs.device, generator=generator)
             if noise is None
             else check_tensor("noise", noise, shape=shape, dtypes=(obs.dtype,)))
        if eps_fn is None:
            layer, token = linear_jvp_ref, p.exec_token

            def eps_fn(x_k: torch.Tensor, k: int) -> torch.Tensor:
                t = (k + 1) / self.n_steps
                eps = p._exec_velocity(x_k, obs, token, False, t, t, layer)
                if eps is None:  # parameters without version counters: the general path
                    tt = torch.full(shape[:2], t, dtype=obs.dtype, device=obs.device)
                    cond = torch.full(shape[:1], token, device=obs.device)
                    eps = p.average_velocity(x_k, tt, tt, obs, cond)
                return eps

        for k in range(self.n_steps - 1, -1, -1):
            x0 = (self.rsqrt_abar[k] * x - self.sqrt_recip_m1[k] * eps_fn(x, k)).clamp_(-1, 1)
            mean = self.c1[k] * x0 + self.c2[k] * x
            if k > 0:
                mean += self.sigma[k] * torch.randn(shape, dtype=x.dtype, device=x.device,
                                                    generator=generator)
            x = mean
        return _rescale(p, x)
