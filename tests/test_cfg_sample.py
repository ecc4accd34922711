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
    import vgm2p_fast.kernels.cfg_sample  # noqa: F401  (registers the ops)
    from torch.library import opcheck

    z, u_c, u_n, low, high = (a.to(DEVICE) for a in _inputs((5, 3), torch.float32))
    opcheck(torch.ops.vgm2p_fast.triton_cfg_sample,
            (z, u_c, u_n, 2.0, 1.0, low, high, None, False),
            test_utils=opcheck_utils)
    from vgm2p_fast.kernels.cfg_sample import pack_mlp

    pack = pack_mlp([torch.randn(16, 4, device=DEVICE), torch.randn(3, 16, device=DEVICE)],
                    [torch.randn(16, device=DEVICE), torch.randn(3, device=DEVICE)])
    x = torch.randn(10, 4, device=DEVICE)  # [5 cond rows; 5 null rows]
    opcheck(torch.ops.vgm2p_fast.triton_mlp_cfg_sample,
            (x, pack.weight, pack.bias, pack.dims, z, "silu", True, 2.0, 1.0, low, high, None,
             False), test_utils=opcheck_utils)


def _policy_act_and_first_layer_input(policy, obs, avail, guidance, z):
    """Actions of ``policy.act`` (torch backend) and the input its MLP's first layer received:
    the inputs mlp_cfg_sample takes are built by MeanFlowPolicy._run itself. ``act``'s folded
    execution path (first layer pre-summed, equal to ``_run``: tests/test_peers.py) is switched
    off here, so that the first layer sees the full ``_run`` input."""
    from vgm2p_fast import _backend

    policy._exec_velocity = lambda *args, **kwargs: None  # instance attribute: general path

    captured, real = [], _backend.implementation

    def spy(op, *args, **kwargs):
        fn = real(op, *args, **kwargs)
        if op != "linear_jvp":
            return fn

        def layer(x, w, b, dx, activation):
            if w is policy.weights[0]:
                captured.append(x)
            return fn(x, w, b, dx, activation)

        return layer

    _backend.implementation = spy
    try:
        actions = policy.act(obs, avail, guidance=guidance, noise=z)
    finally:
        _backend.implementation = real
        del policy._exec_velocity
    return actions, captured[-1]


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_mlp_cfg_sample_matches_policy_act(share, discrete, guidance):
    """One launch for the whole MLP + sampling step == MeanFlowPolicy.act on torch."""
    from vgm2p_fast.kernels.cfg_sample import mlp_cfg_sample, mlp_fits, pack_mlp

    import vgm2p_fast as vf

    torch.manual_seed(0)
    batch, n, d = 3, 2, 5
    policy = vf.MeanFlowPolicy(7, d, n, discrete=discrete, hidden_dims=(24, 70, 17),
                               share_parameters=share, backend="torch").to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(batch, n, 7, generator=gen).to(DEVICE)
    z = torch.randn(batch, n, d, generator=gen).to(DEVICE)
    avail = None
    if discrete:
        avail = (torch.rand(batch, n, d, generator=gen) < 0.5).to(DEVICE)
        avail[..., 2] = True
    want, x_in = _policy_act_and_first_layer_input(policy, obs, avail, guidance, z)
    pack = pack_mlp(list(policy.weights), list(policy.biases))
    assert mlp_fits(batch * n, pack)
    bounds = {} if discrete else {"low": policy.action_low, "high": policy.action_high}
    got = mlp_cfg_sample(x_in, pack, policy._layout(z), policy.activation,
                         guided=guidance != 1.0, guidance=guidance, discrete=discrete,
                         avail=None if avail is None else policy._layout(avail), **bounds)
    got = got.reshape(batch, n, -1) if share else got.transpose(0, 1)  # the layout back
    got = got.reshape(want.shape)
    if discrete:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("n_tokens", [2, 0])
def test_policy_act_triton_matches_torch(share, discrete, n_tokens):
    """MeanFlowPolicy.act with backend="triton" (layers + cfg_sample) vs "torch", guided; also
    for an unconditional policy (n_tokens = 0: a one-row token table)."""
    import vgm2p_fast as vf

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


def test_mlp_fits_and_refuses_wide_actions():
    from vgm2p_fast.kernels.cfg_sample import mlp_cfg_sample, mlp_fits, pack_mlp

    def pack(d, dtype=torch.float32):
        ws = [torch.randn(16, 8, device=DEVICE), torch.randn(d, 16, device=DEVICE)]
        bs = [torch.zeros(16, device=DEVICE), torch.zeros(d, device=DEVICE)]
        return pack_mlp([w.to(dtype) for w in ws], [b.to(dtype) for b in bs])

    assert pack(5).sizes == (8, 16, 5)
    assert mlp_fits(64, pack(64)) and not mlp_fits(65, pack(5)) and not mlp_fits(4, pack(65))
    assert mlp_fits(4, pack(5, torch.bfloat16)) and not mlp_fits(4, pack(5, torch.float64))
    z = torch.zeros(4, 65, device=DEVICE)
    with pytest.raises(ValueError, match=r"z: expected at most 64 action dims .* found 65"):
        mlp_cfg_sample(torch.zeros(4, 8, device=DEVICE), pack(65), z, "silu")


def test_mlp_cfg_sample_bf16_within_reference_error(close_to_oracle):
    """bf16 weights and inputs: within twice the bf16 torch policy's own error against the
    same policy in float64."""
    from vgm2p_fast.kernels.cfg_sample import mlp_cfg_sample, pack_mlp

    import vgm2p_fast as vf

    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(7, 5, 2, hidden_dims=(40, 24), backend="torch").to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(3, 2, 7, generator=gen).to(DEVICE)
    z = torch.randn(3, 2, 5, generator=gen).to(DEVICE)
    outs = {}
    for dtype in (torch.float64, torch.bfloat16):
        p = policy.to(dtype)
        outs[dtype] = _policy_act_and_first_layer_input(p, obs.to(dtype), None, 2.0, z.to(dtype))
        if dtype == torch.bfloat16:
            got = mlp_cfg_sample(outs[dtype][1], pack_mlp(list(p.weights), list(p.biases)),
                                 p._layout(z.to(dtype)), p.activation, guided=True,
                                 guidance=2.0, low=p.action_low.to(dtype),
                                 high=p.action_high.to(dtype))
    assert got.dtype == torch.bfloat16
    close_to_oracle(got.reshape(3, 2, 5), outs[torch.bfloat16][0], outs[torch.float64][0],
                    "actions")


def test_policy_act_takes_the_one_launch_path_when_it_fits(monkeypatch):
    """On the triton backend one-step act runs mlp_cfg_sample (one launch) for small batches
    and the layer-by-layer kernels beyond mlp_fits; both equal the torch backend."""
    import vgm2p_fast.kernels.cfg_sample as kernel

    import vgm2p_fast as vf

    calls = []
    real = kernel.mlp_cfg_sample
    monkeypatch.setattr(kernel, "mlp_cfg_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    for batch in (2, kernel.MLP_MAX_ROWS + 1):
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
