"""Drop-in adapters (vgm2p_fast.integrations) against the real libraries, checkpoint portability
across processes, and the examples as smoke tests.

TorchRL tests drive ``MeanFlowActor`` inside real ``torchrl`` collectors on real environments
(VMAS, vectorised and in a ``ParallelEnv``; PettingZoo tic-tac-toe for action masks); they skip
with the install command when the packages are missing. PyMARL/EPyMARL and OG-MARL are not
installable from PyPI as libraries, so their adapters are checked on their documented contracts
(plain tensors; dicts of numpy arrays), and the OG-MARL one on a real PettingZoo MaMuJoCo env
through ``examples/replace_actor.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.integrations import act_batched
from vgm2p_fast.integrations.ogmarl import MeanFlowSystem
from vgm2p_fast.integrations.pymarl import MeanFlowMAC

ROOT = Path(__file__).resolve().parents[1]
TORCHRL_INSTALL = "pip install 'vgm2p_fast[torchrl]'"


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def needs(*modules: str):
    missing = _missing(*modules)
    return pytest.mark.skipif(bool(missing),
                              reason=f"needs {', '.join(missing)}: {TORCHRL_INSTALL}")


needs_vmas = needs("torchrl", "vmas")
needs_tictactoe = needs("torchrl", "pettingzoo", "pygame")


def _policy(discrete: bool, n_agents: int = 3, obs_dim: int = 18, action_dim: int = 2,
            seed: int = 0, **kw) -> vf.MeanFlowPolicy:
    torch.manual_seed(seed)
    return vf.MeanFlowPolicy(obs_dim, action_dim, n_agents, discrete, hidden_dims=(32, 32), **kw)


def _run(args: list[str], timeout: int = 120) -> str:
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout)
    assert res.returncode == 0, f"{args} failed:\n{res.stdout}\n{res.stderr[-3000:]}"
    return res.stdout


# ----------------------------------------------------------------------------- shared helper
def test_act_batched_any_leading_dims_equals_policy_act():
    policy = _policy(False, action_low=[-2.0, 0.0], action_high=[2.0, 0.5])
    obs = torch.randn(2, 5, 3, 18)                    # [P, B, N, obs]: a ParallelEnv of VMAS
    torch.manual_seed(7)
    got = act_batched(policy, obs)
    torch.manual_seed(7)
    ref = policy.act(obs.reshape(10, 3, 18)).reshape(2, 5, 3, 2)
    assert got.shape == (2, 5, 3, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert (got[..., 0].abs() <= 2).all() and ((got[..., 1] >= 0) & (got[..., 1] <= 0.5)).all()
    single = act_batched(policy, obs[0, 0].double())  # unbatched [N, obs], float64 cast in
    assert single.shape == (3, 2) and single.dtype == torch.float32


def test_act_batched_masks_and_errors():
    policy = _policy(True, action_dim=5)
    avail = torch.zeros(4, 6, 3, 5, dtype=torch.int64)  # 0/1 ints, as PyMARL stores them
    only = torch.randint(0, 5, (4, 6, 3))
    avail.scatter_(-1, only.unsqueeze(-1), 1)
    got = act_batched(policy, torch.randn(4, 6, 3, 18), avail)
    assert got.dtype == torch.int64 and torch.equal(got, only)
    with pytest.raises(ValueError, match=r"obs: expected shape \(\.\.\., 3, 18\)"):
        act_batched(policy, torch.randn(4, 3, 17))
    with pytest.raises(ValueError, match="avail_actions: expected shape"):
        act_batched(policy, torch.randn(4, 3, 18), avail[0, :, :, :4])
    with pytest.raises(ValueError, match="avail_actions: expected None for a continuous"):
        act_batched(_policy(False), torch.randn(4, 3, 18), avail[0, :4].bool())


# ----------------------------------------------------------------------------- TorchRL
@needs("tensordict")
def test_torchrl_actor_on_tensordicts_and_compiled():
    from tensordict import TensorDict

    from vgm2p_fast.integrations.torchrl import MeanFlowActor

    policy = _policy(True, action_dim=9)
    actor = MeanFlowActor(policy, mask_key=("agents", "action_mask"))
    assert actor.in_keys == [("agents", "observation"), ("agents", "action_mask")]
    assert actor.out_keys == [("agents", "action")]
    # torch.compile traces the actor (the policy's input checks are graph breaks, not errors);
    # the "eager" backend keeps this a tracing check that costs seconds, not an inductor build.
    # Three batch sizes: the second recompiles with a symbolic batch size, which is where
    # `torch.randn(..., generator=None)` used to fail (see act_batched).
    compiled = torch.compile(actor, backend="eager")
    for batch in (6, 4, 9):
        mask = torch.rand(batch, 3, 9) < 0.3
        mask[..., 4] = True
        td = TensorDict({("agents", "observation"): torch.randn(batch, 3, 18),
                         ("agents", "action_mask"): mask}, [batch])
        torch.manual_seed(3)
        eager = actor(td.clone())["agents", "action"]
        assert eager.shape == (batch, 3) and mask.gather(-1, eager.unsqueeze(-1)).all()
        torch.manual_seed(3)
        got = compiled(td.clone())["agents", "action"]
        torch.testing.assert_close(got, eager, rtol=0, atol=0)
    with pytest.raises(ValueError, match="mask_key: expected None for a continuous policy"):
        MeanFlowActor(_policy(False), mask_key=("agents", "action_mask"))
    with pytest.raises(ValueError, match="in_keys: expected exactly one key"):
        MeanFlowActor(policy, in_keys=["a", "b"])


@needs_vmas
def test_torchrl_collector_vmas_continuous_actions_in_spec():
    from torchrl.collectors import Collector
    from torchrl.envs.libs.vmas import VmasEnv

    from vgm2p_fast.integrations.torchrl import MeanFlowActor

    env = VmasEnv(scenario="navigation", num_envs=8, n_agents=3, continuous_actions=True,
                  max_steps=30, device="cpu")
    env.set_seed(0)
    spec = env.full_action_spec[env.action_key]
    low, high = spec.space.low.reshape(-1, 2)[0], spec.space.high.reshape(-1, 2)[0]
    policy = _policy(False, obs_dim=env.observation_spec["agents", "observation"].shape[-1],
                     action_low=low, action_high=high)
    actor = MeanFlowActor(policy)
    actor.check_spec(spec)
    with pytest.raises(ValueError, match=r"action_spec: expected trailing shape \(4, 2\)"):
        MeanFlowActor(_policy(False, n_agents=4)).check_spec(spec)
    rollout = env.rollout(12, actor)                  # EnvBase.rollout takes it as well
    assert rollout["agents", "action"].shape == (8, 12, 3, 2)
    collector = Collector(env, actor, frames_per_batch=200, total_frames=400,
                          auto_register_policy_transforms=False)
    batches = list(collector)
    collector.shutdown()
    assert sum(b.numel() for b in batches) == 400      # 2 batches of [8 envs, 25 steps]
    actions = torch.cat([b["agents", "action"] for b in batches], dim=1)
    assert actions.shape == (8, 50, 3, 2) and actions.dtype == torch.float32
    assert all(spec.is_in(a) for a in actions.unbind(1))
    # the actions follow the observations (not a constant), and episodes were reset (max 30)
    assert actions.std(dim=(0, 1)).min() > 0.05
    assert any(b["next", "done"].any() for b in batches)


@needs_vmas
def test_torchrl_parallel_env_discrete():
    from torchrl.collectors import Collector
    from torchrl.envs import ParallelEnv

    from vgm2p_fast.integrations.torchrl import MeanFlowActor

    env = ParallelEnv(2, _make_discrete_vmas)
    env.set_seed(1)
    spec = env.full_action_spec[("agents", "action")]
    actor = MeanFlowActor(_policy(True, action_dim=9))
    actor.check_spec(spec)
    collector = Collector(env, actor, frames_per_batch=96, total_frames=192,
                          auto_register_policy_transforms=False)
    for data in collector:
        actions = data["agents", "action"]          # [2 workers, 4 envs, 12 steps, 3 agents]
        assert actions.shape == (2, 4, 12, 3) and actions.dtype == torch.int64
        assert all(spec.is_in(a) for a in actions.unbind(2))
        assert len(actions.unique()) > 1
    collector.shutdown()


def _make_discrete_vmas():
    from torchrl.envs.libs.vmas import VmasEnv

    return VmasEnv(scenario="navigation", num_envs=4, n_agents=3, continuous_actions=False,
                   max_steps=20, device="cpu")


@needs_tictactoe
def test_torchrl_action_mask_from_a_real_env():
    """PettingZoo tic-tac-toe through TorchRL's wrapper: the env provides the legal-move mask;
    every move the collector records for the player on turn is legal."""
    from tensordict.nn import TensorDictSequential
    from torchrl.collectors import Collector
    from torchrl.envs import Compose, DTypeCastTransform, FlattenObservation, TransformedEnv
    from torchrl.envs.libs.pettingzoo import PettingZooWrapper

    from vgm2p_fast.integrations.torchrl import MeanFlowActor

    tictactoe = importlib.import_module("pettingzoo.classic.tictactoe_v3")
    players = ("player_1", "player_2")
    obs_keys = [(p, "observation", "observation") for p in players]  # int8 [1, 3, 3, 2] board
    env = TransformedEnv(
        PettingZooWrapper(tictactoe.env(), use_mask=True, categorical_actions=True),
        Compose(DTypeCastTransform(torch.int8, torch.float32, in_keys=obs_keys),
                FlattenObservation(-3, -1, in_keys=obs_keys)))
    env.set_seed(0)
    torch.manual_seed(0)
    actors = [MeanFlowActor(_policy(True, n_agents=1, action_dim=9, seed=i), in_keys=[k],
                            out_keys=[(p, "action")], mask_key=(p, "action_mask"))
              for i, (p, k) in enumerate(zip(players, obs_keys))]
    collector = Collector(env, TensorDictSequential(*actors), frames_per_batch=100,
                          total_frames=200, auto_register_policy_transforms=False)
    on_turn, restricted = 0, 0
    for data in collector:
        for p in players:
            action, mask, turn = data[p, "action"], data[p, "action_mask"], data[p, "mask"]
            legal = mask.gather(-1, action.unsqueeze(-1)).squeeze(-1)
            assert legal[turn].all(), f"{p} played an illegal move"
            on_turn += int(turn.sum())
            restricted += int((~mask[turn]).any(-1).sum())   # the mask did forbid something
    collector.shutdown()
    assert on_turn == 200 and restricted > 50


def test_torchrl_missing_package_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensordict.nn", None)  # as if tensordict were absent
    monkeypatch.delitem(sys.modules, "vgm2p_fast.integrations.torchrl", raising=False)
    with pytest.raises(ImportError, match=r"needs torchrl.*pip install 'vgm2p_fast\[torchrl\]'"):
        importlib.import_module("vgm2p_fast.integrations.torchrl")


# ----------------------------------------------------------------------------- PyMARL-style
def test_pymarl_controller_contract(tmp_path):
    policy = _policy(True, n_agents=3, obs_dim=10, action_dim=6, share_parameters=False)
    mac = MeanFlowMAC(policy)
    obs = torch.randn(5, 3, 10)
    avail = (torch.rand(5, 3, 6) < 0.5).long()
    avail[..., 2] = 1
    mac.init_hidden(batch_size=5)
    torch.manual_seed(0)
    chosen = mac.select_actions(obs, avail, t_env=0, test_mode=False)
    assert chosen.shape == (5, 3) and chosen.dtype == torch.int64
    assert avail.gather(-1, chosen.unsqueeze(-1)).all()
    torch.manual_seed(0)  # t_env/test_mode do not change the actions (no exploration schedule)
    assert torch.equal(mac.select_actions(obs, avail, t_env=10**6, test_mode=True), chosen)
    torch.manual_seed(0)
    running = torch.tensor([0, 2, 4])  # ParallelRunner: only the envs not terminated
    assert mac.select_actions(obs, avail, bs=running).shape == (3, 3)
    mac.save_models(tmp_path)
    other = MeanFlowMAC(_policy(True, n_agents=3, obs_dim=10, action_dim=6, seed=9))
    other.load_models(tmp_path)
    torch.manual_seed(0)
    assert torch.equal(other.select_actions(obs, avail), chosen)
    assert sum(p.numel() for p in other.parameters()) == sum(p.numel() for p in
                                                             policy.parameters())


# ----------------------------------------------------------------------------- OG-MARL-style
def test_ogmarl_dicts_padding_and_action_dims():
    # Hopper-3x1-like agents: observations of different sizes, one action dim each
    policy = _policy(False, n_agents=3, obs_dim=6, action_dim=2,
                     action_low=[-1.0, -1.0], action_high=[1.0, 1.0])
    agents = ["agent_0", "agent_1", "agent_2"]
    sizes = {"agent_0": 6, "agent_1": 4, "agent_2": 5}
    obs = {a: np.random.default_rng(i).normal(size=(7, d)) for i, (a, d) in
           enumerate(sizes.items())}
    system = MeanFlowSystem(policy, agents, action_dims={a: 1 for a in agents}, seed=11)
    out = system.select_actions(obs)
    assert list(out) == agents and all(v.shape == (7, 1) and v.dtype == np.float32
                                       for v in out.values())
    padded = torch.zeros(7, 3, 6)
    for i, a in enumerate(agents):
        padded[:, i, : sizes[a]] = torch.from_numpy(obs[a]).float()
    ref = policy.act(padded, generator=torch.Generator().manual_seed(11)).numpy()
    for i, a in enumerate(agents):
        np.testing.assert_array_equal(out[a], ref[:, i, :1])
    single = MeanFlowSystem(policy, agents).select_actions({a: o[0] for a, o in obs.items()})
    assert all(v.shape == (2,) for v in single.values())
    with pytest.raises(ValueError, match=r"observations: expected an entry for every agent"):
        system.select_actions({"agent_0": obs["agent_0"]})
    with pytest.raises(ValueError, match=r"observations: expected per-agent arrays"):
        system.select_actions({**obs, "agent_1": np.zeros((7, 9))})
    with pytest.raises(ValueError, match=r"agents: expected 3 distinct ids"):
        MeanFlowSystem(policy, ["a", "a", "b"])


def test_ogmarl_legals():
    policy = _policy(True, n_agents=2, obs_dim=4, action_dim=5)
    system = MeanFlowSystem(policy, ["ally_0", "ally_1"])
    legals = {"ally_0": np.array([0, 0, 1, 0, 0]), "ally_1": np.array([0, 1, 0, 0, 1])}
    for _ in range(10):
        acts = system.select_actions({"ally_0": np.ones(4), "ally_1": -np.ones(4)}, legals)
        assert acts["ally_0"] == 2 and acts["ally_1"] in (1, 4) and acts["ally_0"].dtype == np.int64
    with pytest.raises(ValueError, match="legals: expected the observations' batch shape"):
        system.select_actions({"ally_0": np.ones((3, 4)), "ally_1": np.ones((3, 4))}, legals)


# ----------------------------------------------------------------------------- checkpoints
_CHILD = """
import sys, torch
from vgm2p_fast import MeanFlowPolicy
policy = MeanFlowPolicy.load(sys.argv[1], map_location="cpu")
blob = torch.load(sys.argv[2])
torch.save(policy.act(blob["obs"], noise=blob["noise"]), sys.argv[3])
print(sorted(m for m in sys.modules if m.startswith("vgm2p_fast.")))
"""


def test_save_load_in_a_new_process_gives_identical_actions(tmp_path):
    policy = _policy(False, n_agents=2, obs_dim=7, action_dim=3, share_parameters=False,
                     action_low=[-0.4] * 3, action_high=[0.4, 0.4, 1.0])
    policy.set_obs_normalization(torch.randn(7), torch.rand(7) + 0.5)
    policy.save(tmp_path / "policy.pt", metadata={"env": "mamujoco/Hopper-3x1"})
    obs, noise = torch.randn(16, 2, 7), torch.randn(16, 2, 3)
    torch.save({"obs": obs, "noise": noise}, tmp_path / "in.pt")
    modules = _run(["-c", _CHILD, str(tmp_path / "policy.pt"), str(tmp_path / "in.pt"),
                    str(tmp_path / "out.pt")])
    assert "vgm2p_fast.train" not in modules    # loadable without the training code
    child = torch.load(tmp_path / "out.pt")
    assert torch.equal(child, policy.act(obs, noise=noise))
    assert not torch.equal(child, policy.act(obs))  # the noise matters: equality is not vacuous


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_on_cuda_acts_like_cpu(tmp_path):
    policy = _policy(True, n_agents=3, obs_dim=18, action_dim=9)
    policy.save(tmp_path / "policy.pt")
    gpu = vf.MeanFlowPolicy.load(tmp_path / "policy.pt", map_location="cuda")
    assert gpu.obs_mean.is_cuda
    obs, noise = torch.randn(64, 3, 18), torch.randn(64, 3, 9)
    actions = gpu.act(obs.cuda(), noise=noise.cuda())
    # argmax of float32 scores: the CUDA and CPU matmuls may round differently near ties
    agree = (actions.cpu() == policy.act(obs, noise=noise)).float().mean()
    assert agree > 0.99
    assert act_batched(gpu, obs).device.type == "cpu"  # returned on the caller's device


# ----------------------------------------------------------------------------- examples
def test_example_replace_actor():
    out = _run(["examples/replace_actor.py", "--steps", "100"])
    assert "wrote" in out and "training code imported: False" in out
    if _missing("gymnasium_robotics"):  # the example acts on dataset rows instead, and says so
        assert "gymnasium-robotics is not installed" in out
    else:
        assert "1000 steps" in out and "every action inside the env's action space" in out


@needs_vmas
def test_example_torchrl_collector():
    out = _run(["examples/torchrl_collector.py", "--frames", "400"])
    assert "collected 400 frames" in out and "all inside the env's action spec" in out
