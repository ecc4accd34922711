"""The act execution fast path of MeanFlowPolicy (folded first layer, cached per weights) and the
benchmark peers in ``benchmarks/peers/`` (MLP actor, 10-step flow, 200-step DDPM)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.ops import cfg_sample_ref

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import DDPMPolicy, FlowPolicy, MLPActor
from peers.policies import cosine_alphas_cumprod

OBS, N, B = 7, 3, 5


def _policy(share: bool, discrete: bool, dtype=torch.float64, seed=0) -> vf.MeanFlowPolicy:
    torch.manual_seed(seed)
    d = 5 if discrete else 4
    bounds = {} if discrete else {"action_low": [-2.0, -1.0, 0.0, -0.5],
                                  "action_high": [2.0, 1.0, 3.0, 0.5]}
    policy = vf.MeanFlowPolicy(OBS, d, N, discrete, hidden_dims=(32, 24), n_tokens=3,
                               share_parameters=share, **bounds).to(dtype)
    # non-trivial normalisation: the fast path folds mean and std into the first layer
    policy.set_obs_normalization(torch.randn(OBS, dtype=dtype), torch.rand(OBS, dtype=dtype) + 0.5)
    return policy


def _general_act(policy, obs, z, cond, guidance=1.0, avail=None):
    """act through the public general path: u(e, 0, 1 | ...) via average_velocity, then
    cfg_sample_ref (docs/design.md 1.2 execution)."""
    b = obs.shape[0]
    one, zero = torch.ones(b, dtype=obs.dtype), torch.zeros(b, dtype=obs.dtype)
    with torch.no_grad():
        u_c = policy.average_velocity(z, zero, one, obs, cond)
        u_n = None
        if guidance != 1.0:
            null = torch.full_like(cond, policy.null_token)
            u_n = policy.average_velocity(z, zero, one, obs, null)
    low, high = (None, None) if policy.discrete else (policy.action_low.to(obs.dtype),
                                                      policy.action_high.to(obs.dtype))
    return cfg_sample_ref(z, u_c, u_n, guidance, 1.0, low, high, avail, policy.discrete)


def _inputs(policy, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = policy.weights[0].dtype
    obs = torch.randn(B, N, OBS, generator=g, dtype=dtype)
    z = torch.randn(B, N, policy.action_dim, generator=g, dtype=dtype)
    return obs, z


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_fast_act_equals_general_path(share, discrete, guidance):
    policy = _policy(share, discrete)
    obs, z = _inputs(policy)
    avail = None
    if discrete:
        g = torch.Generator().manual_seed(3)
        avail = torch.rand(B, N, policy.action_dim, generator=g) < 0.6
        avail[..., 0] = True
    cases = {  # cond as act takes it -> the [B] / [B, N] tensor the general path gets
        "default": (None, torch.full((B,), policy.exec_token)),
        "int": (0, torch.zeros(B, dtype=torch.long)),
        "per-row": (torch.tensor([0, 1, 2, 3, 1]), torch.tensor([0, 1, 2, 3, 1])),
        "per-agent": (torch.arange(B * N).view(B, N) % 4, torch.arange(B * N).view(B, N) % 4),
    }
    one_env = {"one env": (None, torch.full((1,), policy.exec_token))}  # act's B = 1 branch
    for name, (cond_act, cond_ref) in [*cases.items(), *one_env.items()]:
        rows = slice(0, 1) if name == "one env" else slice(None)
        av = None if avail is None else avail[rows]
        got = policy.act(obs[rows], av, cond=cond_act, guidance=guidance, noise=z[rows])
        want = _general_act(policy, obs[rows], z[rows], cond_ref, guidance, av)
        if discrete:
            assert torch.equal(got, want), name
        else:  # float64: the folded sums differ from the concatenated matmul by round-off only
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=name)


def test_fast_act_float32_close_and_multi_step_matches_euler():
    policy = _policy(True, False, torch.float32)
    obs, z = _inputs(policy)
    got = policy.act(obs, noise=z)
    torch.testing.assert_close(got, _general_act(policy, obs, z, torch.full((B,), 2)),
                               rtol=1e-5, atol=1e-5)
    # 10 Euler steps of the instantaneous velocity (the flow peer) through the public API
    flow = FlowPolicy(policy, n_steps=10)
    x = z.clone()
    cond = torch.full((B,), policy.exec_token)
    with torch.no_grad():
        for k in range(10):
            t = torch.full((B,), 1.0 - k / 10)
            x = x - 0.1 * policy.average_velocity(x, t, t, obs, cond)
    want = cfg_sample_ref(x, torch.zeros_like(x), None, 1.0, 1.0, policy.action_low,
                          policy.action_high)
    torch.testing.assert_close(flow.act(obs, noise=z), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_fast_act_cache_follows_every_weight_change(share):
    """A stale folded first layer would act with old weights: each change must show up."""
    policy = _policy(share, False)
    obs, z = _inputs(policy)
    cond = torch.full((B,), policy.exec_token)

    def check(what):
        got = policy.act(obs, noise=z)
        torch.testing.assert_close(got, _general_act(policy, obs, z, cond), rtol=0, atol=1e-12,
                                   msg=what)
        return got

    before = check("initial")
    opt = torch.optim.SGD(policy.parameters(), lr=0.5)
    actions = torch.rand(B, N, policy.action_dim, dtype=obs.dtype) * 2 - 1
    loss, _ = policy.meanflow_loss(obs, actions, torch.zeros(B, dtype=torch.long))
    loss.backward()
    opt.step()
    assert not torch.equal(check("after an optimiser step"), before)
    ema = copy.deepcopy(policy)
    policy.act(obs, noise=z)  # cache filled again before each change below
    with torch.no_grad():
        for pe, pp in zip(ema.parameters(), policy.parameters()):
            pe.add_(torch.randn_like(pe), alpha=0.3)
            pp.lerp_(pe, 0.5)  # the trainer's EMA update
    check("after lerp_")
    policy.load_state_dict(ema.state_dict())
    check("after load_state_dict")
    policy.act(obs, noise=z)
    with torch.no_grad():
        policy.cond_embed.weight.mul_(2)
    check("after an in-place edit of the condition embedding")
    policy.set_obs_normalization(torch.zeros(OBS, dtype=obs.dtype),
                                 torch.ones(OBS, dtype=obs.dtype))
    check("after set_obs_normalization")
    policy.float()
    got = policy.act(obs.float(), noise=z.float())
    want = _general_act(policy, obs.float(), z.float(), cond)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_inference_mode_parameters_take_the_general_path():
    with torch.inference_mode():
        policy = _policy(True, False)
        obs, z = _inputs(policy)
        got = policy.act(obs, noise=z)
        want = _general_act(policy, obs, z, torch.full((B,), policy.exec_token))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_act_rejects_a_bad_int_token():
    policy = _policy(True, False)
    obs, _ = _inputs(policy)
    with pytest.raises(ValueError, match=r"cond: expected a token id in \[0, 3\]"):
        policy.act(obs, cond=4)


def test_mlp_actor_is_a_plain_mlp_in_the_bounds():
    policy = _policy(True, False)
    actor = MLPActor(policy).to(torch.float64)
    obs, _ = _inputs(policy)
    x = torch.cat([obs, torch.eye(N, dtype=obs.dtype).expand(B, -1, -1)], -1)
    for i, (w, b) in enumerate(zip(actor.weights, actor.biases)):
        x = torch.nn.functional.linear(x, w, b)
        x = x if i == len(actor.weights) - 1 else torch.nn.functional.silu(x)
    low, high = policy.action_low, policy.action_high
    want = low + (torch.tanh(x) + 1) / 2 * (high - low)
    torch.testing.assert_close(actor.act(obs), want, rtol=0, atol=1e-12)
    per_agent = MLPActor(_policy(False, False)).to(torch.float64)
    assert per_agent.weights[0].shape == (N, 32, OBS)
    a = per_agent.act(obs)
    assert a.shape == (B, N, 4) and bool(((a >= low) & (a <= high)).all())


def test_ddpm_schedule_and_exact_denoiser_recovers_the_data():
    abar = cosine_alphas_cumprod(200)
    assert abar.shape == (200,) and bool((abar[1:] < abar[:-1]).all())
    assert 0.999 < abar[0] < 1 and abar[-1] < 1e-3
    policy = _policy(True, False)
    ddpm = DDPMPolicy(policy, n_steps=200)
    obs, _ = _inputs(policy)
    target = torch.rand(B, N, 4, dtype=obs.dtype, generator=torch.Generator().manual_seed(5)) - 0.5
    sab = ddpm.abar.to(obs.dtype)

    def exact_eps(x_k, k):  # the true epsilon when the data is the point mass `target`
        return (x_k - sab[k].sqrt() * target) / (1 - sab[k]).sqrt()

    got = ddpm.act(obs, eps_fn=exact_eps, generator=torch.Generator().manual_seed(0))
    low, high = policy.action_low, policy.action_high
    torch.testing.assert_close(got, low + (target + 1) / 2 * (high - low), rtol=0, atol=1e-9)


def test_ddpm_network_path_equals_general_path_and_loss_formula():
    policy = _policy(False, False)
    ddpm = DDPMPolicy(policy, n_steps=20)
    obs, z = _inputs(policy)

    def general_eps(x_k, k):
        t = torch.full((B, N), (k + 1) / 20, dtype=obs.dtype)
        return policy.average_velocity(x_k, t, t, obs, torch.full((B,), policy.exec_token))

    a = ddpm.act(obs, noise=z, generator=torch.Generator().manual_seed(0))
    b = ddpm.act(obs, noise=z, generator=torch.Generator().manual_seed(0), eps_fn=general_eps)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the loss is the epsilon-prediction error at x_k = sqrt(abar_k) x + sqrt(1 - abar_k) e
    actions = torch.rand(B, N, 4, dtype=obs.dtype) * 2 - 1
    loss = ddpm.loss(obs, actions, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    k = torch.randint(0, 20, (B,), generator=g)
    e = torch.randn(actions.shape, generator=g, dtype=obs.dtype)
    ab = cosine_alphas_cumprod(20)[k].view(-1, 1, 1)
    t = ((k + 1).to(obs.dtype) / 20).unsqueeze(1).expand(B, N)
    eps = policy.average_velocity(ab.sqrt() * actions + (1 - ab).sqrt() * e, t, t, obs,
                                  torch.full((B,), policy.null_token))
    torch.testing.assert_close(loss, (eps - e).square().sum(-1).mean(), rtol=1e-12, atol=0)
    loss.backward()
    assert policy.weights[0].grad is not None
