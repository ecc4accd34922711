"""Generate a MaMuJoCo offline dataset (DESIGN section 3) from a single-agent behaviour policy.

The behaviour policy is a linear ARS policy (``ars.py``) trained on the single-agent gymnasium
task under the scenario (``HalfCheetah-v5`` for ``mamujoco/HalfCheetah-2x3``). It acts on the
global state (``env.state()`` is that task's observation) and its joint action is split over
the agents with the environment's own partition (``vgm2p_fast.envs.mamujoco_action_index``).
Episodes are recorded through ``vgm2p_fast.envs.rollout``, the loop evaluation uses, so the
dataset sees exactly what evaluation sees.

Qualities (each a mix of episode groups; a group's actions are
``clip(pi(s) + sigma * N(0, I), -1, 1)``, or uniform in ``[-1, 1]`` for ``random``):

- ``mixed``: 30% sigma=0.1, 25% sigma=0.2, 20% sigma=0.5, 25% random: returns spread from
  random play to the behaviour policy's, so value guidance has something to separate (with
  sigma >= 0.2 the cheetah often flips onto its back mid-episode, so good and bad stretches
  also alternate inside episodes).
- ``expert`` (sigma=0.1), ``medium`` (sigma=0.2), ``random``.

The bundled file::

    python benchmarks/datasets/mamujoco.py --env mamujoco/HalfCheetah-2x3 --quality mixed \
        --episodes 20 --seed 0 --out vgm2p_fast/data/halfcheetah-2x3-small.h5

trains the policy first (``--ars-iterations``, ~2.5 min on one core) when
``benchmarks/datasets/policies/<scenario>-v5-ars.npz`` is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ars  # noqa: E402

from vgm2p_fast import envs  # noqa: E402
from vgm2p_fast.datasets import write_dataset  # noqa: E402

# (noise sigma or None for uniform random actions, share of the episodes)
QUALITIES: dict[str, list[tuple[float | None, float]]] = {
    "mixed": [(0.1, 0.30), (0.2, 0.25), (0.5, 0.20), (None, 0.25)],
    "expert": [(0.1, 1.0)],
    "medium": [(0.2, 1.0)],
    "random": [(None, 1.0)],
}
REFERENCE_EPISODES = 10


def split_episodes(total: int, mix: list[tuple[float | None, float]]) -> list[int]:
    """Episodes per group: largest remainders, so that the counts add up to ``total``."""
    raw = np.array([share for _, share in mix]) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def behaviour_act_fn(policy: ars.LinearPolicy | None, index: np.ndarray, sigma: float | None):
    """act_fn(obs, avail, state) of rollout(pass_state=True): the noisy joint policy per agent.

    ``index`` (N, D): single-agent action id of each agent's dim (-1: padding, action 0).
    """
    idx = torch.from_numpy(np.maximum(index, 0))
    pad = torch.from_numpy(index < 0)

    def act(obs: torch.Tensor, avail: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        if sigma is None:
            joint = torch.rand(state.shape[0], int(index.max()) + 1) * 2 - 1
        else:
            joint = torch.from_numpy(policy(state.double().numpy())).float()
            joint = (joint + sigma * torch.randn_like(joint)).clamp(-1, 1)
        return joint[:, idx].masked_fill(pad, 0.0)

    return act


def load_or_train_policy(path: Path, env_id: str, iterations: int, seed: int
                         ) -> ars.LinearPolicy:
    if not path.exists():
        print(f"training the behaviour policy with ARS on {env_id} -> {path}", flush=True)
        t0 = time.perf_counter()
        policy, history = ars.train(env_id, iterations, directions=16, top=8, step_size=0.02,
                                    noise=0.03, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        policy.save(path, env=env_id, iterations=iterations, seed=seed, eval_history=history,
                    wall_s=time.perf_counter() - t0)
    return ars.LinearPolicy.load(path)


def stats(x: list[float]) -> dict[str, float]:
    a = np.asarray(x)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "max": float(a.max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="mamujoco/HalfCheetah-2x3")
    p.add_argument("--quality", choices=sorted(QUALITIES), default="mixed")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", type=Path, default=None,
                   help="ARS policy .npz (default: policies/<scenario>-v5-ars.npz, trained "
                        "if missing)")
    p.add_argument("--ars-iterations", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    family, name = envs.parse_env_spec(a.env)
    if family != "mamujoco":
        p.error(f"--env: expected a mamujoco/ spec, found {a.env!r}")
    scenario = name.split("-")[0]
    env_id = f"{scenario}-v5"
    policy_path = a.policy or HERE / "policies" / f"{scenario.lower()}-v5-ars.npz"
    policy = load_or_train_policy(policy_path, env_id, a.ars_iterations, a.seed)
    info = envs.env_info(a.env)
    if policy.M.shape[1] != info["state_dim"]:
        p.error(f"--policy: acts on {policy.M.shape[1]}-dim states, {a.env} has "
                f"{info['state_dim']}")
    index = envs.mamujoco_action_index(a.env)

    # Reference returns (seeds far from the recorded episodes'): the noiseless behaviour
    # policy and uniform random play, REFERENCE_EPISODES each.
    refs = {}
    for label, sigma in (("behaviour", 0.0), ("random", None)):
        out = envs.rollout(behaviour_act_fn(policy, index, sigma), a.env, REFERENCE_EPISODES,
                           seed=10_000 + a.seed, record=False, pass_state=True)
        refs[label] = stats(out["returns"])

    parts, groups = [], []
    mix = QUALITIES[a.quality]
    for g, ((sigma, _), count) in enumerate(zip(mix, split_episodes(a.episodes, mix))):
        if count == 0:
            continue
        out = envs.rollout(behaviour_act_fn(policy, index, sigma), a.env, count,
                           seed=a.seed * 100 + g, pass_state=True)
        parts.append(out)
        groups.append({"sigma": sigma, "episodes": count, "returns": stats(out["returns"])})
        label = "random" if sigma is None else f"sigma={sigma}"
        print(f"{label:10s} {count:3d} episodes  return {groups[-1]['returns']['mean']:9.1f} "
              f"+- {groups[-1]['returns']['std']:.1f}", flush=True)
    data = {k: np.concatenate([o[k] for o in parts]) for k in
            ("observations", "actions", "rewards", "terminals", "truncations", "states",
             "next_states")}
    returns = [r for o in parts for r in o["returns"]]
    command = "python benchmarks/datasets/mamujoco.py " + shlex.join(argv or sys.argv[1:])
    wall = time.perf_counter() - t0
    write_dataset(
        a.out, **data, env=a.env, action_low=info["action_low"],
        action_high=info["action_high"],
        generator=command, quality=a.quality, seed=a.seed, episodes=a.episodes,
        behaviour_policy=f"linear ARS on {env_id} ({policy_path.name})",
        groups=json.dumps(groups), ref_behaviour_return=refs["behaviour"]["mean"],
        ref_random_return=refs["random"]["mean"],
    )
    summary = {"env": a.env, "quality": a.quality, "seed": a.seed, "episodes": a.episodes,
               "transitions": int(data["rewards"].shape[0]), "returns": stats(returns),
               "groups": groups, "reference": refs, "wall_s": round(wall, 1),
               "file_bytes": a.out.stat().st_size, "command": command,
               "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
