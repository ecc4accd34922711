"""``CUDAGraphActor``: argument checks at the boundary (CPU), the static-buffer actor it is built
on run eagerly (CPU: the same actions as ``policy.act``, the per-call checks, validation,
recapture on a weight update), and the captured graph itself (CUDA only)."""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.policy import CUDAGraphActor, MLPPolicy
from vgm2p_fast.policy.cuda_graph import StaticActor

OBS, AGENTS = 5, 3


def _policy(discrete: bool = False, share: bool = True, backend: str = "auto",
            device: str = "cpu") -> vf.MeanFlowPolicy:
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(OBS, 4, AGENTS, discrete, hidden_dims=(16, 16),
                               share_parameters=share, backend=backend,
                               action_low=None if discrete else [-2.0, -1.0, 0.0, 1.0],
                               action_high=None if discrete else [2.0, 1.0, 1.0, 3.0])
    policy.set_obs_normalization(torch.randn(OBS), torch.rand(OBS) + 0.5)
    return policy.to(device)


def _inputs(policy: vf.MeanFlowPolicy, batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dev = policy.freqs.device
    obs = torch.randn(batch, AGENTS, OBS, generator=g).to(dev)
    noise = torch.randn(batch, AGENTS, policy.action_dim, generator=g).to(dev)
    avail = None
    if policy.discrete:
        avail = torch.rand(batch, AGENTS, policy.action_dim, generator=g) < 0.5
        avail[..., 0] = True
        avail = avail.to(dev)
    return obs, avail, noise


def _same(out: torch.Tensor, ref: torch.Tensor) -> None:
    if out.dtype == torch.int64:  # argmax over the same scores
        assert torch.equal(out, ref)
    else:  # same kernels; a gather instead of an addmm's bias on one path: round-off
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the boundary (any machine)
def test_a_cpu_policy_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"policy: CUDA graphs need a CUDA device; expected a "
                                         r"policy on cuda .*found one on cpu"):
        CUDAGraphActor(_policy(), 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, r"batch_size: expected an int >= 1, found 0"),
    ({"batch_size": True}, r"batch_size: expected an int >= 1, found True"),
    ({"batch_size": 2.0}, r"batch_size: expected an int >= 1, found 2.0"),
    ({"test_guidance": 0.0}, r"test_guidance: expected a finite number > 0, found 0.0"),
    ({"test_guidance": float("inf")}, r"test_guidance: expected a finite number > 0"),
    ({"n_steps": 0}, r"n_steps: expected an int >= 1, found 0"),
    ({"sampler": "ddim"}, r"sampler: expected one of \['euler', 'meanflow'\], found 'ddim'"),
    ({"cond": torch.ones(4, dtype=torch.long)}, r"cond: expected an int token or None"),
    ({"cond": 7}, r"cond: expected a token id in \[0, 2\] \(2 = null\), found 7"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    """Checked before the device: the same errors on a CPU-only machine as on a GPU one."""
    kwargs = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        CUDAGraphActor(_policy(), **kwargs)


def test_an_mlp_policy_is_refused():
    with pytest.raises(ValueError, match="policy: expected a MeanFlowPolicy, found MLPPolicy"):
        CUDAGraphActor(MLPPolicy(OBS, 4, AGENTS), 4)


# ---------------------------------------------------------------- the static actor, eagerly (CPU)
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("share", [True, False])  # shared: the one-step plan; per agent: _sample
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_same_actions_as_act_with_the_same_noise(discrete, share, guidance):
    policy = _policy(discrete, share)
    actor = StaticActor(policy, 4, test_guidance=guidance)
    out = None
    for seed in (1, 2):  # a second call reads the new inputs into the same output tensor
        obs, avail, noise = _inputs(policy, 4, seed)
        got = actor(obs, avail, noise=noise)
        _same(got, policy.act(obs, avail, noise=noise, test_guidance=guidance))
        assert out is None or got is out
        out = got
    if discrete:  # no mask: every action available, as act without one
        obs, _, noise = _inputs(policy, 4, 3)
        _same(actor(obs, noise=noise), policy.act(obs, noise=noise, test_guidance=guidance))


@pytest.mark.parametrize("discrete", [False, True])
def test_same_actions_through_the_one_launch_kernel(discrete):
    """The Triton one-launch path (interpreter here) with the condition as a [B] tensor."""
    policy = _policy(discrete, backend="triton")
    actor = StaticActor(policy, 2, test_guidance=2.0)
    obs, avail, noise = _inputs(policy, 2)
    _same(actor(obs, avail, noise=noise), policy.act(obs, avail, noise=noise, test_guidance=2.0))
    assert not actor._lean and "_mlp_pack" in policy.__dict__  # the one-launch path ran


def test_multi_step_and_cond_are_fixed_at_capture():
    policy = _policy()
    actor = StaticActor(policy, 3, n_steps=3, sampler="euler", cond=0)
    obs, _, noise = _inputs(policy, 3)
    _same(actor(obs, noise=noise),
          policy.act(obs, noise=noise, n_steps=3, sampler="euler", cond=0))


def test_noise_drawn_from_a_generator_is_what_act_draws():
    policy = _policy()
    actor = StaticActor(policy, 4)
    obs, _, _ = _inputs(policy, 4)
    got = actor(obs, generator=torch.Generator().manual_seed(5)).clone()
    _same(got, policy.act(obs, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(got, actor(obs))  # the default generator: other noise


def test_writing_into_the_buffers_skips_the_copy():
    policy = _policy(discrete=True)
    actor = StaticActor(policy, 4)
    obs, avail, noise = _inputs(policy, 4)
    actor.obs_buffer.copy_(obs)
    actor.avail_buffer.copy_(avail)
    actor.noise_buffer.copy_(noise)
    got = actor(actor.obs_buffer, actor.avail_buffer, noise=actor.noise_buffer)
    _same(got, policy.act(obs, avail, noise=noise))


def test_a_weight_update_is_seen_by_the_next_call():
    policy = _policy()
    actor = StaticActor(policy, 4)
    obs, _, noise = _inputs(policy, 4)
    captures = []
    actor.capture = lambda: (captures.append(1), StaticActor.capture(actor))
    before = actor(obs, noise=noise).clone()
    actor(obs, noise=noise)
    assert not captures  # acting itself moves no version counter: no recapture per call
    with torch.no_grad():  # an optimiser step's in-place update bumps the version counters
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    after = actor(obs, noise=noise)
    assert len(captures) == 1
    _same(after, policy.act(obs, noise=noise))
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("make, match", [
    (lambda o, a, n: {"obs": o[:3]}, r"obs: expected batch size 4 \(the size this actor was "
                                     r"captured at; .*found 3"),
    (lambda o, a, n: {"obs": o.to("meta")}, r"obs: expected a tensor on cpu, found one on meta"),
    (lambda o, a, n: {"obs": o.double()}, r"obs: expected dtype in \(float32\), found float64"),
    (lambda o, a, n: {"obs": o[..., :2]}, r"obs: expected shape \(4, 3, 5\), found \(4, 3, 2\)"),
    (lambda o, a, n: {"obs": o.numpy()}, r"obs: expected a torch.Tensor, found ndarray"),
    (lambda o, a, n: {"obs": o, "avail_actions": a[:2]}, r"avail_actions: expected batch size 4"),
    (lambda o, a, n: {"obs": o, "avail_actions": a.float()},
     r"avail_actions: expected dtype in \(bool\), found float32"),
    (lambda o, a, n: {"obs": o, "noise": n.to("meta")},
     r"noise: expected a tensor on cpu, found one on meta"),
    (lambda o, a, n: {"obs": o, "noise": n[:, :2]}, r"noise: expected shape \(4, 3, 4\), found"),
    (lambda o, a, n: {"obs": o, "generator": 3}, r"generator: expected a torch.Generator on cpu, "
                                                 r"found int"),
])
def test_bad_call_inputs_name_the_argument(make, match):
    policy = _policy(discrete=True)
    actor = StaticActor(policy, 4)
    obs, avail, noise = _inputs(policy, 4)
    kwargs = make(obs, avail, noise)
    with pytest.raises(ValueError, match=match):
        actor(kwargs.pop("obs"), kwargs.pop("avail_actions", None), **kwargs)


def test_a_mask_for_continuous_actions_is_refused():
    policy = _policy()
    actor = StaticActor(policy, 4)
    obs, _, _ = _inputs(policy, 4)
    with pytest.raises(ValueError, match="avail_actions: expected None for continuous actions"):
        actor(obs, torch.ones(4, AGENTS, 4, dtype=torch.bool))


def test_validation_keeps_the_refusals_of_act():
    policy = _policy(discrete=True)
    actor = StaticActor(policy, 4)
    obs, avail, noise = _inputs(policy, 4)
    bad = obs.clone()
    bad[2, 1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"obs: expected finite observations, found nan at "
                                         r"row 2, agent 1, feature 3"):
        actor(bad, avail, noise=noise)
    empty = avail.clone()
    empty[1, 2] = False
    with pytest.raises(ValueError, match=r"avail_actions: row 1, agent 2 marks every action "
                                         r"unavailable"):
        actor(obs, empty, noise=noise)
    _same(actor(obs, avail, noise=noise), policy.act(obs, avail, noise=noise))  # still usable
    quiet = StaticActor(policy, 4, validate=False)  # no host read: no error either
    assert quiet(bad, avail, noise=noise).shape == (4, AGENTS)


# ---------------------------------------------------------------- the captured graph (CUDA)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("discrete, share, guidance, batch", [
    # each head, layout and guidance at one env (the one-launch kernel's size) and at 64 envs,
    # six captures: gpu_check.sh's test step has ~2 minutes for every CUDA test
    (False, True, 1.0, 1), (False, True, 2.0, 64), (True, True, 2.0, 1), (True, True, 1.0, 64),
    (False, False, 2.0, 1), (True, False, 1.0, 64)])
def test_cuda_graph_replays_the_actions_of_act(discrete, share, guidance, batch):
    policy = _policy(discrete, share, device="cuda")
    actor = CUDAGraphActor(policy, batch, test_guidance=guidance)
    assert actor._graph is not None
    out = None
    for seed in (1, 2):  # the replay reads the new inputs and overwrites the same output
        obs, avail, noise = _inputs(policy, batch, seed)
        got = actor(obs, avail, noise=noise)
        torch.cuda.synchronize()
        _same(got, policy.act(obs, avail, noise=noise, test_guidance=guidance))
        assert out is None or got is out
        out = got


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_checks_inputs_validates_and_recaptures():
    policy = _policy(discrete=True, device="cuda")
    actor = CUDAGraphActor(policy, 8)
    obs, avail, noise = _inputs(policy, 8)
    with pytest.raises(ValueError, match=r"obs: expected a tensor on cuda:0, found one on cpu"):
        actor(obs.cpu(), avail, noise=noise)
    with pytest.raises(ValueError, match=r"obs: expected batch size 8"):
        actor(obs[:4], avail[:4], noise=noise[:4])
    empty = avail.clone()
    empty[3, 0] = False
    with pytest.raises(ValueError, match=r"avail_actions: row 3, agent 0 marks every action"):
        actor(obs, empty, noise=noise)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    got = actor(obs, avail, noise=noise)
    _same(got, policy.act(obs, avail, noise=noise))
    gen = torch.Generator(device="cuda")
    a = actor(obs, avail, generator=gen.manual_seed(3)).clone()
    _same(a, policy.act(obs, avail, generator=gen.manual_seed(3)))
