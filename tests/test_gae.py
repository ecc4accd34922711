"""``gae``: both backends against a float64 Python loop, plus the op's contract.

Oracle: the recurrence of docs/design.md 1.1 written as a plain Python loop over floats
(float64), one sequence at a time; masks are "set" where non-zero and select rather than
multiply, so NaN in one episode stays there (the op's documented semantics).
"""

import math
import subprocess
import sys

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast import backends
from vgm2p_fast.ops import REGISTRY, gae, gae_ref

GAMMA, LAM = 0.99, 0.95
CPU = torch.device("cpu")
EXT_OK, EXT_WHY = backends.ext_status("gae", CPU)
BACKENDS = [
    "torch",
    pytest.param("ext", marks=pytest.mark.skipif(not EXT_OK, reason=f"no extension: {EXT_WHY}")),
]


def oracle(reward, value, next_value, done, terminal, gamma=GAMMA, lam=LAM):
    """(advantage, lambda_return) as float64, by a Python loop over every sequence."""
    shape = reward.shape
    rows = [x.reshape(math.prod(shape[:-1]), shape[-1]).double().tolist()
            for x in (reward, value, next_value, done, terminal)]
    adv = []
    for r, v, nv, d, te in zip(*rows):
        out, acc = [0.0] * len(r), 0.0
        for t in range(len(r) - 1, -1, -1):
            delta = r[t] + (0.0 if te[t] != 0 else gamma * nv[t]) - v[t]
            acc = delta if d[t] != 0 else delta + gamma * lam * acc
            out[t] = acc
        adv.append(out)
    a = torch.tensor(adv, dtype=torch.float64).reshape(shape)
    return a, a + value.double()


def make(shape, p_done=0.05, p_term=0.5, dtype=torch.float32, mask_dtype=torch.bool, seed=0):
    """Random inputs; terminal is a subset of done unless the test says otherwise."""
    g = torch.Generator().manual_seed(seed)
    r, v, nv = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
    done = torch.rand(shape, generator=g) < p_done
    term = done & (torch.rand(shape, generator=g) < p_term)
    return r, v, nv, done.to(mask_dtype), term.to(mask_dtype)


def check(close_to_oracle, backend, args, what, gamma=GAMMA, lam=LAM):
    adv, ret = gae(*args, gamma, lam, backend=backend)
    ref_adv, ref_ret = gae_ref(*args, gamma, lam)
    o_adv, o_ret = oracle(*args, gamma, lam)
    assert adv.shape == args[0].shape and adv.dtype == args[0].dtype and adv.is_contiguous()
    close_to_oracle(adv, ref_adv, o_adv, f"{what} advantage")
    close_to_oracle(ret, ref_ret, o_ret, f"{what} lambda_return")
    return adv, ret


def _set_at(shape, index):
    m = torch.zeros(shape, dtype=torch.bool)
    m[..., index] = True
    return m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["none", "all", "random", "first", "last"])
def test_done_patterns(close_to_oracle, backend, case):
    shape = (16, 300)
    r, v, nv, done, term = make(shape)
    done = {
        "none": torch.zeros(shape, dtype=torch.bool),
        "all": torch.ones(shape, dtype=torch.bool),
        "random": done,
        "first": _set_at(shape, 0),
        "last": _set_at(shape, -1),
    }[case]
    adv, _ = check(close_to_oracle, backend, (r, v, nv, done, done & term), case)
    if case == "all":  # every trace cut: A = delta exactly
        delta = torch.where(done & term, r, r + GAMMA * nv) - v
        torch.testing.assert_close(adv, delta)


@pytest.mark.parametrize("backend", BACKENDS)
def test_terminal_without_done_removes_only_the_bootstrap(close_to_oracle, backend):
    r, v, nv, _, _ = make((8, 200))
    done = torch.zeros(8, 200, dtype=torch.bool)
    term = _set_at((8, 200), 50)
    adv, _ = check(close_to_oracle, backend, (r, v, nv, done, term), "terminal only")
    # the trace is not cut at t=50: A_49 still sees A_50 (whose delta has no bootstrap)
    delta50 = r[:, 50] - v[:, 50]
    other = gae(r, v, nv, done, torch.zeros_like(term), backend=backend)[0]
    assert not torch.allclose(adv[:, 49], other[:, 49])
    torch.testing.assert_close(adv[:, 50] - GAMMA * LAM * adv[:, 51], delta50)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (5, 1), (1, 700), (1, 1), (3, 2, 5), (2, 0)])
