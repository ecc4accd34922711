"""A MeanFlowPolicy as the actor of a TorchRL collector on a real multi-agent env (VMAS).

    python examples/torchrl_collector.py [--policy POLICY_PT] [--frames 600] [--parallel 2]

Builds ``VmasEnv("navigation", 3 agents)`` (vectorised, ``num_envs`` envs per process; with
``--parallel P`` a ``ParallelEnv`` of P such workers), wraps the policy in
``vgm2p_fast.integrations.torchrl.MeanFlowActor`` and runs a ``torchrl.collectors.Collector``:
the same place a ``MultiAgentMLP``-based actor goes. Without ``--policy`` the MeanFlowPolicy is
freshly initialised (this shows the wiring, not a trained agent); a ``--policy`` file must match
the env (obs 18, 2 action dims in [-1, 1], 3 agents). Needs ``pip install 'vgm2p_fast[torchrl]'``
(torchrl, vmas).
"""

from __future__ import annotations

import argparse
import time

import torch

SCENARIO, N_AGENTS = "navigation", 3


def make_env(num_envs: int = 8, max_steps: int = 50):
    from torchrl.envs.libs.vmas import VmasEnv

    return VmasEnv(scenario=SCENARIO, num_envs=num_envs, n_agents=N_AGENTS,
                   continuous_actions=True, max_steps=max_steps, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", help="a MeanFlowPolicy.save file matching the env")
    parser.add_argument("--frames", type=int, default=600, help="total env steps to collect")
    parser.add_argument("--parallel", type=int, default=0, help="ParallelEnv workers (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # [8, 3, 18] batches: threads only contend (see replace_actor.py)

    from torchrl.collectors import Collector
    from torchrl.envs import ParallelEnv

    from vgm2p_fast import MeanFlowPolicy
    from vgm2p_fast.integrations.torchrl import MeanFlowActor

    env = ParallelEnv(args.parallel, make_env) if args.parallel else make_env()
    env.set_seed(args.seed)
    torch.manual_seed(args.seed)
    spec = env.full_action_spec[("agents", "action")]
    obs_dim = env.observation_spec["agents", "observation"].shape[-1]
    if args.policy:
        policy = MeanFlowPolicy.load(args.policy, map_location="cpu")
    else:  # the env's bounds go into the policy, which emits actions inside them
        low, high = spec.space.low.reshape(-1, 2)[0], spec.space.high.reshape(-1, 2)[0]
        policy = MeanFlowPolicy(obs_dim, 2, N_AGENTS, hidden_dims=(64, 64),
                                action_low=low, action_high=high)
    actor = MeanFlowActor(policy, in_keys=[("agents", "observation")],
                          out_keys=[("agents", "action")])
    actor.check_spec(spec)  # agent count, action size, discrete/continuous: fails early
    # MeanFlowActor is stateless: no InitTracker/primer transforms to register.
    collector = Collector(env, actor, frames_per_batch=200, total_frames=args.frames,
                          auto_register_policy_transforms=False)
    t0, frames, rewards, in_spec = time.perf_counter(), 0, [], True
    for data in collector:
        actions = data["agents", "action"]            # [*env batch, T, N, 2]
        time_dim = data.ndim - 1
        in_spec &= all(bool(spec.is_in(a)) for a in actions.unbind(time_dim))
        rewards.append(data["next", "agents", "reward"].mean())
        frames += data.numel()
    collector.shutdown()
    kind = f"ParallelEnv({args.parallel} x VmasEnv)" if args.parallel else "VmasEnv"
    print(f"[torchrl] {kind} {SCENARIO}, {N_AGENTS} agents: collected {frames} frames in "
          f"{time.perf_counter() - t0:.1f} s with MeanFlowActor "
          f"({'loaded ' + args.policy if args.policy else 'untrained policy'}); last batch "
          f"{tuple(data.batch_size)}, actions {tuple(actions.shape)} "
          f"{'all inside' if in_spec else 'NOT all inside'} the env's action spec; mean "
          f"reward per agent-step {torch.stack(rewards).mean():.4f}")
    if not in_spec:
        raise SystemExit("actions outside the env's action spec")


if __name__ == "__main__":
    main()
