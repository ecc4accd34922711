"""Triton ``cfg_sample``: classifier-free-guided sampling step and action decoding in one kernel.

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

``mlp_cfg_sample`` (``kernels/mlp_cfg_sample.py``) runs the whole policy MLP and then this
step (``_sampling.guided_step`` and ``_sampling.decode_store``) in one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import (
    ROW_NUM_WARPS,
    acc_dtype,
    check_device,
    forward_ad_active,
    no_derivative,
    row_blocks,
)
from ._sampling import decode_store, empty_actions, guided_step


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
        x = guided_step(z, u_c, u_n, w, step, HAS_NULL)
        best, best_i = decode_store(x, rows, cols, d0, r_ok, ok, out_ptr, low_ptr, high_ptr,
                                    avail_ptr, D, best, best_i, HAS_BOUNDS, DISCRETE)
    if DISCRETE:
        tl.store(out_ptr + rows, best_i.to(tl.int64), mask=r_ok)


@triton_op("vgm2p_fast::triton_cfg_sample", mutates_args=())
def _cfg_sample_op(z: torch.Tensor, u_cond: torch.Tensor, u_null: torch.Tensor | None,
                   guidance: float, step: float, low: torch.Tensor | None,
                   high: torch.Tensor | None, avail: torch.Tensor | None, discrete: bool
                   ) -> torch.Tensor:
    z, u_cond = z.contiguous(), u_cond.contiguous()
    u_null = None if u_null is None else u_null.contiguous()
    avail = None if avail is None else avail.contiguous()
    out = empty_actions(z, discrete)
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
    return empty_actions(z, discrete)


def cfg_sample(z: torch.Tensor, u_cond: torch.Tensor, u_null: torch.Tensor | None = None,
               guidance: float = 1.0, step: float = 1.0, low: torch.Tensor | None = None,
               high: torch.Tensor | None = None, avail: torch.Tensor | None = None,
               discrete: bool = False) -> torch.Tensor:
    """Triton backend of :func:`vgm2p_fast.ops.cfg_sample` (validated there).

    ``z, u_cond, u_null (..., D)``, ``low, high (D,)``, ``avail (..., D) bool`` -> continuous
    actions ``(..., D)`` in ``z.dtype`` or discrete ids ``(...)`` int64. No derivative: a
    gradient or a forward-mode tangent that reaches it raises ``BackendUnavailableError``.
    """
    check_device(z)
    args = (z, u_cond, u_null, float(guidance), float(step), low, high, avail, discrete)
    if forward_ad_active():  # a tangent reaching the sampling step raises, never gives 0
        return no_derivative("cfg_sample", _cfg_sample_op, *args)
    return _cfg_sample_op(*args)
