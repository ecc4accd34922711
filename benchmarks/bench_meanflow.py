"""Training-step speed of the MeanFlow loss: fused JVP path vs ``torch.func.jvp`` vs plain
flow matching on the same network (4 x 256 SiLU, 6 agents, obs 24), and the same under
``torch.compile``.

Cases (``kind``):
- ``fast``: ``meanflow_loss`` on our path (analytic primal + tangent, tangent on the r < t rows);
- ``func``: the same loss with ``torch.func.jvp`` on every row (how public MeanFlow ports do it);
- ``flow_matching``: plain flow-matching BC on the same network (the floor: no JVP, no guidance);
- ``fast_compiled`` / ``flow_matching_compiled``: the loss function under ``torch.compile``
  (inductor; AdamW stays eager). Compiling takes 10-25 s on one core, so these run at one shape
  (batch 256, shared, continuous) and are skipped in the CI smoke (``--benchmark-disable``).

Groups ``meanflow-step-kappa0-B{batch}-{shared|per_agent}-{continuous|discrete}``: batch 256 and
4096 transitions (x 6 agents), shared weights, continuous actions; per-agent weights and a
discrete head (12 actions) at batch 256. kappa = 0 (no guidance pass) isolates the cost of the
JVP; ``meanflow-step-guided-B256`` is the default kappa = 0.5 (one more stacked no-grad pass).
A step = zero_grad + loss + backward + AdamW update.
Goals on CPU, one run (docs/performance.md): ``fast`` <= 1.9x ``flow_matching`` at kappa = 0,
and >= 2x faster than ``func``. Under ``--benchmark-disable`` (the CI smoke) the batch shrinks to
16.
Run: ``pytest benchmarks/bench_meanflow.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf

OBS, ACT, N_ACTIONS, AGENTS = 24, 6, 12, 6
KINDS = ["fast", "func", "flow_matching"]
COMPILED = ["fast_compiled", "flow_matching_compiled"]
# (batch, layout, head) of the kappa = 0 groups; torch.compile cases only on the first
SHAPES = [(256, "shared", "continuous"), (4096, "shared", "continuous"),
          (256, "per_agent", "continuous"), (256, "shared", "discrete")]


def _make_step(kind: str, kappa: float, batch: int, layout: str = "shared",
               head: str = "continuous"):
    torch.manual_seed(0)
    discrete = head == "discrete"
    policy = vf.MeanFlowPolicy(OBS, N_ACTIONS if discrete else ACT, AGENTS, discrete,
                               share_parameters=layout == "shared", kappa=kappa,
                               backend="func" if kind == "func" else "auto")
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, AGENTS, OBS, generator=gen)
    if discrete:
        actions = torch.randint(0, N_ACTIONS, (batch, AGENTS), generator=gen)
    else:
        actions = torch.rand(batch, AGENTS, ACT, generator=gen) * 2 - 1
    cond = torch.randint(0, 2, (batch,), generator=gen)
    loss_fn = (policy.flow_matching_loss if kind.startswith("flow_matching")
               else policy.meanflow_loss)
    if kind.endswith("_compiled"):
        loss_fn = torch.compile(loss_fn)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(obs, actions, cond, generator=gen)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # warm-up: allocator, AdamW state (and the compile, for the compiled kinds)
    return step


def _shape_id(shape) -> str:
    return "B{}-{}-{}".format(*shape)


CASES = [(s, k) for s in SHAPES for k in KINDS] + [(SHAPES[0], k) for k in COMPILED]


@pytest.mark.parametrize(("shape", "kind"), CASES,
                         ids=[f"{_shape_id(s)}-{k}" for s, k in CASES])
def test_train_step_kappa0(benchmark, smoke_one_thread, shape, kind):
    if kind in COMPILED and benchmark.disabled:
        pytest.skip("torch.compile takes 10-25 s per case on one core: not in the CI smoke "
                    "(--benchmark-disable); runs with --benchmark-only")
    batch, layout, head = shape
    benchmark.group = f"meanflow-step-kappa0-{_shape_id(shape)}"
    step = _make_step(kind, 0.0, 16 if benchmark.disabled else batch, layout, head)
    loss = benchmark(step)
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.benchmark(group="meanflow-step-guided-B256")
@pytest.mark.parametrize("kind", ["fast", "func"])
def test_train_step_guided(benchmark, smoke_one_thread, kind):
    """The default CFG-in-the-target training (kappa = 0.5: one extra stacked no-grad pass)."""
    step = _make_step(kind, 0.5, 16 if benchmark.disabled else 256)
    loss = benchmark(step)
    assert torch.isfinite(torch.tensor(loss))
