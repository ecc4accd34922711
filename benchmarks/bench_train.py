"""End to end: ``vgm2p_fast.train.train`` throughput per MeanFlow JVP mode.

A short run (40 iterations: critic + policy step each, batch 256 transitions x 6 agents, the
default 3 x 256 policy and 2 x 256 critic, kappa = 0.5, one advantage refresh, no evaluation)
on a generated HalfCheetah-6x1-shaped dataset (2000 transitions, obs 9, 1 action dim), with
the policy's JVP on our path (``fused``) or on ``torch.func.jvp`` (``func``).
``extra_info["samples_per_s"]`` is the trainer's own count (transitions per second of the
training loop, its ``summary.json`` field; the best of the rounds); the benchmark time is the
whole ``train()`` call (setup and the final writes included). Goal on CPU, one run: ``fused``
>= 2x the samples/s of ``func``. Under ``--benchmark-disable`` (the CI smoke): 2 iterations of
a 32-wide network. Run: ``pytest benchmarks/bench_train.py --benchmark-only``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vgm2p_fast.datasets import write_dataset
from vgm2p_fast.train import TrainConfig, train

AGENTS, OBS, ACT, EPISODES, LENGTH = 6, 9, 1, 20, 100


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Random observations and actions; the reward prefers positive actions (advantages vary)."""
    rng = np.random.default_rng(0)
    t = EPISODES * LENGTH
    actions = rng.uniform(-1, 1, size=(t, AGENTS, ACT)).astype(np.float32)
    ends = np.zeros(t, bool)
    ends[LENGTH - 1 :: LENGTH] = True
    path = tmp_path_factory.mktemp("bench_train") / "halfcheetah-6x1-random.h5"
    write_dataset(path, env="mamujoco/HalfCheetah-6x1",
                  observations=rng.normal(size=(t, AGENTS, OBS)).astype(np.float32),
                  actions=actions, rewards=actions.mean((1, 2)), terminals=np.zeros(t, bool),
                  truncations=ends)
    return path


@pytest.mark.benchmark(group="train-end-to-end")
@pytest.mark.parametrize("jvp", ["fused", "func"])
def test_train(benchmark, smoke_one_thread, dataset, tmp_path, jvp):
    smoke = benchmark.disabled
    size = {"hidden_dims": (32, 32), "value_hidden": (32, 32)} if smoke else {}
    cfg = TrainConfig(dataset=str(dataset), out=str(tmp_path / jvp), jvp=jvp,
                      steps=2 if smoke else 40, value_warmup=0, batch_size=256,
                      eval_episodes=0, log_every=10**6, checkpoint_every=10**6,
                      refresh_every=10**6, seed=0, **size)
    rates: list[float] = []

    def run() -> dict:
        summary = train(cfg, progress=False, overwrite=True)  # each round replaces the last
        rates.append(summary["samples_per_s"])
        return summary

    summary = benchmark.pedantic(run, rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info["samples_per_s"] = max(rates)
    benchmark.extra_info["samples_per_s_rounds"] = rates
    assert summary["iterations"] == cfg.steps and min(rates) > 0
