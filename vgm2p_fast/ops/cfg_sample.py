"""``cfg_sample``: classifier-free-guided MeanFlow step and action decoding (DESIGN 1.2).

    u_g = u_null + w (u_c - u_null)          (u_g = u_c when no u_null is given, or w = 1)
    x   = z - step * u_g                     (one-step sampling: z = e ~ N(0, I), step = 1)
    continuous:  a = low + (clip(x, -1, 1) + 1) / 2 * (high - low)
    discrete:    a = argmax over available actions of x     (x is the {-1,+1}-scaled one-hot)

An unavailable action is never returned, whatever its score: the mask is applied with -inf.
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_avail, check_tensor
from ..backends import implementation

IMPLEMENTED = ("torch", "triton")


def cfg_sample_ref(
    z: torch.Tensor,
    u_cond: torch.Tensor,
    u_null: torch.Tensor | None = None,
    guidance: float = 1.0,
    step: float = 1.0,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
    avail: torch.Tensor | None = None,
    discrete: bool = False,
) -> torch.Tensor:
    """Pure-torch reference; same contract as :func:`cfg_sample`."""
    u = u_cond if u_null is None else torch.lerp(u_null, u_cond, guidance)
    x = z - step * u
    if discrete:
        if avail is not None:
            x = x.masked_fill(~avail, float("-inf"))
        return x.argmax(dim=-1)
    x = x.clamp(-1.0, 1.0)
    if low is None or high is None:
        return x
    return low + (x + 1.0) * (0.5 * (high - low))


def check_decoding(z: torch.Tensor, low: torch.Tensor | None, high: torch.Tensor | None,
                   avail: torch.Tensor | None, discrete: bool) -> None:
    """Validate the decoding arguments against the noise ``z (..., D)``: ``avail`` (..., D)
    bool with a True per row, for discrete actions only; ``low, high`` (D,) (both or neither),
    for continuous actions only. Shared by ``cfg_sample`` and ``mlp_cfg_sample``."""
    if discrete:
        if low is not None or high is not None:
            raise ValueError("low/high: expected None for discrete actions, found bounds")
        if avail is not None:
            check_tensor("avail", avail, shape=tuple(z.shape), dtypes=(torch.bool,),
                         device=z.device)
            check_avail(avail, "avail")
        return
    if avail is not None:
        raise ValueError("avail: expected None for continuous actions, found a mask")
    if (low is None) != (high is None):
        raise ValueError("low/high: expected both or neither, found only one")
    if low is not None:
        for name, b in (("low", low), ("high", high)):
            check_tensor(name, b, shape=(z.shape[-1],), dtypes=(z.dtype,), device=z.device)


def cfg_sample(
    z: torch.Tensor,
    u_cond: torch.Tensor,
    u_null: torch.Tensor | None = None,
    guidance: float = 1.0,
    *,
    step: float = 1.0,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
    avail: torch.Tensor | None = None,
    discrete: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Guided sampling step and action decoding.

    Args:
        z: (..., D) noise e (or the current sample for a multi-step last step).
        u_cond: (..., D) average velocity under the advantageous condition token.
        u_null: (..., D) average velocity under the null token, or None (no guidance).
        guidance: test-time guidance scale w (1 = no extra guidance).
        step: t - r of this step (1 for one-step sampling).
        low, high: (D,) bounds of the environment's actions (continuous only); None keeps [-1, 1].
        avail: (..., D) bool availability mask (discrete only); every row needs one True.
        discrete: decode by masked argmax instead of clipping.
        backend: ``auto`` (default), ``torch`` or ``triton``.

    Returns:
        continuous: (..., D) actions in [low, high]; discrete: (...) int64 action ids.
    """
    check_tensor("z", z, min_ndim=1, dtypes=FLOAT_DTYPES)
    check_tensor("u_cond", u_cond, shape=tuple(z.shape), dtypes=(z.dtype,), device=z.device)
    if u_null is not None:
        check_tensor("u_null", u_null, shape=tuple(z.shape), dtypes=(z.dtype,), device=z.device)
    check_decoding(z, low, high, avail, discrete)
    fn = implementation("cfg_sample", IMPLEMENTED, z.device, backend, cfg_sample_ref)
    return fn(z, u_cond, u_null, guidance, step, low, high, avail, discrete)
