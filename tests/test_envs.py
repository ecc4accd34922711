"""vgm2p_fast.envs: the evaluation environments follow docs/design.md section 6 exactly.

MaMuJoCo records are replayed step by step on a raw ``mamujoco_v1.parallel_env`` (observations,
padding, state, rewards, action scaling); SMAX records are checked against the env's own
avail/world_state conventions. Tests that need the ``envs`` extra skip with the install command.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from vgm2p_fast import envs

INSTALL = {family: f"pip install -e '.[{family}]'" for family in ("mamujoco", "smax")}
needs_mamujoco = pytest.mark.skipif(importlib.util.find_spec("gymnasium_robotics") is None,
                                    reason=f"needs gymnasium-robotics: {INSTALL['mamujoco']}")
needs_smax = pytest.mark.skipif(importlib.util.find_spec("jaxmarl") is None,
                                reason=f"needs jaxmarl: {INSTALL['smax']}")


def uniform_act(width: float, action_dim: int):
    """Continuous act_fn: uniform in [-width, width] (torch RNG, seeded by rollout)."""
    def act(obs, avail):
        return (torch.rand(obs.shape[0], obs.shape[1], action_dim) * 2 - 1) * width
    return act


def random_available(obs, avail):
    """Discrete act_fn: uniform over the available actions."""
    B, N, K = avail.shape
    return torch.multinomial(avail.reshape(B * N, K).float(), 1).reshape(B, N)


def first_available(obs, avail):
    """Deterministic discrete act_fn: the highest-numbered available action (attacks first)."""
    K = avail.shape[-1]
    return (K - 1) - avail.flip(-1).int().argmax(-1)


# ----------------------------------------------------------------------------- spec parsing
@pytest.mark.parametrize("spec,expected", [
    ("mamujoco/HalfCheetah-2x3", ("mamujoco", "HalfCheetah-2x3")),
    ("mamujoco/Ant-2x4d", ("mamujoco", "Ant-2x4d")),
    ("mamujoco/Humanoid-9|8", ("mamujoco", "Humanoid-9|8")),
    ("smax/3m", ("smax", "3m")),
    ("smax/2s3z", ("smax", "2s3z")),
])
def test_parse_env_spec(spec, expected):
    assert envs.parse_env_spec(spec) == expected


@pytest.mark.parametrize("spec,match", [
    ("HalfCheetah-2x3", "family"),
    ("gym/HalfCheetah-v5", "family"),
    ("mamujoco/HalfCheetah", "scenario>-<agent_conf"),
    ("mamujoco/HalfCheetah-", "scenario>-<agent_conf"),
    ("smax/", "smax/<map>"),
    ("smax/3m/x", "smax/<map>"),
    (3, "found int"),
])
def test_parse_env_spec_rejects(spec, match):
    with pytest.raises(ValueError, match=match):
        envs.parse_env_spec(spec)


def test_missing_mamujoco_names_package_and_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)   # import now fails
    with pytest.raises(envs.EnvUnavailableError) as info:
        envs.evaluate(uniform_act(1.0, 3), "mamujoco/HalfCheetah-2x3", 1)
    assert "gymnasium-robotics" in str(info.value) and INSTALL["mamujoco"] in str(info.value)


def test_missing_jaxmarl_names_package_and_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl", None)
    with pytest.raises(envs.EnvUnavailableError) as info:
        envs.env_info("smax/5m_vs_6m")   # a map no other test builds (the builder is cached)
    assert "jaxmarl" in str(info.value) and INSTALL["smax"] in str(info.value)


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="episodes"):
        envs.rollout(uniform_act(1.0, 3), "mamujoco/HalfCheetah-2x3", 0)
    with pytest.raises(ValueError, match="n_envs"):
        envs.rollout(uniform_act(1.0, 3), "mamujoco/HalfCheetah-2x3", 1, n_envs=0)
    with pytest.raises(ValueError, match="max_steps"):
        envs.evaluate(uniform_act(1.0, 3), "mamujoco/HalfCheetah-2x3", 1, max_steps=-1)


# ---------------------------------------------------------------------------------- MaMuJoCo
@needs_mamujoco
@pytest.mark.parametrize("spec,n,obs_dim,state_dim,action_dim", [
    ("mamujoco/HalfCheetah-2x3", 2, 12, 17, 3),
    ("mamujoco/HalfCheetah-6x1", 6, 9, 17, 1),
    ("mamujoco/Hopper-3x1", 3, 9, 11, 1),
    ("mamujoco/Ant-2x4", 2, 63, 105, 4),
])
def test_mamujoco_env_info(spec, n, obs_dim, state_dim, action_dim):
    info = envs.env_info(spec)
    assert (info["n_agents"], info["obs_dim"], info["state_dim"], info["action_dim"]) == (
        n, obs_dim, state_dim, action_dim)
    assert info["discrete"] is False and info["episode_limit"] == 1000
    assert info["action_low"] == [-1.0] * action_dim and info["action_high"] == [1.0] * action_dim
    info["action_low"][0] = 5.0   # callers get a copy: the cached info is not changed
    assert envs.env_info(spec)["action_low"][0] == -1.0


@needs_mamujoco
@pytest.mark.parametrize("spec", ["mamujoco/HalfCheetah-6x1", "mamujoco/Humanoid-9|8"])
def test_mamujoco_record_replays_on_the_raw_env(spec):
    """Padding at the end, state = env.state(), rewards, and [-1, 1] action scaling, step by step.

    HalfCheetah-6x1 has agents with 9 and 8 observation dims; Humanoid-9|8 has bounds
    [-0.4, 0.4], agents with 9 and 8 action dims, and falls over (a terminal) under random
    actions. Actions are drawn in [-0.6, 0.6] so that Humanoid's are also clipped.
    """
    from gymnasium_robotics import mamujoco_v1

    info = envs.env_info(spec)
    rec = envs.rollout(uniform_act(0.6, info["action_dim"]), spec, 1, seed=3, max_steps=60)
    scenario, conf = envs.parse_env_spec(spec)[1].split("-")
    with envs.quiet_mujoco_compile():
        raw = mamujoco_v1.parallel_env(scenario, conf)
    agents = raw.possible_agents
    obs, _ = raw.reset(seed=envs.episode_seed(3, 0))
    # Replaying from the stored [-1, 1] actions rescales in float64 what the rollout stepped
    # in float32: states agree to ~1e-6 and, over 60 steps, drift stays far below 1e-3.
    TOL = {"rtol": 1e-3, "atol": 1e-3}
    low, high = np.array(info["action_low"]), np.array(info["action_high"])
    T = len(rec["rewards"])
    assert rec["observations"].shape == (T, info["n_agents"], info["obs_dim"])
    assert rec["states"].shape == rec["next_states"].shape == (T, info["state_dim"])
    for t in range(T):
        for i, a in enumerate(agents):
            d = obs[a].shape[0]
            np.testing.assert_allclose(rec["observations"][t, i, :d], obs[a], **TOL)
            assert not rec["observations"][t, i, d:].any()          # zero padding at the end
        np.testing.assert_allclose(rec["states"][t], raw.state(), **TOL)
        unit = rec["actions"][t]
        assert np.abs(unit).max() <= 1.0
        env_act = low + (unit + 1) / 2 * (high - low)
        step = {a: env_act[i, : raw.action_space(a).shape[0]] for i, a in enumerate(agents)}
        for i, a in enumerate(agents):
            assert not unit[i, raw.action_space(a).shape[0]:].any()   # padded action dims: 0
        obs, r, te, _, _ = raw.step(step)
        assert rec["rewards"][t] == pytest.approx(r[agents[0]], rel=1e-5, abs=1e-5)
        np.testing.assert_allclose(rec["next_states"][t], raw.state(), **TOL)
        assert rec["terminals"][t] == te[agents[0]]
        if te[agents[0]]:
            break
    assert t == T - 1
    assert rec["terminals"][-1] or rec["truncations"][-1]
    assert not (rec["terminals"][:-1] | rec["truncations"][:-1]).any()
    if spec.startswith("mamujoco/Humanoid"):
        assert (np.abs(rec["actions"]) == 1.0).any()    # 0.6 > 0.4 was clipped to the bound
        assert rec["terminals"][-1] and T < 60           # fell over: terminal, not truncation


@needs_mamujoco
def test_mamujoco_actions_scaled_to_unit_box():
    """Humanoid's bounds are +-0.4: an env action of 0.2 is stored as 0.5, -0.4 as -1."""
    spec = "mamujoco/Humanoid-9|8"
    info = envs.env_info(spec)
    value = torch.tensor([0.2, -0.4, 0.0, 0.1, 0.2, 0.3, 0.4, -0.1, -0.2])

    def act(obs, avail):
        return value.expand(obs.shape[0], obs.shape[1], info["action_dim"])

    rec = envs.rollout(act, spec, 1, max_steps=2)
    expected = (value / 0.4).numpy()
    np.testing.assert_allclose(rec["actions"][:, 0], np.broadcast_to(expected, (2, 9)), atol=1e-6)
    np.testing.assert_allclose(rec["actions"][:, 1, :8], np.broadcast_to(expected[:8], (2, 8)),
                               atol=1e-6)
    assert not rec["actions"][:, 1, 8].any()


