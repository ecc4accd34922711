"""Triton ``cfg_sample``: classifier-free-guided sampling step and action decoding in one kernel,
and ``mlp_cfg_sample``, the whole policy MLP plus that step in one launch for small batches.

    u = u_null + w (u_c - u_null)      x = z - step u
    continuous: a = low + (clip(x, -1, 1) + 1) / 2 (high - low)
    discrete:   a = argmax_k { x_k if avail_k else -inf }   (first index on ties, like torch)

``cfg_sample`` grid: ``rows / BLOCK_R``, each program a (BLOCK_R, BLOCK_D) tile; rows wider than
BLOCK_D (at most 1024) loop over chunks, the argmax carried across them. Math in float32
(float64 for float64 inputs).
Cost per call (bf16, 24,576 rows = 4096 envs x 6 agents, D = 6; H100 at 3.35 TB/s): reads z,
u_c, u_null (3 x 295 KB), writes 295 KB: ~1.2 MB -> ~0.4 us of bandwidth: launch-bound (~3-5 us)
against ~5 torch launches (lerp, sub, clamp, rescale mul/add; masked_fill + argmax for
discrete). Estimates from byte counts, not measurements.

``mlp_cfg_sample`` (decentralised execution, B = a few agents per env step): one program per
(agent group, BLOCK_M rows) runs every layer, ``h = act(h W^T + b)``, keeping the activations in
a small global scratch (L2-resident, ``BLOCK_M x width`` floats, reused across layers behind a
CTA barrier), then for the conditional and, with guidance, the null input applies the step above.
One launch instead of ~2 per layer + ~5; each program reads all weights once: 4 x 256 hidden
bf16 is ~0.45 MB per agent group, which one SM streams in ~10-20 us (~25-50 GB/s per SM), so
the path pays off while launches dominate (rows per group <= 64), not for training batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (
    ACT_IDS,
    ROW_NUM_WARPS,
    acc_dtype,
    act_and_grad,
    check_device,
    mma,
    row_blocks,
)


@triton.jit
def _guided_step(z, u_c, u_n, w, step, HAS_NULL: tl.constexpr):
    """z - step (u_null + w (u_c - u_null)) (u = u_c without a null input)."""
    if HAS_NULL:
        u_c = u_n + w * (u_c - u_n)
    return z - step * u_c


@triton.jit
def _decode_store(x, rows, cols, d0, r_ok, ok, out_ptr, low_ptr, high_ptr, avail_ptr, D,
                  best, best_i, HAS_BOUNDS: tl.constexpr, DISCRETE: tl.constexpr):
    """Continuous: clip, rescale and store one chunk. Discrete: fold the chunk into the running
    (best, best_i) of each row; the caller stores best_i after the last chunk."""
    if DISCRETE:
        offs = rows[:, None].to(tl.int64) * D + d0 + cols[None, :]
        avail = tl.load(avail_ptr + offs, mask=ok, other=0) != 0
        x = tl.where(avail & ok, x, float("-inf"))
        v, i = tl.max(x, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = v > best  # strict: an earlier chunk keeps ties, like torch.argmax
        best_i = tl.where(better | (best_i < 0), i + d0, best_i)
        best = tl.where(better, v, best)
    else:
        x = tl.minimum(tl.maximum(x, -1.0), 1.0)
        if HAS_BOUNDS:
            c_ok = (d0 + cols) < D
            lo = tl.load(low_ptr + d0 + cols, mask=c_ok, other=0.0).to(x.dtype)
            hi = tl.load(high_ptr + d0 + cols, mask=c_ok, other=0.0).to(x.dtype)
            x = lo[None, :] + (x + 1.0) * (0.5 * (hi - lo))[None, :]
        offs = rows[:, None].to(tl.int64) * D + d0 + cols[None, :]
        tl.store(out_ptr + offs, x.to(out_ptr.dtype.element_ty), mask=ok)
    return best, best_i


@triton.jit
def _kernel(z_ptr, uc_ptr, un_ptr, low_ptr, high_ptr, avail_ptr, out_ptr, R, D, w, step,
            HAS_NULL: tl.constexpr, HAS_BOUNDS: tl.constexpr, DISCRETE: tl.constexpr,
            ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < R
    best = tl.full((BLOCK_R,), float("-inf"), dtype=ACC)
    best_i = tl.full((BLOCK_R,), -1, dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        ok = r_ok[:, None] & ((d0 + cols)[None, :] < D)
        offs = rows[:, None].to(tl.int64) * D + d0 + cols[None, :]
        z = tl.load(z_ptr + offs, mask=ok, other=0.0).to(ACC)
        u_c = tl.load(uc_ptr + offs, mask=ok, other=0.0).to(ACC)
        u_n = u_c
        if HAS_NULL:
            u_n = tl.load(un_ptr + offs, mask=ok, other=0.0).to(ACC)
        x = _guided_step(z, u_c, u_n, w, step, HAS_NULL)
        best, best_i = _decode_store(x, rows, cols, d0, r_ok, ok, out_ptr, low_ptr, high_ptr,
                                     avail_ptr, D, best, best_i, HAS_BOUNDS, DISCRETE)
    if DISCRETE:
        tl.store(out_ptr + rows, best_i.to(tl.int64), mask=r_ok)


def _out(z: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The empty actions tensor (shared by the op and its fake kernel)."""
    if discrete:
        return torch.empty(z.shape[:-1], dtype=torch.int64, device=z.device)
    return torch.empty_like(z, memory_format=torch.contiguous_format)