def test_small_and_degenerate_shapes(close_to_oracle, backend, shape):
    check(close_to_oracle, backend, make(shape, p_done=0.2), f"shape {shape}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(60_001,), (3, 20_011)])
def test_long_sequences(close_to_oracle, backend, threads, shape):
    """Few long rows: the extension cuts them into segments joined by a carry pass (lengths
    that do not divide evenly: the last segment of a row is shorter)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # rare dones, so that many traces cross segment boundaries
        check(close_to_oracle, backend, make(shape, p_done=2e-4), f"{shape}, {threads} threads")
        r, v, nv, done, _ = make(shape)
        no_done = torch.zeros_like(done)
        check(close_to_oracle, backend, (r, v, nv, no_done, no_done), "no dones", lam=1.0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gamma,lam", [(0.0, 0.95), (1.0, 1.0), (0.9, 0.0), (0.999, 0.97)])
def test_gamma_lambda_edges(close_to_oracle, backend, gamma, lam):
    check(close_to_oracle, backend, make((4, 9000), p_done=1e-3), f"{gamma}, {lam}",
          gamma=gamma, lam=lam)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32, torch.float64])
def test_dtypes(close_to_oracle, backend, dtype, mask_dtype):
    args = make((6, 257), dtype=dtype, mask_dtype=mask_dtype)
    check(close_to_oracle, backend, args, f"{dtype} / {mask_dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_and_non_binary_masks(close_to_oracle, backend):
    """Non-zero is set: float 0.5 and uint8 2 cut the trace like True; done and terminal may
    have different dtypes."""
    r, v, nv, done, term = make((5, 400), p_done=0.05)
    done_f = done.float() * 0.5
    term_u8 = term.to(torch.uint8) * 2
    adv, _ = check(close_to_oracle, backend, (r, v, nv, done_f, term_u8), "mixed masks")
    torch.testing.assert_close(adv, gae(r, v, nv, done, term, backend=backend)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_per_agent_layouts(close_to_oracle, backend):
    B, N, T = 6, 3, 150
    # time-major storage read as (B, T), every other step, and a team mask shared by agents
    r, v, nv = (x.t() for x in make((T, B))[:3])
    done = torch.rand(T, B) < 0.05
    args = (r, v, nv, done.t(), done.t() & (torch.rand(B, T) < 0.5))
    assert not r.is_contiguous()
    check(close_to_oracle, backend, args, "transposed")
    sliced = tuple(x[:, ::2] for x in make((B, 2 * T)))
    check(close_to_oracle, backend, sliced, "strided slice")
    rv = make((B, N, T))[:3]
    team_done = (torch.rand(B, 1, T) < 0.05).expand(B, N, T)
    check(close_to_oracle, backend, (*rv, team_done, team_done), "per-agent (B, N, T)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_dataset_equals_padded(backend):
    """Episodes back to back in one (T_total,) row give the same numbers as the padded batch."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 400, (40,), generator=g).tolist()
    lengths[5] = 9000  # one episode longer than a segment of the split scan
    T_total, E, L = sum(lengths), len(lengths), max(lengths)
    r, v, nv = (torch.randn(T_total, generator=g, dtype=torch.float64) for _ in range(3))
    ends = torch.tensor(lengths).cumsum(0) - 1
    done = torch.zeros(T_total, dtype=torch.bool)
    done[ends] = True
    term = done & (torch.rand(T_total, generator=g) < 0.5)  # the others are truncations
    flat_adv, flat_ret = gae(r, v, nv, done, term, backend=backend)

    valid = torch.arange(L).expand(E, L) < torch.tensor(lengths)[:, None]
    def pad(x):
        out = torch.zeros(E, L, dtype=x.dtype)
        out[valid] = x
        return out
    pad_adv, pad_ret = gae(pad(r), pad(v), pad(nv), pad(done), pad(term), backend=backend)
    torch.testing.assert_close(flat_adv, pad_adv[valid], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flat_ret, pad_ret[valid], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [600, 40_000])
def test_nan_stays_in_its_trajectory(backend, T):
    """A NaN value poisons its episode's steps up to it, nothing else; a NaN next_value behind
    a terminal is never read."""
    r, v, nv, _, _ = make((T,))
    done = torch.zeros(T, dtype=torch.bool)
    cuts = [T // 4, T // 2, 3 * T // 4]
    done[cuts] = True
    term = done.clone()
    nv[cuts[0]] = float("nan")        # behind a terminal: no effect anywhere
    v[cuts[1] + 10] = float("nan")    # inside the third episode, 10 steps after its start
    adv, ret = gae(r, v, nv, done, term, backend=backend)
    bad = torch.zeros(T, dtype=torch.bool)
    bad[cuts[1] + 1: cuts[1] + 11] = True
    assert torch.isnan(adv[bad]).all() and torch.isnan(ret[bad]).all()
    assert torch.isfinite(adv[~bad]).all() and torch.isfinite(ret[~bad]).all()


@pytest.mark.skipif(not EXT_OK, reason=f"no extension: {EXT_WHY}")
def test_auto_uses_the_extension_on_cpu():
    assert backends.resolve("gae", REGISTRY["gae"], CPU) == "ext"


def test_extension_is_built_unless_disabled():
    """CI installs with the extension; a failed build there must not pass as a skipped suite."""
    import os

    if os.environ.get("VGM2P_BUILD_EXT") == "0":
        pytest.skip("VGM2P_BUILD_EXT=0: pure-Python install by request")
    assert EXT_OK, EXT_WHY


def test_works_without_the_extension():
    """A pure-Python install (no vgm2p_fast._C) imports and runs gae on the torch reference."""
    code = (
        "import sys; sys.modules['vgm2p_fast._C'] = None\n"  # import of _C raises ImportError
        "import torch, vgm2p_fast as vf\n"
        "from vgm2p_fast import backends\n"
        "x = torch.randn(2, 5); d = torch.zeros(2, 5, dtype=torch.bool)\n"
        "a, r = vf.ops.gae(x, x, x, d, d)\n"
        "assert backends.resolve('gae', ('torch', 'ext'), torch.device('cpu')) == 'torch'\n"
        "try:\n"
        "    vf.ops.gae(x, x, x, d, d, backend='ext')\n"
        "except vf.BackendUnavailableError as e:\n"
        "    print('ok', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr
    assert "not importable" in out.stdout


@pytest.mark.skipif(not EXT_OK, reason=f"no extension: {EXT_WHY}")
def test_opcheck():
    for shape, mask in [((4, 37), torch.bool), ((2, 3, 20), torch.float32), ((9000,), torch.bool)]:
        args = make(shape, dtype=torch.float64, mask_dtype=mask)
        torch.library.opcheck(torch.ops.vgm2p_fast.gae.default, (*args, GAMMA, LAM))


@pytest.mark.parametrize("backend", BACKENDS)
def test_traces_under_torch_compile_fullgraph(backend):
    """The fake kernel lets dynamo put the op in one graph with what follows it (aot_eager: the
    same tracing as inductor, without its ~30 s of C++ codegen on two cores)."""

    def normalised(r, v, nv, done, term):
        adv, ret = gae(r, v, nv, done, term, GAMMA, LAM, backend=backend)
        return (adv - adv.mean()) / (adv.std() + 1e-8), ret

    args = make((8, 64))
    compiled = torch.compile(normalised, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), normalised(*args)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises_value_error(backend):
    r, v, nv, done, term = make((4, 10))
    bad = [
        ((r, v[:, :9], nv, done, term), "value: expected shape (4, 10)"),
        ((r, v, nv, done, term[:3]), "terminal: expected shape"),
        ((r.long(), v, nv, done, term), "reward: expected dtype"),
        ((r, v.double(), nv, done, term), "value: expected dtype"),
        ((r, v, nv, done.int(), term), "done: expected dtype"),
        ((r[0, 0], v[0, 0], nv[0, 0], done[0, 0], term[0, 0]), "reward: expected at least 1"),
        ((r, v, nv.to("meta"), done, term), "next_value: expected a tensor on cpu"),
        ((r.tolist(), v, nv, done, term), "reward: expected a torch.Tensor"),
    ]
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            gae(*args, backend=backend)
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(r, v, nv, done, term, 1.5, 0.9, backend=backend)
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(r, v, nv, done, term, 0.9, math.nan, backend=backend)


@pytest.mark.skipif(not EXT_OK, reason=f"no extension: {EXT_WHY}")
def test_op_checks_name_the_argument():
    """Calling torch.ops.vgm2p_fast.gae directly skips the Python checks: TORCH_CHECK names the
    argument instead of crashing."""
    op = torch.ops.vgm2p_fast.gae
    r, v, nv, done, term = make((4, 10))
    cases = [
        ((r, v[:, :9], nv, done, term, 0.9, 0.9), "value must have the shape of reward"),
        ((r, v, nv.double(), done, term, 0.9, 0.9), "next_value must have reward's dtype"),
        ((r, v, nv, done, term.int(), 0.9, 0.9), "terminal must be bool, uint8"),
        ((r.int(), v, nv, done, term, 0.9, 0.9), "reward must be float32 or float64"),
        ((r, v, nv, done, term, 0.9, 2.0), "lam must be in"),
        ((r[0, 0], v[0, 0], nv[0, 0], done[0, 0], term[0, 0], 0.9, 0.9), "at least 1 dim"),
    ]
    for args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            op(*args)


def test_matches_torchrl():
    functional = pytest.importorskip(
        "torchrl.objectives.value.functional",
        reason="torchrl is not installed (optional: pip install torchrl)")
    r, v, nv, done, term = make((8, 500), p_done=0.02)
    adv, ret = gae(r, v, nv, done, term, GAMMA, LAM)
    t_adv, t_ret = functional.generalized_advantage_estimate(
        GAMMA, LAM, v[..., None], nv[..., None], r[..., None], done[..., None], term[..., None],
        time_dim=-2)
    torch.testing.assert_close(adv, t_adv[..., 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, t_ret[..., 0], rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("shape", [(4096, 300), (3, 50_000), (200_000,), (2, 3, 7)])
def test_cuda_matches_cpu(shape):
    ok, why = backends.ext_status("gae", torch.device("cuda"))
    if not ok:
        pytest.fail(why)
    args = make(shape, p_done=1e-3, dtype=torch.float64)
    want = gae(*args, GAMMA, LAM, backend="torch")
    got = gae(*(x.cuda() for x in args), GAMMA, LAM, backend="ext")
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10)


def test_public_api_name():
    assert vf.ops.gae is gae


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="streams and CUDA graphs need a CUDA "
                    "device")
def test_cuda_kernel_on_a_side_stream_and_in_a_cuda_graph():
    """The extension launches on torch's current stream (a side stream's earlier writes are
    seen) and is capturable: a replay reads rewards written in place."""
    ok, why = backends.ext_status("gae", torch.device("cuda"))
    if not ok:
        pytest.fail(why)
    args = [x.cuda() for x in make((64, 300), p_done=1e-2)]
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # ~5 ms before the inputs are written on this stream
        r = args[0] * 2
        got = gae(r, *args[1:], GAMMA, LAM, backend="ext")[0]
    torch.cuda.current_stream().wait_stream(side)
    want = gae(*(x.cpu() for x in (r, *args[1:])), GAMMA, LAM, backend="torch")[0]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    graph = torch.cuda.CUDAGraph()
    gae(*args, GAMMA, LAM, backend="ext")  # warm-up outside the capture
    with torch.cuda.graph(graph):
        out = gae(*args, GAMMA, LAM, backend="ext")[0]
    args[0].mul_(-1.0)
    graph.replay()
    torch.cuda.synchronize()
    want = gae(*(x.cpu() for x in args), GAMMA, LAM, backend="torch")[0]
    torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-5)