@needs_mamujoco
def test_mamujoco_random_evaluate_and_determinism():
    spec = "mamujoco/HalfCheetah-2x3"
    res = envs.evaluate(uniform_act(1.0, 3), spec, episodes=3, seed=7, n_envs=2)
    assert set(res) >= {"returns", "return_mean", "return_std", "episodes", "env", "seed",
                        "lengths"}
    assert res["episodes"] == 3 and res["env"] == spec and res["seed"] == 7
    assert res["lengths"] == [1000, 1000, 1000]
    # Random play on HalfCheetah: about -0.3 per step (control cost 0.1 |a|^2, no progress).
    assert -1000 < res["return_mean"] < 0
    assert res["return_mean"] == pytest.approx(np.mean(res["returns"]))
    again = envs.evaluate(uniform_act(1.0, 3), spec, episodes=3, seed=7, n_envs=2)
    assert again["returns"] == res["returns"]
    other = envs.evaluate(uniform_act(1.0, 3), spec, episodes=3, seed=8, n_envs=2)
    assert other["returns"] != res["returns"]


@needs_mamujoco
def test_mamujoco_episodes_do_not_depend_on_batching():
    """Episode e starts from the same env seed whatever n_envs is (act_fn row-wise)."""
    def act(obs, avail):
        return torch.tanh(obs[..., :1])   # Hopper-3x1: one action per agent

    a = envs.evaluate(act, "mamujoco/Hopper-3x1", 3, seed=1, n_envs=1, max_steps=200)
    b = envs.evaluate(act, "mamujoco/Hopper-3x1", 3, seed=1, n_envs=3, max_steps=200)
    assert a["returns"] == b["returns"] and a["lengths"] == b["lengths"]
    assert len(set(a["returns"])) == 3                     # the episodes do differ


