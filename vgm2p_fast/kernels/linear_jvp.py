"""Triton ``linear_jvp``: one MLP layer's primal and tangent from one pass over the weight tiles.

    pre = x W^T + b        h = act(pre)        dh = act'(pre) * (dx W[:, :k]^T)

Forward (``_fwd_kernel``, grid ``(M / BM, out / BN, G)``, G = agents for per-agent weights, 1 for
shared ones): every ``W`` tile is loaded once and feeds two ``tl.dot``s, the primal's and, for the
first ``k`` input columns, the tangent's; the epilogue adds the bias, applies ``act`` and ``act'``
and writes ``h``, ``dh`` and (only when a gradient will be needed) ``act'(pre)`` for backward.
Backward of the primal: ``_bwd_dx_kernel`` (``dx = (g_h * act') W``) and ``_bwd_dw_kernel``
(``dW = (g_h * act')^T x`` and ``db = sum_m g_h * act'``, split over row chunks so that a few
weight tiles still fill the GPU; the chunks' float32 partials are summed by one torch ``sum``).
The tangent output is detached: it lives inside MeanFlow's stop-gradient.

Cost per call (bf16, shared weights, M = 24,576 rows = batch 4096 x 6 agents, a 256 -> 256
hidden layer with a full tangent; roofline on an H100 SXM: 3.35 TB/s, ~990 dense bf16 TFLOP/s):

- forward: 2 x 2 M in out = 6.4 GFLOP (6.5 us of tensor cores); bytes x + dx + W in, h + dh (+
  act' when training) out = 12.6 + 12.6 + 0.1 + 25.2 (+ 12.6) MB = 50.5 (63.1) MB -> 15 (19) us.
  Memory-bound: estimate ~19 us. The unfused torch path moves ~10 tensors of M x 256 (matmul,
  act, tangent matmul, act', product) ~ 126 MB -> ~38 us, plus 5-6 launches.
- backward: dx and dW are 2 x 2 M in out = 6.4 GFLOP (6.5 us); bytes: dx kernel g_h + act' in,
  dx out = 37.8 MB; dW kernel g_h + act' + x in, ~17 float32 partials out = 42 MB; ~80 MB in
  all -> ~24 us (memory-bound).

These are estimates from byte and FLOP counts, not measurements: no GPU was available here.
``benchmarks/bench_linear_jvp.py`` has the CUDA cases that measure them.
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
    fp32_precision,
    mma,
)

# Launch configurations, the ones kernels/aot.py compiles for sm_80/sm_90 (0 spills there).
# Forward with 4-byte/8-byte inputs: BK = 16, since the (ieee) fp32 dot keeps its operands in
# registers: at BK = 32 the two 64x64 accumulators + the GELU epilogue spilled 32-116 bytes
# (255 registers); at BK = 16 it takes ~175. 8 warps: at 4 the bf16 forward spilled 64-100 B.
_FWD_HALF = {"BM": 64, "BN": 64, "BK": 32, "num_warps": 8}
_FWD_WIDE = {"BM": 64, "BN": 64, "BK": 16, "num_warps": 8}
BWD = {"BM": 64, "BN": 64, "BK": 32, "num_warps": 8}
# dW/db: aim for ~2 waves of programs on a 132-SM H100, each over >= 256 rows.
_TARGET_PROGRAMS = 264
_MIN_ROWS_PER_SPLIT = 256


@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, dx_ptr, h_ptr, dh_ptr, g_ptr,
                M, N, K, KT,
                sxg, sxm, sdg, sdm,
                ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TANGENT: tl.constexpr,
                SAVE_GRAD: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n, pid_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    m_ok, n_ok = offs_m < M, offs_n < N
    x_rows = x_ptr + pid_g.to(tl.int64) * sxg + offs_m[:, None].to(tl.int64) * sxm
    w_rows = w_ptr + pid_g.to(tl.int64) * N * K + offs_n[:, None].to(tl.int64) * K
    acc = tl.zeros((BM, BN), dtype=ACC)
    dacc = tl.zeros((BM, BN), dtype=ACC)
    k_end = 0
    if HAS_TANGENT:
        # columns [0, KT): both dots share the W tile (KT = 0 skips this loop)
        d_rows = dx_ptr + pid_g.to(tl.int64) * sdg + offs_m[:, None].to(tl.int64) * sdm
        k_end = tl.cdiv(KT, BK) * BK
        for k0 in range(0, k_end, BK):
            kk = k0 + offs_k
            w = tl.load(w_rows + kk[None, :], mask=n_ok[:, None] & (kk[None, :] < K), other=0.0)
            x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)
            d = tl.load(d_rows + kk[None, :], mask=m_ok[:, None] & (kk[None, :] < KT), other=0.0)
            wt = tl.trans(w)
            acc = mma(x, wt, acc, PRECISION, ACC)
            dacc = mma(d, wt, dacc, PRECISION, ACC)
    for k0 in range(k_end, K, BK):  # the columns without a tangent: primal only
        kk = k0 + offs_k
        w = tl.load(w_rows + kk[None, :], mask=n_ok[:, None] & (kk[None, :] < K), other=0.0)
        x = tl.load(x_rows + kk[None, :], mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)
        acc = mma(x, tl.trans(w), acc, PRECISION, ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + pid_g * N + offs_n, mask=n_ok, other=0.0).to(ACC)[None, :]
    h, g = act_and_grad(acc, ACT)
    out = pid_g.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    tl.store(h_ptr + out, h.to(h_ptr.dtype.element_ty), mask=ok)
    if HAS_TANGENT:
        if ACT != 0:
            dacc = dacc * g
        tl.store(dh_ptr + out, dacc.to(dh_ptr.dtype.element_ty), mask=ok)
    if SAVE_GRAD:
        tl.store(g_ptr + out, g.to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_dx_kernel(gh_ptr, g_ptr, w_ptr, dx_ptr, M, N, K,
                   ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """dx[g, m, k] = sum_n gh[g, m, n] act'[g, m, n] W[g, n, k]; grid (M / BM, K / BN, G)."""
    pid_m, pid_k, pid_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_k = pid_k * BN + tl.arange(0, BN)
    offs_n = tl.arange(0, BK)
    m_ok, k_ok = offs_m < M, offs_k < K
    gbase = pid_g.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N
    wbase = w_ptr + pid_g.to(tl.int64) * N * K + offs_k[None, :]
    acc = tl.zeros((BM, BN), dtype=ACC)
    for n0 in range(0, N, BK):
        nn = n0 + offs_n
        ok = m_ok[:, None] & (nn[None, :] < N)
        gp = tl.load(gh_ptr + gbase + nn[None, :], mask=ok, other=0.0)
        if ACT != 0:
            gp = (gp.to(ACC) * tl.load(g_ptr + gbase + nn[None, :], mask=ok, other=0.0).to(ACC))
            gp = gp.to(gh_ptr.dtype.element_ty)
        w = tl.load(wbase + nn[:, None].to(tl.int64) * K, mask=(nn[:, None] < N) & k_ok[None, :],
                    other=0.0)
        acc = mma(gp, w, acc, PRECISION, ACC)
    out = pid_g.to(tl.int64) * M * K + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & k_ok[None, :])


