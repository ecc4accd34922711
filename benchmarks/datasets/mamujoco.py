"""Generate a MaMuJoCo offline dataset (docs/design.md 3) from a single-agent behaviour policy.

The behaviour policy is a linear ARS policy (``ars.py``) trained on the single-agent gymnasium
task under the scenario (``HalfCheetah-v5`` for ``mamujoco/HalfCheetah-2x3``). It acts on the
global state (``env.state()`` is that task's observation) and its joint action is split over
the agents with the environment's own partition (``vgm2p_fast.envs.mamujoco_action_index``).
Episodes are recorded through ``vgm2p_fast.envs.rollout``, the loop evaluation uses, so the
dataset sees exactly what evaluation sees.

Qualities (each a list of episode groups; a group's actions are
``clip(pi(s) + sigma * N(0, I), -1, 1)`` for one of the ARS policies ``pi``, or uniform in
``[-1, 1]`` for ``random``). ``expert`` is the final ARS policy (100 iterations), ``medium``
the ARS iterate whose logged return is closest to 1/3 of the expert's reference return
(``policies/<scenario>-v5-ars-snapshots.npz`` holds every iterate up to 30):

- ``expert``: the expert policy, sigma=0.1.
- ``medium``: the medium iterate, sigma=0.1.
- ``medium-replay``: every ARS iterate from 1 to the medium one, equally many episodes each,
  sigma=0.1: a replay of the learning run up to medium (as D4RL's, from random-like play up).
- ``medium-expert``: half medium, half expert, recorded with the same seeds as ``medium`` and
  ``expert``, so ``--episodes 2E`` is exactly the union of the two ``--episodes E`` datasets.
- ``mixed`` (the bundled file): 30% expert sigma=0.1, 25% sigma=0.2, 20% sigma=0.5, 25%
  random: returns spread from random play to the behaviour policy's, so value guidance has
  something to separate (with sigma >= 0.2 the cheetah often flips onto its back
  mid-episode, so good and bad stretches also alternate inside episodes).
- ``random``: uniform random actions.

Group ``k`` of a quality is recorded by ``rollout(seed=100 * seed + offset_k)`` with a fixed
offset per group kind (table ``QUALITIES``), so a group is the same episodes in every quality.

The bundled file::

    python benchmarks/datasets/mamujoco.py --env mamujoco/HalfCheetah-2x3 --quality mixed \
        --episodes 20 --seed 0 --out vgm2p_fast/data/halfcheetah-2x3-small.h5

trains the policy first (``--ars-iterations``, ~2.5 min on one core) when
``benchmarks/datasets/policies/<scenario>-v5-ars.npz`` is missing.
"""

from __future__ import annotations

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
import td3  # noqa: E402
from card import generator_parser, return_stats, write_card  # noqa: E402

from vgm2p_fast import envs  # noqa: E402
from vgm2p_fast.datasets import write_dataset  # noqa: E402

# A group: (policy: "expert" | "medium" | "replay" | None for uniform random, sigma, share of
# the episodes, rollout seed offset). "replay" expands to one group per ARS iterate 1..medium
# (offset 20 + iterate), sharing the group's episodes equally.
QUALITIES: dict[str, list[tuple[str | None, float, float, int]]] = {
    "mixed": [("expert", 0.1, 0.30, 0), ("expert", 0.2, 0.25, 1), ("expert", 0.5, 0.20, 2),
              (None, 0.0, 0.25, 3)],
    "expert": [("expert", 0.1, 1.0, 0)],
    "medium": [("medium", 0.1, 1.0, 10)],
    "medium-replay": [("replay", 0.1, 1.0, 20)],
    "medium-expert": [("medium", 0.1, 0.5, 10), ("expert", 0.1, 0.5, 0)],
    "random": [(None, 0.0, 1.0, 3)],
}
DEFINITIONS = {
    "expert": "the expert ARS policy (iterate 100) with Gaussian action noise sigma 0.1",
    "medium": "ARS iterate {medium} (its logged noiseless return is the closest to 1/3 of the "
              "expert reference, on the random-to-expert scale), sigma 0.1",
    "medium-replay": "ARS iterates 1 to {medium} (medium), equally many episodes each, sigma "
                     "0.1: the learning run replayed up to medium",
    "medium-expert": "the episodes of `medium` and `expert` (same seeds): half each",
    "mixed": "30% expert sigma 0.1, 25% sigma 0.2, 20% sigma 0.5, 25% uniform random",
    "random": "uniform random actions",
}
SNAPSHOT_ITERATIONS = 30   # ARS iterates kept for medium / medium-replay (log every 1)
REFERENCE_EPISODES = 10