@needs_mamujoco
def test_mamujoco_rejects_bad_actions():
    with pytest.raises(ValueError, match="act_fn output: expected shape"):
        envs.evaluate(uniform_act(1.0, 4), "mamujoco/HalfCheetah-2x3", 1)

    def nan_act(obs, avail):
        return torch.full((obs.shape[0], 2, 3), float("nan"))

    with pytest.raises(ValueError, match="finite"):
        envs.evaluate(nan_act, "mamujoco/HalfCheetah-2x3", 1)
    with pytest.raises(ValueError, match="not a MaMuJoCo scenario"):
        envs.env_info("mamujoco/NoSuchRobot-2x3")


@needs_mamujoco
def test_bundled_dataset_was_recorded_from_this_environment():
    """The bundled file's first episode replays on today's env: sizes, bounds, reset, dynamics.

    It is group 0 of the generator, i.e. rollout(seed=0), episode 0 (benchmarks/datasets/
    mamujoco.py). A MuJoCo or gymnasium-robotics change that alters what evaluation sees
    fails here.
    """
    from gymnasium_robotics import mamujoco_v1

    from vgm2p_fast.datasets import load_dataset

    ds = load_dataset("halfcheetah-2x3-small")
    info = envs.env_info(ds.env)
    assert ds.env == "mamujoco/HalfCheetah-2x3"
    assert tuple(ds.observations.shape[1:]) == (info["n_agents"], info["obs_dim"])
    assert ds.states.shape[1] == info["state_dim"]
    assert tuple(ds.actions.shape[1:]) == (info["n_agents"], info["action_dim"])
    assert ds.action_low.tolist() == info["action_low"]
    assert ds.action_high.tolist() == info["action_high"]
    assert ds.check_env() == info          # what training checks before its first step
    with envs.quiet_mujoco_compile():
        raw = mamujoco_v1.parallel_env("HalfCheetah", "2x3")
    obs, _ = raw.reset(seed=envs.episode_seed(0, 0))
    agents = raw.possible_agents
    low, high = ds.action_low.double().numpy(), ds.action_high.double().numpy()
    env_actions = low + (ds.actions.double().numpy() + 1) / 2 * (high - low)
    for t in range(50):
        np.testing.assert_allclose(ds.observations[t].numpy(),
                                   np.stack([obs[a] for a in agents]), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ds.states[t].numpy(), raw.state(), rtol=1e-3, atol=1e-3)
        obs, r, *_ = raw.step({a: env_actions[t, i] for i, a in enumerate(agents)})
        assert float(ds.rewards[t]) == pytest.approx(r[agents[0]], rel=1e-3, abs=1e-3)


