"""Training losses of the MeanFlow policy (design 1.2): the CFG-guided MeanFlow loss, the plain
flow-matching loss (baseline), the guided velocity and the (r, t) sampler.

    z_t = (1 - t) x + t e,   v = e - x                        (t = 1 is noise)
    v_g = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null)
    u_tgt = stopgrad(v_g - clip(t - r, 0, 1) (v_g . d_z u + d_t u))
    L = mean over rows and agents of  sum_d (u - u_tgt)^2 / stopgrad((. + eps)^p)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import ops
from .._checks import check_tensor
from .config import LossConfig
from .network import VelocityNetwork


def n_tangent_rows(loss: LossConfig, batch: int) -> int:
    """How many leading rows of a training batch of ``batch`` rows have r < t."""
    return round(loss.ratio_r_neq_t * batch)


def sample_times(loss: LossConfig, shape: Sequence[int], *, device: torch.device,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, t) of ``shape`` (rows first), r <= t, both logit-normal(time_mu, time_sigma).

    The first ``n_tangent_rows`` rows have r < t, the others r = t: rows are i.i.d. batch
    samples, so which rows get r < t does not matter, and putting them first lets the JVP run
    on that prefix only (``VelocityNetwork._run``).
    """
    normal = torch.randn((2, *shape), device=device, generator=generator)
    s = torch.sigmoid(normal * loss.time_sigma + loss.time_mu)
    t, r = s.max(0).values, s.min(0).values
    m = n_tangent_rows(loss, shape[0])
    return torch.cat([r[:m], t[m:]]), t


