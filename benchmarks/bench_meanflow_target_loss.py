"""``meanflow_target_loss`` speed: target + adaptive loss + gradient into u, one pass.

CUDA only (ready, skipped without a GPU): the Triton kernel against the ``torch`` backend at
4096 x 6 rows, D = 6, bf16, forward + backward. Launch-bound on both sides; goal from the launch
count in ``kernels/meanflow_target_loss.py``: >= 3x. Not measured: no GPU was available. On CPU
the ``torch`` backend is the only path (the interpreter is not a speed path), so there is no CPU
case. Run: ``pytest benchmarks/bench_meanflow_target_loss.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.ops import meanflow_target_loss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need a CUDA GPU")
@pytest.mark.cuda
@pytest.mark.benchmark(group="meanflow_target_loss-cuda")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_loss_forward_backward(benchmark, backend):
    rows = 64 * 6 if benchmark.disabled else 4096 * 6
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen).to("cuda", torch.bfloat16)  # noqa: E731
    u, dudt, v_g = mk(rows, 6).requires_grad_(), mk(rows, 6), mk(rows, 6)
    t = torch.rand(rows, generator=gen).to("cuda", torch.bfloat16)
    r = t * 0.5

    def step():
        loss, _ = meanflow_target_loss(u, dudt, v_g, t, r, backend=backend)
        loss.mean().backward()
        torch.cuda.synchronize()
        return loss

    step()
    assert benchmark(step).shape == (rows,)
