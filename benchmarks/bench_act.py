"""Action generation: one-step VGM²P against a plain ``nn.Sequential`` and the peers.

All cases act for 6 agents with a 4 x 256 SiLU network (``MeanFlowPolicy(24, D, 6)``, shared
weights, observation normalisation on), on one intra-op thread:

- ``sequential``: the floor. A plain ``nn.Sequential`` of the same widths,
  ``[obs | one-hot id] (30) -> 256 -> 256 -> 256 -> 256 -> D``, called directly on the input it
  needs (built once, outside the timing) under inference mode; discrete: ``torch.where(avail,
  logits, -inf).argmax(-1)`` on top (the masked argmax is what makes logits an action).
- ``mlp``: ``benchmarks/peers.MLPActor``, a tanh actor on the library's own layer path (the
  floor before issue 15; continuous only).
- ``vgm2p``: ``policy(obs)`` / ``policy(obs, avail)``: noise draw, checks (finite
  observations included), one network evaluation, decode.
- ``vgm2p_guided``: ``policy.act(obs, avail, test_guidance=2.0)`` (cond and null passes).
- ``flow10``, ``ddpm200``: 10-step flow and 200-step DDPM policies on the same network
  (continuous; B = 1 only in the ratio report, a 1024-env DDPM call takes ~10 s).
- ``exported`` (``--export``): the ``torch.export`` program of :meth:`MeanFlowPolicy.export`,
  ``torch.export.load(path).module()(obs, noise)``; ``aoti`` (``--aoti``, needs a C++
  compiler): the same program compiled by AOTInductor.

At B = 1 env (decentralised execution: 6 rows) and B = 1024 envs (6144 rows), continuous
(D = 6) and masked discrete (K = 12, about half the actions available).

Two ways to run it:

- ``python benchmarks/bench_act.py [--rounds 40] [--export] [--aoti]``: the ratio report.
  Every round times each case in turn (process CPU time over enough calls to take ~20 ms),
  so all cases see the same machine load; ratios are per round against that round's
  ``sequential``, reported as median and 10th-90th percentile over the rounds. Goals (CPU,
  one thread, issue 15): ``vgm2p`` <= 1.1x ``sequential`` at 1 env, <= 1.0x at 1024 envs;
  ``vgm2p_guided`` <= 2x.
- ``pytest benchmarks/bench_act.py --benchmark-only``: pytest-benchmark groups
  ``act-B{envs}x6`` (continuous) and ``act-discrete-B{envs}x6``, for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import DDPMPolicy, FlowPolicy, MLPActor

import vgm2p_fast as vf

OBS, AGENTS, HIDDEN = 24, 6, (256, 256, 256, 256)
DIMS = {"continuous": 6, "discrete": 12}
CASES = ["sequential", "mlp", "vgm2p", "vgm2p_guided", "flow10", "ddpm200"]
# Rounds of the multi-step peers at 1024 envs under pytest (a DDPM call is 200 network
# passes over 6144 rows, ~10 s on one core); every other case lets pytest-benchmark calibrate.
SLOW_ROUNDS = {"flow10": 5, "ddpm200": 3}
Actor = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_policy(head: str = "continuous") -> vf.MeanFlowPolicy:
    """The benchmarked policy (seed 0; normalisation statistics that are not the identity)."""
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(OBS, DIMS[head], AGENTS, head == "discrete",
                               hidden_dims=HIDDEN).eval()
    policy.set_obs_normalization(torch.randn(OBS), torch.rand(OBS) + 0.5)
    return policy


def sequential(head: str = "continuous") -> nn.Sequential:
    """The floor: ``[obs | one-hot id] -> 4 x 256 SiLU -> D`` (nn.Linear's initialisation)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = OBS + AGENTS
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, DIMS[head])).eval()


