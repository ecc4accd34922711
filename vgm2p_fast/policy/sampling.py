"""Sampling actions from a trained velocity network (design 1.2, execution).

One step (MeanFlow's point): ``x = e - u(e, r = 0, t = 1 | o, id, c*)``, one network
evaluation per agent. ``n_steps > 1`` takes Euler steps from t = 1 to 0 with the velocity of a
sampler in :data:`SAMPLERS`:

- ``meanflow``: the average velocity ``u(z, r, t)`` over each step ``[r, t]`` (exact for a
  perfectly trained MeanFlow at any step count);
- ``euler``: the instantaneous velocity ``u(z, t, t)``, as a flow-matching policy must be sampled.

Test-time guidance ``u = u_null + w (u_c - u_null)`` runs the cond and null passes stacked as
one batch. Continuous actions are clipped to [-1, 1] and rescaled to the bounds; discrete ones
are the masked argmax of the generated {-1, +1} one-hot.
"""

from __future__ import annotations

import math

import torch

from .. import ops
from .._checks import check_avail, check_tensor
from . import fastpath
from .network import VelocityNetwork

# name -> whether steps use the average velocity u(z, r, t) (True) or u(z, t, t) (False)
SAMPLERS: dict[str, bool] = {"meanflow": True, "euler": False}
# Initial noise of acting outside training: sample e ~ N(0, I), zero e = 0, or auto = zero for
# discrete actions (the mode of the generated one-hot) and sample for continuous ones. On
# smax-2s3z-medium one VGM²P model returned 0.95 (15 % wins over 100 episodes) sampled and
# 1.48 (55 %) at e = 0; on hopper-3x1-medium e = 0 was no better (29.3 against 29.7 sampled,
# 3 seeds of the same training; benchmarks/results/ablations/ABLATIONS.md).
NOISE = ("auto", "sample", "zero")


def resolve_noise(noise: str, discrete: bool) -> str:
    """``auto`` -> ``zero`` for discrete actions, ``sample`` for continuous ones; ``sample``
    and ``zero`` unchanged; anything else is a ValueError naming ``noise``."""
    if noise not in NOISE:
        raise ValueError(f"noise: expected one of {', '.join(NOISE)}, found {noise!r}")
    if noise == "auto":
        return "zero" if discrete else "sample"
    return noise


def _token(net: VelocityNetwork, cond, batch: int) -> torch.Tensor | int:
    """cond as an int token (checked once, not as a tensor: min/max are two reductions a call)
    or a checked [B] / [B, N] tensor; None means ``exec_token``."""
    if cond is None or isinstance(cond, int):
        token = net.exec_token if cond is None else cond
        if not 0 <= token <= net.null_token:
            raise ValueError(f"cond: expected a token id in [0, {net.null_token}] "
                             f"({net.null_token} = null), found {token}")
        return token
    return net._check_cond(cond, batch)