def check_batch(net: VelocityNetwork, obs: torch.Tensor, actions: torch.Tensor,
                cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a training batch; returns obs, the encoded actions x and the tokens."""
    obs = net._check_obs(obs)
    batch, n = obs.shape[:2]
    if net.discrete:
        check_tensor("actions", actions, shape=(batch, n), dtypes=(torch.int64, torch.int32),
                     device=obs.device)
        lo, hi = (int(actions.min()), int(actions.max())) if actions.numel() else (0, 0)
        if lo < 0 or hi >= net.action_dim:
            raise ValueError(f"actions: expected ids in [0, {net.action_dim - 1}], found "
                             f"[{lo}, {hi}]")
    else:
        check_tensor("actions", actions, shape=(batch, n, net.action_dim),
                     dtypes=(obs.dtype,), device=obs.device)
    if cond is None:
        cond = torch.full((batch,), net.null_token, dtype=torch.long, device=obs.device)
        return obs, net.encode_actions(actions).to(obs.dtype), cond
    if not net.n_tokens:
        raise ValueError("cond: expected None for an unconditional policy (n_tokens=0), "
                         "found condition tokens")
    cond = net._check_cond(cond, batch)
    if int(cond.max()) >= net.null_token:
        raise ValueError(f"cond: expected dataset tokens in [0, {net.n_tokens - 1}], found "
                         f"the null token {net.null_token}")
    return obs, net.encode_actions(actions).to(obs.dtype), cond


def _batch_mean(rows: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of the per-row losses ``rows`` [B] or [B, N] (agents), each batch row weighted by
    ``weights`` [B] (None: unweighted): ``mean_b w_b mean_i rows_bi``."""
    if weights is None:
        return rows.mean()
    check_tensor("weights", weights, shape=rows.shape[:1], dtypes=(rows.dtype,),
                 device=rows.device)
    return (weights * rows.reshape(rows.shape[0], -1).mean(-1)).mean()


@torch.no_grad()
def guided_velocity(net: VelocityNetwork, loss: LossConfig, z, t, obs, cond, v, dropped
                    ) -> torch.Tensor:
    """v_g = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null); rows whose
    condition was dropped keep v_g = v. Both network terms in one stacked pass."""
    w_null = 1.0 - loss.omega - loss.kappa
    terms = [(loss.kappa, cond), (w_null, torch.full_like(cond, net.null_token))]
    terms = [(k, c) for k, c in terms if k != 0.0]
    if not terms:
        return v
    m = len(terms)
    rep = lambda a: a.repeat(m, *([1] * (a.dim() - 1)))  # noqa: E731
    u = net._run(rep(z), rep(t), rep(t), rep(obs), torch.cat([c for _, c in terms]))[0]
    v_g = loss.omega * v
    for (k, _), u_k in zip(terms, u.chunk(m)):
        v_g.add_(u_k, alpha=k)
    mask = dropped.view(-1, *([1] * (v.dim() - 1)))
    return torch.where(mask, v, v_g)


def meanflow_loss(net: VelocityNetwork, loss: LossConfig, obs: torch.Tensor,
                  actions: torch.Tensor, cond: torch.Tensor | None, *,
                  generator: torch.Generator | None = None,
                  weights: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CFG-guided MeanFlow loss (module docstring), averaged over rows and agents.

    Args:
        obs: [B, N, obs_dim]; actions: [B, N, D] in [-1, 1] (continuous) or [B, N] int
        (discrete); cond: [B] or [B, N] condition tokens of the transitions, or None for
        plain (unconditional, unguided) MeanFlow behaviour cloning.
        generator: optional RNG for noise, times and condition dropout.
        weights: [B] per-row weights (default 1), e.g. ``exp(A / beta)``: the loss is then
        ``mean_b w_b mean_i L_bi``, as in :func:`flow_matching_loss`.

    Returns:
        The scalar loss (with autograd) and an info dict of detached scalar tensors (no
        device sync): ``loss``, ``mse`` (unweighted ``sum_d (u - u_tgt)^2``, mean over rows)
        and ``dropped`` (fraction of rows trained with the null token).
    """
    unconditional = cond is None
    obs, x, cond = check_batch(net, obs, actions, cond)
    batch, n = obs.shape[:2]
    dev, dtype = obs.device, obs.dtype
    e = torch.randn(x.shape, device=dev, dtype=dtype, generator=generator)
    r, t = sample_times(loss, (batch, n), device=dev, generator=generator)
    r, t = r.to(dtype), t.to(dtype)
    z = torch.lerp(x, e, t.unsqueeze(-1))  # (1 - t) x + t e
    v = e - x
    if unconditional:
        dropped = torch.ones(batch, dtype=torch.bool, device=dev)
        v_g, cond_in = v, cond
    else:
        dropped = torch.rand(batch, device=dev, generator=generator) < loss.cond_dropout
        drop_b = dropped.view(-1, *([1] * (cond.dim() - 1)))
        cond_in = torch.where(drop_b, torch.full_like(cond, net.null_token), cond)
        v_g = guided_velocity(net, loss, z, t, obs, cond, v, dropped)
    if net.jvp == "func":
        u, dudt = net._func_jvp(z, r, t, obs, cond_in, v_g)
    else:  # du/dt only where r < t (the prefix); (t - r) du/dt = 0 on the other rows
        m = n_tangent_rows(loss, batch)
        u, dudt = net._run(z, r, t, obs, cond_in, v_g[:m])
        dudt = torch.cat([dudt, dudt.new_zeros(batch - m, *dudt.shape[1:])])
    loss_fn = ops.unchecked("meanflow_target_loss", dev, net._op_backend())
    rows, raw = loss_fn(u, dudt, v_g, t, r, loss.norm_p, loss.norm_eps)
    total = _batch_mean(rows, weights)
    info = {"loss": total.detach(), "mse": raw.mean(), "dropped": dropped.float().mean()}
    return total, info


def flow_matching_loss(net: VelocityNetwork, loss: LossConfig, obs: torch.Tensor,
                       actions: torch.Tensor, cond: torch.Tensor | None = None, *,
                       generator: torch.Generator | None = None,
                       weights: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain (conditional) flow-matching behaviour cloning on the same network: the baseline
    and speed floor of :func:`meanflow_loss`.

    ``L = mean_b w_b mean_i ||u(z_t, t, t | c) - (e - x)||^2`` with t ~ logit-normal, no JVP,
    no guidance; ``cond`` None trains unconditionally (null token); ``weights`` [B] (default 1)
    weight the rows, e.g. ``exp(A / beta)`` for advantage-weighted flow BC. Shapes as
    :func:`meanflow_loss`.
    """
    obs, x, cond = check_batch(net, obs, actions, cond)
    batch, n = obs.shape[:2]
    e = torch.randn(x.shape, device=obs.device, dtype=obs.dtype, generator=generator)
    t = sample_times(loss, (batch, n), device=obs.device, generator=generator)[1].to(obs.dtype)
    u = net._run(torch.lerp(x, e, t.unsqueeze(-1)), t, t, obs, cond)[0]
    rows = (u - (e - x)).square().sum(-1).mean(-1)  # [B]
    mse = rows.mean()
    total = mse if weights is None else _batch_mean(rows, weights)
    return total, {"loss": total.detach(), "mse": mse.detach()}