@triton_op("vgm2p_fast::triton_cfg_sample", mutates_args=())
def _cfg_sample_op(z: torch.Tensor, u_cond: torch.Tensor, u_null: torch.Tensor | None,
                   guidance: float, step: float, low: torch.Tensor | None,
                   high: torch.Tensor | None, avail: torch.Tensor | None, discrete: bool
                   ) -> torch.Tensor:
    z, u_cond = z.contiguous(), u_cond.contiguous()
    u_null = None if u_null is None else u_null.contiguous()
    avail = None if avail is None else avail.contiguous()
    out = _out(z, discrete)
    d = z.shape[-1]
    rows = z.numel() // d if d else 0
    if rows == 0:
        return out
    block_r, block_d = row_blocks(d)
    wrap_triton(_kernel)[(triton.cdiv(rows, block_r),)](
        z, u_cond, u_cond if u_null is None else u_null, z if low is None else low,
        z if high is None else high, z if avail is None else avail, out, rows, d,
        float(guidance), float(step),
        HAS_NULL=u_null is not None, HAS_BOUNDS=low is not None, DISCRETE=discrete,
        ACC=acc_dtype(z.dtype), BLOCK_R=block_r, BLOCK_D=block_d, num_warps=ROW_NUM_WARPS)
    return out


@_cfg_sample_op.register_fake
def _cfg_sample_fake(z, u_cond, u_null, guidance, step, low, high, avail, discrete):
    return _out(z, discrete)


def cfg_sample(z: torch.Tensor, u_cond: torch.Tensor, u_null: torch.Tensor | None = None,
               guidance: float = 1.0, step: float = 1.0, low: torch.Tensor | None = None,
               high: torch.Tensor | None = None, avail: torch.Tensor | None = None,
               discrete: bool = False) -> torch.Tensor:
    """Triton backend of :func:`vgm2p_fast.ops.cfg_sample` (validated there).

    ``z, u_cond, u_null (..., D)``, ``low, high (D,)``, ``avail (..., D) bool`` -> continuous
    actions ``(..., D)`` in ``z.dtype`` or discrete ids ``(...)`` int64. No autograd.
    """
    check_device(z)
    return _cfg_sample_op(z, u_cond, u_null, float(guidance), float(step), low, high, avail,
                          discrete)


