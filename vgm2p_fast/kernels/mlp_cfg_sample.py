"""Triton ``mlp_cfg_sample``: the whole policy MLP and the ``cfg_sample`` step in one launch,
for small batches (decentralised execution, B = a few agents per env step).

    h_0 = x      h_{l+1} = act(h_l W_l^T + b_l)      u = h_{L-1} W_{L-1}^T + b_{L-1}
    then the guided step and decoding of ``kernels/_sampling.py`` on (z, u_c, u_null)

One program per (agent group, BLOCK_M rows) runs every layer, keeping the activations in a small
global scratch (L2-resident, ``BLOCK_M x width`` floats, reused across layers behind a CTA
barrier), then for the conditional and, with guidance, the null rows applies the step.
One launch instead of ~2 per layer + ~5; each program reads all weights once: 4 x 256 hidden
bf16 is ~0.45 MB per agent group, which one SM streams in ~10-20 us (~25-50 GB/s per SM), so
the path pays off while launches dominate (rows per group <= 64), not for training batches.
Estimates from byte counts, not measurements (benchmarks/bench_mlp_cfg_sample.py measures it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (
    ACT_IDS,
    acc_dtype,
    act_and_grad,
    check_device,
    forward_ad_active,
    mma,
    no_derivative,
)
from ._sampling import decode_store, empty_actions, guided_step

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
MLP_MAX_WIDTH = 1024  # widest layer (input included) the scratch/loops are sized for
# float64 has no MMA variant in the AOT report: float64 policies take the layer-by-layer path.
MLP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    x = guided_step(z.to(ACC), u_c, u_n, w, step, GUIDED)
    best = tl.full((BM,), float("-inf"), dtype=ACC)
    best_i = tl.full((BM,), -1, dtype=tl.int32)
    best, best_i = decode_store(x, rows, cols, 0, m_ok, ok, out_ptr, low_ptr, high_ptr,
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
    out = empty_actions(z, discrete)
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
    return empty_actions(z, discrete)


def mlp_cfg_sample(x: torch.Tensor, pack, z: torch.Tensor, activation: str = "silu",
                   guided: bool = False, guidance: float = 1.0, step: float = 1.0,
                   low: torch.Tensor | None = None, high: torch.Tensor | None = None,
                   avail: torch.Tensor | None = None, discrete: bool = False) -> torch.Tensor:
    """Triton backend of :func:`vgm2p_fast.ops.mlp_cfg_sample` (same arguments, validated
    there): ``u = MLP(x)`` (``activation`` after every layer but the last), then exactly the
    ``cfg_sample`` step on ``z`` and ``u`` (``u_c`` from the first ``M`` rows of ``x``,
    ``u_null`` from the next ``M`` when ``guided``), in one launch.

    ``pack`` is an ``ops.mlp_cfg_sample.MLPPack`` (read by field: weight, bias, dims).
    Shapes: shared ``x (R, in)``, ``z (M, D)``; per agent ``x (G, R, in)``, ``z (G, M, D)``;
    ``R = 2 M`` when guided, else ``M``. Returns ``(.., M, D)`` actions or ``(.., M)`` int64
    ids. No derivative: a gradient or a forward-mode tangent that reaches it raises.
    """
    check_device(z)
    if z.shape[-1] > MLP_DP:
        raise ValueError(f"z: expected at most {MLP_DP} action dims for the one-launch "
                         f"path (see ops.mlp_fits), found {z.shape[-1]}")
    if max(pack.weight.shape[-2:]) > MLP_MAX_WIDTH or pack.weight.dtype not in MLP_DTYPES:
        raise ValueError(f"pack: expected layers at most {MLP_MAX_WIDTH} wide in "
                         f"{[str(d)[6:] for d in MLP_DTYPES]} for the one-launch path (see "
                         f"ops.mlp_fits), found {tuple(pack.weight.shape[-2:])} "
                         f"{str(pack.weight.dtype)[6:]}")
    args = (x, pack.weight, pack.bias, pack.dims, z, activation, guided, float(guidance),
            float(step), low, high, avail, discrete)
    if forward_ad_active():  # a tangent reaching the sampling step raises, never gives 0
        return no_derivative("mlp_cfg_sample", _mlp_cfg_sample_op, *args)
    return _mlp_cfg_sample_op(*args)
