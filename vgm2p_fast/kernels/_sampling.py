"""The sampling step shared by ``cfg_sample`` and ``mlp_cfg_sample`` (Triton device functions):

    u = u_null + w (u_c - u_null)      x = z - step u
    continuous: a = low + (clip(x, -1, 1) + 1) / 2 (high - low)
    discrete:   a = argmax_k { x_k if avail_k else -inf }   (first index on ties, like torch)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def guided_step(z, u_c, u_n, w, step, HAS_NULL: tl.constexpr):
    """z - step (u_null + w (u_c - u_null)) (u = u_c without a null input)."""
    if HAS_NULL:
        u_c = u_n + w * (u_c - u_n)
    return z - step * u_c


@triton.jit
def decode_store(x, rows, cols, d0, r_ok, ok, out_ptr, low_ptr, high_ptr, avail_ptr, D,
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


def empty_actions(z: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The empty actions tensor: ``(..., D)`` like ``z`` (continuous) or ``(...)`` int64
    (discrete); shared by the ops and their fake kernels."""
    if discrete:
        return torch.empty(z.shape[:-1], dtype=torch.int64, device=z.device)
    return torch.empty_like(z, memory_format=torch.contiguous_format)
