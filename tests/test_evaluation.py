"""Evaluation's initial-noise option: ``auto`` acts with the mode (e = 0) for discrete actions
and samples e ~ N(0, I) for continuous ones; the trainer, ``evaluate_policy`` and
``vgm2p eval`` all resolve it the same way."""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.policy import MeanFlowPolicy, MLPPolicy
from vgm2p_fast.train import TrainConfig
from vgm2p_fast.train import evaluation as ev


@pytest.mark.parametrize("noise, discrete, expected", [
    ("auto", True, "zero"), ("auto", False, "sample"), ("sample", True, "sample"),
    ("sample", False, "sample"), ("zero", True, "zero"), ("zero", False, "zero")])
def test_resolve_noise(noise, discrete, expected):
    assert ev.resolve_noise(noise, discrete) == expected


def test_resolve_noise_names_a_bad_value():
    with pytest.raises(ValueError, match=r"noise: expected auto, sample or zero, found 'mode'"):
        ev.resolve_noise("mode", True)


def test_default_is_auto():
    assert TrainConfig().eval_noise == "auto"


def _policy(discrete: bool) -> MeanFlowPolicy:
    torch.manual_seed(0)
    return MeanFlowPolicy(5, 4, 2, discrete, hidden_dims=(16, 16))


def _fake_env(obs: torch.Tensor, avail: torch.Tensor | None, calls: list):
    """An ``envs.evaluate`` stand-in that calls act_fn twice on the same observations."""
    def evaluate(act_fn, spec, episodes, seed=0):
        calls.extend(act_fn(obs, avail) for _ in range(2))
        return {"returns": [0.0], "return_mean": 0.0, "return_std": 0.0}
    return evaluate


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("noise", ["auto", "sample", "zero"])
def test_evaluate_policy_acts_with_the_resolved_noise(monkeypatch, discrete, noise):
    """e = 0 gives the same actions on every call and equals ``act(noise=zeros)``; sampled
    noise gives different continuous actions (or, for discrete ones, the spy sees None)."""
    policy = _policy(discrete)
    obs = torch.randn(64, 2, 5)
    avail = torch.ones(64, 2, 4, dtype=torch.bool) if discrete else None
    seen: list = []
    real_act = policy.act

    def spy(*args, **kw):
        seen.append(kw.get("noise"))
        return real_act(*args, **kw)

    monkeypatch.setattr(policy, "act", spy)
    calls: list = []
    monkeypatch.setattr(ev.envs, "evaluate", _fake_env(obs, avail, calls))
    ev.evaluate_policy(policy, "any", 1, 0, noise=noise)
    zero = ev.resolve_noise(noise, discrete) == "zero"
    assert all((e is not None) == zero for e in seen)
    if zero:
        assert all(float(e.abs().sum()) == 0.0 and e.shape == (64, 2, 4) for e in seen)
        expected = real_act(obs, avail, noise=torch.zeros(64, 2, 4))
        assert torch.equal(calls[0], expected) and torch.equal(calls[1], expected)
    elif not discrete:
        assert not torch.equal(calls[0], calls[1])


def test_evaluate_policy_refuses_a_bad_noise_before_the_environment(monkeypatch):
    def never(*args, **kw):
        raise AssertionError("the environment ran")
    monkeypatch.setattr(ev.envs, "evaluate", never)
    with pytest.raises(ValueError, match="noise: expected"):
        ev.evaluate_policy(_policy(True), "any", 1, 0, noise="Zero")


def test_mlp_policy_ignores_the_noise(monkeypatch):
    torch.manual_seed(0)
    policy = MLPPolicy(5, 4, 2, True, hidden_dims=(16,))
    obs, avail = torch.randn(8, 2, 5), torch.ones(8, 2, 4, dtype=torch.bool)
    calls: list = []
    monkeypatch.setattr(ev.envs, "evaluate", _fake_env(obs, avail, calls))
    ev.evaluate_policy(policy, "any", 1, 0, noise="auto")
    assert torch.equal(calls[0], policy.act(obs, avail))