def check_sampling(test_guidance: object, n_steps: object, sampler: object) -> None:
    """ValueError naming the first bad sampling option of :func:`act` (also checked by
    ``cuda_graph.StaticActor`` when it is built)."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps: expected an int >= 1, found {n_steps!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, found {sampler!r}")
    if not isinstance(test_guidance, (int, float)) or not test_guidance > 0 \
            or test_guidance == float("inf"):
        raise ValueError(f"test_guidance: expected a finite number > 0, found {test_guidance!r}")


def check_finite_obs(obs: torch.Tensor) -> None:
    """ValueError naming the first non-finite entry of ``obs`` (issue 13).

    One reduction and one host read instead of ``isfinite(obs).all()``'s two passes (a bool
    tensor, then its reduction: 7 us at 1 env and ~320 us at 1024 envs, against ~2 us and ~8 us
    for the sum): a sum is finite only if every term is (an inf or NaN term makes it inf or
    NaN, whatever the order of the additions). A sum that overflows although every term is
    finite (|sum| > 3.4e38 in float32; sooner in float16) falls through to the exact test.
    """
    if math.isfinite(float(obs.sum())):
        return
    bad = ~torch.isfinite(obs)
    if bool(bad.any()):
        row, agent, feat = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"obs: expected finite observations, found {float(obs[row, agent, feat])}"
                         f" at row {row}, agent {agent}, feature {feat} ({int(bad.sum())} "
                         f"non-finite values in all)")


def act(net: VelocityNetwork, obs: torch.Tensor, avail_actions: torch.Tensor | None = None, *,
        cond: torch.Tensor | int | None = None, test_guidance: float = 1.0, n_steps: int = 1,
        noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
        sampler: str = "meanflow") -> torch.Tensor:
    """Actions [B, N, D] (continuous, in the bounds) or [B, N] ids (discrete); see
    ``MeanFlowPolicy.act`` for the arguments. Runs without autograd.

    Every check is O(1) in the batch except the finite-observation sum
    (:func:`check_finite_obs`) and, off the one-step path, ``check_avail``'s reduction of the
    mask (the one-step path finds an empty mask row from the chosen scores instead)."""
    if torch.is_grad_enabled():  # entering no_grad costs ~2 us: only when it changes something
        with torch.no_grad():
            return act(net, obs, avail_actions, cond=cond, test_guidance=test_guidance,
                       n_steps=n_steps, noise=noise, generator=generator, sampler=sampler)
    plan = None if torch.compiler.is_compiling() else fastpath.plan(net)
    if (plan is None or type(obs) is not torch.Tensor or obs.dtype is not plan.dtype
            or obs.dim() != 3 or obs.shape[1] != net.n_agents or obs.shape[2] != net.obs_dim
            or obs.device != plan.device):  # the O(1) test failed: the full one names the error
        obs = net._check_obs(obs)
    batch, dev, dtype = obs.shape[0], obs.device, obs.dtype
    shape = (batch, net.n_agents, net.action_dim)
    if net.discrete and avail_actions is not None:
        if (type(avail_actions) is not torch.Tensor or avail_actions.dtype is not torch.bool
                or avail_actions.shape != shape or avail_actions.device != dev):
            check_tensor("avail_actions", avail_actions, shape=shape, dtypes=(torch.bool,),
                         device=dev)
    elif avail_actions is not None:
        raise ValueError("avail_actions: expected None for continuous actions, found a mask")
    check_sampling(test_guidance, n_steps, sampler)
    cond = _token(net, cond, batch)
    lean = plan is not None and plan.lean and n_steps == 1 and isinstance(cond, int)
    if noise is not None:
        z = check_tensor("noise", noise, shape=shape, dtypes=(dtype,), device=dev)
    elif not lean:
        z = torch.randn(shape, device=dev, dtype=dtype, generator=generator)
    check_finite_obs(obs)
    if lean:
        return fastpath.one_step(net, plan, obs, avail_actions, cond, test_guidance,
                                 noise, generator)
    if avail_actions is not None:
        check_avail(avail_actions)
    return _sample(net, plan is not None, obs, avail_actions, cond, test_guidance, n_steps,
                   sampler, z)


def _sample(net: VelocityNetwork, fast: bool, obs: torch.Tensor, avail: torch.Tensor | None,
            cond: torch.Tensor | int, guidance: float, n_steps: int, sampler: str,
            z: torch.Tensor) -> torch.Tensor:
    """The general path of :func:`act` on checked inputs (any layout, backend, step count;
    ``fast``: the folded first layer may be used): actions [B, N, D] or [B, N] ids from
    obs [B, N, obs_dim], avail [B, N, K] or None, cond an int token or [B] / [B, N] ids, noise
    z [B, N, D]. With a tensor ``cond`` it never reads device memory on the host nor copies
    from the host (an int token builds small host tensors on the guided and one-launch paths),
    so ``cuda_graph.CUDAGraphActor`` captures it in a CUDA graph."""
    batch, dev, dtype = obs.shape[0], obs.device, obs.dtype
    guided = guidance != 1.0
    if guided:  # one stacked pass: [cond rows; null rows]
        obs = torch.cat([obs, obs])
    if isinstance(cond, torch.Tensor) and guided:
        cond = torch.cat([cond, torch.full_like(cond, net.null_token)])
    layer = net._layer_fn(dev)
    mean_velocity = SAMPLERS[sampler]

    def velocities(t_val: float, r_val: float):
        nonlocal fast, cond
        zz = torch.cat([z, z]) if guided else z
        r_val = r_val if mean_velocity else t_val
        u = (fastpath.exec_velocity(net, zz, obs, cond, guided, t_val, r_val, layer)
             if fast else None)
        if u is None:  # general path (compiled, or parameters without version counters)
            fast = False
            if not isinstance(cond, torch.Tensor):
                tokens = [cond, net.null_token] if guided else [cond]
                cond = torch.tensor(tokens, device=dev).repeat_interleave(batch)
            t = torch.full(zz.shape[:2], t_val, device=dev, dtype=dtype)
            r = torch.full(zz.shape[:2], r_val, device=dev, dtype=dtype)
            u = net._run(zz, r, t, obs, cond)[0]
        return u.chunk(2) if guided else (u, None)

    if n_steps == 1 and fast and layer is not ops.linear_jvp_ref:  # only Triton layers fuse
        fused = fastpath.fused_act(net, z, obs, cond, guided, guidance, avail)
        if fused is not None:
            return fused
    step = 1.0 / n_steps
    for k in range(n_steps - 1):  # Euler steps on the average velocity, t = 1 -> 1/n
        u_c, u_null = velocities(1.0 - k * step, 1.0 - (k + 1) * step)
        z = z - step * (u_c if u_null is None else torch.lerp(u_null, u_c, guidance))
    u_c, u_null = velocities(step, 0.0)
    low, high = (None, None) if net.discrete else (net.action_low.to(dtype),
                                                   net.action_high.to(dtype))
    # per-agent bounds (N, D) broadcast over the batch in the torch step; the Triton kernel
    # takes one (D,) row of bounds
    backend = "torch" if low is not None and low.dim() > 1 else net._op_backend()
    sample = ops.unchecked("cfg_sample", dev, backend)
    return sample(z, u_c, u_null, guidance, step, low, high, avail, net.discrete)
