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


# ---------------------------------------------------------------- triton (interpreter on CPU)
triton = pytest.importorskip("triton", reason="the triton backend needs `pip install triton`")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: TRITON_INTERPRET=1 (conftest)


@pytest.mark.parametrize("shape", [*SHAPES, (3, 1100)])  # 1100: rows wider than one tile
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("guided", "w", "step", "bounds"),
                         [(True, 2.5, 1.0, True), (False, 1.0, 0.5, False)])
def test_triton_continuous_matches_torch(shape, dtype, guided, w, step, bounds):
    z, u_c, u_n, low, high = (a.to(DEVICE) for a in _inputs(shape, dtype, seed=1))
    kw = {"step": step, "low": low if bounds else None, "high": high if bounds else None}
    got = cfg_sample(z, u_c, u_n if guided else None, w, **kw, backend="triton")
    want = cfg_sample(z, u_c, u_n if guided else None, w, **kw, backend="torch")
    assert got.dtype == dtype and got.shape == want.shape
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("shape", [(7, 3), (2, 5, 6), (4, 1100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_discrete_matches_torch_masks_and_ties(shape, dtype):
    z, u_c, u_n, _, _ = (a.to(DEVICE) for a in _inputs(shape, dtype, seed=2))
    gen = torch.Generator().manual_seed(3)
    avail = (torch.rand(shape, generator=gen) < 0.5).to(DEVICE)
    avail[..., -1] = True
    # a tie between two available actions, the first one must win (torch.argmax's rule);
    # for the 1100-wide rows the tie spans the two 1024-wide chunks
    avail[..., 1] = True
    z[..., 1] = 50.0
    z[..., -1] = 50.0
    u_c[..., (1, -1)] = 0.0
    u_n[..., (1, -1)] = 0.0
    # the best raw score of row 0 sits on an unavailable action
    avail[(0,) * (len(shape) - 1) + (0,)] = False
    z[(0,) * (len(shape) - 1) + (0,)] = 1e4
    got = cfg_sample(z, u_c, u_n, 2.0, avail=avail, discrete=True, backend="triton")
    want = cfg_sample(z, u_c, u_n, 2.0, avail=avail, discrete=True, backend="torch")
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert bool((got == 1).all())
    assert bool(avail.gather(-1, got[..., None]).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision_within_reference_error(dtype, close_to_oracle):
    z, u_c, u_n, low, high = (a.to(DEVICE) for a in _inputs((37, 6), dtype, seed=4))
    got = cfg_sample(z, u_c, u_n, 2.5, low=low, high=high, backend="triton")
    ref = cfg_sample(z, u_c, u_n, 2.5, low=low, high=high, backend="torch")
    close_to_oracle(got, ref, _oracle(z, u_c, u_n, 2.5, 1.0, low, high), "actions")
    # discrete: where the float64 scores have a clear winner, both pick it
    x = z.double() - (u_n.double() + 2.5 * (u_c.double() - u_n.double()))
    top2 = x.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.1 * top2[:, 0].abs().clamp(min=1.0)
    got_d = cfg_sample(z, u_c, u_n, 2.5, discrete=True, backend="triton")
    assert bool(clear.any()) and torch.equal(got_d[clear], x.argmax(-1)[clear])


def test_triton_op_registration_passes_opcheck(opcheck_utils):
    from torch.library import opcheck

    import vgm2p_fast.kernels.cfg_sample  # noqa: F401  (registers the op)

    z, u_c, u_n, low, high = (a.to(DEVICE) for a in _inputs((5, 3), torch.float32))
    opcheck(torch.ops.vgm2p_fast.triton_cfg_sample,
            (z, u_c, u_n, 2.0, 1.0, low, high, None, False),
            test_utils=opcheck_utils)


def test_triton_has_no_derivative_and_says_so():
    """A forward-mode tangent (torch.func.jvp) or a gradient reaching the triton sampling step
    raises instead of giving zeros; the torch backend differentiates (its tangent is
    0.5 (high - low) (t_z - t_u) where |x| < 1)."""
    from vgm2p_fast import BackendUnavailableError

    z, u_c, _, low, high = (a.to(DEVICE) for a in _inputs((6, 3), torch.float32, seed=7))
    t_z = torch.ones_like(z)

    def sample(backend):
        return lambda z: cfg_sample(z * 0.1, u_c * 0.1, low=low, high=high, backend=backend)

    _, tangent = torch.func.jvp(sample("torch"), (z,), (t_z,))
    torch.testing.assert_close(tangent, (0.05 * (high - low)).expand_as(z))  # |x| < 1 here
    with pytest.raises(BackendUnavailableError, match="cfg_sample: the triton backend has no "
                       "forward-mode derivative"):
        torch.func.jvp(sample("triton"), (z,), (t_z,))
    with pytest.raises(RuntimeError, match="no autograd formula"):
        sample("triton")(z.clone().requires_grad_()).sum().backward()
