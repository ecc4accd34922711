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


# ------------------------------------------------------------------- own families (registry)
class Reach:
    """A pure-numpy family for the registry tests (spec ``toy/<N>x<D>``).

    N agents at positions ``x_i`` in R^D (0 at reset), each with a target ``g_i`` drawn from
    ``episode_seed``; ``obs_i = [x_i, g_i]`` (obs_dim 2D), state = all x then all g. Per-agent
    bounds ``[-(1 + i), 1 + i]`` (shape [N, D]); an action moves ``x_i``; the team reward is
    ``-sum |x - g|`` after the move; no terminal, so every episode is cut at 5 steps.
    """

    discrete = False
    n_actions = None
    avail = None
    episode_limit = 5

    def __init__(self, name: str, n: int) -> None:
        N, D = (int(v) for v in name.split("x"))
        self.n_agents, self.action_dim, self.obs_dim, self.state_dim = N, D, 2 * D, 2 * N * D
        width = np.arange(1, N + 1, dtype=np.float32)[:, None].repeat(D, 1)
        self.action_low, self.action_high = -width, width
        self.x = np.zeros((n, N, D), np.float32)
        self.g = np.zeros((n, N, D), np.float32)
        self._publish()

    def _publish(self) -> None:
        B = len(self.x)
        self.obs = np.concatenate([self.x, self.g], -1)
        self.state = np.concatenate([self.x.reshape(B, -1), self.g.reshape(B, -1)], -1)

    def reset(self, slots, seeds):
        for b, (seed, episode) in zip(slots, seeds):
            self.g[b] = reach_targets(seed, episode, self.n_agents, self.action_dim)
            self.x[b] = 0.0
        self._publish()

    def step(self, actions, active):
        self.x[active] += actions[active]
        self._publish()
        B = len(self.x)
        flags = np.zeros(B, bool)
        return -np.abs(self.x - self.g).sum((1, 2)), flags, flags, flags


def reach_targets(seed: int, episode: int, n: int, d: int) -> np.ndarray:
    return np.random.default_rng(envs.episode_seed(seed, episode)).uniform(
        -2, 2, (n, d)).astype(np.float32)


@pytest.fixture
def toy(monkeypatch):
    """The family ``toy`` registered for one test (the registry is restored afterwards)."""
    from vgm2p_fast.envs import registry

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    return envs.register_family("toy", Reach, action_space="continuous", pattern=r"\d+x\d+",
                                syntax="toy/<agents>x<dims>", example="toy/2x1",
                                default_n_envs=2)


def test_custom_family_evaluates_a_trivial_act_fn(toy):
    def still(obs, avail):
        return torch.zeros(obs.shape[0], obs.shape[1], 1)

    res = envs.evaluate(still, "toy/2x1", episodes=3, seed=4)
    # Nobody moves: each of the 5 steps costs sum |g| of that episode's targets.
    want = [-5 * float(np.abs(reach_targets(4, e, 2, 1)).sum()) for e in range(3)]
    np.testing.assert_allclose(res["returns"], want, rtol=1e-5)
    assert res["lengths"] == [5, 5, 5] and "win_rate" not in res
    assert envs.evaluate(still, "toy/2x1", 3, seed=4, n_envs=1)["returns"] == res["returns"]
    assert envs.env_info("toy/2x1") == {
        "env": "toy/2x1", "n_agents": 2, "obs_dim": 2, "state_dim": 4, "action_dim": 1,
        "discrete": False, "episode_limit": 5, "action_low": [[-1.0], [-2.0]],
        "action_high": [[1.0], [2.0]]}
    assert "toy" in envs.families() and envs.get_family("toy") is toy
    assert envs.evaluation_status("toy/2x1") and envs.evaluation_status("toy/2x1").reason == ""


