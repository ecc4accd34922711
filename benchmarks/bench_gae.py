"""Speed of ``gae`` on 4M transitions (float32 values, bool masks), two layouts:

- ``batched``: (4096, 1000), every row one episode (done at its last step, terminal on half of
  them) plus random truncations (rate 1e-3);
- ``flat``: one (4_096_000,) sequence of 4000 episodes of random lengths (the dataset layout
  the training pipeline scans, DESIGN 1.1).

Cases per layout: the extension (``ext``), the chunked torch reference (``gae_ref``), a Python
loop over the transitions, TorchRL's ``vec_generalized_advantage_estimate`` when installed, and
``memcpy``: one copy of the 14 bytes a transition the op must read (3 x float32 + 2 x bool) into
a preallocated buffer, the physical floor; ``ext`` and ``memcpy`` also run on one thread.
Goals on CPU, one run (README): ext <= 3x memcpy, and >= 10x faster than TorchRL's vectorised
GAE.
Run: ``pytest benchmarks/bench_gae.py --benchmark-only``. Under ``--benchmark-disable`` (the CI
smoke) the layouts shrink to 64k transitions.

CUDA (``test_cuda_gae``, ready, skipped without a GPU): the CUDA kernel of the extension, the
torch reference and TorchRL's vectorised GAE on the GPU against ``memcpy``, a device-to-device
copy of the same bytes (the floor; on an H100's ~3 TB/s the 57 MB read + 33 MB written are
~30 us). Goal: ext <= 3x memcpy. Not measured: no GPU was available (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.ops import gae, gae_ref

GAMMA, LAM = 0.99, 0.95
# Rounds per case: the dev/CI machines have 2 cores shared with other jobs, so the fast cases
# take the min (and median) of 100 rounds, where a contention-free moment shows up; the cases
# that take seconds a call need one round for a >= 10x comparison.
# "-1thread": the same on one thread. With other jobs on the 2 cores, a 2-thread parallel region
# often waits a scheduler tick (4 ms) for its second thread; one thread does not, so its ratio is
# the stable one.
ROUNDS = {"ext": 100, "memcpy": 100, "ext-1thread": 100, "memcpy-1thread": 100, "gae_ref": 5,
          "python_loop": 1, "torchrl_vec": 1}
CASES = list(ROUNDS)


def _inputs(layout: str, smoke: bool):
    """reward, value, next_value, done, terminal for one layout."""
    g = torch.Generator().manual_seed(0)
    rows, T = (64, 1000) if smoke else (4096, 1000)
    shape = (rows, T) if layout == "batched" else (rows * T,)
    r, v, nv = (torch.randn(shape, generator=g) for _ in range(3))
    if layout == "batched":
        done = torch.rand(shape, generator=g) < 1e-3
        done[:, -1] = True
        term = done & (torch.rand(shape, generator=g) < 0.5)
        term[:, -1] = torch.rand(rows, generator=g) < 0.5
    else:
        episodes = rows * T // 1024  # 4000 episodes (62 in the smoke run)
        ends = torch.randperm(rows * T - 1, generator=g)[: episodes - 1].sort().values
        done = torch.zeros(shape, dtype=torch.bool)
        done[ends] = True
        done[-1] = True
        term = done & (torch.rand(shape, generator=g) < 0.5)
    return r, v, nv, done, term


def _python_loop(r, v, nv, done, term):
    """The loop a user would write first: floats, one transition at a time."""
    T = r.shape[-1]
    rows = [x.reshape(-1, T).tolist() for x in (r, v, nv, done, term)]
    gl = GAMMA * LAM
    adv = []
    for rr, vv, nn, dd, tt in zip(*rows):
        out, acc = [0.0] * T, 0.0
        for t in range(T - 1, -1, -1):
            delta = rr[t] + (0.0 if tt[t] else GAMMA * nn[t]) - vv[t]
            acc = delta if dd[t] else delta + gl * acc
            out[t] = acc
        adv.append(out)
    a = torch.tensor(adv, dtype=r.dtype).reshape(r.shape)
    return a, a + v


def _runner(case: str, args):
    """A no-argument callable running ``case`` on ``args`` (on their device)."""
    case = case.removesuffix("-1thread")
    if case == "ext":
        return lambda: gae(*args, GAMMA, LAM, backend="ext")
    if case == "gae_ref":
        return lambda: gae_ref(*args, GAMMA, LAM)
    if case == "python_loop":
        return lambda: _python_loop(*args)
    if case == "torchrl_vec":
        functional = pytest.importorskip(
            "torchrl.objectives.value.functional",
            reason="torchrl is not installed (optional: pip install torchrl)")
        # TorchRL wants (..., T, 1) with time at -2; the flat layout is one row.
        tr = tuple(x.reshape(-1, x.shape[-1], 1) for x in args)
        return lambda: functional.vec_generalized_advantage_estimate(
            GAMMA, LAM, tr[1], tr[2], tr[0], tr[3], tr[4], time_dim=-2)
    # memcpy: the bytes the op reads, copied once into a preallocated buffer.
    nbytes = sum(x.numel() * x.element_size() for x in args)
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=args[0].device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["batched", "flat"])
def test_gae(benchmark, layout, case):
    benchmark.group = f"gae-{layout}-4M"
    args = _inputs(layout, smoke=benchmark.disabled)
    fn = _runner(case, args)
    rounds = ROUNDS[case]
    threads = torch.get_num_threads()
    if case.endswith("-1thread"):
        torch.set_num_threads(1)
    try:
        out = benchmark.pedantic(fn, rounds=rounds, iterations=1,
                                 warmup_rounds=min(rounds - 1, 1))
    finally:
        torch.set_num_threads(threads)
    if not case.startswith("memcpy"):
        adv = out[0].reshape(args[0].shape)
        want = gae(*args, GAMMA, LAM, backend="torch")[0]
        torch.testing.assert_close(adv, want, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="the CUDA kernel of gae needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("case", ["ext", "gae_ref", "torchrl_vec", "memcpy"])
@pytest.mark.parametrize("layout", ["batched", "flat"])
def test_cuda_gae(benchmark, layout, case):
    benchmark.group = f"gae-cuda-{layout}-4M"
    args = tuple(x.cuda() for x in _inputs(layout, smoke=benchmark.disabled))
    fn = _runner(case, args)

    def step():
        out = fn()
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=2)
    if case != "memcpy":
        want = gae(*(x.cpu() for x in args), GAMMA, LAM, backend="torch")[0]
        torch.testing.assert_close(out[0].reshape(args[0].shape).cpu(), want, rtol=1e-4,
                                   atol=1e-4)
