"""vgm2p_fast.envs' registry: a family of one's own (``register_family``) evaluates, clips and
records per agent like the built-in ones; a bad registration, a mismatched dataset, a missing
package or a broken environment is refused in one message naming what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vgm2p_fast import envs


def zero_act(obs, avail):
    """Continuous act_fn of one action dimension: always 0."""
    return torch.zeros(obs.shape[0], obs.shape[1], 1)

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
        envs.evaluate(zero_act, "sim2/2x1", 1)


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
        envs.evaluate(zero_act, "bad/x", 2)
    assert str(info.value).startswith("env bad/x: ") and "BatchedEnv" in str(info.value)
