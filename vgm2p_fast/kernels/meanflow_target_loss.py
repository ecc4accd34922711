"""Triton ``meanflow_target_loss``: the MeanFlow target, the adaptive-weighted row loss and its
gradient into ``u``, in one pass over the rows.

    diff   = u - (v_g - clip(t - r, 0, 1) du/dt)          (the target is a stop-gradient)
    L      = sum_d diff^2              w = (L + eps)^p
    loss   = L / w                     dloss/du = 2 diff / w

Grid ``rows / BLOCK_R``; each program holds ``BLOCK_R`` rows and reduces over the action dim in
registers (``D <= BLOCK_D``, the usual case: one read of u, du/dt, v_g). Wider rows loop over
``BLOCK_D`` chunks twice (L first, then the gradient), reading the inputs a second time. Math
in float32 (float64 for float64 inputs) whatever the storage dtype. The backward of the op is
``grad_u = grad_loss[..., None] * dloss/du``, one elementwise torch op.

Cost per call (bf16, 24,576 rows = batch 4096 x 6 agents, D = 6; H100 roofline at 3.35 TB/s):
reads u, du/dt, v_g (3 x 295 KB) + t, r (2 x 98 KB in float32), writes loss, L (2 x 98 KB) and
dloss/du (295 KB): ~1.6 MB -> ~0.5 us of bandwidth, ~10 FLOP per element (negligible), so the
call is launch-bound (~3-5 us). The unfused torch path launches ~10 elementwise/reduction
kernels (clip, mul, sub, square, sum, add, pow, div, and backward's mul/div chain), each
launch-bound too: ~10x the launches. Estimates from byte counts, not measurements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import ROW_NUM_WARPS, check_device, forward_ad_active, row_blocks


@triton.jit
def _diff(u_ptr, du_ptr, vg_ptr, offs, ok, h, ACC: tl.constexpr):
    """u - (v_g - h du/dt) on one (BLOCK_R, BLOCK_D) tile, 0 outside the mask."""
    u = tl.load(u_ptr + offs, mask=ok, other=0.0).to(ACC)
    du = tl.load(du_ptr + offs, mask=ok, other=0.0).to(ACC)
    vg = tl.load(vg_ptr + offs, mask=ok, other=0.0).to(ACC)
    return u - (vg - h[:, None] * du)


@triton.jit
def _kernel(u_ptr, du_ptr, vg_ptr, t_ptr, r_ptr, loss_ptr, raw_ptr, grad_ptr,
            R, D, p, eps,
            P_ONE: tl.constexpr, NEED_GRAD: tl.constexpr, ONE_TILE: tl.constexpr,
            ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < R
    t = tl.load(t_ptr + rows, mask=r_ok, other=0.0).to(ACC)
    r = tl.load(r_ptr + rows, mask=r_ok, other=0.0).to(ACC)
    h = tl.minimum(tl.maximum(t - r, 0.0), 1.0)
    base = rows[:, None].to(tl.int64) * D
    if ONE_TILE:  # D <= BLOCK_D: diff stays in registers for the gradient
        ok = r_ok[:, None] & (cols[None, :] < D)
        diff = _diff(u_ptr, du_ptr, vg_ptr, base + cols[None, :], ok, h, ACC)
        big_l = tl.sum(diff * diff, axis=1)
    else:
        big_l = tl.zeros((BLOCK_R,), dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            ok = r_ok[:, None] & ((d0 + cols)[None, :] < D)
            diff = _diff(u_ptr, du_ptr, vg_ptr, base + d0 + cols[None, :], ok, h, ACC)
            big_l += tl.sum(diff * diff, axis=1)
    if P_ONE:  # noqa: SIM108 (a constexpr branch: p = 1 skips the exp2/log2 round trip)
        w = big_l + eps
    else:
        w = tl.exp2(p * tl.log2(big_l + eps))
    tl.store(loss_ptr + rows, (big_l / w).to(loss_ptr.dtype.element_ty), mask=r_ok)
    tl.store(raw_ptr + rows, big_l.to(raw_ptr.dtype.element_ty), mask=r_ok)
    if NEED_GRAD:
        scale = 2.0 / w
        if ONE_TILE:
            g = diff * scale[:, None]
            tl.store(grad_ptr + base + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=ok)
        else:
            for d0 in range(0, D, BLOCK_D):
                ok = r_ok[:, None] & ((d0 + cols)[None, :] < D)
                offs = base + d0 + cols[None, :]
                g = _diff(u_ptr, du_ptr, vg_ptr, offs, ok, h, ACC) * scale[:, None]
                tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=ok)


def _outputs(u: torch.Tensor, t: torch.Tensor, r: torch.Tensor, need_grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty (loss, L, dloss/du): shared by the op and its fake (shape-only) kernel."""
    out_dtype = torch.promote_types(u.dtype, torch.promote_types(t.dtype, r.dtype))
    loss = torch.empty(u.shape[:-1], dtype=out_dtype, device=u.device)
    raw = torch.empty(u.shape[:-1], dtype=out_dtype, device=u.device)
    grad = torch.empty(u.shape if need_grad else (0,), dtype=u.dtype, device=u.device)
    return loss, raw, grad


