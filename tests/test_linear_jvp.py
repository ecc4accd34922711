"""``linear_jvp``: primal, tangent and gradients against independent oracles.

Oracle: ``torch.func.jvp`` of a hand-written ``act(x W^T + b)`` in float64 (tangent zero on the
columns ``dx`` does not cover), and autograd of that same function for the gradients.
"""

import math

import pytest
import torch

from vgm2p_fast.ops import linear_jvp

ACTS = ("silu", "relu", "gelu_tanh", "identity")
# (G or None, M, in, out, k): 1 row, odd sizes, k < in and k == in, non-power-of-two widths
SHAPES = [
    (None, 1, 3, 5, 3),
    (None, 7, 13, 9, 4),
    (None, 33, 40, 17, 40),
    (2, 1, 5, 3, 2),
    (3, 9, 12, 7, 12),
]


def _act(p: torch.Tensor, activation: str) -> torch.Tensor:
    """Independent activations (not the library's)."""
    if activation == "silu":
        return p / (1 + torch.exp(-p))
    if activation == "relu":
        return torch.where(p > 0, p, torch.zeros_like(p))
    if activation == "gelu_tanh":
        return 0.5 * p * (1 + torch.tanh(math.sqrt(2 / math.pi) * (p + 0.044715 * p**3)))
    return p


def _layer(x, w, b, activation):
    pre = torch.einsum("...mi,...oi->...mo", x, w)
    if b is not None:
        pre = pre + (b if w.dim() == 2 else b.unsqueeze(1))
    return _act(pre, activation)


def _inputs(shape, dtype, bias=True, seed=0):
    g, m, n_in, n_out, k = shape
    gen = torch.Generator().manual_seed(seed)
    lead = () if g is None else (g,)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, w, dx = mk(*lead, m, n_in), mk(*lead, n_out, n_in) / math.sqrt(n_in), mk(*lead, m, k)
    b = mk(*lead, n_out) if bias else None
    return [t if t is None else t.to(dtype) for t in (x, w, b, dx)]


def _oracle(x, w, b, dx, activation):
    """(h, dh) by torch.func.jvp in float64, and the gradients of sum(h * g)."""
    x, w, dx = x.double(), w.double(), dx.double()
    b = None if b is None else b.double()
    full_dx = torch.zeros_like(x)
    full_dx[..., : dx.shape[-1]] = dx
    h, dh = torch.func.jvp(lambda x_: _layer(x_, w, b, activation), (x,), (full_dx,))
    return h, dh


def _grads(x, w, b, g, fn):
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*leaves, *([None] if b is None else []))
    (out * g).sum().backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_matches_func_jvp_and_autograd(shape, activation, dtype):
    x, w, b, dx = _inputs(shape, dtype, bias=shape[1] != 1)
    h, dh = linear_jvp(x, w, b, dx, activation, backend="torch")
    h_ref, dh_ref = _oracle(x, w, b, dx, activation)
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    assert h.dtype == dtype and dh.dtype == dtype and not dh.requires_grad
    torch.testing.assert_close(h.double(), h_ref, **tol)
    torch.testing.assert_close(dh.double(), dh_ref, **tol)

    g = torch.randn(h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = _grads(x, w, b, g.to(dtype),
                 lambda x_, w_, b_: linear_jvp(x_, w_, b_, dx, activation, backend="torch")[0])
    want = _grads(x.double(), w.double(), None if b is None else b.double(), g,
                  lambda x_, w_, b_: _layer(x_, w_, b_, activation))
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        torch.testing.assert_close(a.double(), e, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def test_torch_without_tangent_returns_none():
    x, w, b, _ = _inputs((None, 4, 6, 5, 6), torch.float32)
    h, dh = linear_jvp(x, w, b, None, "silu", backend="torch")
    assert dh is None
    torch.testing.assert_close(h.double(), _layer(x.double(), w.double(), b.double(), "silu"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": torch.zeros(5)}, r"weight: expected 2 or 3 dimensions, found shape \(5,\)"),
        ({"x": torch.zeros(4, 7)}, r"x: expected shape \(\*, 6\), found \(4, 7\)"),
        ({"x": torch.zeros(4, 6, dtype=torch.float64)}, r"x: expected dtype in \(float32\)"),
        ({"x": torch.zeros(4, 6, device="meta")}, r"x: expected a tensor on cpu"),
        ({"bias": torch.zeros(4)}, r"bias: expected shape \(5\), found \(4,\)"),
        ({"dx": torch.zeros(4, 7)}, r"dx: expected shape \(4, 'k<=6'\), found \(4, 7\)"),
        ({"dx": torch.zeros(3, 2)}, r"dx: expected shape \(4, 'k<=6'\), found \(3, 2\)"),
        ({"dx": torch.zeros(4)}, r"dx: expected 2 dimensions, found shape \(4,\)"),
        ({"activation": "tanh"}, r"activation: expected one of .*found 'tanh'"),
        ({"weight": torch.zeros(5, 6, dtype=torch.int64)}, r"weight: expected dtype in"),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, match):
    args = {"x": torch.zeros(4, 6), "weight": torch.zeros(5, 6), "bias": torch.zeros(5),
            "dx": torch.zeros(4, 3), "activation": "silu"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        linear_jvp(**args, backend="torch")


def test_grouped_bias_shape_is_checked():
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 5\), found \(5,\)"):
        linear_jvp(torch.zeros(2, 3, 6), torch.zeros(2, 5, 6), torch.zeros(5), backend="torch")