# ---------------------------------------------------------------- whole MLP + sampling step
# BM = 16: tl.dot's smallest M. BK = 16 keeps the per-thread operand tiles small: the AOT
# report of BK = 64 hit a 128-register cap of ptxas with 8-40 bytes of spills (float32, sm_80);
# at BK = 16 every variant takes 64-109 registers, no spills.
# float32 always multiplies in IEEE here, whatever torch's allow_tf32 says: for 16-row tiles the
# tensor cores gain nothing, and the TF32 variant was capped at 64 registers by ptxas on sm_80
# and spilled 16-52 bytes.
MLP = {"BM": 16, "BN": 64, "BK": 16, "num_warps": 8}
# One action tile for every action dim <= 64: the final (16, 64) tile costs nothing next to the
# hidden layers, and kernels/aot.py then compiles exactly what runs (at DP = 16 the unguided
# float32 kernel was capped at 128 registers by ptxas on sm_80 and spilled 16 bytes).
MLP_DP = 64
MLP_MAX_ROWS = 64  # rows per agent group up to which mlp_cfg_sample is the faster path
MLP_MAX_WIDTH = 1024  # widest layer (input included) the scratch/loops are sized for


class MLPPack(NamedTuple):
    """The policy's layers packed for ``mlp_cfg_sample`` (build once, reuse while the weights
    do not change): ``weight (G, L, out_max, in_max)`` and ``bias (G, L, out_max)``, zero
    padded, and ``dims`` int32 ``[in_0, out_0 = in_1, ..., out_{L-1}]`` (``sizes`` on the host)."""

    weight: torch.Tensor
    bias: torch.Tensor
    dims: torch.Tensor
    sizes: tuple[int, ...]  # ``dims`` on the host (no device sync to read it)


def pack_mlp(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> MLPPack:
    """Pack ``L`` layers given as the policy holds them: ``weights[l]`` (out, in) shared or
    (G, out, in) per agent, ``biases[l]`` (out,) or (G, out). No autograd (sampling only)."""
    w0 = weights[0]
    grouped = w0.dim() == 3
    g = w0.shape[0] if grouped else 1
    dims = [w0.shape[-1]] + [w.shape[-2] for w in weights]
    out_max = max(w.shape[-2] for w in weights)
    in_max = max(w.shape[-1] for w in weights)
    wp = torch.zeros(g, len(weights), out_max, in_max, dtype=w0.dtype, device=w0.device)
    bp = torch.zeros(g, len(weights), out_max, dtype=w0.dtype, device=w0.device)
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(weights, biases)):
            wp[:, i, : w.shape[-2], : w.shape[-1]] = w if grouped else w.unsqueeze(0)
            bp[:, i, : b.shape[-1]] = b if grouped else b.unsqueeze(0)
    return MLPPack(wp, bp, torch.tensor(dims, dtype=torch.int32, device=w0.device), tuple(dims))


def mlp_fits(rows_per_group: int, pack: MLPPack) -> bool:
    """Whether ``mlp_cfg_sample`` is the path to take: few rows per agent group (decentralised
    execution, B = agents or a few envs), layers no wider than MLP_MAX_WIDTH, at most 64
    action dims (the compiled action tile) and 16/32-bit weights (float64 policies keep the
    layer-by-layer path: its MMA variant is not in the AOT report)."""
    return (rows_per_group <= MLP_MAX_ROWS and max(pack.weight.shape[-2:]) <= MLP_MAX_WIDTH
            and pack.sizes[-1] <= MLP_DP and pack.weight.dtype != torch.float64)