@triton_op("vgm2p_fast::triton_meanflow_target_loss", mutates_args=())
def _loss_op(u: torch.Tensor, dudt: torch.Tensor, v_g: torch.Tensor, t: torch.Tensor,
             r: torch.Tensor, norm_p: float, norm_eps: float, need_grad: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, L, dloss/du); dloss/du is empty unless ``need_grad``."""
    u, dudt, v_g, t, r = (a.contiguous() for a in (u, dudt, v_g, t, r))
    d = u.shape[-1]
    rows = u.numel() // d if d else 0
    loss, raw, grad = _outputs(u, t, r, need_grad)
    if rows == 0 or d == 0:  # nothing to launch: L = 0 on every (possibly zero) row
        return loss.zero_(), raw.zero_(), grad.zero_()
    block_r, block_d = row_blocks(d)
    acc = tl.float64 if loss.dtype == torch.float64 else tl.float32
    wrap_triton(_kernel)[(triton.cdiv(rows, block_r),)](
        u, dudt, v_g, t, r, loss, raw, grad, rows, d, float(norm_p), float(norm_eps),
        P_ONE=norm_p == 1.0, NEED_GRAD=need_grad, ONE_TILE=d <= block_d, ACC=acc,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=ROW_NUM_WARPS)
    return loss, raw, grad


@_loss_op.register_fake
def _loss_fake(u, dudt, v_g, t, r, norm_p, norm_eps, need_grad):
    return _outputs(u, t, r, need_grad)


def _setup_context(ctx, inputs, output) -> None:
    _, raw, grad = output
    ctx.save_for_backward(grad)
    ctx.mark_non_differentiable(raw, grad)


def _backward(ctx, grad_loss, _grad_raw, _grad_grad):
    (grad,) = ctx.saved_tensors
    grad_u = (grad_loss.unsqueeze(-1) * grad).to(grad.dtype)
    return grad_u, None, None, None, None, None, None, None


_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _ForwardAD(torch.autograd.Function):
    """The op with a forward-mode rule, used while forward AD is active only (see
    ``forward_ad_active``): ``t_loss = sum_d dloss/du * t_u``, the kernel's own dloss/du. The
    target, the weight and ``L`` are stop-gradients in both modes (as in the reference): the
    tangents of dudt, v_g, t and r do not reach the loss."""

    @staticmethod
    def forward(u, dudt, v_g, t, r, norm_p, norm_eps, need_grad):
        return _loss_op(u, dudt, v_g, t, r, norm_p, norm_eps, need_grad)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _setup_context(ctx, inputs, output)
        ctx.save_for_forward(output[2])  # dloss/du
        ctx.loss_dtype = output[0].dtype

    @staticmethod
    def jvp(ctx, t_u, *_):
        if t_u is None:
            return None, None, None
        (grad,) = ctx.saved_tensors
        return (grad * t_u).sum(-1).to(ctx.loss_dtype), None, None

    backward = staticmethod(_backward)


def meanflow_target_loss(u: torch.Tensor, dudt: torch.Tensor, v_g: torch.Tensor,
                         t: torch.Tensor, r: torch.Tensor, norm_p: float = 1.0,
                         norm_eps: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backend of :func:`vgm2p_fast.ops.meanflow_target_loss` (validated there).

    ``u, dudt, v_g (..., D)``, ``t, r (...)`` -> ``loss (...)`` with autograd into ``u`` only,
    and ``L (...)`` detached; both in the promoted dtype of (u, t, r), like the reference.
    """
    check_device(u)
    if forward_ad_active():  # dloss/du is computed for the tangent: see _ForwardAD
        loss, raw, _ = _ForwardAD.apply(u, dudt, v_g, t, r, float(norm_p), float(norm_eps), True)
        return loss, raw
    need_grad = torch.is_grad_enabled() and u.requires_grad
    loss, raw, _ = _loss_op(u, dudt, v_g, t, r, float(norm_p), float(norm_eps), need_grad)
    return loss, raw
