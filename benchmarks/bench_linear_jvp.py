"""``linear_jvp`` speed: one MLP layer's primal + tangent (+ the primal's backward).

CPU (measured here): the ``torch`` backend (analytic tangent reusing the pre-activation) against
``torch.func.jvp`` of the same layer; goal: the torch backend is faster (ratio < 1).
CUDA (ready, skipped without a GPU): the Triton kernel against the ``torch`` backend at the
training shape, bf16, forward + backward; goal from the roofline in ``kernels/linear_jvp.py``:
~2x (memory-bound, ~63 MB vs ~126 MB moved). Not measured: no GPU was available.
Shapes shrink under ``--benchmark-disable`` (the CI smoke runs each case once).
Run: ``pytest benchmarks/bench_linear_jvp.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.ops import linear_jvp
from vgm2p_fast.ops.linear_jvp import activation_fn

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="Triton kernels need a CUDA GPU; none here")


def _layer(benchmark, device, dtype, grad):
    """(x, W, b, dx) of a 256 -> 256 layer over 4096 x 6 rows (64 x 6 in the smoke run)."""
    rows = 64 * 6 if benchmark.disabled else 4096 * 6
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen).to(device, dtype)  # noqa: E731
    w = (mk(256, 256) / 16).requires_grad_(grad)
    return mk(rows, 256).requires_grad_(grad), w, mk(256).requires_grad_(grad), mk(rows, 256)


def _run(fn, x, w, b, dx, grad, sync):
    def step():
        h, dh = fn(x, w, b, dx)
        if grad:
            h.sum().backward()
        if sync:
            torch.cuda.synchronize()
        return dh

    step()  # warm-up (and Triton's JIT compile on CUDA)
    return step


def _func_jvp(x, w, b, dx):
    return torch.func.jvp(lambda x_: activation_fn(torch.nn.functional.linear(x_, w, b), "silu"),
                          (x,), (dx,))


@pytest.mark.benchmark(group="linear_jvp-cpu-fwd")
@pytest.mark.parametrize("impl", ["torch", "func_jvp"])
def test_cpu_forward(benchmark, impl):
    x, w, b, dx = _layer(benchmark, "cpu", torch.float32, grad=False)
    fn = _func_jvp if impl == "func_jvp" else (
        lambda *a: linear_jvp(*a, "silu", backend="torch"))
    with torch.no_grad():
        dh = benchmark(_run(fn, x, w, b, dx, grad=False, sync=False))
    assert dh.shape == x.shape


@needs_cuda
@pytest.mark.cuda
@pytest.mark.benchmark(group="linear_jvp-cuda-fwd-bwd")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_forward_backward(benchmark, backend):
    x, w, b, dx = _layer(benchmark, "cuda", torch.bfloat16, grad=True)
    fn = lambda *a: linear_jvp(*a, "silu", backend=backend)  # noqa: E731
    dh = benchmark(_run(fn, x, w, b, dx, grad=True, sync=True))
    assert dh.shape == x.shape