# ---------------------------------------------------------------------------------- SMAX
@needs_smax
def test_smax_env_info():
    info = envs.env_info("smax/3m")
    assert info == {"env": "smax/3m", "n_agents": 3, "obs_dim": 75, "state_dim": 72,
                    "action_dim": 8, "n_actions": 8, "discrete": True, "episode_limit": 100}
    with pytest.raises(ValueError, match="not a SMAX map"):
        envs.env_info("smax/4zz")


@needs_smax
def test_smax_dataset_of_the_wrong_size_fails_the_env_check(tmp_path):
    from vgm2p_fast.datasets import DatasetError, load_dataset, write_dataset

    T = 6
    write_dataset(tmp_path / "d.h5", observations=np.zeros((T, 3, 70), np.float32),
                  actions=np.zeros((T, 3), np.int64), rewards=np.zeros(T, np.float32),
                  terminals=np.arange(T) == T - 1, truncations=np.zeros(T, bool),
                  n_actions=8, env="smax/3m")
    ds = load_dataset(tmp_path / "d.h5")
    with pytest.raises(DatasetError) as info:
        ds.check_env()
    assert str(info.value) == f"{ds.source}: obs_dim: expected 75 (env smax/3m), found 70"


@needs_smax
def test_smax_random_evaluate_record_and_determinism():
    spec = "smax/3m"
    res = envs.evaluate(random_available, spec, episodes=6, seed=0, n_envs=4)
    assert 0.0 <= res["win_rate"] <= 1.0 and len(res["wins"]) == 6
    assert all(1 <= n <= 100 for n in res["lengths"])
    again = envs.evaluate(random_available, spec, episodes=6, seed=0, n_envs=4)
    assert again["returns"] == res["returns"] and again["wins"] == res["wins"]

    rec = envs.rollout(random_available, spec, 6, seed=0, n_envs=4)
    assert rec["returns"] == res["returns"]
    T = sum(rec["lengths"])
    assert rec["observations"].shape == (T, 3, 75) and rec["states"].shape == (T, 72)
    assert rec["actions"].shape == (T, 3) and rec["actions"].dtype == np.int64
    assert rec["avail_actions"].shape == (T, 3, 8) and rec["avail_actions"].dtype == bool
    chosen = np.take_along_axis(rec["avail_actions"], rec["actions"][..., None], -1)
    assert chosen.all()                                      # only available actions recorded
    assert rec["avail_actions"][..., 4].all()                # "stop" is always available
    ends = np.cumsum(rec["lengths"]) - 1
    done = rec["terminals"] | rec["truncations"]
    assert done[ends].all() and done.sum() == 6
    inner = np.setdiff1d(np.arange(T - 1), ends)
    np.testing.assert_array_equal(rec["next_states"][inner], rec["states"][inner + 1])
    # Team reward = any ally's; episode returns are sums of the recorded rewards.
    np.testing.assert_allclose(np.add.reduceat(rec["rewards"], ends - np.array(
        rec["lengths"]) + 1), rec["returns"], rtol=1e-5)


@needs_smax
def test_smax_episodes_do_not_depend_on_batching():
    # n_envs 3 and 4 share one compiled batch of 4 (~12 s of XLA compile per batch size).
    a = envs.evaluate(first_available, "smax/3m", 5, seed=2, n_envs=3)
    b = envs.evaluate(first_available, "smax/3m", 5, seed=2, n_envs=4)
    assert a["returns"] == b["returns"] and a["wins"] == b["wins"]
    assert len(set(a["returns"])) > 1                       # the episodes do differ


@needs_smax
def test_smax_rejects_unavailable_actions():
    def dead_unit_attack(obs, avail):
        # Attacking enemy 0 is out of range at the start of every 3m episode.
        return torch.full(avail.shape[:2], 5, dtype=torch.long)

    with pytest.raises(ValueError, match="unavailable"):
        envs.evaluate(dead_unit_attack, "smax/3m", 4, n_envs=4)
