"""MeanFlowPolicy: JVP fast path vs torch.func.jvp, the CFG-guided loss, sampling contracts."""

from __future__ import annotations

import pytest
import torch

import vgm2p_fast as vf

# (obs_dim, action_dim, n_agents, hidden_dims, batch): odd and tiny sizes on purpose
SHAPES = [(5, 3, 3, (17, 9), 7), (1, 1, 1, (4,), 1), (11, 6, 2, (33, 33, 20), 4)]


def _inputs(policy: vf.MeanFlowPolicy, batch: int, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, d = policy.n_agents, policy.action_dim
    z = torch.randn(batch, n, d, generator=g, dtype=dtype)
    t = torch.rand(batch, n, generator=g, dtype=dtype)
    r = t * torch.rand(batch, n, generator=g, dtype=dtype)
    obs = torch.randn(batch, n, policy.obs_dim, generator=g, dtype=dtype)
    cond = torch.randint(0, policy.null_token + 1, (batch,), generator=g)
    v = torch.randn(batch, n, d, generator=g, dtype=dtype)
    return z, r, t, obs, cond, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "relu"])
def test_jvp_matches_torch_func(shape, share, activation):
    obs_dim, act_dim, n, hidden, batch = shape
    torch.manual_seed(1)
    policy = vf.MeanFlowPolicy(obs_dim, act_dim, n, hidden_dims=hidden, share_parameters=share,
                               activation=activation)
    z, r, t, obs, cond, v = _inputs(policy, batch)
    u, dudt = policy.average_velocity_jvp(z, r, t, obs, cond, v)
    u_ref, dudt_ref = policy.average_velocity_jvp(z, r, t, obs, cond, v, backend="func")
    assert u.requires_grad and not dudt.requires_grad
    # float32 round-off: both sum the same products in a different order
    torch.testing.assert_close(u, u_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dudt, dudt_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(u, policy.average_velocity(z, r, t, obs, cond))


def test_jvp_is_the_derivative_float64():
    """Independent of torch.func: a central difference along (v, 1) in (z, t), r fixed."""
    torch.manual_seed(2)
    policy = vf.MeanFlowPolicy(6, 4, 3, hidden_dims=(31, 31), share_parameters=False).double()
    z, r, t, obs, cond, v = _inputs(policy, 5, torch.float64)
    _, dudt = policy.average_velocity_jvp(z, r, t, obs, cond, v)
    h = 1e-6
    with torch.no_grad():
        up = policy.average_velocity(z + h * v, r, t + h, obs, cond)
        dn = policy.average_velocity(z - h * v, r, t - h, obs, cond)
    torch.testing.assert_close(dudt, (up - dn) / (2 * h), rtol=1e-6, atol=1e-7)


def test_times_of_shape_b_broadcast_over_agents():
    policy = vf.MeanFlowPolicy(4, 2, 3, hidden_dims=(8,))
    z, r, t, obs, cond, _ = _inputs(policy, 5)
    r1, t1 = r[:, 0], t[:, 0]
    u = policy.average_velocity(z, r1, t1, obs, cond)
    torch.testing.assert_close(u, policy.average_velocity(z, r1[:, None].expand(5, 3),
                                                          t1[:, None].expand(5, 3), obs, cond))


def test_agents_differ_by_id_and_share_weights():
    """Shared layout: the same observation gives different velocities per agent (one-hot id)."""
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(4, 2, 3, hidden_dims=(16,))
    z, r, t, obs, cond, _ = _inputs(policy, 2)
    obs = obs[:, :1].expand(2, 3, 4).contiguous()
    z = z[:, :1].expand(2, 3, 2).contiguous()
    r, t = r[:, :1].expand(2, 3), t[:, :1].expand(2, 3)
    u = policy.average_velocity(z, r, t, obs, cond)
    assert not torch.allclose(u[:, 0], u[:, 1])


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("discrete", [False, True])
def test_meanflow_loss_fast_path_matches_func_path(share, discrete):
    """Same random draws, same loss and parameter gradients with either JVP implementation."""
    torch.manual_seed(3)
    kw = dict(hidden_dims=(19, 23), share_parameters=share, discrete=discrete)
    fast = vf.MeanFlowPolicy(7, 5, 2, **kw)
    ref = vf.MeanFlowPolicy(7, 5, 2, backend="func", **kw)
    ref.load_state_dict(fast.state_dict())
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(9, 2, 7, generator=g)
    actions = (torch.randint(0, 5, (9, 2), generator=g) if discrete
               else torch.rand(9, 2, 5, generator=g) * 2 - 1)
    cond = torch.randint(0, 2, (9,), generator=g)
    losses, grads = [], []
    for policy in (fast, ref):
        loss, info = policy.meanflow_loss(obs, actions, cond,
                                          generator=torch.Generator().manual_seed(5))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in policy.parameters()])
        assert set(info) == {"loss", "mse", "dropped"}
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_guided_velocity_formula():
    """v_g = omega v + kappa u(z,t,t|c) + (1 - omega - kappa) u(z,t,t|null); dropped rows: v."""
    torch.manual_seed(4)
    policy = vf.MeanFlowPolicy(3, 2, 2, hidden_dims=(12,), omega=0.7, kappa=0.2)
    z, _, t, obs, cond, v = _inputs(policy, 6)
    cond = cond.clamp(max=policy.n_tokens - 1)
    dropped = torch.tensor([True, False, False, True, False, False])
    v_g = policy._guided_velocity(z, t, obs, cond, v, dropped)
    null = torch.full_like(cond, policy.null_token)
    u_c = policy.average_velocity(z, t, t, obs, cond)
    u_n = policy.average_velocity(z, t, t, obs, null)
    expect = 0.7 * v + 0.2 * u_c + 0.1 * u_n
    expect[dropped] = v[dropped]
    torch.testing.assert_close(v_g, expect)