@triton.jit
def _bwd_dw_kernel(gh_ptr, g_ptr, x_ptr, dw_ptr, db_ptr, M, N, K, G, ROWS,
                   sxg, sxm,
                   ACT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                   PRECISION: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Partial dW[s, g, n, k] = sum over rows m of chunk s of gp[g, m, n] x[g, m, k] (and db on
    the programs with pid_k == 0); grid (N / BM, K / BN, S * G), ROWS rows per chunk."""
    pid_n, pid_k, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pid_g, pid_s = pid_gs % G, pid_gs // G
    offs_n = pid_n * BM + tl.arange(0, BM)
    offs_k = pid_k * BN + tl.arange(0, BN)
    offs_m = tl.arange(0, BK)
    n_ok, k_ok = offs_n < N, offs_k < K
    gbase = gh_ptr + pid_g.to(tl.int64) * M * N + offs_n[:, None]
    abase = g_ptr + pid_g.to(tl.int64) * M * N + offs_n[:, None]
    xbase = x_ptr + pid_g.to(tl.int64) * sxg + offs_k[None, :]
    acc = tl.zeros((BM, BN), dtype=ACC)
    dbacc = tl.zeros((BM,), dtype=ACC)
    m_start = pid_s * ROWS
    m_stop = tl.minimum(m_start + ROWS, M)
    for m0 in range(m_start, m_stop, BK):
        mm = m0 + offs_m
        m_ok = mm < m_stop
        ok = n_ok[:, None] & m_ok[None, :]
        rows = mm[None, :].to(tl.int64) * N
        gp = tl.load(gbase + rows, mask=ok, other=0.0)  # (BM: n, BK: m), the transposed grad
        if ACT != 0:
            gp = (gp.to(ACC) * tl.load(abase + rows, mask=ok, other=0.0).to(ACC))
            gp = gp.to(gh_ptr.dtype.element_ty)
        x = tl.load(xbase + mm[:, None].to(tl.int64) * sxm, mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        acc = mma(gp, x, acc, PRECISION, ACC)
        if HAS_BIAS:
            dbacc += tl.sum(gp.to(ACC), axis=1)
    out = pid_gs.to(tl.int64) * N * K + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(dw_ptr + out, acc, mask=n_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:  # noqa: SIM102 (constexpr test, then a runtime one: `and` would mix them)
        if pid_k == 0:
            tl.store(db_ptr + pid_gs * N + offs_n, dbacc, mask=n_ok)


def _unit_stride(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` with a contiguous last dim (the kernels take row/group strides, not column ones)."""
    if t is None:
        return None
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(group stride, row stride) of a (G, M, F) or (M, F) tensor (group stride 0 for 2-D)."""
    return (t.stride(0), t.stride(1)) if t.dim() == 3 else (0, t.stride(0))


def fwd_config(dtype: torch.dtype) -> dict:
    """Forward block sizes for ``dtype`` storage."""
    return _FWD_HALF if dtype in (torch.float16, torch.bfloat16) else _FWD_WIDE


def _fwd_outputs(x: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor | None,
                 activation: str, save_grad: bool) -> tuple[torch.Tensor, ...]:
    """Empty (h, dh, act'): shared by the op and its fake (shape-only) kernel."""
    shape = (*x.shape[:-1], weight.shape[-2])
    new = lambda keep: torch.empty(shape if keep else (0,), dtype=x.dtype,  # noqa: E731
                                   device=x.device)
    return new(True), new(dx is not None), new(save_grad and activation != "identity")


@triton_op("vgm2p_fast::triton_linear_jvp", mutates_args=())
def _linear_jvp_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    dx: torch.Tensor | None, activation: str, save_grad: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, dh, act'(pre)); dh and act' are empty when not asked for."""
    x, dx = _unit_stride(x), _unit_stride(dx)
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    g_count = weight.shape[0] if weight.dim() == 3 else 1
    n_out, n_in = weight.shape[-2:]
    m = x.shape[-2]
    h, dh, g = _fwd_outputs(x, weight, dx, activation, save_grad)
    if h.numel() == 0:  # no rows (or no outputs): nothing to launch
        return h, dh, g
    sxg, sxm = _rows(x)
    sdg, sdm = _rows(dx) if dx is not None else (0, 0)
    cfg = fwd_config(x.dtype)
    grid = (triton.cdiv(m, cfg["BM"]), triton.cdiv(n_out, cfg["BN"]), g_count)
    wrap_triton(_fwd_kernel)[grid](
        x, weight, bias if bias is not None else weight, dx if dx is not None else x, h, dh, g,
        m, n_out, n_in, 0 if dx is None else dx.shape[-1], sxg, sxm, sdg, sdm,
        ACT=ACT_IDS[activation], HAS_BIAS=bias is not None, HAS_TANGENT=dx is not None,
        SAVE_GRAD=g.numel() > 0, ACC=acc_dtype(x.dtype), PRECISION=fp32_precision(x.dtype),
        BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], num_warps=cfg["num_warps"])
    return h, dh, g


def dw_split(m: int, n_out: int, n_in: int, groups: int) -> int:
    """Row chunks for dW: enough programs for ~2 waves, each chunk >= 256 rows."""
    tiles = triton.cdiv(n_out, BWD["BM"]) * triton.cdiv(n_in, BWD["BN"]) * groups
    return max(1, min(triton.cdiv(m, _MIN_ROWS_PER_SPLIT), triton.cdiv(_TARGET_PROGRAMS, tiles)))


def _bwd_outputs(x: torch.Tensor, weight: torch.Tensor, need_dx: bool, need_dw: bool,
                 has_bias: bool) -> tuple[torch.Tensor, ...]:
    """Empty (dx, dW, db), each of shape (0,) when not needed (op and fake kernel)."""
    new = lambda shape, keep: torch.empty(shape if keep else (0,), dtype=x.dtype,  # noqa: E731
                                          device=x.device)
    return (new(x.shape, need_dx), new(weight.shape, need_dw),
            new(weight.shape[:-1], has_bias))


@triton_op("vgm2p_fast::triton_linear_jvp_bwd", mutates_args=())
def _linear_jvp_bwd(grad_h: torch.Tensor, act_grad: torch.Tensor, x: torch.Tensor,
                    weight: torch.Tensor, activation: str, need_dx: bool, need_dw: bool,
                    has_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dW, db) of the primal; each is empty when not needed."""
    grad_h = grad_h.contiguous()
    x = _unit_stride(x)
    weight = weight.contiguous()
    g_count = weight.shape[0] if weight.dim() == 3 else 1
    n_out, n_in = weight.shape[-2:]
    m = x.shape[-2]
    act, acc = ACT_IDS[activation], acc_dtype(x.dtype)
    prec = fp32_precision(x.dtype)
    act_grad = grad_h if act == 0 else act_grad.contiguous()
    dx, dw, db = _bwd_outputs(x, weight, need_dx, need_dw, has_bias)
    if m == 0:  # no rows: the weight and bias gradients are sums over nothing
        return dx, dw.zero_(), db.zero_()
    if need_dx:
        grid = (triton.cdiv(m, BWD["BM"]), triton.cdiv(n_in, BWD["BN"]), g_count)
        wrap_triton(_bwd_dx_kernel)[grid](
            grad_h, act_grad, weight, dx, m, n_out, n_in, ACT=act, ACC=acc, PRECISION=prec,
            BM=BWD["BM"], BN=BWD["BN"], BK=BWD["BK"], num_warps=BWD["num_warps"])
    if not (need_dw or has_bias):
        return dx, dw, db
    split = dw_split(m, n_out, n_in, g_count)
    rows = triton.cdiv(triton.cdiv(m, split), BWD["BK"]) * BWD["BK"]
    split = triton.cdiv(m, rows)
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dw_part = torch.empty((split * g_count, n_out, n_in), dtype=part_dtype, device=x.device)
    db_part = torch.empty((split * g_count, n_out) if has_bias else (0,), dtype=part_dtype,
                          device=x.device)
    sxg, sxm = _rows(x)
    grid = (triton.cdiv(n_out, BWD["BM"]), triton.cdiv(n_in, BWD["BN"]), g_count * split)
    wrap_triton(_bwd_dw_kernel)[grid](
        grad_h, act_grad, x, dw_part, db_part, m, n_out, n_in, g_count, rows, sxg, sxm,
        ACT=act, HAS_BIAS=has_bias, ACC=acc, PRECISION=prec,
        BM=BWD["BM"], BN=BWD["BN"], BK=BWD["BK"], num_warps=BWD["num_warps"])
    # partials are laid out (split, G, ...): one deterministic sum, no atomics
    if need_dw:
        dw.copy_(dw_part.view(split, *weight.shape).sum(0))
    if has_bias:
        db.copy_(db_part.view(split, *weight.shape[:-1]).sum(0))
    return dx, dw, db


@_linear_jvp_fwd.register_fake
def _fwd_fake(x, weight, bias, dx, activation, save_grad):
    return _fwd_outputs(x, weight, dx, activation, save_grad)


@_linear_jvp_bwd.register_fake
def _bwd_fake(grad_h, act_grad, x, weight, activation, need_dx, need_dw, has_bias):
    return _bwd_outputs(x, weight, need_dx, need_dw, has_bias)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _, activation, _ = inputs
    _, dh, act_grad = output
    ctx.save_for_backward(x, weight, act_grad)
    ctx.activation, ctx.has_bias = activation, bias is not None
    ctx.mark_non_differentiable(dh, act_grad)


def _backward(ctx, grad_h, _grad_dh, _grad_act):
    x, weight, act_grad = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    dx, dw, db = _linear_jvp_bwd(grad_h, act_grad, x, weight, ctx.activation, need_dx,
                                 need_dw, ctx.has_bias and need_db)
    return (dx if need_dx else None, dw if need_dw else None,
            db if ctx.has_bias and need_db else None, None, None, None)


_linear_jvp_fwd.register_autograd(_backward, setup_context=_setup_context)


class _ForwardAD(torch.autograd.Function):
    """The forward op with a forward-mode rule, used while forward AD is active only (see
    ``forward_ad_active``); backward is the op's own ``_backward``.

    ``pre = x W^T + b`` has the tangent ``t_pre = t_x W^T + x t_W^T + t_b``, so
    ``t_h = act'(pre) * t_pre`` with ``act'`` saved by the kernel (one launch, as in training).
    ``dh`` is a stop-gradient in both modes (the reference detaches it too): no tangent.
    """

    @staticmethod
    def forward(x, weight, bias, dx, activation, save_grad):
        return _linear_jvp_fwd(x, weight, bias, dx, activation, save_grad)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1], output[2])  # x, weight, act'
        ctx.out_shape = output[0].shape

    @staticmethod
    def jvp(ctx, t_x, t_w, t_b, _t_dx, _t_act, _t_save):
        x, weight, act_grad = ctx.saved_tensors
        terms = []
        if t_x is not None:
            terms.append(torch.matmul(t_x, weight.transpose(-1, -2)))
        if t_w is not None:
            terms.append(torch.matmul(x, t_w.transpose(-1, -2)))
        if t_b is not None:
            terms.append(t_b.unsqueeze(-2))  # (1, out) or (G, 1, out): broadcast over rows
        if not terms:  # only dx has a tangent: h does not depend on dx
            return None, None, None
        t_pre = sum(terms[1:], terms[0])
        if t_pre.shape != ctx.out_shape:  # a bias tangent alone
            t_pre = t_pre.expand(ctx.out_shape).contiguous()
        return (t_pre if ctx.activation == "identity" else t_pre * act_grad), None, None

    backward = staticmethod(_backward)


def linear_jvp(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               dx: torch.Tensor | None = None, activation: str = "silu"
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton backend of :func:`vgm2p_fast.ops.linear_jvp` (same arguments, validated there).

    Shapes: shared ``x (M, in)``, ``weight (out, in)``, ``bias (out,)``, ``dx (M, k)``;
    per-agent ``x (G, M, in)``, ``weight (G, out, in)``, ``bias (G, out)``, ``dx (G, M, k)``.
    Returns ``h`` (..., M, out) with autograd into x, weight, bias and ``dh`` (detached) or None.
    """
    check_device(x)
    if forward_ad_active():  # act' is saved for the tangent: see _ForwardAD
        h, dh, _ = _ForwardAD.apply(x, weight, bias, dx, activation, True)
        return h, (dh if dx is not None else None)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    h, dh, _ = _linear_jvp_fwd(x, weight, bias, dx, activation, save)
    return h, (dh if dx is not None else None)
