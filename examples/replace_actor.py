"""Replace the actor of an existing codebase with a VGM²P policy, end to end.

1. Train a small VGM²P policy on the bundled dataset (``halfcheetah-2x3-small``) with
   ``vgm2p_fast.train.train``; the trainer writes ``<out>/policy.pt`` with ``MeanFlowPolicy.save``.
2. Start a fresh Python process that imports no training code, ``MeanFlowPolicy.load``s that
   file and drives the raw MaMuJoCo PettingZoo env (``gymnasium_robotics``) with the OG-MARL-style
   adapter: the loop is what a codebase already has; only the actor line changes.

    python examples/replace_actor.py [--out DIR] [--steps 100]

Without gymnasium-robotics (the ``envs`` extra) step 2 acts on dataset observations instead and
says so. Under a minute on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import torch


def train_and_save(out: str, steps: int) -> str:
    from vgm2p_fast.train import TrainConfig, train

    cfg = TrainConfig(steps=steps, value_warmup=20, hidden_dims=(64, 64), eval_episodes=0,
                      out=out)
    t0 = time.perf_counter()
    summary = train(cfg, progress=False)
    print(f"[train] {cfg.value_warmup} critic + {steps} policy steps on {summary['dataset']} "
          f"in {time.perf_counter() - t0:.1f} s (dataset episodes return "
          f"{summary['dataset_return_mean']:.1f} on average); wrote {out}/policy.pt")
    return f"{out}/policy.pt"


def act_in_fresh_process(path: str, seed: int) -> None:
    """Runs in a new interpreter: only the policy file, the adapter and the env."""
    import numpy as np

    from vgm2p_fast import MeanFlowPolicy
    from vgm2p_fast.integrations.ogmarl import MeanFlowSystem

    policy = MeanFlowPolicy.load(path, map_location="cpu")
    trainer_loaded = any(m.startswith(("vgm2p_fast.train", "vgm2p_fast.value"))
                         for m in sys.modules)
    spec = policy.metadata.get("env", "")
    print(f"[act] loaded {path} (env {spec}, {policy.n_agents} agents, obs_dim "
          f"{policy.obs_dim}, action_dim {policy.action_dim}); training code imported: "
          f"{trainer_loaded}")
    try:
        from gymnasium_robotics import mamujoco_v1
    except ImportError:
        from vgm2p_fast.datasets import load_dataset

        obs = load_dataset("halfcheetah-2x3-small").observations[:8]
        actions = policy(obs)
        print(f"[act] gymnasium-robotics is not installed (pip install -e '.[envs]'): acted on 8 "
              f"dataset rows instead: actions {tuple(actions.shape)} in "
              f"[{actions.min():.2f}, {actions.max():.2f}]")
        return
    from vgm2p_fast.envs import parse_env_spec, quiet_mujoco_compile

    scenario, agent_conf = parse_env_spec(spec)[1].split("-")
    with quiet_mujoco_compile():
        env = mamujoco_v1.parallel_env(scenario, agent_conf)
    agents = env.possible_agents
    # --- the codebase's own loop; the one changed line is the actor ---------------------
    actor = MeanFlowSystem(policy, agents, seed=seed,
                           action_dims={a: env.action_space(a).shape[0] for a in agents})
    observations, _ = env.reset(seed=seed)
    episode_return, steps, done = 0.0, 0, False
    t0 = time.perf_counter()
    while not done:
        actions = actor.select_actions(observations)            # was: my_actor(observations)
        assert all(env.action_space(a).contains(actions[a].astype(np.float32)) for a in agents)
        observations, rewards, terms, truncs, _ = env.step(actions)
        episode_return += float(rewards[agents[0]])
        steps += 1
        done = any(terms.values()) or any(truncs.values())
    # ---------------------------------------------------------------------------------------
    print(f"[act] one {spec} episode: {steps} steps, return {episode_return:.1f} "
          f"({time.perf_counter() - t0:.1f} s, every action inside the env's action space)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="run directory (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=100, help="policy gradient steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--act", metavar="POLICY_PT", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    # Small batches ([256, 2, *] to train, [1, 2, *] to act) gain nothing from intra-op threads,
    # and on a busy CPU the threads contend: on the 2-core CI machine at load average ~10, 120
    # training iterations took 13-28 s with 2 threads and 1.3 s with 1, and one select_actions
    # 2.9-12 ms against 0.55-0.67 ms.
    torch.set_num_threads(1)
    if args.act:
        act_in_fresh_process(args.act, args.seed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = train_and_save(args.out or tmp, args.steps)
        subprocess.run([sys.executable, __file__, "--act", path, "--seed", str(args.seed)],
                       check=True)


if __name__ == "__main__":
    main()
