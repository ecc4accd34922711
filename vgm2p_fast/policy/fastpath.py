"""Execution fast path: the first layer folded at constant times, the one-step act plan, and the
one-launch act.

When t and r are the same for every row (execution: t = 1, r = 0), every input column except
``z`` and ``obs`` is a constant per (token, agent): emb(t), emb(t - r), the one-hot id and the
condition embedding. So with ``W = [W_z | W_t | W_h | W_o | W_id | W_c]``,

    pre = [z | obs] W_in^T + table[c, i],   W_in = [W_z | W_o / std],
    table[c, i] = bias[c] + W_id[:, i],
    bias[c] = b + W_t emb(t) + W_h emb(t - r) - W_o (mean / std) + W_c cond_embed[c]

and the first layer reads D + obs_dim columns instead of D + 2 E + obs_dim (+ N) + C (30 of 132
with the benchmarks' sizes), with no embedding, concatenation or observation normalisation per
call. Same math as ``VelocityNetwork._run``; float round-off differs (the sums are split).
Per-agent weights fold the same way, with a leading N on ``W_in``.

One-step acting with shared weights and torch layers (:func:`one_step`, the path of
``policy(obs)``) goes further, so that it costs what a plain ``nn.Sequential`` of the same
widths costs (``benchmarks/bench_act.py``):

- the agent id re-enters as one-hot columns, ``pre = [z | obs | id] [W_in | W_id]^T + bias[c]``:
  one ``addmm`` per layer, as ``nn.Linear`` does, instead of a matmul and a broadcast add of the
  table (a second pass over the [B N, H] pre-activations: ~1 ms of ~45 at 1024 envs);
- the last layer's bias folds into the decode: with ``y = z - h W_L^T`` (one ``addmm``,
  ``alpha = -1``), ``x = y - b_L`` and ``a = low + (clip(x, -1, 1) + 1) half =
  clamp(mid' + half y, low, high)``, ``mid' = (low + high) / 2 - half b_L``, ``half = (high -
  low) / 2`` (the scaling is monotone, so clipping after it is the same; clamping last keeps
  every action exactly inside the bounds despite round-off): the decode is 2 ops (addcmul,
  clamp) instead of 5;
- guidance: both halves share ``[z | obs | id] W^T`` (only ``bias[c]`` differs), so that
  matmul runs once; by linearity of the last layer ``z - b_L - lerp(u_null, u_c, w) =
  lerp(y_null, y_c, w) - b_L``;
- hidden activations are computed in place into buffers reused across calls (per batch size,
  thread and inference mode; at 1024 envs a fresh 6 MB output per layer cost 10-25% of the call
  in ``/tmp`` measurements on the shared machine).

Everything folded is cached, keyed on the storage pointer and version counter of each source
tensor (:func:`cache_key`, 11 tensors, ~1 us): an optimiser step, ``load_state_dict``, ``.to()``,
an EMA ``lerp_`` or any in-place edit bumps one, and the next call refolds
(``tests/test_peers.py`` checks each). Writes through ``param.data`` bypass version counters;
call ``policy._exec_cache.clear()`` then (it also drops the act plan).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ops
from .._checks import check_avail
from ..backends import ENV_VAR
from ..ops.linear_jvp import activation_fn
from .network import VelocityNetwork

EXEC_CACHE_SIZE = 512  # (t, r) pairs kept: a 200-step sampler uses 200
BUFFER_SETS = 4  # (rows, thread, inference mode) buffer sets kept by the act plan


def _sources(net: VelocityNetwork) -> tuple[torch.Tensor, ...]:
    """Every tensor a folded layer or the act plan is computed from. Read straight from the
    module dicts: ``net.weights[0]`` costs ~3 us of Python (ParameterList indexing), and this
    runs on every ``act``, whose whole budget at one env is ~100 us."""
    mods, bufs = net._modules, net._buffers
    weights, biases = mods["weights"]._parameters, mods["biases"]._parameters
    last = str(len(weights) - 1)
    return (weights["0"], biases["0"], mods["cond_embed"]._parameters["weight"],
            bufs["obs_mean"], bufs["obs_std"], bufs["freqs"], bufs["agent_ids"],
            weights[last], biases[last], bufs["action_low"], bufs["action_high"])


def cache_key(net: VelocityNetwork) -> tuple[int, ...] | None:
    """Version counter and identity of every tensor of :func:`_sources`, and the first weight's
    storage pointer (``.to()`` / ``.float()`` swap every parameter's storage at once, keeping
    the objects and their versions); None for inference tensors (no version counter: nothing
    to key on, so they take the general path). ~1.3 us; data_ptr() of all 11 cost ~2.4."""
    src = _sources(net)
    try:
        return (*[x._version for x in src], *map(id, src), src[0].data_ptr())
    except RuntimeError:
        return None


class Folded(NamedTuple):
    """The first layer at constant (t, r) (module docstring)."""

    w_in: torch.Tensor   # (H, D + obs_dim) shared; (N, H, D + obs_dim) per agent
    table: torch.Tensor  # (K + 1, N, H) shared; (N, K + 1, H) per agent
    bias: torch.Tensor | None  # (K + 1, H) shared (table without W_id); None per agent


def fold(net: VelocityNetwork, t_val: float, r_val: float,
         key: tuple[int, ...] | None = None) -> Folded | None:
    """The folded first layer at constant (t, r), cached per (t, r) under ``key``
    (:func:`cache_key`, computed here when not given); None for inference tensors."""
    key = cache_key(net) if key is None else key
    if key is None:
        return None
    cache = net.__dict__.setdefault("_exec_cache", {})
    hit = cache.get((t_val, r_val))
    if hit is not None and hit[0] == key:
        return hit[1]
    w, b = _sources(net)[:2]
    dtype, dev = w.dtype, w.device
    d, e, o = net.action_dim, net.time_dim, net.obs_dim
    t = torch.tensor(t_val, dtype=dtype, device=dev)
    r = torch.tensor(r_val, dtype=dtype, device=dev)  # t - r in the dtype, as _run does
    emb = torch.cat([net._time_embed(t, False)[0], net._time_embed(t - r, False)[0]])
    w_time, w_obs = w[..., d : d + 2 * e], w[..., d + 2 * e : d + 2 * e + o]
    std = net.obs_std.to(dtype)
    const = b + (w_time @ emb.unsqueeze(-1)).squeeze(-1) - (
        w_obs @ (net.obs_mean.to(dtype) / std).unsqueeze(-1)).squeeze(-1)
    w_cond = w[..., w.shape[-1] - net.cond_embed.weight.shape[1] :]
    tokens = torch.matmul(net.cond_embed.weight.to(dtype), w_cond.transpose(-1, -2))
    if net.share_parameters:  # const (H,), tokens (K+1, H), ids (N, H)
        bias = const + tokens
        table = bias.unsqueeze(1) + w[:, d + 2 * e + o : d + 2 * e + o + net.n_agents].t()
    else:  # const (N, H), tokens (N, K+1, H)
        bias, table = None, const + tokens.transpose(0, 1)
    folded = Folded(torch.cat([w[..., :d], w_obs / std], dim=-1), table, bias)
    if len(cache) >= EXEC_CACHE_SIZE:
        cache.clear()
    cache[(t_val, r_val)] = (key, folded)
    return folded


def exec_velocity(net: VelocityNetwork, z: torch.Tensor, obs: torch.Tensor,
                  cond: torch.Tensor | int, guided: bool, t_val: float, r_val: float,
                  layer, folded: Folded | None = None) -> torch.Tensor | None:
    """u(z, r_val, t_val | obs, id, cond) [B', N, D] for constant times through the folded
    first layer, or None when it cannot be folded (parameters without version counters).

    z [B', N, D], obs [B', N, obs_dim] raw; cond: token ids [B'] or [B', N], or one int
    token for every row (with ``guided``, rows are [token rows; null rows], B' = 2 B).
    ``layer`` is the resolved ``linear_jvp`` of the other layers; ``folded``: the first layer
    at (t_val, r_val) when the caller holds it (``policy.export``), else from the cache.
    """
    folded = fold(net, t_val, r_val) if folded is None else folded
    if folded is None:
        return None
    w_in, table = folded.w_in, folded.table
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


# ----------------------------------------------------------------------------- one-step plan
class Step(NamedTuple):
    """The folded tensors :func:`step_math` reads for one condition token (shared weights)."""

    w_first_t: torch.Tensor  # (D + obs_dim + N, H): [W_z | W_o / std | W_id]^T
    bias: torch.Tensor  # (H,) bias[c]
    bias2: torch.Tensor  # (2, 1, H) [bias[c]; bias[null]] (guided)
    low: torch.Tensor  # (D,) or (N, D): the action bounds (continuous)
    high: torch.Tensor
    mid: torch.Tensor  # (D,) or (N, D): (low + high) / 2 - half b_L (continuous)
    half: torch.Tensor  # (D,) or (N, D): (high - low) / 2 (continuous)
    ids: torch.Tensor  # (N, N) one-hot agent ids


class Plan(NamedTuple):
    """What :func:`one_step` reads, folded once per weights (module docstring)."""

    key: tuple[int, ...]
    env: tuple[str | None, str | None]  # VGM2P_BACKEND, TRITON_INTERPRET it was resolved under
    lean: bool  # shared weights and torch layers: :func:`one_step` applies
    dtype: torch.dtype
    device: torch.device
    steps: tuple[Step, ...]  # per condition token (shared weights; empty per agent)
    widths: tuple[int, ...]  # the hidden layers' widths
    buffers: dict  # (batch, guided, thread, inference mode) -> Scratch


_ENV_KEYS = (ENV_VAR, "TRITON_INTERPRET")
# os.environ's own dict and its keys (CPython: bytes on POSIX), to read the two variables in
# ~0.1 us instead of ~1.4 us for two os.environ.get on every act call
_ENV_CODED = (tuple(os.environ.encodekey(k) for k in _ENV_KEYS)
              if hasattr(os.environ, "encodekey") else None)


def _env() -> tuple:
    """``VGM2P_BACKEND`` and ``TRITON_INTERPRET`` as the process sees them now (the backend the
    plan resolved depends on them)."""
    data = getattr(os.environ, "_data", None)
    if data is None or _ENV_CODED is None:
        return os.environ.get(_ENV_KEYS[0]), os.environ.get(_ENV_KEYS[1])
    return data.get(_ENV_CODED[0]), data.get(_ENV_CODED[1])


def plan(net: VelocityNetwork) -> Plan | None:
    """The cached one-step plan of ``net`` (rebuilt when a source tensor or the backend
    environment changed); None for inference tensors (general path)."""
    key, env = cache_key(net), _env()
    if key is None:
        return None
    cache = net.__dict__.setdefault("_exec_cache", {})  # clearing it drops the plan too
    p = cache.get("plan")
    if p is not None and p.key == key and p.env == env:
        return p
    folded = fold(net, 1.0, 0.0, key)
    src = _sources(net)
    w, b_last = src[0], src[8]
    dtype, dev = w.dtype, w.device
    lean = (net.share_parameters and
            ops.resolved_backend("linear_jvp", dev, net._op_backend()) == "torch")
    steps: tuple[Step, ...] = ()
    if net.share_parameters:  # per-agent weights act through exec_velocity
        with torch.no_grad():
            d, e, o = net.action_dim, net.time_dim, net.obs_dim
            w_id = w[:, d + 2 * e + o : d + 2 * e + o + net.n_agents]
            w_first_t = torch.cat([folded.w_in, w_id], 1).t().contiguous()
            b = b_last.detach()
            if net.discrete:
                low = high = mid = half = torch.empty(0, dtype=dtype, device=dev)
            else:
                low, high = net.action_low.to(dtype), net.action_high.to(dtype)
                half = 0.5 * (high - low)
                mid = 0.5 * (low + high) - half * b
            ids = src[6].to(dtype)
            steps = tuple(Step(w_first_t, c, torch.stack([c, folded.bias[-1]]).unsqueeze(1),
                               low, high, mid, half, ids) for c in folded.bias)
    p = Plan(key, env, lean, dtype, dev, steps, tuple(net.arch.hidden_dims), {})
    net.__dict__["_exec_cache"]["plan"] = p  # fold() may have cleared and replaced the dict
    return p


class Scratch(NamedTuple):
    """Per (batch, guided, thread, inference mode) tensors :func:`one_step` writes into."""

    hidden: list[torch.Tensor]  # layer l's output [R, widths[l]], two alternating storages
    shared: torch.Tensor  # guided: [B N, widths[0]] (in the second storage); else empty
    noise: torch.Tensor  # [B, N, D]: ``normal_()`` into it costs ~0.6 us, randn ~4 us


def _scratch(net: VelocityNetwork, p: Plan, batch: int, guided: bool) -> Scratch:
    """The cached :class:`Scratch` of this call (R = 2 B N rows when ``guided``, else B N)."""
    key = (batch, guided, threading.get_ident(), torch.is_inference_mode_enabled())
    s = p.buffers.get(key)
    if s is None:
        if len(p.buffers) >= BUFFER_SETS:
            p.buffers.clear()
        n, widths = net.n_agents, p.widths
        rows = batch * n * (2 if guided else 1)
        flat = [torch.empty(rows * max(widths), dtype=p.dtype, device=p.device)
                for _ in range(2)]
        half = batch * n if guided else 0  # fits: half * widths[0] <= rows * max(widths)
        s = Scratch([flat[i % 2][: rows * h].view(rows, h) for i, h in enumerate(widths)],
                    flat[1][: half * widths[0]].view(half, widths[0]),
                    torch.empty(batch, n, net.action_dim, dtype=p.dtype, device=p.device))
        p.buffers[key] = s
    return s


def _activate_(h: torch.Tensor, activation: str) -> torch.Tensor:
    """act(h), in place where torch has the in-place op (silu, relu)."""
    if activation == "silu":
        return F.silu(h, inplace=True)
    if activation == "relu":
        return torch.relu_(h)
    return activation_fn(h, activation)


def step_math(st: Step, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
              activation: str, discrete: bool, obs: torch.Tensor, z: torch.Tensor,
              avail: torch.Tensor | None, guidance: float, scratch: Scratch | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The one-step math of the module docstring: plain torch ops, no checks (also what
    ``policy.export`` traces, with ``scratch`` None: fresh outputs instead of buffers).

    obs [B, N, obs_dim] raw, z [B, N, D] noise, avail [B, N, K] bool or None; ``weights`` /
    ``biases`` all L layers (the first one's are folded into ``st`` and not read). Returns
    (actions [B, N, D] in the bounds or [B, N] int64 ids, and for a masked discrete head the
    chosen scores [B N] (-inf where a row has no available action), else None).
    """
    batch, n, d = obs.shape[0], obs.shape[1], z.shape[2]
    rows = batch * n
    guided = guidance != 1.0
    outs = scratch.hidden if scratch is not None else [None] * len(weights)
    x = torch.cat([z, obs, st.ids.expand(batch, n, n)], -1).view(rows, -1)
    if guided:  # [z | obs | id] W^T is the same for both halves; only bias[c] differs
        shared = torch.mm(x, st.w_first_t, out=None if scratch is None else scratch.shared)
        h = torch.add(shared, st.bias2, out=None if scratch is None else
                      outs[0].view(2, rows, -1)).view(2 * rows, -1)
    else:
        h = torch.addmm(st.bias, x, st.w_first_t, out=outs[0])
    h = _activate_(h, activation)
    for i in range(1, len(weights) - 1):
        h = _activate_(torch.addmm(biases[i], h, weights[i].t(), out=outs[i]), activation)
    w_last = weights[-1].t()
    z2 = z.reshape(rows, d)
    if guided:  # y = z - h W_L^T for each half, then lerp(y_null, y_c, w)
        y = torch.baddbmm(z2.unsqueeze(0), h.view(2, rows, -1), w_last.expand(2, -1, -1),
                          alpha=-1)
        y_c, y_null = y.unbind(0)
        y = torch.lerp(y_null, y_c, guidance)
    else:
        y = torch.addmm(z2, h, w_last, alpha=-1)
    if not discrete:  # y = x + b_L; a = mid' + half y, clamped to [low, high] (exactly in)
        return torch.addcmul(st.mid, y.view(batch, n, d), st.half).clamp_(st.low, st.high), None
    y = y.sub_(biases[-1])  # the generated {-1, +1} one-hot x
    if avail is None:
        return y.argmax(-1).view(batch, n), None
    best, ids = torch.where(avail.reshape(rows, d), y, float("-inf")).max(-1)
    return ids.view(batch, n), best


def one_step(net: VelocityNetwork, p: Plan, obs: torch.Tensor, avail: torch.Tensor | None,
             token: int, guidance: float, z: torch.Tensor | None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One-step actions ``decode(z - u(z, 0, 1 | obs, id, token))`` for shared weights and torch
    layers (``p.lean``), inputs already checked except that every row of ``avail`` has an
    available action (checked here from the chosen scores, see below).

    obs [B, N, obs_dim] raw; z [B, N, D] noise, or None to draw it (from ``generator``: the
    same numbers as ``torch.randn``); avail [B, N, K] bool or None. Returns [B, N, D] actions in
    the bounds or [B, N] int64 ids (new tensors: no buffer is returned).
    """
    scratch = _scratch(net, p, obs.shape[0], guidance != 1.0)
    if z is None:
        z = scratch.noise.normal_() if generator is None else \
            scratch.noise.normal_(generator=generator)
    actions, best = step_math(p.steps[token], list(net.weights._parameters.values()),
                              list(net.biases._parameters.values()), net.activation,
                              net.discrete, obs, z, avail, guidance, scratch)
    # A row without any available action scores -inf; one sum finds it (no extra pass over
    # the mask), then check_avail names the row. NaN scores (non-finite weights) pass it.
    if best is not None and not math.isfinite(float(best.sum())):
        check_avail(avail)
    return actions


def fused_act(net: VelocityNetwork, z, obs, cond, guided: bool, guidance: float,
              avail: torch.Tensor | None) -> torch.Tensor | None:
    """One-step sampling in ONE launch (``ops.mlp_cfg_sample``: the whole MLP, cond and null
    passes, the guided step and decoding) when the layers and ``mlp_cfg_sample`` resolve to
    Triton (CUDA; or the interpreter when forced), the bounds are shared by the agents and the
    batch is small enough (decentralised execution, ``ops.mlp_fits``); None otherwise.

    z [B, N, D]; obs [B', N, obs_dim] (B' = 2 B when ``guided``: cond rows, then null rows);
    cond: int token or [B'] / [B', N] ids.
    """
    dev, backend = obs.device, net._op_backend()
    if (ops.resolved_backend("linear_jvp", dev, backend) != "triton"
            or ops.resolved_backend("mlp_cfg_sample", dev, backend) != "triton"
            or net.action_low.dim() > 1):
        return None
    batch = z.shape[0]
    params = [*net.weights, *net.biases]
    key = tuple((p.data_ptr(), p._version) for p in params)  # refreshed on any update
    cached = net.__dict__.get("_mlp_pack")
    if cached is None or cached[0] != key:
        cached = (key, ops.pack_mlp(list(net.weights), list(net.biases)))
        net.__dict__["_mlp_pack"] = cached
    pack = cached[1]
    if not ops.mlp_fits(batch * net.n_agents if net.share_parameters else batch, pack):
        return None
    if not isinstance(cond, torch.Tensor):
        tokens = [cond, net.null_token] if guided else [cond]
        cond = torch.tensor(tokens, device=dev).repeat_interleave(batch)
    zz = torch.cat([z, z]) if guided else z
    ones = torch.ones(zz.shape[:2], device=dev, dtype=z.dtype)
    x = net._layout(net._inputs(zz, ones - 1, ones, obs, cond)[0])  # t = 1, r = 0
    low, high = (None, None) if net.discrete else (net.action_low.to(z.dtype),
                                                   net.action_high.to(z.dtype))
    sample = ops.unchecked("mlp_cfg_sample", dev, backend)
    out = sample(x, pack, net._layout(z), net.activation, guided, guidance, 1.0, low, high,
                 None if avail is None else net._layout(avail), net.discrete)
    if net.share_parameters:
        return out.reshape(batch, net.n_agents, *out.shape[1:])
    return out.transpose(0, 1)