@triton.jit
def _mlp_rows(x_ptr, sxg, sxm, x_row0, F, w_ptr, b_ptr, dims_ptr, scr_ptr, out_slot, pid_g,
              offs_m, m_ok, L, WO, WI, WMAX,
              ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Rows ``x_row0 + offs_m`` through all L layers. This program's scratch holds slots of
    (BM, WMAX) floats: 0 and 1 alternate as a layer's input and output, the last layer writes
    slot ``out_slot``."""
    local = tl.arange(0, BM)[:, None] * WMAX
    tl.debug_barrier()  # the previous pass's last reads of slot 0 are done
    x_rows = x_ptr + pid_g.to(tl.int64) * sxg + (x_row0 + offs_m)[:, None].to(tl.int64) * sxm
    for k0 in range(0, F, BK):
        kk = k0 + tl.arange(0, BK)
        v = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk < F)[None, :], other=0.0)
        tl.store(scr_ptr + local + kk[None, :], v.to(ACC), mask=(kk < F)[None, :])
    tl.debug_barrier()
    for layer in range(L):
        k_dim = tl.load(dims_ptr + layer)
        n_dim = tl.load(dims_ptr + layer + 1)
        src = scr_ptr + (layer % 2) * BM * WMAX + local
        dst_slot = tl.where(layer == L - 1, out_slot, (layer + 1) % 2)
        dst = scr_ptr + dst_slot * BM * WMAX + local
        w_l = w_ptr + (pid_g * L + layer).to(tl.int64) * WO * WI
        for n0 in range(0, n_dim, BN):
            nn = n0 + tl.arange(0, BN)
            acc = tl.zeros((BM, BN), dtype=ACC)
            for k0 in range(0, k_dim, BK):
                kk = k0 + tl.arange(0, BK)
                w = tl.load(w_l + nn[:, None] * WI + kk[None, :],
                            mask=(nn < n_dim)[:, None] & (kk < k_dim)[None, :], other=0.0)
                a = tl.load(src + kk[None, :], mask=(kk < k_dim)[None, :], other=0.0)
                acc = mma(a.to(w.dtype), tl.trans(w), acc, PRECISION, ACC)
            b = tl.load(b_ptr + (pid_g * L + layer) * WO + nn, mask=nn < n_dim, other=0.0)
            acc += b.to(ACC)[None, :]
            h, _ = act_and_grad(acc, ACT)
            h = tl.where(layer == L - 1, acc, h)  # the output layer has no activation
            tl.store(dst + nn[None, :], h, mask=(nn < n_dim)[None, :])
        tl.debug_barrier()  # layer's output complete before the next layer reads it


@triton.jit
def _mlp_kernel(x_ptr, w_ptr, b_ptr, dims_ptr, scr_ptr, z_ptr, low_ptr, high_ptr, avail_ptr,
                out_ptr, M, F, L, WO, WI, WMAX, D, N_COND, sxg, sxm, w, step,
                ACT: tl.constexpr, GUIDED: tl.constexpr, HAS_BOUNDS: tl.constexpr,
                DISCRETE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DP: tl.constexpr):
    """Grid (M / BM, G): rows [pid * BM, +BM) of agent group pid_g; x holds the conditional
    rows [0, M) and, when GUIDED (N_COND = 2), the null rows [M, 2M) of every group. The two
    passes are one runtime loop, not two inlined copies: one copy of the MLP code keeps the
    register count at that of the unguided kernel."""
    pid_m, pid_g = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    m_ok = offs_m < M
    scr = scr_ptr + (pid_g * tl.num_programs(0) + pid_m).to(tl.int64) * 4 * BM * WMAX
    for c in range(N_COND):  # u of pass c lands in slot 2 + c
        _mlp_rows(x_ptr, sxg, sxm, c * M, F, w_ptr, b_ptr, dims_ptr, scr, 2 + c, pid_g, offs_m,
                  m_ok, L, WO, WI, WMAX, ACT, ACC, PRECISION, BM, BN, BK)
    cols = tl.arange(0, DP)
    u_at = scr + tl.arange(0, BM)[:, None] * WMAX + cols[None, :]
    u_c = tl.load(u_at + 2 * BM * WMAX, mask=(cols < D)[None, :], other=0.0)
    u_n = u_c
    if GUIDED:
        u_n = tl.load(u_at + 3 * BM * WMAX, mask=(cols < D)[None, :], other=0.0)
    rows = pid_g * M + offs_m
    ok = m_ok[:, None] & (cols < D)[None, :]
    z = tl.load(z_ptr + rows[:, None].to(tl.int64) * D + cols[None, :], mask=ok, other=0.0)
    x = _guided_step(z.to(ACC), u_c, u_n, w, step, GUIDED)
    best = tl.full((BM,), float("-inf"), dtype=ACC)
    best_i = tl.full((BM,), -1, dtype=tl.int32)
    best, best_i = _decode_store(x, rows, cols, 0, m_ok, ok, out_ptr, low_ptr, high_ptr,
                                 avail_ptr, D, best, best_i, HAS_BOUNDS, DISCRETE)
    if DISCRETE:
        tl.store(out_ptr + rows, best_i.to(tl.int64), mask=m_ok)


@triton_op("vgm2p_fast::triton_mlp_cfg_sample", mutates_args=())
def _mlp_cfg_sample_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       dims: torch.Tensor, z: torch.Tensor, activation: str, guided: bool,
                       guidance: float, step: float, low: torch.Tensor | None,
                       high: torch.Tensor | None, avail: torch.Tensor | None, discrete: bool
                       ) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    z = z.contiguous()
    avail = None if avail is None else avail.contiguous()
    out = _out(z, discrete)
    groups, n_layers, w_out, w_in = weight.shape
    m, d = z.shape[-2], z.shape[-1]
    if m == 0:
        return out
    width = max(w_out, w_in)
    grid = (triton.cdiv(m, MLP["BM"]), groups)
    acc = acc_dtype(x.dtype)
    scratch = torch.empty((grid[0] * groups, 4, MLP["BM"], width),
                          dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                          device=x.device)
    sxg, sxm = (x.stride(0), x.stride(1)) if x.dim() == 3 else (0, x.stride(0))
    wrap_triton(_mlp_kernel)[grid](
        x, weight, bias, dims, scratch, z, z if low is None else low, z if high is None else high,
        z if avail is None else avail, out, m, x.shape[-1], n_layers, w_out, w_in, width, d,
        2 if guided else 1, sxg, sxm, float(guidance), float(step),
        ACT=ACT_IDS[activation], GUIDED=guided, HAS_BOUNDS=low is not None, DISCRETE=discrete,
        ACC=acc, PRECISION="ieee", BM=MLP["BM"], BN=MLP["BN"], BK=MLP["BK"],
        DP=MLP_DP, num_warps=MLP["num_warps"])
    return out


@_mlp_cfg_sample_op.register_fake
def _mlp_cfg_sample_fake(x, weight, bias, dims, z, activation, guided, guidance, step, low,
                         high, avail, discrete):
    return _out(z, discrete)


def mlp_cfg_sample(x: torch.Tensor, pack: MLPPack, z: torch.Tensor, activation: str, *,
                   guided: bool = False, guidance: float = 1.0, step: float = 1.0,
                   low: torch.Tensor | None = None, high: torch.Tensor | None = None,
                   avail: torch.Tensor | None = None, discrete: bool = False) -> torch.Tensor:
    """The whole policy MLP and the CFG sampling step in one launch (small batches).

    ``u = MLP(x)`` with ``act`` after every layer but the last, then exactly
    :func:`cfg_sample` on ``z`` and ``u`` (``u_c`` from the first half of the rows of ``x``,
    ``u_null`` from the second half when ``guided``).

    Args:
        x: the first layer's input in the layer layout ``MeanFlowPolicy._run`` builds: shared
            weights ``(R, in)``, per-agent ``(G, R, in)``; ``R = M``, or ``2 M`` when
            ``guided`` (conditional rows first, then the null-token rows, as ``act`` stacks
            them).
        pack: :func:`pack_mlp` of the policy's weights and biases (same dtype as x).
        z: ``(M, D)`` or ``(G, M, D)`` noise in the same layout.
        activation: the hidden layers' activation (``silu``, ``relu``, ``gelu_tanh``).
        guided, guidance, step, low, high, avail, discrete: as :func:`cfg_sample` (``avail``
            in the layout of ``z``).

    Returns:
        ``(M, D)``/``(G, M, D)`` continuous actions or ``(M,)``/``(G, M)`` int64 ids.
        Validation is the caller's (the policy's); inputs are assumed consistent.
    """
    check_device(z)
    if z.shape[-1] > MLP_DP:
        raise ValueError(f"z: expected at most {MLP_DP} action dims for the one-launch "
                         f"path (see mlp_fits), found {z.shape[-1]}")
    return _mlp_cfg_sample_op(x, pack.weight, pack.bias, pack.dims, z, activation, guided,
                              float(guidance), float(step), low, high, avail, discrete)