def split_episodes(total: int, shares: list[float]) -> list[int]:
    """Episodes per group: largest remainders, so that the counts add up to ``total``."""
    raw = np.array(shares) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def behaviour_act_fn(policy: ars.LinearPolicy | None, index: np.ndarray, sigma: float):
    """act_fn(obs, avail, state) of rollout(pass_state=True): the noisy joint policy per agent
    (uniform random actions when ``policy`` is None).

    ``index`` (N, D): single-agent action id of each agent's dim (-1: padding, action 0).
    """
    idx = torch.from_numpy(np.maximum(index, 0))
    pad = torch.from_numpy(index < 0)

    def act(obs: torch.Tensor, avail: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        if policy is None:
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


def load_or_train_snapshots(path: Path, env_id: str, seed: int
                            ) -> list[tuple[int, ars.LinearPolicy, float]]:
    """ARS iterates 1..SNAPSHOT_ITERATIONS of the same seeded run as the expert policy (the
    training trajectory does not depend on how often it is logged)."""
    if not path.exists():
        print(f"recording ARS iterates on {env_id} -> {path}", flush=True)
        snaps: list[tuple[int, ars.LinearPolicy, float]] = []
        ars.train(env_id, SNAPSHOT_ITERATIONS, directions=16, top=8, step_size=0.02,
                  noise=0.03, seed=seed, log_every=1, snapshots=snaps)
        ars.save_snapshots(path, snaps)
    return ars.load_snapshots(path)


def expand_groups(quality: str, episodes: int, expert, snapshots: list[tuple[int, object, float]],
                  medium_it: int, unit: str = "ARS iterate", expert_it: int = 100
                  ) -> list[dict]:
    """The quality's groups with their policy, sigma, episode count, seed offset and label.

    ``snapshots``: (iterate, policy, logged return) of the behaviour policy's training run;
    ``unit`` names an iterate in labels (``ARS iterate``, ``TD3 step``)."""
    mix = QUALITIES[quality]
    by_it = {it: pol for it, pol, _ in snapshots}
    groups = []
    for (kind, sigma, _, offset), count in zip(mix, split_episodes(episodes,
                                                                   [m[2] for m in mix])):
        if kind == "replay":
            its = [it for it in by_it if it <= medium_it]
            for k, (it, c) in enumerate(zip(its, split_episodes(count,
                                                                 [1 / len(its)] * len(its)))):
                groups.append({"label": f"{unit} {it}", "policy": by_it[it],
                               "sigma": sigma, "episodes": c, "offset": offset + k + 1})
            continue
        policy = {"expert": expert, "medium": by_it[medium_it], None: None}[kind]
        label = ("uniform random" if kind is None else
                 f"{kind} ({unit} {expert_it if kind == 'expert' else medium_it})")
        groups.append({"label": f"{label} sigma={sigma}" if kind else label, "policy": policy,
                       "sigma": sigma, "episodes": count, "offset": offset})
    return [g for g in groups if g["episodes"] > 0]


# The behaviour-policy learner per scenario: linear ARS where it reaches a good return
# (HalfCheetah: ~2,600), TD3 where it does not (Hopper: ARS stalled at ~1,100, standing still).
BEHAVIOURS = {"Hopper": "td3"}
TD3_STEPS = 300_000          # ~60-90 min of one core here; snapshots every TD3_SNAPSHOT steps
TD3_SNAPSHOT = 5_000


def load_behaviour(kind: str, scenario: str, env_id: str, seed: int, ars_iterations: int,
                   policy_path: Path | None) -> dict:
    """The expert policy, the training run's snapshots and how to name them, for ``kind``
    ``ars`` or ``td3``; trains (and saves under ``policies/``) what is missing."""
    if kind == "ars":
        path = policy_path or HERE / "policies" / f"{scenario.lower()}-v5-ars.npz"
        snap_path = HERE / "policies" / f"{scenario.lower()}-v5-ars-snapshots.npz"
        return {"expert": load_or_train_policy(path, env_id, ars_iterations, seed),
                "snapshots": load_or_train_snapshots(snap_path, env_id, seed),
                "unit": "ARS iterate", "expert_it": ars_iterations,
                "files": f"{path.name}, {snap_path.name}", "learner": "linear ARS",
                "note": f"`{path.name}` (expert, {ars_iterations} iterations) and "
                        f"`{snap_path.name}` (iterates 1-{SNAPSHOT_ITERATIONS} of the same "
                        "seeded run), retrained by the generator when missing (`ars.py`, "
                        "~1-2.5 min)"}
    path = policy_path or HERE / "policies" / f"{scenario.lower()}-v5-td3.npz"
    if not path.exists():
        print(f"training the behaviour policy with TD3 on {env_id} -> {path}", flush=True)
        snaps = td3.train(env_id, TD3_STEPS, seed, TD3_SNAPSHOT)
        path.parent.mkdir(parents=True, exist_ok=True)
        td3.save_snapshots(path, td3.compact(snaps), env=env_id, seed=seed)
    snaps = td3.load_snapshots(path)
    return {"expert": snaps[-1][1], "snapshots": snaps[:-1], "unit": "TD3 step",
            "expert_it": snaps[-1][0], "files": path.name, "learner": "TD3 (2 x 256 MLP)",
            "note": f"`{path.name}`: TD3 actor snapshots every {TD3_SNAPSHOT} environment steps "
                    f"up to the medium range and the final actor (expert, {snaps[-1][0]} "
                    "steps), retrained by the generator when missing (`td3.py`)"}


def main(argv: list[str] | None = None) -> int:
    p = generator_parser(__doc__, "mamujoco/HalfCheetah-2x3", list(QUALITIES), "mixed", 20)
    p.add_argument("--policy", type=Path, default=None,
                   help="behaviour policy .npz (default: policies/<scenario>-v5-<learner>.npz, "
                        "trained if missing)")
    p.add_argument("--behaviour", choices=["ars", "td3"], default=None,
                   help="learner of the behaviour policy (default: td3 for Hopper, else ars)")
    p.add_argument("--ars-iterations", type=int, default=100, help="ARS iterations (expert)")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    family, name = envs.parse_env_spec(a.env)
    if family != "mamujoco":
        p.error(f"--env: expected a mamujoco/ spec, found {a.env!r}")
    scenario = name.split("-")[0]
    env_id = f"{scenario}-v5"
    kind = a.behaviour or BEHAVIOURS.get(scenario, "ars")
    beh = load_behaviour(kind, scenario, env_id, a.seed, a.ars_iterations, a.policy)
    policy, snapshots = beh["expert"], beh["snapshots"]
    info = envs.env_info(a.env)
    index = envs.mamujoco_action_index(a.env)

    # Reference returns (seeds far from the recorded episodes'): the noiseless expert policy
    # and uniform random play, REFERENCE_EPISODES each.
    refs = {}
    for label, pol in (("behaviour", policy), ("random", None)):
        out = envs.rollout(behaviour_act_fn(pol, index, 0.0), a.env, REFERENCE_EPISODES,
                           seed=10_000 + a.seed, record=False, pass_state=True)
        refs[label] = return_stats(out["returns"])
    # Medium: the iterate whose logged (noiseless, one-episode) return is closest to 1/3 of
    # the expert's reference return.
    target = refs["random"]["mean"] + (refs["behaviour"]["mean"] - refs["random"]["mean"]) / 3
    medium_it = min(snapshots, key=lambda s: abs(s[2] - target))[0]

    parts, groups = [], []
    for g in expand_groups(a.quality, a.episodes, policy, snapshots, medium_it, beh["unit"],
                           beh["expert_it"]):
        out = envs.rollout(behaviour_act_fn(g["policy"], index, g["sigma"]), a.env,
                           g["episodes"], seed=a.seed * 100 + g["offset"], pass_state=True)
        parts.append(out)
        groups.append({"label": g["label"], "sigma": g["sigma"], "episodes": g["episodes"],
                       "seed": a.seed * 100 + g["offset"], "returns": return_stats(out["returns"])})
        print(f"{g['label']:32s} {g['episodes']:3d} episodes  return "
              f"{groups[-1]['returns']['mean']:9.1f} +- {groups[-1]['returns']['std']:.1f}",
              flush=True)
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
        behaviour_policy=f"{beh['learner']} on {env_id} ({beh['files']})",
        medium_iterate=medium_it,
        groups=json.dumps(groups), ref_behaviour_return=refs["behaviour"]["mean"],
        ref_random_return=refs["random"]["mean"],
    )
    summary = {"env": a.env, "quality": a.quality, "seed": a.seed, "episodes": a.episodes,
               "transitions": int(data["rewards"].shape[0]), "returns": return_stats(returns),
               "groups": groups, "reference": refs, "medium_iterate": medium_it,
               "wall_s": round(wall, 1), "file_bytes": a.out.stat().st_size,
               "command": command, "out": str(a.out),
               "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__}
    if a.card:
        note = (f"{beh['learner']} policy on single-agent `{env_id}` acting on the global "
                "state, its joint action split over the agents by "
                "`vgm2p_fast.envs.mamujoco_action_index`; benchmarks/datasets/policies/"
                + beh["note"])
        write_card(a.card, summary, DEFINITIONS[a.quality].format(medium=medium_it), note)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
