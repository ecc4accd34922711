"""``cfg_sample`` speed: guided one-step sampling + decoding, and the one-launch whole-MLP path.

CUDA only (ready, skipped without a GPU):
- ``cfg_sample`` Triton vs ``torch`` at 4096 x 6 rows (D = 6 continuous, K = 12 discrete),
  bf16: launch-bound, goal >= 3x (1 launch vs ~5).
- ``mlp_cfg_sample`` (one launch: 4 x 256 SiLU MLP + guided step, B = 6 agents, one env) vs
  the layer-by-layer Triton path of ``MeanFlowPolicy.act``; goal: >= 2x from ~11 launches -> 1.
  The one-launch case times the kernel alone; in ``act`` it would keep the policy's input
  building (time embeddings, concatenation: ~6 small torch ops), which the other case includes.
Not measured: no GPU was available. Run: ``pytest benchmarks/bench_cfg_sample.py
--benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf
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


@pytest.mark.benchmark(group="mlp_cfg_sample-cuda")
@pytest.mark.parametrize("path", ["one_launch", "layer_by_layer"])
def test_cuda_decentralised_step(benchmark, path):
    """One env step for 6 agents (shared weights), guided, the policy's default MLP."""
    from vgm2p_fast.kernels.cfg_sample import mlp_cfg_sample, pack_mlp

    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(24, 6, 6, backend="triton").cuda()
    obs = torch.randn(1, 6, 24, device="cuda")
    z = torch.randn(1, 6, 6, device="cuda")
    pack = pack_mlp(list(policy.weights), list(policy.biases))
    # [cond rows; null rows] of the first layer's input; values do not change the speed
    x_in = torch.randn(2 * 6, policy.weights[0].shape[-1], device="cuda")

    def step():
        if path == "one_launch":
            a = mlp_cfg_sample(x_in, pack, z.reshape(6, 6), "silu", guided=True,
                               guidance=2.0, low=policy.action_low, high=policy.action_high)
        else:
            a = policy.act(obs, guidance=2.0, noise=z)
        torch.cuda.synchronize()
        return a

    step()
    assert benchmark(step).numel() == 36
