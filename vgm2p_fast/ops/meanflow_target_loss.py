"""``meanflow_target_loss``: MeanFlow target and adaptive-weighted loss per row (DESIGN 1.2).

    u_tgt = stopgrad(v_g - clip(t - r, 0, 1) * du/dt)
    L     = sum_d (u - u_tgt)^2
    loss  = L / stopgrad((L + eps)^p)        (adaptive weight, MeanFlow eq. 11; p = 1, eps = 0.01)

Only ``u`` receives a gradient: ``dloss/du = 2 (u - u_tgt) / (L + eps)^p``; in forward mode
likewise only the tangent of ``u`` reaches the loss, ``t_loss = sum_d dloss/du * t_u``, on every
backend (the triton one has that rule; tests/test_meanflow_target_loss.py checks it).
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_same_shape, check_tensor
from ..backends import implementation

IMPLEMENTED = ("torch", "triton")


def meanflow_target_loss_ref(
    u: torch.Tensor,
    dudt: torch.Tensor,
    v_g: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    norm_p: float = 1.0,
    norm_eps: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference; same contract as :func:`meanflow_target_loss`."""
    # detach, not only no_grad: the target is a stop-gradient for forward-mode tangents too
    u_tgt = (v_g - (t - r).clamp(0.0, 1.0).unsqueeze(-1) * dudt).detach()
    err = (u - u_tgt).square().sum(-1)
    raw = err.detach()
    weight = (raw + norm_eps).pow(norm_p)
    return err / weight, raw


def meanflow_target_loss(
    u: torch.Tensor,
    dudt: torch.Tensor,
    v_g: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    norm_p: float = 1.0,
    norm_eps: float = 0.01,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row MeanFlow loss with the JVP target and adaptive weighting.

    Args:
        u: (..., D) average velocity u(z_t, r, t), the only input that gets a gradient.
        dudt: (..., D) total derivative du/dt = v_g . d_z u + d_t u (treated as a constant).
        v_g: (..., D) guided instantaneous velocity (v itself without guidance).
        t, r: (...) times with r <= t (t - r is clipped to [0, 1]).
        norm_p, norm_eps: adaptive weight ``1 / (L + eps)^p``; p = 0 gives the plain squared error.
        backend: ``auto`` (default), ``torch`` or ``triton``.

    Returns:
        ``loss`` (...) = L / stopgrad((L + eps)^p) with autograd into ``u``, and ``L`` (...)
        detached (the unweighted squared error, for logging).
    """
    check_tensor("u", u, min_ndim=1, dtypes=FLOAT_DTYPES)
    for name, x in (("dudt", dudt), ("v_g", v_g)):
        check_tensor(name, x, dtypes=(u.dtype,), device=u.device)
    check_same_shape(("u", "dudt", "v_g"), (u, dudt, v_g))
    for name, x in (("t", t), ("r", r)):
        check_tensor(name, x, shape=tuple(u.shape[:-1]), dtypes=FLOAT_DTYPES, device=u.device)
    if norm_eps <= 0 or norm_p < 0:
        raise ValueError(f"norm_eps must be > 0 and norm_p >= 0, found {norm_eps}, {norm_p}")
    fn = implementation("meanflow_target_loss", IMPLEMENTED, u.device, backend,
                        meanflow_target_loss_ref)
    return fn(u, dudt, v_g, t, r, norm_p, norm_eps)
