"""``meanflow_target_loss``: per-row loss, logged error and the gradient into ``u`` against a
hand-written float64 formula (MeanFlow eq. 11 with the JVP target)."""

import pytest
import torch

from vgm2p_fast.ops import meanflow_target_loss

# leading shape, D: 1 row, D = 1, odd sizes, several leading dims
SHAPES = [((1,), 1), ((7,), 3), ((2, 5), 6), ((33,), 17)]


def _inputs(lead, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    u, dudt, v_g = mk(*lead, d), mk(*lead, d), mk(*lead, d)
    # t - r covers < 0, [0, 1] and > 1, so both ends of the clip are exercised
    t = torch.rand(lead, generator=gen, dtype=torch.float64) * 1.6 - 0.1
    r = torch.rand(lead, generator=gen, dtype=torch.float64) * 0.8
    return [a.to(dtype) for a in (u, dudt, v_g, t, r)]


def _oracle(u, dudt, v_g, t, r, p, eps, g):
    """(loss, L, d sum(g * loss) / du) written out in float64."""
    u, dudt, v_g, t, r, g = (a.double() for a in (u, dudt, v_g, t, r, g))
    h = torch.minimum(torch.maximum(t - r, torch.zeros_like(t)), torch.ones_like(t))
    diff = u - (v_g - h[..., None] * dudt)
    big_l = (diff * diff).sum(-1)
    w = (big_l + eps) ** p
    return big_l / w, big_l, g[..., None] * 2.0 * diff / w[..., None]


@pytest.mark.parametrize(("lead", "d"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("p", "eps"), [(1.0, 0.01), (0.5, 0.1), (0.0, 0.01)])
def test_torch_matches_float64_formula(lead, d, dtype, p, eps):
    u, dudt, v_g, t, r = _inputs(lead, d, dtype)
    g = torch.randn(lead, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u.requires_grad_()
    dudt.requires_grad_()
    loss, raw = meanflow_target_loss(u, dudt, v_g, t, r, p, eps, backend="torch")
    (loss * g.to(dtype)).sum().backward()
    loss_o, raw_o, grad_o = _oracle(u.detach(), dudt.detach(), v_g, t, r, p, eps, g)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    assert loss.shape == lead and raw.shape == lead and not raw.requires_grad
    torch.testing.assert_close(loss.detach().double(), loss_o, **tol)
    torch.testing.assert_close(raw.double(), raw_o, **tol)
    torch.testing.assert_close(u.grad.double(), grad_o, **tol)
    assert dudt.grad is None  # the target is a stop-gradient


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"u": torch.zeros(())}, r"u: expected at least 1 dimensions, found shape \(\)"),
        ({"dudt": torch.zeros(4, 2)}, r"dudt: expected shape \(4, 3\) \(the shape of u\)"),
        ({"v_g": torch.zeros(4, 3, dtype=torch.float64)}, r"v_g: expected dtype in \(float32\)"),
        ({"t": torch.zeros(3)}, r"t: expected shape \(4\), found \(3,\)"),
        ({"r": torch.zeros(4, device="meta")}, r"r: expected a tensor on cpu"),
        ({"r": torch.zeros(4, dtype=torch.int64)}, r"r: expected dtype in"),
        ({"norm_eps": 0.0}, r"norm_eps must be > 0 and norm_p >= 0, found 0.0"),
        ({"norm_p": -1.0}, r"norm_eps must be > 0 and norm_p >= 0, found 0.01, -1.0"),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, match):
    args = {"u": torch.zeros(4, 3), "dudt": torch.zeros(4, 3), "v_g": torch.zeros(4, 3),
            "t": torch.zeros(4), "r": torch.zeros(4)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        meanflow_target_loss(**args, backend="torch")
