"""Execution fast path: the first layer folded at constant times, and the one-launch act.

When t and r are the same for every row (execution: t = 1, r = 0), every input column except
``z`` and ``obs`` is a constant per (token, agent): emb(t), emb(t - r), the one-hot id and the
condition embedding. So with ``W = [W_z | W_t | W_h | W_o | W_id | W_c]``,

    pre = [z | obs] W_in^T + table[c, i],   W_in = [W_z | W_o / std],
    table[c, i] = b + W_t emb(t) + W_h emb(t - r) - W_o (mean / std) + W_id[:, i]
                  + W_c cond_embed[c]                                  (n_tokens + 1, N, H)

and the first layer reads D + obs_dim columns instead of D + 2 E + obs_dim (+ N) + C (30 of 132
with the benchmarks' sizes), with no embedding, concatenation or observation normalisation per
call. Same math as ``VelocityNetwork._run``; float round-off differs (the sums are split).
Per-agent weights fold the same way, with a leading N on ``W_in``.

The fold is cached per (t, r), keyed on each source tensor's storage pointer and version
counter: an optimiser step, ``load_state_dict``, ``.to()``, an EMA ``lerp_`` or any in-place
edit bumps one, and the next call refolds (``tests/test_peers.py`` checks each). Writes through
``param.data`` bypass version counters; call ``policy._exec_cache.clear()`` then.
"""

from __future__ import annotations

import torch

from .. import ops
from ..ops.linear_jvp import activation_fn
from .network import VelocityNetwork

EXEC_CACHE_SIZE = 512  # (t, r) pairs kept: a 200-step sampler uses 200


def _sources(net: VelocityNetwork) -> tuple[torch.Tensor, ...]:
    """Every tensor the folded first layer is computed from. Read straight from the module
    dicts: ``net.weights[0]`` costs ~3 us of Python (ParameterList indexing), and this runs
    on every ``act``, whose whole budget at one env is ~70 us."""
    mods, bufs = net._modules, net._buffers
    return (mods["weights"]._parameters["0"], mods["biases"]._parameters["0"],
            mods["cond_embed"]._parameters["weight"], bufs["obs_mean"], bufs["obs_std"],
            bufs["freqs"], bufs["agent_ids"])