def test_meanflow_loss_weights_scale_each_row():
    """weights [B] multiply each row's loss (mean over agents) before the batch mean: ones give
    the unweighted loss, the loss is linear in them, and a bad shape names ``weights``."""
    torch.manual_seed(6)
    policy = vf.MeanFlowPolicy(3, 2, 2, hidden_dims=(12,))
    g = torch.Generator().manual_seed(0)
    obs, actions = torch.randn(8, 2, 3, generator=g), torch.rand(8, 2, 2, generator=g) * 2 - 1
    cond = torch.randint(0, 2, (8,), generator=g)

    def loss(weights=None):  # the same noise, times and dropout draws on every call
        return policy.meanflow_loss(obs, actions, cond, weights=weights,
                                    generator=torch.Generator().manual_seed(1))[0]

    torch.testing.assert_close(loss(torch.ones(8)), loss())
    torch.testing.assert_close(loss(torch.full((8,), 3.0)), 3 * loss())
    w = torch.tensor([2.0, 0.0, 1.0, 0.5, 0.0, 4.0, 1.0, 1.0])
    assert not torch.allclose(loss(w), loss())
    # linear in the weights: w = a + b gives loss(a) + loss(b)
    a, b = torch.rand(8, generator=g), torch.rand(8, generator=g)
    torch.testing.assert_close(loss(a + b), loss(a) + loss(b))
    with pytest.raises(ValueError, match="weights"):
        loss(torch.ones(7))


