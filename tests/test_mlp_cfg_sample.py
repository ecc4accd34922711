"""``mlp_cfg_sample``: the reference against an independent float64 MLP + sampling formula, the
triton one-launch kernel (interpreter on CPU) against the reference for shared and per-agent
weights, guided and not, continuous and discrete with masks, low precision within the
reference's own error, the op contract (opcheck, refusals by name, no silent derivative), and
the policy's one-step ``act`` taking that path."""

import itertools
import math

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.ops import MLPPack, mlp_cfg_sample, mlp_cfg_sample_ref, mlp_fits, pack_mlp

HIDDEN = (24, 70, 17)  # 70 > BN = 64: two output tiles; odd widths everywhere
IN, D = 9, 5


def _layers(groups, dtype=torch.float32, seed=0, hidden=HIDDEN, d=D):
    """Weights (out, in) / (G, out, in) and biases scaled like nn.Linear's init."""
    gen = torch.Generator().manual_seed(seed)
    dims = [IN, *hidden, d]
    lead = () if groups is None else (groups,)
    ws = [torch.randn(*lead, o, i, generator=gen, dtype=torch.float64) / math.sqrt(i)
          for i, o in itertools.pairwise(dims)]
    bs = [0.1 * torch.randn(*lead, o, generator=gen, dtype=torch.float64) for o in dims[1:]]
    return [w.to(dtype) for w in ws], [b.to(dtype) for b in bs]


def _case(groups, m, guided, discrete, dtype=torch.float32, seed=1):
    """x (.., R, IN), z (.., M, D), and the decoding kwargs (bounds or a mask with a True per
    row whose best raw score is often unavailable)."""
    gen = torch.Generator().manual_seed(seed)
    lead = () if groups is None else (groups,)
    rows = 2 * m if guided else m
    x = torch.randn(*lead, rows, IN, generator=gen, dtype=torch.float64).to(dtype)
    z = torch.randn(*lead, m, D, generator=gen, dtype=torch.float64).to(dtype)
    if discrete:
        avail = torch.rand(*lead, m, D, generator=gen) < 0.5
        avail[..., 2] = True
        return x, z, {"avail": avail, "discrete": True}
    low = (-2.0 - torch.rand(D, generator=gen, dtype=torch.float64)).to(dtype)
    high = (0.5 + torch.rand(D, generator=gen, dtype=torch.float64)).to(dtype)
    return x, z, {"low": low, "high": high}


def _oracle(x, ws, bs, z, activation, guided, guidance, low=None, high=None, avail=None,
            discrete=False):
    """Float64, written out independently: einsum layers, explicit SiLU/GELU, the step."""
    h = x.double()
    for i, (w, b) in enumerate(zip(ws, bs)):
        h = torch.einsum("...mi,...oi->...mo", h, w.double())
        h = h + (b.double() if w.dim() == 2 else b.double().unsqueeze(1))
        if i < len(ws) - 1:
            h = (h / (1 + torch.exp(-h)) if activation == "silu" else
                 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))))
    m = z.shape[-2]
    u = h[..., :m, :]
    if guided:
        u = h[..., m:, :] + guidance * (u - h[..., m:, :])
    xs = z.double() - u
    if discrete:
        return xs.masked_fill(~avail, float("-inf")) if avail is not None else xs
    xs = xs.clamp(-1, 1)
    return low.double() + (xs + 1) / 2 * (high.double() - low.double())


def _mask(z):
    """A fixed availability mask in the layout of z (action 1 always available)."""
    avail = torch.arange(z.numel()).view(z.shape) % 3 != 0
    avail[..., 1] = True
    return avail


