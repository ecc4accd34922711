"""``linear_jvp``: one MLP layer with its forward-mode tangent, fused (DESIGN section 2).

    pre = x W^T + b           h  = act(pre)
    dh  = act'(pre) * (dx W[:, :k]^T)          (k = dx.shape[-1] <= in_features)

The tangent ``dh`` sits inside MeanFlow's stop-gradient, so it is computed without autograd and
returned detached, for reverse and forward mode alike (``torch.func.jvp`` gives it no tangent);
only ``h`` carries a graph, and a forward-mode tangent on every backend. ``dx`` may cover only
the first ``k`` input columns: the policy's first layer has a non-zero tangent only on the noisy
action and the two time embeddings (the observation, agent id and condition columns have tangent
0), so the tangent matmul of that layer is ``k / in_features`` of the primal's (e.g. 38/96 for
HalfCheetah-6x1).

Compared with ``torch.func.jvp`` this saves the dual-tensor bookkeeping and the extra tensors
that forward-mode AD keeps for backward; the pre-activation is computed once and reused.

Layouts: shared weights ``x (M, in)``, ``weight (out, in)``, ``bias (out,)``, ``dx (M, k)``;
per-agent weights ``x (G, M, in)``, ``weight (G, out, in)``, ``bias (G, out)``, ``dx (G, M, k)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import FLOAT_DTYPES, check_tensor
from ..backends import implementation

ACTIVATIONS = ("silu", "relu", "gelu_tanh", "identity")
IMPLEMENTED = ("torch", "triton")
_GELU_K = math.sqrt(2.0 / math.pi)  # tanh-approximation constant of GELU


def activation_fn(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(pre)`` with autograd."""
    if activation == "silu":
        return F.silu(pre)
    if activation == "relu":
        return F.relu(pre)
    if activation == "gelu_tanh":
        return F.gelu(pre, approximate="tanh")
    return pre


def activation_grad(pre: torch.Tensor, activation: str) -> torch.Tensor | None:
    """``act'(pre)`` without autograd; None for the identity (derivative 1)."""
    if activation == "silu":
        s = torch.sigmoid(pre)
        # silu'(p) = s (1 + p (1 - s)), built in place: one temporary besides s
        return (1 - s).mul_(pre).add_(1).mul_(s)
    if activation == "relu":
        return (pre > 0).to(pre.dtype)
    if activation == "gelu_tanh":
        inner = torch.tanh(_GELU_K * (pre + 0.044715 * pre**3))
        d_inner = _GELU_K * (1 + 3 * 0.044715 * pre**2)
        return 0.5 * (1 + inner) + 0.5 * pre * (1 - inner**2) * d_inner
    return None


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    out = torch.bmm(x, weight.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)


def linear_jvp_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dx: torch.Tensor | None = None,
    activation: str = "silu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pure-torch ``linear_jvp`` (the reference and the CPU path); see the module docstring."""
    pre = _affine(x, weight, bias)
    h = activation_fn(pre, activation)
    if dx is None:
        return h, None
    with torch.no_grad():  # detach: no_grad stops reverse mode only, not forward-mode tangents
        w = weight.detach()[..., : dx.shape[-1]]
        dpre = torch.matmul(dx.detach(), w.transpose(-1, -2))
        grad = activation_grad(pre.detach(), activation)
        dh = dpre if grad is None else dpre.mul_(grad)
    return h, dh


def linear_jvp(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dx: torch.Tensor | None = None,
    activation: str = "silu",
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layer primal and tangent: ``h = act(x W^T + b)``, ``dh = act'(x W^T + b) * (dx W^T)``.

    Args:
        x: (M, in) with weight (out, in), or (G, M, in) with per-agent weight (G, out, in).
        bias: (out,) or (G, out), or None.
        dx: tangent of the first ``k`` input columns, (M, k) or (G, M, k); None for no tangent.
        activation: one of ``silu``, ``relu``, ``gelu_tanh``, ``identity``.
        backend: ``auto`` (default), ``torch`` or ``triton``.

    Returns:
        ``h`` (M, out) / (G, M, out) with autograd, and ``dh`` of the same shape (no autograd),
        or None when ``dx`` is None.
    """
    check_tensor("weight", weight, ndim=(2, 3), dtypes=FLOAT_DTYPES)
    grouped = weight.dim() == 3
    out_f, in_f = weight.shape[-2:]
    lead = (weight.shape[0], None) if grouped else (None,)
    check_tensor("x", x, shape=(*lead, in_f), dtypes=(weight.dtype,), device=weight.device)
    if bias is not None:
        check_tensor("bias", bias, shape=(*lead[:-1], out_f) if grouped else (out_f,),
                     dtypes=(weight.dtype,), device=weight.device)
    if dx is not None:
        check_tensor("dx", dx, ndim=x.dim(), dtypes=(weight.dtype,), device=weight.device)
        if dx.shape[:-1] != x.shape[:-1] or dx.shape[-1] > in_f:
            raise ValueError(f"dx: expected shape {(*x.shape[:-1], f'k<={in_f}')}, "
                             f"found {tuple(dx.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, found {activation!r}")
    fn = implementation("linear_jvp", IMPLEMENTED, weight.device, backend, linear_jvp_ref)
    return fn(x, weight, bias, dx, activation)
