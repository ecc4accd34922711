"""``gae``: batched generalised advantage estimation and lambda-returns (DESIGN 1.1).

    delta_t = r_t + gamma (1 - terminal_t) V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma lam (1 - done_t) A_{t+1}          (A_T = 0)
    G_t     = A_t + V(s_t)                                      (the TD(lambda) return)

``done`` (terminal or truncation) cuts the trace; ``terminal`` also removes the bootstrap, so a
truncated step still bootstraps from ``next_value``. Same semantics as TorchRL's
``generalized_advantage_estimate``. Time is the last dimension; any leading dims are independent
sequences. A flat dataset (episodes back to back, boundaries marked by ``done``) is one
``(T_total,)`` sequence: the cut at each ``done`` keeps episodes independent without padding.
"""

from __future__ import annotations

import torch

from .._backend import implementation
from .._checks import check_same_shape, check_tensor

IMPLEMENTED = ("torch", "ext")
_VALUE_DTYPES = (torch.float32, torch.float64)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.float32, torch.float64)


def gae_ref(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminal: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference: a reverse loop over T, vectorised over the leading dims."""
    not_term = 1.0 - terminal.to(reward.dtype)
    carry = gamma * lam * (1.0 - done.to(reward.dtype))
    delta = reward + gamma * not_term * next_value - value
    adv = torch.empty_like(delta)
    acc = torch.zeros_like(delta[..., 0])
    for i in range(delta.shape[-1] - 1, -1, -1):
        acc = delta[..., i] + carry[..., i] * acc
        adv[..., i] = acc
    return adv, adv + value


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminal: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and lambda-returns for sequences with time last.

    Args:
        reward, value, next_value: (..., T) float32 or float64, same dtype.
        done: (..., T) bool/uint8/float; 1 where the trace is cut (terminal or truncation).
        terminal: (..., T) bool/uint8/float; 1 where the episode ended without bootstrap.
        gamma: discount in [0, 1]; lam: GAE lambda in [0, 1].
        backend: ``auto`` (default: the extension when built), ``torch`` or ``ext``.

    Returns:
        ``advantage`` (..., T) and ``lambda_return = advantage + value`` (..., T), no autograd.
    """
    names = ("reward", "value", "next_value", "done", "terminal")
    tensors = (reward, value, next_value, done, terminal)
    check_tensor("reward", reward, min_ndim=1, dtypes=_VALUE_DTYPES)
    for name, x in zip(names[1:3], tensors[1:3]):
        check_tensor(name, x, dtypes=(reward.dtype,), device=reward.device)
    for name, x in zip(names[3:], tensors[3:]):
        check_tensor(name, x, dtypes=_MASK_DTYPES, device=reward.device)
    check_same_shape(names, tensors)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam: expected values in [0, 1], found {gamma}, {lam}")
    with torch.no_grad():
        fn = implementation("gae", IMPLEMENTED, reward.device, backend, gae_ref)
        return fn(reward, value, next_value, done, terminal, float(gamma), float(lam))