@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_reference_matches_independent_formula(groups, guided, activation):
    ws, bs = _layers(groups, torch.float64)
    x, z, kw = _case(groups, 4, guided, False, torch.float64)
    got = mlp_cfg_sample(x, pack_mlp(ws, bs), z, activation, guided=guided, guidance=2.5, **kw,
                         backend="torch")
    want = _oracle(x, ws, bs, z, activation, guided, 2.5, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    scores = _oracle(x, ws, bs, z, activation, guided, 2.5, avail=_mask(z), discrete=True)
    got_d = mlp_cfg_sample(x, pack_mlp(ws, bs), z, activation, guided=guided, guidance=2.5,
                           avail=_mask(z), discrete=True, backend="torch")
    assert torch.equal(got_d, scores.argmax(-1))


def test_reference_is_linear_jvp_ref_then_cfg_sample_ref():
    """The reference is exactly the layer-by-layer torch path: linear_jvp_ref per layer, then
    cfg_sample_ref (bit-identical, not only close)."""
    ws, bs = _layers(2)
    x, z, kw = _case(2, 3, True, False)
    h = x
    for i, (w, b) in enumerate(zip(ws, bs)):
        h, _ = vf.ops.linear_jvp_ref(h, w, b, None, "silu" if i < len(ws) - 1 else "identity")
    want = vf.ops.cfg_sample_ref(z, h[:, :3], h[:, 3:], 1.5, 1.0, **kw)
    got = mlp_cfg_sample_ref(x, pack_mlp(ws, bs), z, "silu", True, 1.5, 1.0, **kw)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pack": (1, 2)}, r"pack: expected an MLPPack \(ops.pack_mlp\), found tuple"),
        ({"x": torch.zeros(4, IN + 1)}, r"x: expected shape \(\*, 9\), found \(4, 10\)"),
        ({"x": torch.zeros(2, 4, IN)}, r"x: expected shape \(1, \*, 9\), found \(2, 4, 9\)"),
        ({"x": torch.zeros(4, IN, dtype=torch.float64)}, r"x: expected dtype in \(float32\)"),
        ({"guided": True, "x": torch.zeros(5, IN)}, r"x: expected an even number of rows"),
        ({"z": torch.zeros(3, D)}, r"z: expected shape \(4, 5\), found \(3, 5\)"),
        ({"activation": "tanh"}, r"activation: expected one of"),
        ({"avail": torch.ones(4, D, dtype=torch.bool)}, r"avail: expected None for continuous"),
        ({"low": torch.zeros(D)}, r"low/high: expected both or neither"),
    ],
)
def test_invalid_inputs_name_the_argument(change, match):
    ws, bs = _layers(None)
    args = {"x": torch.zeros(4, IN), "pack": pack_mlp(ws, bs), "z": torch.zeros(4, D),
            "activation": "silu"}
    kwargs = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        mlp_cfg_sample(**args, **kwargs, backend="torch")


def test_per_agent_pack_needs_per_agent_inputs():
    ws, bs = _layers(3)
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions"):
        mlp_cfg_sample(torch.zeros(4, IN), pack_mlp(ws, bs), torch.zeros(4, D))
    with pytest.raises(ValueError, match=r"x: expected shape \(3, \*, 9\), found \(2, 4, 9\)"):
        mlp_cfg_sample(torch.zeros(2, 4, IN), pack_mlp(ws, bs), torch.zeros(2, 4, D))


def test_public_name_registry_and_auto_on_cpu():
    assert vf.ops.mlp_cfg_sample is mlp_cfg_sample
    assert vf.ops.REGISTRY["mlp_cfg_sample"] == ("torch", "triton")
    assert vf.backends.resolve("mlp_cfg_sample", vf.ops.REGISTRY["mlp_cfg_sample"],
                               torch.device("cpu")) == "torch"


# ---------------------------------------------------------------- triton (interpreter on CPU)
triton = pytest.importorskip("triton", reason="the triton backend needs `pip install triton`")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: TRITON_INTERPRET=1 (conftest)


def _to(device, x, z, kw):
    return x.to(device), z.to(device), {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                        for k, v in kw.items()}


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("discrete", [False, True])
def test_triton_matches_reference(groups, guided, discrete):
    ws, bs = _layers(groups)
    pack = pack_mlp([w.to(DEVICE) for w in ws], [b.to(DEVICE) for b in bs])
    x, z, kw = _to(DEVICE, *_case(groups, 6, guided, discrete))
    args = (x, pack, z, "gelu_tanh" if guided else "silu")
    got = mlp_cfg_sample(*args, guided=guided, guidance=2.5, **kw, backend="triton")
    want = mlp_cfg_sample(*args, guided=guided, guidance=2.5, **kw, backend="torch")
    assert got.shape == want.shape and got.dtype == want.dtype
    if discrete:
        assert torch.equal(got, want)
        assert bool(kw["avail"].gather(-1, got[..., None]).all()), "unavailable action"
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_triton_bf16_within_reference_error(close_to_oracle):
    """bf16 weights and inputs: within twice the bf16 reference's own error against the same
    layers in float64."""
    ws, bs = _layers(None)
    x, z, kw = _case(None, 5, True, False)
    out = {}
    for dtype in (torch.float64, torch.bfloat16):
        pack = pack_mlp([w.to(DEVICE, dtype) for w in ws], [b.to(DEVICE, dtype) for b in bs])
        xd, zd, kwd = _to(DEVICE, x.to(dtype), z.to(dtype),
                          {k: v.to(dtype) for k, v in kw.items()})
        for backend in ("torch", "triton") if dtype == torch.bfloat16 else ("torch",):
            out[dtype, backend] = mlp_cfg_sample(xd, pack, zd, guided=True, guidance=2.0,
                                                 **kwd, backend=backend)
    got = out[torch.bfloat16, "triton"]
    assert got.dtype == torch.bfloat16
    close_to_oracle(got, out[torch.bfloat16, "torch"], out[torch.float64, "torch"], "actions")


