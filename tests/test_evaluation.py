"""The initial-noise option of acting outside training: ``auto`` acts with the mode (e = 0) for
discrete actions and samples e ~ N(0, I) for continuous ones; the trainer's evaluation,
``evaluate_policy``, ``vgm2p eval`` and the integration adapters all resolve it with
``policy.sampling.resolve_noise``."""

from __future__ import annotations

import pytest
import torch

from vgm2p_fast.integrations import act_batched
from vgm2p_fast.integrations.ogmarl import MeanFlowSystem
from vgm2p_fast.integrations.pymarl import MeanFlowMAC
from vgm2p_fast.policy import MeanFlowPolicy, MLPPolicy
from vgm2p_fast.policy.sampling import resolve_noise
from vgm2p_fast.train import TrainConfig
from vgm2p_fast.train import evaluation as ev


@pytest.mark.parametrize("noise, discrete, expected", [
    ("auto", True, "zero"), ("auto", False, "sample"), ("sample", True, "sample"),
    ("sample", False, "sample"), ("zero", True, "zero"), ("zero", False, "zero")])
def test_resolve_noise(noise, discrete, expected):
    assert resolve_noise(noise, discrete) == expected


def test_resolve_noise_names_a_bad_value():
    with pytest.raises(ValueError,
                       match=r"noise: expected one of auto, sample, zero, found 'mode'"):
        resolve_noise("mode", True)


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
    zero = resolve_noise(noise, discrete) == "zero"
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


@pytest.mark.parametrize("discrete", [True, False])
def test_act_batched_noise(discrete):
    """auto == zero (e = 0) for discrete policies and == sample (the same RNG stream as
    ``policy.act``) for continuous ones."""
    policy = _policy(discrete)
    obs = torch.randn(2, 16, 2, 5)
    flat = obs.reshape(32, 2, 5)
    zero = policy.act(flat, noise=torch.zeros(32, 2, 4)).reshape(2, 16, *([2] if discrete
                                                                          else [2, 4]))
    torch.manual_seed(3)
    sampled = policy.act(flat).reshape(zero.shape)
    torch.manual_seed(3)
    auto = act_batched(policy, obs)
    assert torch.equal(auto, zero if discrete else sampled)
    assert torch.equal(act_batched(policy, obs, noise="zero"), zero)
    torch.manual_seed(3)
    assert torch.equal(act_batched(policy, obs, noise="sample"), sampled)
    if not discrete:
        assert not torch.equal(zero, sampled)


def test_adapters_pass_their_noise_and_name_a_bad_one():
    policy = _policy(True)
    obs = torch.randn(8, 2, 5)
    zero = policy.act(obs, noise=torch.zeros(8, 2, 4))
    assert torch.equal(MeanFlowMAC(policy).select_actions(obs), zero)
    system = MeanFlowSystem(policy, ["a", "b"], noise="zero")
    got = system.select_actions({"a": obs[:, 0].numpy(), "b": obs[:, 1].numpy()})
    assert torch.equal(torch.stack([torch.as_tensor(got["a"]), torch.as_tensor(got["b"])], 1),
                       zero)
    torch.manual_seed(5)
    sampled = MeanFlowMAC(policy, noise="sample").select_actions(obs)
    torch.manual_seed(5)
    assert torch.equal(sampled, policy.act(obs))
    for make in (lambda: MeanFlowMAC(policy, noise="mode"),
                 lambda: MeanFlowSystem(policy, ["a", "b"], noise="mode")):
        with pytest.raises(ValueError, match="noise: expected one of"):
            make()
