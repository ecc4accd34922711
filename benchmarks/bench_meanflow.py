"""Training-step speed of the MeanFlow loss: fused JVP path vs ``torch.func.jvp`` vs plain
flow matching on the same network (4 x 256 SiLU, 1024 steps x 6 agents, shared weights).

Goals on CPU, one run (see README): fast step <= 1.9x the flow-matching step with kappa = 0
(no guidance passes: the ratio isolates the cost of the JVP), and >= 2x faster than the
``torch.func.jvp`` step. A step = zero_grad + loss + backward + AdamW update.
Run: ``pytest benchmarks/bench_meanflow.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf

OBS, ACT, AGENTS, BATCH = 24, 6, 6, 1024


def _make_step(kind: str, kappa: float, share: bool = True):
    torch.manual_seed(0)
    backend = "func" if kind == "func" else "auto"
    policy = vf.MeanFlowPolicy(OBS, ACT, AGENTS, share_parameters=share, kappa=kappa,
                               backend=backend)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(BATCH, AGENTS, OBS, generator=gen)
    actions = torch.rand(BATCH, AGENTS, ACT, generator=gen) * 2 - 1
    cond = torch.randint(0, 2, (BATCH,), generator=gen)
    loss_fn = policy.flow_matching_loss if kind == "flow_matching" else policy.meanflow_loss

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(obs, actions, cond, generator=gen)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # warm-up: allocator and AdamW state
    return step


@pytest.mark.benchmark(group="meanflow-step-kappa0")
@pytest.mark.parametrize("kind", ["fast", "func", "flow_matching"])
def test_train_step_kappa0(benchmark, kind):
    step = _make_step(kind, kappa=0.0)
    loss = benchmark(step)
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.benchmark(group="meanflow-step-guided")
@pytest.mark.parametrize("kind", ["fast", "func"])
def test_train_step_guided(benchmark, kind):
    """The default CFG-in-the-target training (kappa = 0.5: one extra stacked no-grad pass)."""
    step = _make_step(kind, kappa=0.5)
    loss = benchmark(step)
    assert torch.isfinite(torch.tensor(loss))
