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


# ---------------------------------------------------------------- triton (interpreter on CPU)
triton = pytest.importorskip("triton", reason="the triton backend needs `pip install triton`")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: TRITON_INTERPRET=1 (conftest)
TRITON_SHAPES = [(None, 1, 3, 5, 3), (None, 7, 13, 9, 4), (None, 70, 33, 65, 20),
                 (2, 5, 20, 17, 20), (3, 1, 9, 3, 9)]


def _run_with_grads(x, w, b, dx, activation, backend, g):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    xb, wb, bb = (*leaves, None) if b is None else leaves
    h, dh = linear_jvp(xb, wb, bb, dx, activation, backend=backend)
    (h * g).sum().backward()
    return h.detach(), dh, [t.grad for t in leaves]


@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_torch(shape, activation, dtype):
    x, w, b, dx = (t.to(DEVICE) for t in _inputs(shape, dtype, seed=2))
    g = torch.randn(*(shape[0],) * (shape[0] is not None), shape[1], shape[3], dtype=dtype,
                    generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got = _run_with_grads(x, w, b, dx, activation, "triton", g)
    want = _run_with_grads(x, w, b, dx, activation, "torch", g)
    tol = {"atol": 2e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    assert not got[1].requires_grad and got[0].dtype == dtype
    for name, a, e in zip(("h", "dh", "grad x", "grad weight", "grad bias"),
                          (got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(None, 37, 45, 70, 13), (2, 9, 24, 33, 24)])
def test_triton_low_precision_within_reference_error(shape, activation, dtype,
                                                      close_to_oracle):
    x, w, b, dx = (t.to(DEVICE) for t in _inputs(shape, dtype, seed=6))
    g = torch.randn(*(shape[0],) * (shape[0] is not None), shape[1], shape[3], dtype=dtype,
                    generator=torch.Generator().manual_seed(7)).to(DEVICE)
    got = _run_with_grads(x, w, b, dx, activation, "triton", g)
    ref = _run_with_grads(x, w, b, dx, activation, "torch", g)
    oracle = _run_with_grads(*(t.double() for t in (x, w, b, dx)), activation, "torch",
                             g.double())
    for name, a, r, o in zip(("h", "dh", "grad x", "grad weight", "grad bias"),
                             (got[0], got[1], *got[2]), (ref[0], ref[1], *ref[2]),
                             (oracle[0], oracle[1], *oracle[2])):
        assert a.dtype == dtype
        close_to_oracle(a, r, o, name)


def test_triton_strided_input_and_partial_grads():
    """x as the policy's per-agent view (B, N, F) -> (N, B, F) (not contiguous), no bias, no
    tangent, and only the weight asking for a gradient."""
    x, w, _, _ = _inputs((3, 6, 10, 7, 10), torch.float32, bias=False)
    x, w = x.to(DEVICE), w.to(DEVICE)
    x_view = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_view.is_contiguous()
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    h1, dh1 = linear_jvp(x_view, w1, None, None, "relu", backend="triton")
    h2, _ = linear_jvp(x_view, w2, None, None, "relu", backend="torch")
    assert dh1 is None
    h1.square().sum().backward()
    h2.square().sum().backward()
    torch.testing.assert_close(h1, h2, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(w1.grad, w2.grad, atol=2e-5, rtol=1e-4)


def test_triton_zero_rows_and_zero_tangent_columns():
    """No rows: empty outputs, zero weight/bias gradients (as torch). k = 0: zero tangent."""
    w = torch.randn(3, 5, device=DEVICE, requires_grad=True)
    b = torch.randn(3, device=DEVICE, requires_grad=True)
    h, dh = linear_jvp(torch.zeros(0, 5, device=DEVICE), w, b, torch.zeros(0, 2, device=DEVICE),
                       "silu", backend="triton")
    h.sum().backward()
    assert h.shape == dh.shape == (0, 3)
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    x = torch.randn(4, 5, device=DEVICE)
    _, dh = linear_jvp(x, w, b, torch.zeros(4, 0, device=DEVICE), "gelu_tanh", backend="triton")
    assert torch.equal(dh, torch.zeros(4, 3, device=DEVICE))


def test_triton_dw_split_over_row_chunks():
    """Enough rows that dW is summed over several row chunks (the split-K path)."""
    from vgm2p_fast.kernels.linear_jvp import dw_split

    shape = (None, 600, 16, 16, 16)
    assert dw_split(600, 16, 16, 1) > 1
    x, w, b, dx = (t.to(DEVICE) for t in _inputs(shape, torch.float32, seed=8))
    g = torch.randn(600, 16, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    got = _run_with_grads(x, w, b, dx, "silu", "triton", g)
    want = _run_with_grads(x, w, b, dx, "silu", "torch", g)
    for a, e in zip(got[2], want[2]):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


def test_triton_op_registration_passes_opcheck(opcheck_utils):
    from torch.library import opcheck

    import vgm2p_fast.kernels.linear_jvp  # noqa: F401  (registers the ops)

    x, w, b, dx = (t.to(DEVICE) for t in _inputs((None, 5, 7, 6, 3), torch.float32))
    x.requires_grad_()
    w.requires_grad_()
    opcheck(torch.ops.vgm2p_fast.triton_linear_jvp, (x, w, b, dx, "silu", True),
            test_utils=opcheck_utils)


def _fused_step(x, w, b, dx, v_g, t, r):
    """Layer -> loss -> sampling, every op on triton (the policy's training/acting ops)."""
    from vgm2p_fast.kernels.cfg_sample import cfg_sample
    from vgm2p_fast.kernels.linear_jvp import linear_jvp as layer
    from vgm2p_fast.kernels.meanflow_target_loss import meanflow_target_loss

    h, dh = layer(x, w, b, dx, "silu")
    loss, _ = meanflow_target_loss(h, dh, v_g, t, r)
    return loss.sum(), cfg_sample(h.detach(), dh, v_g, 2.0, 1.0)


def _fused_inputs():
    gen = torch.Generator().manual_seed(11)
    mk = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    x, w = mk(5, 7).requires_grad_(), mk(6, 7).requires_grad_()
    return x, w, mk(6), mk(5, 3), mk(6) * mk(5, 6), mk(5).abs(), mk(5).abs() * 0.1


def test_triton_ops_stay_whole_under_torch_compile_fullgraph():
    """fullgraph=True captures each op as one node (no graph break, fake kernels give the
    shapes); the captured graph runs to the eager results, gradients included. Under the
    interpreter only dynamo's capture is exercised; inductor's lowering needs CUDA (below)."""
    graphs = []

    def capture(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    args = _fused_inputs()
    got = torch.compile(_fused_step, fullgraph=True, backend=capture)(*args)
    want = _fused_step(*args)
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    for op in ("triton_linear_jvp", "triton_meanflow_target_loss", "triton_cfg_sample"):
        assert f"vgm2p_fast.{op}.default" in ops
    torch.testing.assert_close(got, want)
    (grad_got,) = torch.autograd.grad(got[0], args[0])
    (grad_want,) = torch.autograd.grad(want[0], args[0])
    torch.testing.assert_close(grad_got, grad_want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="inductor lowers triton_op to the "
                    "user kernels only on CUDA; this machine has no GPU")
def test_triton_ops_under_inductor_on_cuda():
    args = _fused_inputs()
    got = torch.compile(_fused_step, fullgraph=True)(*args)
    torch.testing.assert_close(got, _fused_step(*args))


@pytest.mark.parametrize("op", ["linear_jvp", "meanflow_target_loss", "cfg_sample",
                                "mlp_cfg_sample"])
def test_auto_picks_the_triton_kernels_on_cuda_only(op):
    """What the policy gets through backends.implementation: the Triton kernel for CUDA
    tensors under ``auto``, the torch reference on CPU even with the interpreter available."""
    import importlib

    from vgm2p_fast import backends
    from vgm2p_fast.ops import REGISTRY

    ref = object()
    kernel = getattr(importlib.import_module(f"vgm2p_fast.kernels.{op}"), op)
    assert backends.implementation(op, REGISTRY[op], torch.device("cuda"), None, ref) is kernel
    assert backends.implementation(op, REGISTRY[op], torch.device("cpu"), None, ref) is ref
    assert backends.implementation(op, REGISTRY[op], torch.device("cpu"), "triton", ref) is kernel


@pytest.mark.skipif(DEVICE == "cuda", reason="about CPU tensors reaching the kernels")
def test_cpu_tensors_without_the_interpreter_get_a_clear_error(monkeypatch):
    """TRITON_INTERPRET=1 set after triton was imported is not seen by triton: the kernels say
    so instead of failing inside triton."""
    from vgm2p_fast import BackendUnavailableError
    from vgm2p_fast.kernels import _common
    from vgm2p_fast.kernels.cfg_sample import cfg_sample
    from vgm2p_fast.kernels.meanflow_target_loss import meanflow_target_loss
    from vgm2p_fast.kernels.mlp_cfg_sample import mlp_cfg_sample
    from vgm2p_fast.ops import pack_mlp

    monkeypatch.setattr(_common, "INTERPRET", False)
    x = torch.zeros(2, 3)
    pack = pack_mlp([torch.zeros(4, 3), torch.zeros(3, 4)], [torch.zeros(4), torch.zeros(3)])
    calls = [lambda: linear_jvp(x, torch.zeros(4, 3), backend="triton"),
             lambda: meanflow_target_loss(x, x, x, torch.zeros(2), torch.zeros(2)),
             lambda: cfg_sample(x, x),
             lambda: mlp_cfg_sample(x, pack, x)]
    for call in calls:
        with pytest.raises(BackendUnavailableError, match="set TRITON_INTERPRET=1 before"):
            call()


# ---------------------------------------------------------------- forward-mode AD (issue 17)
@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("which", ["all", "bias only", "weight only"])
def test_triton_forward_mode_matches_func_jvp_of_the_torch_layer(shape, activation, which):
    """torch.func.jvp through the triton layer == torch.func.jvp of the hand-written float64
    layer, for tangents on (x, W, b) (before the fix: zeros, no error). ``dh`` is a
    stop-gradient on both backends: no tangent."""
    x, w, b, dx = (t.to(DEVICE) for t in _inputs(shape, torch.float64))
    gen = torch.Generator().manual_seed(9)
    tans = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(DEVICE)
            for t in (x, w, b)]
    if which != "all":
        keep = 2 if which == "bias only" else 1
        tans = [t if i == keep else torch.zeros_like(t) for i, t in enumerate(tans)]
    _, want = torch.func.jvp(lambda x, w, b: _layer(x, w, b, activation), (x, w, b), tuple(tans))
    assert want.abs().max() > 0
    for backend in ("triton", "torch"):
        (h, _), (t_h, t_dh) = torch.func.jvp(
            lambda x, w, b, be=backend: linear_jvp(x, w, b, dx, activation, backend=be),
            (x, w, b), tuple(tans))
        torch.testing.assert_close(t_h, want, rtol=1e-10, atol=1e-10, msg=backend)
        assert not t_dh.any(), backend
        torch.testing.assert_close(h, _layer(x, w, b, activation))


def test_triton_forward_ad_dual_level_and_reverse_mode_unchanged():
    """The torch.autograd.forward_ad API gives the same tangent; outside forward AD the plain
    op runs (reverse-mode gradients as before)."""
    import torch.autograd.forward_ad as fwad

    x, w, b, dx = (t.to(DEVICE) for t in _inputs((None, 7, 13, 9, 4), torch.float64))
    t_x = torch.ones_like(x)
    with fwad.dual_level():
        h = linear_jvp(fwad.make_dual(x, t_x), w, b, backend="triton")[0]
        got = fwad.unpack_dual(h).tangent
    _, want = torch.func.jvp(lambda x: _layer(x, w, b, "silu"), (x,), (t_x,))
    torch.testing.assert_close(got, want)
    g = torch.randn(7, 9, dtype=torch.float64).to(DEVICE)
    grads = [_run_with_grads(x, w, b, dx, "silu", be, g)[2] for be in ("triton", "torch")]
    for got_g, want_g in zip(*grads):
        torch.testing.assert_close(got_g, want_g)


@pytest.mark.parametrize("share", [True, False])
def test_policy_average_velocity_jvp_on_triton_layers(share):
    """The case of issue 17: torch.func.jvp of MeanFlowPolicy.average_velocity with the layers
    on triton equals the torch layers' (it used to return zeros)."""
    import vgm2p_fast as vf

    outs = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        policy = vf.MeanFlowPolicy(5, 3, 2, hidden_dims=(16, 12), share_parameters=share,
                                   backend=backend).to(DEVICE).double()
        gen = torch.Generator().manual_seed(1)
        z, obs = (torch.randn(4, 2, n, generator=gen, dtype=torch.float64).to(DEVICE)
                  for n in (3, 5))
        r = torch.zeros(4, 2, dtype=torch.float64, device=DEVICE)
        t = torch.full_like(r, 0.7)
        cond = torch.ones(4, dtype=torch.long, device=DEVICE)
        def u(z, t, p=policy, r=r, obs=obs, cond=cond):
            return p.average_velocity(z, r, t, obs, cond)

        outs.append(torch.func.jvp(u, (z, t), (torch.ones_like(z), torch.ones_like(t)))[1])
    assert outs[1].abs().max() > 0
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