def inputs(envs: int, head: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """obs [envs, 6, 24] and, for the discrete head, avail [envs, 6, 12] (action 0 always)."""
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(envs, AGENTS, OBS, generator=g)
    if head != "discrete":
        return obs, None
    avail = torch.rand(envs, AGENTS, DIMS[head], generator=g) < 0.5
    avail[..., 0] = True
    return obs, avail


def _exported(policy: vf.MeanFlowPolicy, aoti: bool) -> Actor:
    """The exported program (``policy.export``), as a module or AOTInductor-compiled."""
    d = Path(tempfile.mkdtemp(prefix="bench_act_"))
    policy.export(d / "actor.pt2")
    if aoti:
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        prog = torch.export.load(d / "actor.pt2")
        module = aoti_load_package(aoti_compile_and_package(prog, package_path=str(
            d / "actor_aoti.pt2")))
    else:
        module = torch.export.load(d / "actor.pt2").module()
    shape = (AGENTS, policy.action_dim)
    if policy.discrete:
        return lambda obs, avail: module(obs, avail, torch.randn(obs.shape[0], *shape))
    return lambda obs, avail: module(obs, torch.randn(obs.shape[0], *shape))


def _actor(case: str, head: str = "continuous") -> Actor:
    """``act(obs, avail=None) -> actions`` of ``case`` for ``head``."""
    if case == "sequential":
        seq = sequential(head)
        ids = torch.eye(AGENTS)
        built: list = [None, None]  # (obs, its [obs | id] input): built once, not timed

        def floor(obs: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
            if built[0] is not obs:
                built[:] = obs, torch.cat([obs, ids.expand(obs.shape[0], -1, -1)], -1)
            out = seq(built[1])
            return out if avail is None else torch.where(avail, out, float("-inf")).argmax(-1)

        return floor
    policy = make_policy(head)
    if case == "mlp":
        actor = MLPActor(policy).eval()
        return lambda obs, avail=None: actor.act(obs)
    if case == "flow10":
        flow = FlowPolicy(policy, n_steps=10)
        return lambda obs, avail=None: flow.act(obs)
    if case == "ddpm200":
        ddpm = DDPMPolicy(policy, n_steps=200)
        return lambda obs, avail=None: ddpm.act(obs)
    if case in ("exported", "aoti"):
        return _exported(policy, case == "aoti")
    if case == "vgm2p_guided":
        return lambda obs, avail=None: policy.act(obs, avail, test_guidance=2.0)
    return lambda obs, avail=None: policy(obs, avail)


def _cases(head: str, envs: int, extra: tuple[str, ...] = ()) -> list[str]:
    cases = [c for c in CASES if head == "continuous" or c in ("sequential", "vgm2p",
                                                                 "vgm2p_guided")]
    if envs > 1:  # the multi-step peers at 1024 envs take seconds a call: pytest only
        cases = [c for c in cases if c not in SLOW_ROUNDS]
    return cases + list(extra)


# ----------------------------------------------------------------------------- pytest
@pytest.mark.parametrize("head", ["continuous", "discrete"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("envs", [1, 1024])
def test_act(benchmark, envs, case, head):
    if head == "discrete" and case not in _cases(head, 1):
        pytest.skip(f"{case} is a continuous peer")
    envs = 16 if benchmark.disabled and envs > 1 else envs
    benchmark.group = f"act-B{envs}x{AGENTS}" if head == "continuous" else \
        f"act-discrete-B{envs}x{AGENTS}"
    act = _actor(case, head)
    obs, avail = inputs(envs, head)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the goals are one-thread goals (docs/integrations.md)
    try:
        with torch.inference_mode():
            act(obs, avail)  # warm-up (the fast path folds its first layer on the first call)
            if envs > 1 and case in SLOW_ROUNDS:
                actions = benchmark.pedantic(act, args=(obs, avail),
                                             rounds=SLOW_ROUNDS[case], iterations=1)
            else:
                actions = benchmark(act, obs, avail)
    finally:
        torch.set_num_threads(threads)
    if head == "discrete":
        assert actions.shape == (envs, AGENTS)
        assert bool(avail.gather(-1, actions.unsqueeze(-1)).all())
    else:
        assert actions.shape == (envs, AGENTS, DIMS[head])
        assert bool(torch.isfinite(actions).all())


# ----------------------------------------------------------------------------- ratio report
def _timed(fn: Callable[[], object], calls: int) -> float:
    t0 = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - t0) / calls


def ratio_report(rounds: int, extra: tuple[str, ...] = (), target_s: float = 0.02
                 ) -> tuple[list[str], dict]:
    """Interleaved rounds of every case of every setting; markdown lines and the raw times."""
    torch.set_num_threads(1)
    settings = [(head, envs) for head in DIMS for envs in (1, 1024)]
    actors, calls, times = {}, {}, {}
    for head, envs in settings:
        obs, avail = inputs(envs, head)
        for case in _cases(head, envs, extra):
            # built outside inference mode: parameters made inside it are inference tensors,
            # which have no version counters, so the policy would take its general path
            act = _actor(case, head)
            actors[head, envs, case] = (lambda a=act, o=obs, m=avail: a(o, m))
            times[head, envs, case] = []
    with torch.inference_mode():
        for key, fn in actors.items():
            fn()
            calls[key] = max(1, round(target_s / max(_timed(fn, 1), 1e-7)))
        for r in range(rounds):
            keys = list(actors)
            keys = keys[r % len(keys):] + keys[: r % len(keys)]  # rotate the order per round
            for key in keys:
                times[key].append(_timed(actors[key], calls[key]))
    load = ", ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    lines = [f"{rounds} interleaved rounds, torch {torch.__version__}, 1 thread, process CPU "
             f"time, load average at the end {load}.", "",
             "| head | envs | case | median per call | ÷ `sequential`: median | p10-p90 |",
             "|---|---|---|---|---|---|"]
    for head, envs in settings:
        floor = times[head, envs, "sequential"]
        for case in _cases(head, envs, extra):
            t = times[head, envs, case]
            ratios = sorted(a / b for a, b in zip(t, floor))
            q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else ratios * 9
            med = statistics.median(t)
            unit = f"{med * 1e6:.1f} us" if med < 1e-2 else f"{med * 1e3:.2f} ms"
            lines.append(f"| {head} | {envs} | `{case}` | {unit} | "
                         f"**{statistics.median(ratios):.2f}** | {q[0]:.2f}-{q[-1]:.2f} |")
    return lines, {f"{h}/{e}/{c}": v for (h, e, c), v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--export", action="store_true", help="also time the exported program")
    ap.add_argument("--aoti", action="store_true", help="also time the AOTInductor package")
    ap.add_argument("--json", type=Path, help="write the per-round times here")
    args = ap.parse_args(argv)
    extra = (("exported",) if args.export else ()) + (("aoti",) if args.aoti else ())
    lines, raw = ratio_report(args.rounds, extra)
    print("\n".join(lines))
    if args.json:
        import json

        args.json.write_text(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
