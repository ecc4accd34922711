"""``mlp_cfg_sample`` speed: one decentralised env step (6 agents, shared weights, guided) of the
policy's default MLP (4 x 256 SiLU, obs 24, D = 6), float32.

- ``triton`` (CUDA): ``ops.mlp_cfg_sample`` in one launch vs ``torch``: the same op's eager
  layer-by-layer reference (~2 launches per layer + ~5 for the step, ~15 in all); goal >= 2x.
  Also the policy's own ``act`` on the Triton layers, which adds its input building (time
  embeddings, concatenation: ~6 small torch ops) to whichever path it takes.
- ``cpu``: the torch reference on CPU, so that the CI smoke run (``pytest benchmarks/
  --benchmark-disable``) exercises the case; the Triton kernel has no CPU path (the interpreter
  is for tests, not timings).
Not measured on a GPU: none was available. Run: ``pytest benchmarks/bench_mlp_cfg_sample.py
--benchmark-only`` (``scripts/gpu_check.sh`` runs it on the first GPU machine).
"""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.ops import mlp_cfg_sample, pack_mlp

AGENTS, OBS, D = 6, 24, 6
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                             reason="the Triton kernel needs a CUDA GPU; this machine has none")


def _step(device: str, backend: str):
    """(policy, fn running one guided step with ``backend``); values do not change the speed."""
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(OBS, D, AGENTS, backend=backend).to(device)
    pack = pack_mlp(list(policy.weights), list(policy.biases))
    x = torch.randn(2 * AGENTS, policy.weights[0].shape[-1], device=device)  # [cond; null]
    z = torch.randn(AGENTS, D, device=device)
    low, high = policy.action_low, policy.action_high

    def step():
        a = mlp_cfg_sample(x, pack, z, policy.activation, guided=True, guidance=2.0, low=low,
                           high=high, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return a

    return policy, step


@pytest.mark.benchmark(group="mlp_cfg_sample-cpu")
def test_cpu_reference(benchmark, smoke_one_thread):
    _, step = _step("cpu", "torch")
    with torch.no_grad():
        assert benchmark(step).shape == (AGENTS, D)


@pytest.mark.cuda
@no_cuda
@pytest.mark.benchmark(group="mlp_cfg_sample-cuda")
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_op(benchmark, backend):
    _, step = _step("cuda", backend)
    with torch.no_grad():
        step()
        assert benchmark(step).shape == (AGENTS, D)


@pytest.mark.cuda
@no_cuda
@pytest.mark.benchmark(group="mlp_cfg_sample-cuda")
def test_cuda_policy_act(benchmark):
    """The whole ``act`` on the Triton backend (one-launch path: 6 rows fit ``mlp_fits``)."""
    policy, _ = _step("cuda", "triton")
    obs = torch.randn(1, AGENTS, OBS, device="cuda")
    noise = torch.randn(1, AGENTS, D, device="cuda")

    def act():
        a = policy.act(obs, guidance=2.0, noise=noise)
        torch.cuda.synchronize()
        return a

    with torch.no_grad():
        act()
        assert benchmark(act).shape == (1, AGENTS, D)
