"""Action generation: one-step VGM²P against the policies a user would pick instead.

All cases run the 4 x 256 SiLU network of a ``MeanFlowPolicy(24, 6, 6)`` (6 agents, shared
weights, continuous actions, observation normalisation on): only the sampling scheme differs
(``benchmarks/peers/``).

- ``vgm2p``: ``policy.act(obs)``, one network evaluation (t = 1, r = 0, advantageous token).
- ``vgm2p_guided``: the same with test-time guidance w = 2 (cond and null passes stacked).
- ``mlp``: a deterministic MLP actor of the same widths (tanh, rescaled): the floor.
- ``flow10``: flow-matching policy, 10 Euler steps (MAC-Flow's flow teacher).
- ``ddpm200``: epsilon-prediction DDPM, 200 ancestral steps (MADiff / DoF configurations).

At B = 1 env (decentralised execution: 6 rows) and B = 1024 envs (6144 rows); under
``--benchmark-disable`` (the CI smoke) the large batch shrinks to 16 envs. B = 1 and the
smoke run on one thread (docs/integrations.md, "acting on a CPU with small batches": on the
shared 2-core machine a 2-thread DDPM call at B = 1 took 26 s instead of 0.1 s, each of its
~3000 small ops waiting for the second thread). Goal on CPU, one run:
``vgm2p`` <= 1.2x ``mlp`` at B = 1 env. Run: ``pytest benchmarks/bench_act.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch
from peers import DDPMPolicy, FlowPolicy, MLPActor

import vgm2p_fast as vf

OBS, ACT, AGENTS = 24, 6, 6
CASES = ["vgm2p", "vgm2p_guided", "mlp", "flow10", "ddpm200"]
# Rounds of the multi-step peers at 1024 envs (a DDPM call is 200 network passes over 6144
# rows, ~10 s on one core); every other case lets pytest-benchmark calibrate.
SLOW_ROUNDS = {"flow10": 5, "ddpm200": 3}


def _actor(case: str):
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(OBS, ACT, AGENTS).eval()
    policy.set_obs_normalization(torch.randn(OBS), torch.rand(OBS) + 0.5)
    if case == "mlp":
        return MLPActor(policy).eval().act
    if case == "flow10":
        return FlowPolicy(policy, n_steps=10).act
    if case == "ddpm200":
        return DDPMPolicy(policy, n_steps=200).act
    guidance = 2.0 if case == "vgm2p_guided" else 1.0
    return lambda obs: policy.act(obs, guidance=guidance)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("envs", [1, 1024])
def test_act(benchmark, envs, case):
    envs = 16 if benchmark.disabled and envs > 1 else envs
    benchmark.group = f"act-B{envs}x{AGENTS}"
    act = _actor(case)
    obs = torch.randn(envs, AGENTS, OBS, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    if envs == 1 or benchmark.disabled:  # docs/integrations.md: act on one thread, small batches
        torch.set_num_threads(1)
    try:
        act(obs)  # warm-up (the fast path folds its first layer on the first call)
        if envs > 1 and case in SLOW_ROUNDS:
            actions = benchmark.pedantic(act, args=(obs,), rounds=SLOW_ROUNDS[case],
                                         iterations=1)
        else:
            actions = benchmark(act, obs)
    finally:
        torch.set_num_threads(threads)
    assert actions.shape == (envs, AGENTS, ACT) and bool(torch.isfinite(actions).all())
    assert bool((actions.abs() <= 1).all())  # default bounds [-1, 1]