def test_triton_op_registration_passes_opcheck(opcheck_utils):
    from torch.library import opcheck

    import vgm2p_fast.kernels.mlp_cfg_sample  # noqa: F401  (registers the op)

    ws, bs = _layers(None, hidden=(16,), d=3)
    pack = pack_mlp([w.to(DEVICE) for w in ws], [b.to(DEVICE) for b in bs])
    x = torch.randn(10, IN, device=DEVICE)  # [5 cond rows; 5 null rows]
    z = torch.randn(5, 3, device=DEVICE)
    low, high = -torch.ones(3, device=DEVICE), torch.ones(3, device=DEVICE)
    opcheck(torch.ops.vgm2p_fast.triton_mlp_cfg_sample,
            (x, pack.weight, pack.bias, pack.dims, z, "silu", True, 2.0, 1.0, low, high, None,
             False), test_utils=opcheck_utils)


def test_mlp_fits_and_the_kernel_refuses_what_it_was_not_built_for():
    def pack(d, dtype=torch.float32, width=16):
        ws, bs = _layers(None, dtype, hidden=(width,), d=d)
        return pack_mlp([w.to(DEVICE) for w in ws], [b.to(DEVICE) for b in bs])

    assert pack(5).sizes == (IN, 16, 5) and isinstance(pack(5), MLPPack)
    assert mlp_fits(64, pack(64)) and not mlp_fits(65, pack(5)) and not mlp_fits(4, pack(65))
    assert mlp_fits(4, pack(5, torch.bfloat16)) and not mlp_fits(4, pack(5, torch.float64))
    assert not mlp_fits(4, pack(5, width=1025))
    with pytest.raises(ValueError, match=r"z: expected at most 64 action dims .* found 65"):
        mlp_cfg_sample(torch.zeros(4, IN, device=DEVICE), pack(65),
                       torch.zeros(4, 65, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match=r"pack: expected layers at most 1024 wide .* float64"):
        mlp_cfg_sample(torch.zeros(4, IN, device=DEVICE, dtype=torch.float64),
                       pack(5, torch.float64), torch.zeros(4, 5, device=DEVICE,
                                                          dtype=torch.float64),
                       backend="triton")


def test_triton_has_no_derivative_and_says_so():
    """A forward-mode tangent reaching the triton kernel raises (never zeros); the torch
    reference differentiates through the layers."""
    ws, bs = _layers(None)
    pack = pack_mlp([w.to(DEVICE) for w in ws], [b.to(DEVICE) for b in bs])
    x, z, kw = _to(DEVICE, *_case(None, 3, False, False))

    def run(backend):
        return lambda x: mlp_cfg_sample(x * 0.01, pack, z * 0.01, **kw, backend=backend)

    _, tangent = torch.func.jvp(run("torch"), (x,), (torch.ones_like(x),))
    assert tangent.abs().sum() > 0
    with pytest.raises(vf.BackendUnavailableError,
                       match="mlp_cfg_sample: the triton backend has no forward-mode"):
        torch.func.jvp(run("triton"), (x,), (torch.ones_like(x),))


def test_dispatch_traces_under_torch_compile_fullgraph():
    """ops.mlp_cfg_sample's checks and dispatch trace with fullgraph=True; the kernel is one
    node of the graph (dynamo's capture: inductor's lowering needs CUDA)."""
    graphs = []

    def capture(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    ws, bs = _layers(None)
    pack = pack_mlp([w.to(DEVICE) for w in ws], [b.to(DEVICE) for b in bs])
    x, z, kw = _to(DEVICE, *_case(None, 4, True, False))

    def act(x, z):
        return mlp_cfg_sample(x, pack, z, guided=True, guidance=2.0, **kw, backend="triton")

    got = torch.compile(act, fullgraph=True, backend=capture)(x, z)
    nodes = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert "vgm2p_fast.triton_mlp_cfg_sample.default" in nodes
    torch.testing.assert_close(got, act(x, z))


# ---------------------------------------------------------------- the policy's one-step act
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("n_tokens", [2, 0])
def test_policy_act_triton_matches_torch(share, discrete, n_tokens):
    """MeanFlowPolicy.act with backend="triton" (the one-launch path: 10 rows) vs "torch",
    guided; also for an unconditional policy (n_tokens = 0: a one-row token table)."""
    outs = []
    for backend in ("triton", "torch"):
        torch.manual_seed(0)
        policy = vf.MeanFlowPolicy(4, 3, 2, discrete=discrete, hidden_dims=(20, 9),
                                   share_parameters=share, n_tokens=n_tokens,
                                   backend=backend).to(DEVICE)
        gen = torch.Generator().manual_seed(1)
        obs = torch.randn(5, 2, 4, generator=gen).to(DEVICE)
        avail = None
        if discrete:
            avail = (torch.rand(5, 2, 3, generator=gen) < 0.5).to(DEVICE)
            avail[..., 0] = True
        outs.append(policy.act(obs, avail, guidance=2.0,
                               generator=torch.Generator(DEVICE).manual_seed(2)))
    if discrete:
        assert torch.equal(outs[0], outs[1])
    else:
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_policy_act_takes_the_one_launch_path_when_it_fits(monkeypatch):
    """On the triton backend one-step act runs the mlp_cfg_sample kernel (one launch) for small
    batches and the layer-by-layer kernels beyond mlp_fits; both equal the torch backend."""
    import vgm2p_fast.kernels.mlp_cfg_sample as kernel
    from vgm2p_fast.ops.mlp_cfg_sample import MLP_MAX_ROWS

    calls = []
    real = kernel.mlp_cfg_sample
    monkeypatch.setattr(kernel, "mlp_cfg_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    for batch in (2, MLP_MAX_ROWS + 1):
        outs = []
        for backend in ("triton", "torch"):
            torch.manual_seed(0)
            policy = vf.MeanFlowPolicy(4, 3, 1, hidden_dims=(8,), backend=backend).to(DEVICE)
            gen = torch.Generator().manual_seed(1)
            obs = torch.randn(batch, 1, 4, generator=gen).to(DEVICE)
            noise = torch.randn(batch, 1, 3, generator=gen).to(DEVICE)
            outs.append(policy.act(obs, guidance=2.0, noise=noise))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
        # the small batch adds the one-launch call, the large one (65 rows) does not
        assert len(calls) == 1, (batch, len(calls))


# ---------------------------------------------------------------- CUDA-only paths
def _graphed(fn):
    """``fn`` captured in a CUDA graph after a warm-up on a side stream (Triton compiles on the
    first call, which a capture must not see): returns (graph, the graph's output tensor)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device; "
                    "the interpreter cannot capture one")
def test_cuda_graph_capture_and_replay_of_the_one_launch_step():
    """Decentralised execution replays a captured step: the kernel's scratch comes from the
    graph's pool and the replay reads the new noise written in place."""
    ws, bs = _layers(None)
    pack = pack_mlp([w.cuda() for w in ws], [b.cuda() for b in bs])
    x, z, kw = _to("cuda", *_case(None, 6, True, False))

    def step():
        return mlp_cfg_sample(x, pack, z, guided=True, guidance=2.0, **kw, backend="triton")

    graph, out = _graphed(step)
    z.copy_(torch.randn_like(z))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, mlp_cfg_sample(x, pack, z, guided=True, guidance=2.0, **kw,
                                                   backend="torch"), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="streams need a CUDA device")
def test_cuda_kernel_runs_on_the_current_stream():
    """On a side stream the launch is ordered after the side stream's own writes (the kernel
    takes torch's current stream, not the default one)."""
    ws, bs = _layers(None)
    pack = pack_mlp([w.cuda() for w in ws], [b.cuda() for b in bs])
    x, z, kw = _to("cuda", *_case(None, 6, False, False))
    want = mlp_cfg_sample(x, pack, z, **kw, backend="torch")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # ~5 ms on the side stream before z is written
        z2 = z.clone()
        got = mlp_cfg_sample(x, pack, z2, **kw, backend="triton")
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