def test_meanflow_loss_reduces_to_plain_mse_without_weighting():
    """With r = t everywhere and p = 0 the loss is the flow-matching error ||u(z,t,t) - v_g||^2."""
    torch.manual_seed(5)
    policy = vf.MeanFlowPolicy(3, 2, 2, hidden_dims=(12,), ratio_r_neq_t=0.0, norm_p=0.0,
                               kappa=0.0, cond_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    obs, actions = torch.randn(8, 2, 3, generator=g), torch.rand(8, 2, 2, generator=g) * 2 - 1
    cond = torch.randint(0, 2, (8,), generator=g)
    _, info = policy.meanflow_loss(obs, actions, cond, generator=torch.Generator().manual_seed(1))
    fm, _ = policy.flow_matching_loss(obs, actions, cond,
                                      generator=torch.Generator().manual_seed(1))
    # same draws for e and t (the r draw is discarded when r = t), so the same error
    torch.testing.assert_close(info["mse"], fm.detach())


def test_sample_times_distribution():
    policy = vf.MeanFlowPolicy(3, 2, 2, hidden_dims=(8,))
    r, t = policy.sample_times((20000,), generator=torch.Generator().manual_seed(0))
    assert bool((r <= t).all()) and bool(((r > 0) & (t < 1)).all())
    frac = float((r < t).float().mean())
    assert abs(frac - 0.25) < 0.02, frac
    logit_t = torch.logit(t[r == t])  # the r = t rows: max of two logit-normal(-0.4, 1) draws
    assert abs(float(logit_t.mean()) - (-0.4 + 1 / torch.pi**0.5)) < 0.05


# ------------------------------------------------------------------ sampling


def test_one_step_action_is_e_minus_u_clipped_and_rescaled():
    torch.manual_seed(6)
    low, high = torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([2.0, 0.5, 3.0])
    policy = vf.MeanFlowPolicy(4, 3, 2, hidden_dims=(16,), action_low=low, action_high=high)
    obs = torch.randn(50, 2, 4)
    e = torch.randn(50, 2, 3) * 3
    a = policy.act(obs, noise=e)
    token = torch.full((50,), policy.exec_token)
    u = policy.average_velocity(e, torch.zeros(50), torch.ones(50), obs, token)
    x = (e - u).clamp(-1, 1)
    torch.testing.assert_close(a, low + (x + 1) / 2 * (high - low))
    assert bool(((a >= low) & (a <= high)).all())
    assert bool(((e - u).abs() > 1).any())  # the clip was exercised


def test_test_time_guidance_and_multi_step():
    torch.manual_seed(7)
    policy = vf.MeanFlowPolicy(4, 2, 2, hidden_dims=(16,))
    obs, e = torch.randn(6, 2, 4), torch.randn(6, 2, 2)
    zeros, ones = torch.zeros(6), torch.ones(6)
    c = torch.full((6,), policy.exec_token)
    null = torch.full((6,), policy.null_token)
    u_c = policy.average_velocity(e, zeros, ones, obs, c)
    u_n = policy.average_velocity(e, zeros, ones, obs, null)
    got = policy.act(obs, guidance=3.0, noise=e)
    torch.testing.assert_close(got, (e - (u_n + 3.0 * (u_c - u_n))).clamp(-1, 1))
    # two Euler steps on the average velocity: t = 1 -> 0.5 -> 0
    half = torch.full((6,), 0.5)
    z1 = e - 0.5 * policy.average_velocity(e, half, ones, obs, c)
    x = z1 - 0.5 * policy.average_velocity(z1, zeros, half, obs, c)
    torch.testing.assert_close(policy.act(obs, n_steps=2, noise=e), x.clamp(-1, 1))


@pytest.mark.parametrize("share", [True, False])
def test_discrete_mask_is_never_violated(share):
    torch.manual_seed(8)
    k = 5
    policy = vf.MeanFlowPolicy(4, k, 3, discrete=True, hidden_dims=(16,), share_parameters=share)
    with torch.no_grad():  # make action 0 score far above the others for every input
        policy.biases[-1][..., 0] = -1e3  # x = e - u, so a very negative u means a high score
    obs = torch.randn(64, 3, 4)
    assert bool((policy(obs) == 0).all())
    g = torch.Generator().manual_seed(0)
    avail = torch.rand(64, 3, k, generator=g) < 0.5
    avail[..., 0] = False
    avail[torch.arange(64), :, torch.randint(1, k, (64,), generator=g)] = True
    a = policy(obs, avail)
    assert a.dtype == torch.int64 and a.shape == (64, 3)
    assert bool(avail.gather(-1, a.unsqueeze(-1)).all())


def test_all_false_mask_row_names_row_and_agent():
    policy = vf.MeanFlowPolicy(4, 3, 2, discrete=True, hidden_dims=(8,))
    avail = torch.ones(5, 2, 3, dtype=torch.bool)
    avail[3, 1] = False
    with pytest.raises(ValueError, match=r"row 3, agent 1"):
        policy(torch.randn(5, 2, 4), avail)


# ------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p(torch.randn(3, 2, 5)), r"obs: expected shape \(\*, 2, 4\)"),
        (lambda p: p(torch.randn(3, 2, 4, dtype=torch.float64)), r"obs|dtype"),
        (lambda p: p.average_velocity(torch.randn(3, 2, 2), torch.zeros(3), torch.ones(3),
                                      torch.randn(3, 2, 4), torch.tensor([0, 1, 4])),
         r"cond: expected token ids in \[0, 2\]"),
        (lambda p: p.average_velocity(torch.randn(3, 2, 2), torch.zeros(4), torch.ones(3),
                                      torch.randn(3, 2, 4), torch.zeros(3, dtype=torch.long)),
         r"r: expected shape \(3,\) or \(3, 2\)"),
        (lambda p: p.meanflow_loss(torch.randn(3, 2, 4), torch.zeros(3, 2, 3), None),
         r"actions: expected shape \(3, 2, 2\)"),
        (lambda p: p.meanflow_loss(torch.randn(3, 2, 4), torch.zeros(3, 2, 2),
                                   torch.full((3,), 2)), r"null token"),
        (lambda p: p.act(torch.randn(3, 2, 4), n_steps=0), r"n_steps"),
        (lambda p: p(torch.randn(3, 2, 4), torch.ones(3, 2, 2, dtype=torch.bool)),
         r"avail_actions: expected None for continuous"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    policy = vf.MeanFlowPolicy(4, 2, 2, hidden_dims=(8,))
    with pytest.raises(ValueError, match=match):
        call(policy)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="obs_dim"):
        vf.MeanFlowPolicy(0, 2, 2)
    with pytest.raises(ValueError, match="time_dim"):
        vf.MeanFlowPolicy(3, 2, 2, time_dim=7)
    with pytest.raises(ValueError, match="action_low"):
        vf.MeanFlowPolicy(3, 2, 2, action_low=[1.0, 1.0], action_high=[0.0, 2.0])
    with pytest.raises(ValueError, match="backend"):
        vf.MeanFlowPolicy(3, 2, 2, backend="cuda")
    with pytest.raises(ValueError, match="n_tokens"):
        vf.MeanFlowPolicy(3, 2, 2, n_tokens=-1)


# ------------------------------------------------------------------ learning


def test_learns_a_bimodal_policy_and_follows_the_condition():
    """2 agents, 1-D actions at +-0.8. Token 1 rows: +0.8 w.p. 0.7, -0.8 w.p. 0.3; token 0 rows:
    the mirror image. One-step samples must put the right mass on each mode for each token,
    and be bimodal: less mass between the modes than the Gaussian with the samples' own mean
    and std (the best a Gaussian policy could do) puts there."""
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(2, 1, 2, hidden_dims=(64, 64), time_dim=16, cond_dim=8,
                               kappa=0.0, cond_dropout=0.1)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = 256
    for _ in range(1500):
        cond = torch.randint(0, 2, (batch,), generator=g)
        p_plus = torch.where(cond == 1, 0.7, 0.3)[:, None].expand(batch, 2)
        sign = torch.where(torch.rand(batch, 2, generator=g) < p_plus, 1.0, -1.0)
        obs = torch.ones(batch, 2, 2)
        loss, _ = policy.meanflow_loss(obs, (0.8 * sign).unsqueeze(-1), cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    obs = torch.ones(4000, 2, 2)
    normal = torch.distributions.Normal(0.0, 1.0)
    for token, expect in ((1, 0.7), (0, 0.3)):
        a = policy.act(obs, cond=token, generator=torch.Generator().manual_seed(1)).flatten()
        frac_plus = float((a > 0).float().mean())
        assert abs(frac_plus - expect) < 0.1, f"token {token}: P(a > 0) = {frac_plus:.2f}"
        mid = float((a.abs() < 0.4).float().mean())
        m, s = float(a.mean()), float(a.std())
        gauss_mid = float(normal.cdf(torch.tensor((0.4 - m) / s))
                          - normal.cdf(torch.tensor((-0.4 - m) / s)))
        assert mid < gauss_mid - 0.08, f"token {token}: {mid:.2f} of samples between the " \
            f"modes, a Gaussian fit has {gauss_mid:.2f}"


def test_unconditional_policy_acts_with_the_null_token_it_was_trained_on():
    """n_tokens = 0 is plain MeanFlow behaviour cloning: trained on the null token only, so act()
    must default to it. (Defaulting to token n_tokens - 1 of a 2-token policy trained with
    cond=None acted through an untrained, random embedding: the BC baselines scored ~0.)"""
    torch.manual_seed(0)
    policy = vf.MeanFlowPolicy(3, 2, 2, hidden_dims=(64, 64), n_tokens=0)
    assert policy.exec_token == policy.null_token == 0
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, generator=g)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(2000):  # mean |error| 0.23 at 600 steps, 0.11 at 1000, 0.056 at 2000
        obs = torch.randn(256, 2, 3, generator=g)
        loss, _ = policy.meanflow_loss(obs, 0.8 * torch.tanh(obs @ w), None, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    obs = torch.randn(2000, 2, 3, generator=g)
    err = float((policy.act(obs, generator=g) - 0.8 * torch.tanh(obs @ w)).abs().mean())
    # acting through an untrained token (the old default) stayed at ~0.5 however long it trained
    assert err < 0.1, f"one-step BC actions are {err:.3f} from the data's (|a| ~ 0.5)"
    with pytest.raises(ValueError, match="unconditional"):
        policy.meanflow_loss(obs, obs[..., :2].clamp(-1, 1), torch.zeros(2000, dtype=torch.long))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="pip install 'vgm2p_fast[safetensors]'")
    torch.manual_seed(9)
    policy = vf.MeanFlowPolicy(4, 3, 2, hidden_dims=(16,), share_parameters=False,
                               action_low=[-2.0, 0.0, 1.0], action_high=[2.0, 0.5, 3.0])
    policy.set_obs_normalization(torch.randn(4), torch.rand(4) + 0.5)
    path = tmp_path / f"policy{suffix}"
    policy.save(path, metadata={"env": "mamujoco/HalfCheetah-2x3"})
    loaded = vf.MeanFlowPolicy.load(path)
    assert loaded.metadata == {"env": "mamujoco/HalfCheetah-2x3"}
    obs, e = torch.randn(5, 2, 4), torch.randn(5, 2, 3)
    torch.testing.assert_close(loaded.act(obs, noise=e), policy.act(obs, noise=e), rtol=0, atol=0)
    (tmp_path / "junk.pt").write_bytes(b"definitely not a policy")
    with pytest.raises(ValueError, match=r"MeanFlowPolicy\.save"):
        vf.MeanFlowPolicy.load(tmp_path / "junk.pt")