def test_custom_family_clips_and_records_per_agent(toy, tmp_path):
    """Per-agent bounds: 0.5 is recorded as 0.5 for agent 0 ([-1, 1]) and 0.25 for agent 1
    ([-2, 2]); 10 is clipped to each agent's own bound."""
    def half(obs, avail):
        return torch.full((obs.shape[0], 2, 1), 0.5)

    rec = envs.rollout(half, "toy/2x1", 2, seed=1)
    np.testing.assert_allclose(rec["actions"][:, :, 0], np.tile([0.5, 0.25], (10, 1)))
    assert rec["truncations"].sum() == 2 and not rec["terminals"].any()
    far = envs.rollout(lambda obs, avail: torch.full((obs.shape[0], 2, 1), 10.0), "toy/2x1", 1,
                       max_steps=1)
    np.testing.assert_array_equal(far["next_observations"][0, :, 0], [1.0, 2.0])
    np.testing.assert_array_equal(far["actions"], np.ones((1, 2, 1)))

    # The record is a dataset of the custom env: written, loaded, checked against the env.
    from vgm2p_fast.datasets import DatasetError, load_dataset, write_dataset

    info = envs.env_info("toy/2x1")
    keys = ("observations", "actions", "rewards", "terminals", "truncations", "states",
            "next_states")
    write_dataset(tmp_path / "toy.h5", **{k: rec[k] for k in keys}, env="toy/2x1",
                  action_low=info["action_low"], action_high=info["action_high"])
    ds = load_dataset(tmp_path / "toy.h5")
    assert ds.action_low.tolist() == [[-1.0], [-2.0]]
    assert ds.check_env() == info
    with pytest.raises(DatasetError) as err:
        ds.check_env("toy/3x1")
    assert str(err.value) == f"{ds.source}: n_agents: expected 3 (env toy/3x1), found 2"
    with pytest.raises(DatasetError, match=r"obs_dim: expected 4 \(env toy/2x2\), found 2"):
        ds.check_env("toy/2x2")
    # Bounds shared by both agents do not match agent 1's [-2, 2].
    write_dataset(tmp_path / "shared.h5", **{k: rec[k] for k in keys}, env="toy/2x1")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "shared.h5").check_env()
    assert err.value.key == "action_low" and "found [-1.0]" in str(err.value)
    # A dataset naming a registered family must have the family's action space.
    with pytest.raises(DatasetError, match="attribute action_space: expected 'continuous' "
                                           r"\(env toy/2x1\), found 'discrete'"):
        write_dataset(tmp_path / "d.h5", observations=rec["observations"],
                      actions=np.zeros((len(rec["rewards"]), 2), np.int64),
                      rewards=rec["rewards"], terminals=rec["terminals"],
                      truncations=rec["truncations"], n_actions=3, env="toy/2x1")


BASE = {"n_agents": 2, "obs_dim": 2, "discrete": False, "action_dim": 1,
        "action_low": [[-1.0], [-2.0]], "action_high": [[1.0], [2.0]]}


@pytest.mark.parametrize("change,key", [
    ({"discrete": True}, "action_space"),
    ({"n_agents": 3}, "n_agents"),
    ({"obs_dim": 5}, "obs_dim"),
    ({"action_dim": 2}, "action_dim"),
    ({"action_low": [-1.0]}, "action_low"),
    ({"action_low": [[-1.0, -1.0]]}, "action_low"),
    ({"action_high": [[1.0], [2.5]]}, "action_high"),
])
def test_check_compatible_names_the_mismatch(toy, change, key):
    assert envs.check_compatible("toy/2x1", **BASE)["n_agents"] == 2   # the control
    with pytest.raises(envs.EnvMismatchError) as info:
        envs.check_compatible("toy/2x1", **{**BASE, **change})
    assert info.value.key == key and isinstance(info.value, ValueError)
    msg = str(info.value)
    assert msg.startswith(f"{key}: expected ") and "(env toy/2x1)" in msg and "\n" not in msg


