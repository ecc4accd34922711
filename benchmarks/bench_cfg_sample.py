"""``cfg_sample`` speed: guided one-step sampling + decoding (the one-launch whole-MLP path is
``bench_mlp_cfg_sample.py``).

CUDA only (ready, skipped without a GPU): ``cfg_sample`` Triton vs ``torch`` at 4096 x 6 rows
(D = 6 continuous, K = 12 discrete), bf16: launch-bound, goal >= 3x (1 launch vs ~5).
Not measured: no GPU was available. Run: ``pytest benchmarks/bench_cfg_sample.py
--benchmark-only`` (``scripts/gpu_check.sh`` runs it on the first GPU machine).
"""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.ops import cfg_sample

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need a CUDA GPU"),
]


@pytest.mark.benchmark(group="cfg_sample-cuda")
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_cfg_sample(benchmark, backend, discrete):
    rows, d = (64 * 6 if benchmark.disabled else 4096 * 6), (12 if discrete else 6)
    gen = torch.Generator().manual_seed(0)
    z, u_c, u_n = (torch.randn(rows, d, generator=gen).to("cuda", torch.bfloat16)
                   for _ in range(3))
    avail = (torch.rand(rows, d, generator=gen) < 0.7).cuda() if discrete else None
    if discrete:
        avail[:, 0] = True
    bounds = {} if discrete else {"low": -2 * torch.ones(d, device="cuda", dtype=z.dtype),
                                  "high": 2 * torch.ones(d, device="cuda", dtype=z.dtype)}

    def step():
        a = cfg_sample(z, u_c, u_n, 2.0, avail=avail, discrete=discrete, backend=backend,
                       **bounds)
        torch.cuda.synchronize()
        return a

    step()
    assert benchmark(step).shape[0] == rows
