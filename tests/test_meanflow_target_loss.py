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


# ---------------------------------------------------------------- triton (interpreter on CPU)
triton = pytest.importorskip("triton", reason="the triton backend needs `pip install triton`")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: TRITON_INTERPRET=1 (conftest)


def _loss_and_grad(args, p, eps, g, backend):
    u = args[0].detach().clone().requires_grad_()
    loss, raw = meanflow_target_loss(u, *args[1:], p, eps, backend=backend)
    (loss * g).sum().backward()
    return loss.detach(), raw, u.grad


@pytest.mark.parametrize(("lead", "d"), [*SHAPES, ((3,), 1100)])  # 1100: the 2-chunk path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("p", "eps"), [(1.0, 0.01), (0.5, 0.1)])
def test_triton_matches_torch(lead, d, dtype, p, eps):
    args = [a.to(DEVICE) for a in _inputs(lead, d, dtype, seed=1)]
    g = torch.randn(lead, dtype=dtype, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = _loss_and_grad(args, p, eps, g, "triton")
    want = _loss_and_grad(args, p, eps, g, "torch")
    tol = {"atol": 1e-5, "rtol": 2e-5} if dtype == torch.float32 else {}
    assert not got[1].requires_grad
    for name, a, e in zip(("loss", "L", "grad u"), got, want):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("lead", "d"), [((37,), 6), ((4, 5), 17)])
def test_triton_low_precision_within_reference_error(lead, d, dtype, close_to_oracle):
    args = [a.to(DEVICE) for a in _inputs(lead, d, dtype, seed=3)]
    g = torch.randn(lead, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got = _loss_and_grad(args, 1.0, 0.01, g.to(dtype), "triton")
    ref = _loss_and_grad(args, 1.0, 0.01, g.to(dtype), "torch")
    oracle = _oracle(*args, 1.0, 0.01, g)
    for name, a, r, o in zip(("loss", "L", "grad u"), got, ref, oracle):
        assert a.dtype == dtype
        close_to_oracle(a, r, o, name)


def test_triton_mixed_time_dtype_and_no_grad():
    """float32 times with float16 rows promote like the reference; without a gradient the
    kernel skips dloss/du and still returns the same rows."""
    u, dudt, v_g, t, r = (a.to(DEVICE) for a in _inputs((9,), 5, torch.float16, seed=5))
    t, r = t.float(), r.float()
    with torch.no_grad():
        got = meanflow_target_loss(u, dudt, v_g, t, r, backend="triton")
    want = meanflow_target_loss(u, dudt, v_g, t, r, backend="torch")
    for a, e in zip(got, want):
        assert a.dtype == e.dtype == torch.float32
        torch.testing.assert_close(a, e, atol=1e-3, rtol=1e-3)


def test_triton_op_registration_passes_opcheck(opcheck_utils):
    from torch.library import opcheck

    import vgm2p_fast.kernels.meanflow_target_loss  # noqa: F401  (registers the op)

    u, dudt, v_g, t, r = (a.to(DEVICE) for a in _inputs((4, 3), 5, torch.float32))
    u.requires_grad_()
    opcheck(torch.ops.vgm2p_fast.triton_meanflow_target_loss, (u, dudt, v_g, t, r, 1.0, 0.01,
                                                              True),
            test_utils=opcheck_utils)


@pytest.mark.parametrize("share", [True, False])
def test_policy_meanflow_loss_triton_matches_torch(share):
    """MeanFlowPolicy.meanflow_loss with every op on triton (layers, JVP, loss) vs torch, same
    generator seed: same loss and same gradients for every parameter."""
    import vgm2p_fast as vf

    grads, losses = [], []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)  # same initial weights
        policy = vf.MeanFlowPolicy(5, 3, 2, hidden_dims=(24, 17), share_parameters=share,
                                   backend=backend).to(DEVICE)
        gen = torch.Generator().manual_seed(1)
        obs = torch.randn(6, 2, 5, generator=gen).to(DEVICE)
        actions = (torch.rand(6, 2, 3, generator=gen) * 2 - 1).to(DEVICE)
        cond = torch.randint(0, 2, (6,), generator=gen).to(DEVICE)
        loss, _ = policy.meanflow_loss(obs, actions, cond,
                                       generator=torch.Generator(DEVICE).manual_seed(2))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in policy.named_parameters()})
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize(("lead", "d"), [((7,), 3), ((2, 5), 6)])
@pytest.mark.parametrize(("p", "eps"), [(1.0, 0.01), (0.5, 0.1)])
def test_forward_mode_only_u_reaches_the_loss(lead, d, p, eps):
    """torch.func.jvp of the loss: ``sum_d dloss/du t_u`` on both backends (the triton op had no
    forward rule and gave zeros); the target and the weight are stop-gradients, so tangents
    on dudt, v_g, t and r do not move it, and L has no tangent."""
    args = [a.to(DEVICE) for a in _inputs(lead, d, torch.float64, seed=4)]
    gen = torch.Generator().manual_seed(5)
    tans = [torch.randn(a.shape, generator=gen, dtype=torch.float64).to(DEVICE) for a in args]
    ones = torch.ones(lead, dtype=torch.float64, device=DEVICE)
    _, _, grad = _oracle(*args, p, eps, ones)
    want = (grad * tans[0]).sum(-1)
    assert want.abs().max() > 0
    for backend in ("triton", "torch"):
        _, (t_loss, t_raw) = torch.func.jvp(
            lambda *a, be=backend: meanflow_target_loss(*a, p, eps, backend=be),
            tuple(args), tuple(tans))
        torch.testing.assert_close(t_loss, want, rtol=1e-10, atol=1e-10, msg=backend)
        assert not t_raw.any(), backend