@pytest.mark.parametrize("args,kwargs,arg", [
    (("", Reach), {}, "name"),
    (("a/b", Reach), {}, "name"),
    ((3, Reach), {}, "name"),
    (("mamujoco", Reach), {}, "name"),            # already registered, replace=False
    (("new", 3), {}, "make_fn"),
    (("new", Reach), {"action_space": "box"}, "action_space"),
    (("new", Reach), {"pattern": "("}, "pattern"),
    (("new", Reach), {"pattern": 3}, "pattern"),
    (("new", Reach), {"requires": "jaxmarl"}, "requires"),
    (("new", Reach), {"requires": ["not a module"]}, "requires"),
    (("new", Reach), {"default_n_envs": 0}, "default_n_envs"),
    (("new", Reach), {"default_n_envs": True}, "default_n_envs"),
    (("new", Reach), {"example": "other/2x1"}, "example"),
    (("new", Reach), {"pattern": r"\d+", "example": "new/x"}, "example"),
    (("new", Reach), {"package": ""}, "package"),
    (("new", Reach), {"replace": "yes"}, "replace"),
])
def test_register_family_rejects_bad_arguments(toy, args, kwargs, arg):
    kwargs = {"action_space": "continuous", **kwargs}
    with pytest.raises(ValueError, match=f"^{arg}: expected "):
        envs.register_family(*args, **kwargs)
    assert "new" not in envs.families()
    assert envs.families()[:2] == ("mamujoco", "smax")


def test_register_family_replace_and_bare_names(toy):
    with pytest.raises(ValueError, match="pass replace=True"):
        envs.register_family("toy", Reach, action_space="continuous")
    assert envs.env_info("toy/3x2")["n_agents"] == 3

    class Wide(Reach):
        episode_limit = 7

    envs.register_family("toy", Wide, action_space="continuous", replace=True)
    assert envs.env_info("toy/3x2")["episode_limit"] == 7      # not the cached 5
    # The default pattern takes any name, the empty one too: "my-sim" is a spec by itself.
    envs.register_family("my-sim", lambda name, n: Reach("1x1", n), action_space="continuous")
    assert envs.parse_env_spec("my-sim") == ("my-sim", "")
    assert envs.evaluate(lambda o, a: torch.zeros(o.shape[0], 1, 1), "my-sim", 1)["episodes"] == 1
    envs.register_family("toy", Reach, action_space="continuous", pattern=r"\d+x\d+",
                         syntax="toy/<agents>x<dims>", example="toy/2x1", replace=True)
    with pytest.raises(ValueError, match=r"spec: expected 'toy/<agents>x<dims>' such as 'toy/2x1'"):
        envs.parse_env_spec("toy/big")
    with pytest.raises(ValueError, match=r"spec: expected '<family>/<name>' with a registered "
                                         r"family \(mamujoco, smax, toy, my-sim; see"):
        envs.parse_env_spec("nosuch/2x1")


def test_custom_family_with_a_missing_package(toy):
    envs.register_family("sim2", Reach, action_space="continuous",
                         requires=("no_such_module_vgm2p",), package="no-such-sim")
    status = envs.evaluation_status("sim2/2x1")
    assert not status and status.reason == (
        "evaluation skipped: sim2 environments need the package no-such-sim "
        "(no_such_module_vgm2p is not installed); install it with `pip install no-such-sim`")
    with pytest.raises(envs.EnvUnavailableError, match="pip install no-such-sim"):
        envs.evaluate(uniform_act(1.0, 1), "sim2/2x1", 1)


class _Broken(Reach):
    def __init__(self, name, n, fault):
        super().__init__("2x1", n)
        self.fault = fault
        if fault == "no-limit":
            self.episode_limit = None
        if fault == "bounds":
            self.action_low = np.zeros(3)

    def reset(self, slots, seeds):
        super().reset(slots, seeds)
        if self.fault == "obs":
            self.obs = self.obs[..., :1]

    def step(self, actions, active):
        out = super().step(actions, active)
        return (out[0][:1], *out[1:]) if self.fault == "step" else out


@pytest.mark.parametrize("fault,match", [
    ("no-limit", "make_fn returned episode_limit = None; expected an int >= 1"),
    ("bounds", r"action_low/action_high of shapes \(3,\)/\(2, 1\)"),
    ("obs", r"obs: expected a numpy float32 array of shape \(2, 2, 2\) after reset, found "
            r"float32 \(2, 2, 1\)"),
    ("step", r"step: expected rewards of shape \(2,\), found shape \(1,\)"),
])
def test_a_broken_custom_env_is_named_in_one_line(toy, fault, match):
    envs.register_family("bad", lambda name, n: _Broken(name, n, fault),
                         action_space="continuous")
    with pytest.raises(ValueError, match=match) as info:
        envs.evaluate(uniform_act(1.0, 1), "bad/x", 2)
    assert str(info.value).startswith("env bad/x: ") and "BatchedEnv" in str(info.value)
