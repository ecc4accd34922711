"""``cfg_sample``: guidance, one-step update, clip + rescale and masked argmax against a float64
formula written out here; masks are never violated; invalid input is refused by name."""

import pytest
import torch

from vgm2p_fast.ops import cfg_sample

SHAPES = [(1, 1), (7, 3), (2, 5, 6), (33, 17)]  # (..., D): 1 row, D = 1, odd sizes


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z, u_c, u_n = (torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                   for _ in range(3))
    low = (-2.0 - torch.rand(shape[-1], generator=gen, dtype=torch.float64)).to(dtype)
    high = (0.5 + torch.rand(shape[-1], generator=gen, dtype=torch.float64)).to(dtype)
    return z, u_c, u_n, low, high


def _oracle(z, u_c, u_n, w, step, low, high):
    """Continuous actions in float64."""
    z, u_c = z.double(), u_c.double()
    u = u_c if u_n is None else u_n.double() + w * (u_c - u_n.double())
    x = (z - step * u).clamp(-1.0, 1.0)
    if low is None:
        return x
    lo, hi = low.double(), high.double()
    return lo + (x + 1.0) / 2.0 * (hi - lo)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("guided", "w", "step", "bounds"),
                         [(True, 2.5, 1.0, True), (True, 1.0, 0.5, False),
                          (False, 1.0, 1.0, True), (True, 0.0, 1.0, False)])
def test_torch_continuous_matches_formula(shape, dtype, guided, w, step, bounds):
    z, u_c, u_n, low, high = _inputs(shape, dtype)
    u_n = u_n if guided else None
    low, high = (low, high) if bounds else (None, None)
    a = cfg_sample(z, u_c, u_n, w, step=step, low=low, high=high, backend="torch")
    want = _oracle(z, u_c, u_n, w, step, low, high)
    assert a.shape == z.shape and a.dtype == dtype
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(a.double(), want, **tol)
    lo = -1.0 if low is None else low.double()
    hi = 1.0 if high is None else high.double()
    assert bool(((a.double() >= lo - 1e-6) & (a.double() <= hi + 1e-6)).all())


@pytest.mark.parametrize("shape", SHAPES[1:])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_discrete_masked_argmax(shape, dtype):
    z, u_c, u_n, _, _ = _inputs(shape, dtype)
    gen = torch.Generator().manual_seed(5)
    avail = torch.rand(shape, generator=gen) < 0.5
    avail[..., 0] |= ~avail.any(-1)  # every row keeps one action
    x = z.double() - (u_n.double() + 2.0 * (u_c.double() - u_n.double()))
    # make an unavailable action the global best of every row that has one
    masked_rows = ~avail.all(-1)
    first_bad = (~avail).to(torch.int64).argmax(-1)
    x_boost = x.clone()
    x_boost.scatter_(-1, first_bad[..., None], 100.0)
    x = torch.where(masked_rows[..., None], x_boost, x)
    z = (x + (u_n.double() + 2.0 * (u_c.double() - u_n.double()))).to(dtype)
    a = cfg_sample(z, u_c, u_n, 2.0, avail=avail, discrete=True, backend="torch")
    assert a.shape == shape[:-1] and a.dtype == torch.int64
    assert bool(avail.gather(-1, a[..., None]).all()), "an unavailable action was returned"
    want = x.masked_fill(~avail, float("-inf")).argmax(-1)
    assert torch.equal(a, want)
    unmasked = cfg_sample(z, u_c, u_n, 2.0, discrete=True, backend="torch")
    assert torch.equal(unmasked[masked_rows], first_bad[masked_rows])


def test_all_false_mask_row_names_row_and_agent():
    avail = torch.ones(3, 4, 5, dtype=torch.bool)
    avail[1, 2] = False
    z = torch.zeros(3, 4, 5)
    with pytest.raises(ValueError, match=r"avail: row 1, agent 2 marks every action unavailable"):
        cfg_sample(z, z, avail=avail, discrete=True, backend="torch")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z": torch.zeros(())}, r"z: expected at least 1 dimensions"),
        ({"u_cond": torch.zeros(4, 2)}, r"u_cond: expected shape \(4, 3\), found \(4, 2\)"),
        ({"u_null": torch.zeros(4, 3, dtype=torch.float64)}, r"u_null: expected dtype in"),
        ({"u_null": torch.zeros(4, 3, device="meta")}, r"u_null: expected a tensor on cpu"),
        ({"low": torch.zeros(3)}, r"low/high: expected both or neither"),
        ({"low": torch.zeros(2), "high": torch.ones(2)}, r"low: expected shape \(3\)"),
        ({"avail": torch.ones(4, 3, dtype=torch.bool)}, r"avail: expected None for continuous"),
        ({"discrete": True, "low": -torch.ones(3), "high": torch.ones(3)},
         r"low/high: expected None for discrete"),
        ({"discrete": True, "avail": torch.ones(4, 3)}, r"avail: expected dtype in \(bool\)"),
        ({"discrete": True, "avail": torch.ones(4, 2, dtype=torch.bool)},
         r"avail: expected shape \(4, 3\)"),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, match):
    args = {"z": torch.zeros(4, 3), "u_cond": torch.zeros(4, 3), "u_null": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cfg_sample(**args, backend="torch")