def fold(net: VelocityNetwork, t_val: float, r_val: float
         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W_in, table)`` of the first layer at constant (t, r) (module docstring); None for
    parameters without version counters (inference tensors), which take the general path."""
    src = _sources(net)
    try:
        key = tuple((x.data_ptr(), x._version) for x in src)
    except RuntimeError:  # inference tensors have no version counter: nothing to key on
        return None
    cache = net.__dict__.setdefault("_exec_cache", {})
    hit = cache.get((t_val, r_val))
    if hit is not None and hit[0] == key:
        return hit[1]
    w, b = src[:2]
    dtype, dev = w.dtype, w.device
    d, e, o = net.action_dim, net.time_dim, net.obs_dim
    t = torch.tensor(t_val, dtype=dtype, device=dev)
    r = torch.tensor(r_val, dtype=dtype, device=dev)  # t - r in the dtype, as _run does
    emb = torch.cat([net._time_embed(t, False)[0], net._time_embed(t - r, False)[0]])
    w_time, w_obs = w[..., d : d + 2 * e], w[..., d + 2 * e : d + 2 * e + o]
    std = net.obs_std.to(dtype)
    shift = emb.unsqueeze(-1)
    const = b + (w_time @ shift).squeeze(-1) - (w_obs @ (net.obs_mean.to(dtype) / std
                                                         ).unsqueeze(-1)).squeeze(-1)
    w_cond = w[..., w.shape[-1] - net.cond_embed.weight.shape[1] :]
    tokens = torch.matmul(net.cond_embed.weight.to(dtype), w_cond.transpose(-1, -2))
    if net.share_parameters:  # const (H,), tokens (K+1, H), ids (N, H)
        ids = w[:, d + 2 * e + o : d + 2 * e + o + net.n_agents].t()
        table = const + ids + tokens.unsqueeze(1)
    else:  # const (N, H), tokens (N, K+1, H)
        table = const + tokens.transpose(0, 1)
    w_in = torch.cat([w[..., :d], w_obs / std], dim=-1)
    if len(cache) >= EXEC_CACHE_SIZE:
        cache.clear()
    cache[(t_val, r_val)] = (key, (w_in, table))
    return w_in, table


def exec_velocity(net: VelocityNetwork, z: torch.Tensor, obs: torch.Tensor,
                  cond: torch.Tensor | int, guided: bool, t_val: float, r_val: float,
                  layer) -> torch.Tensor | None:
    """u(z, r_val, t_val | obs, id, cond) [B', N, D] for constant times through the folded
    first layer, or None when it cannot be folded (parameters without version counters).

    z [B', N, D], obs [B', N, obs_dim] raw; cond: token ids [B'] or [B', N], or one int
    token for every row (with ``guided``, rows are [token rows; null rows], B' = 2 B).
    ``layer`` is the resolved ``linear_jvp`` of the other layers.
    """
    folded = fold(net, t_val, r_val)
    if folded is None:
        return None
    w_in, table = folded
    x = torch.cat([z, obs], dim=-1)
    if isinstance(cond, int) and not guided and net.share_parameters and z.shape[0] == 1:
        # one env (decentralised execution): the bias rows are exactly table[cond], so the
        # add fuses into the matmul (one op fewer, ~1.5 us of ~90)
        pre = torch.addmm(table[cond], x[0], w_in.t())
        h = net._layers(activation_fn(pre, net.activation), None, layer, start=1)[0]
        return net._unlayout(h, 1)
    if net.share_parameters:
        pre = torch.matmul(x, w_in.t())  # [B', N, H]
    else:
        pre = torch.bmm(x.transpose(0, 1), w_in.transpose(1, 2)).transpose(0, 1)
    if isinstance(cond, int):  # a broadcast add of table rows: no per-row gather
        if guided:
            idx = torch.tensor([cond, net.null_token], device=z.device)
            pre.view(2, -1, *pre.shape[1:]).add_(table[idx].unsqueeze(1))
        else:
            pre.add_(table[cond])
    elif cond.dim() == 1:
        pre.add_(table[cond])
    else:
        pre.add_(table[cond, torch.arange(net.n_agents, device=cond.device)])
    h = net._layers(net._layout(activation_fn(pre, net.activation)), None, layer, start=1)[0]
    return net._unlayout(h, z.shape[0])


def fused_act(net: VelocityNetwork, z, obs, cond, guided: bool, guidance: float,
              avail: torch.Tensor | None) -> torch.Tensor | None:
    """One-step sampling in ONE launch (``mlp_cfg_sample``: the whole MLP, cond and null
    passes, the guided step and decoding) when the layers and ``cfg_sample`` resolve to Triton
    (CUDA; or the interpreter when forced), the bounds are shared by the agents and the batch
    is small enough (decentralised execution); None otherwise (layer-by-layer path).

    z [B, N, D]; obs [B', N, obs_dim] (B' = 2 B when ``guided``: cond rows, then null rows);
    cond: int token or [B'] / [B', N] ids.
    """
    dev, backend = obs.device, net._op_backend()
    if (ops.resolved_backend("linear_jvp", dev, backend) != "triton"
            or ops.resolved_backend("cfg_sample", dev, backend) != "triton"
            or net.action_low.dim() > 1):
        return None
    from ..kernels.cfg_sample import mlp_cfg_sample, mlp_fits, pack_mlp

    batch = z.shape[0]
    params = [*net.weights, *net.biases]
    key = tuple((p.data_ptr(), p._version) for p in params)  # refreshed on any update
    cached = net.__dict__.get("_mlp_pack")
    if cached is None or cached[0] != key:
        cached = (key, pack_mlp(list(net.weights), list(net.biases)))
        net.__dict__["_mlp_pack"] = cached
    pack = cached[1]
    if not mlp_fits(batch * net.n_agents if net.share_parameters else batch, pack):
        return None
    if not isinstance(cond, torch.Tensor):
        tokens = [cond, net.null_token] if guided else [cond]
        cond = torch.tensor(tokens, device=dev).repeat_interleave(batch)
    zz = torch.cat([z, z]) if guided else z
    ones = torch.ones(zz.shape[:2], device=dev, dtype=z.dtype)
    x = net._layout(net._inputs(zz, ones - 1, ones, obs, cond)[0])  # t = 1, r = 0
    bounds = {} if net.discrete else {"low": net.action_low.to(z.dtype),
                                      "high": net.action_high.to(z.dtype)}
    out = mlp_cfg_sample(x, pack, net._layout(z), net.activation, guided=guided,
                         guidance=guidance, discrete=net.discrete,
                         avail=None if avail is None else net._layout(avail), **bounds)
    if net.share_parameters:
        return out.reshape(batch, net.n_agents, *out.shape[1:])
    return out.transpose(0, 1)
