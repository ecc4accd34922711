"""Generate a SMAX offline dataset (docs/design.md 3) from jaxmarl's heuristic policy mixed
with random available actions.

The behaviour policy of every ally is jaxmarl's scripted SMAX micromanagement heuristic
(``create_heuristic_policy(env, team=0, attack_mode="closest")``: shoot the closest enemy in
range, else walk towards a visible enemy or past the middle of the map), called statelessly
(its initial state at every step), with probability ``eps`` per agent and step replaced by a
uniformly random available action (and always when the heuristic's action is unavailable).
The enemies are the env's own heuristic (``HeuristicEnemySMAX``). Episodes are recorded through
``vgm2p_fast.envs.rollout``, the loop evaluation uses.

Qualities (OG-MARL's names): ``good`` eps=0 (the heuristic), ``medium`` eps=0.2, ``poor``
eps=0.5. Measured on 3m (64 episodes): win rate 44% / 9% / 0%, return 1.32 / 0.82 / 0.43,
against 0.18 for uniform random available actions (eps=1).

    python benchmarks/datasets/smax.py --env smax/3m --quality good --episodes 1000 --seed 0 \
        --out benchmarks/data/smax-3m-good.h5
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from card import generator_parser, return_stats, write_card  # noqa: E402

from vgm2p_fast import envs  # noqa: E402
from vgm2p_fast.datasets import write_dataset  # noqa: E402

QUALITIES = {"good": 0.0, "medium": 0.2, "poor": 0.5}
REFERENCE_EPISODES = 100
N_ENVS = 64


def heuristic_act_fn(spec: str, eps: float, seed: int, n_envs: int = N_ENVS):
    """act_fn(obs [B, N, obs_dim], avail [B, N, K]) -> [B, N] long of the eps-mixed heuristic.

    The heuristic runs as one jitted vmap over ``n_envs * N`` padded rows (one compilation
    whatever the number of running episodes); its keys and the mixing noise are seeded.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    from jaxmarl.environments.smax import heuristic_enemy as he

    envs.env_info(spec)                                   # builds (and checks) the map
    env = envs.smax_env(envs.parse_env_spec(spec)[1])
    policy = he.create_heuristic_policy(env, 0, shoot=True, attack_mode="closest")
    init = he.get_heuristic_policy_initial_state()
    heuristic = jax.jit(jax.vmap(lambda k, o: policy(k, init, o)[0]))
    gen = torch.Generator().manual_seed(seed)
    key = [jax.random.PRNGKey(seed)]

    def act(obs: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        B, N, D = obs.shape
        rows = n_envs * N
        flat = np.zeros((rows, D), np.float32)
        flat[: B * N] = obs.reshape(B * N, D).numpy()
        key[0], k = jax.random.split(key[0])
        a = np.asarray(heuristic(jax.random.split(k, rows), flat))[: B * N]
        a = torch.from_numpy(a.astype(np.int64)).view(B, N)
        ok = avail.gather(2, a.unsqueeze(-1)).squeeze(-1)
        rnd = torch.multinomial(avail.reshape(B * N, -1).float(), 1, generator=gen).view(B, N)
        use_rnd = (torch.rand(B, N, generator=gen) < eps) | ~ok
        return torch.where(use_rnd, rnd, a)

    return act


def main(argv: list[str] | None = None) -> int:
    p = generator_parser(__doc__, "smax/3m", list(QUALITIES), "medium", 1000)
    a = p.parse_args(argv)
    family, _ = envs.parse_env_spec(a.env)
    if family != "smax":
        p.error(f"--env: expected a smax/ spec, found {a.env!r}")
    t0 = time.perf_counter()
    info = envs.env_info(a.env)

    # Reference returns on evaluation seeds 10000 + seed (not the recorded episodes'): the
    # heuristic (eps 0) and uniform random available actions (eps 1).
    refs = {}
    for label, eps in (("behaviour", 0.0), ("random", 1.0)):
        res = envs.evaluate(heuristic_act_fn(a.env, eps, 10_000 + a.seed), a.env,
                            REFERENCE_EPISODES, seed=10_000 + a.seed, n_envs=N_ENVS)
        refs[label] = {**return_stats(res["returns"]), "win_rate": res["win_rate"]}

    eps = QUALITIES[a.quality]
    out = envs.rollout(heuristic_act_fn(a.env, eps, a.seed), a.env, a.episodes, seed=a.seed,
                       n_envs=N_ENVS)
    keys = ("observations", "actions", "rewards", "terminals", "truncations", "states",
            "next_states", "avail_actions")
    command = "python benchmarks/datasets/smax.py " + shlex.join(argv or sys.argv[1:])
    write_dataset(a.out, **{k: out[k] for k in keys}, env=a.env, n_actions=info["n_actions"],
                  generator=command, quality=a.quality, seed=a.seed, episodes=a.episodes,
                  behaviour_policy=f"jaxmarl SMAX heuristic (closest), eps={eps} random "
                                   "available actions",
                  ref_behaviour_return=refs["behaviour"]["mean"],
                  ref_random_return=refs["random"]["mean"])
    summary = {"env": a.env, "quality": a.quality, "eps": eps, "seed": a.seed,
               "episodes": a.episodes, "transitions": int(out["rewards"].shape[0]),
               "returns": return_stats(out["returns"]), "win_rate": float(np.mean(out["wins"])),
               "length_mean": float(np.mean(out["lengths"])), "reference": refs,
               "wall_s": round(time.perf_counter() - t0, 1),
               "file_bytes": a.out.stat().st_size, "command": command, "out": str(a.out),
               "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__}
    if a.card:
        write_card(a.card, summary,
                   f"each ally takes jaxmarl's heuristic action, replaced with probability {eps} "
                   "(and whenever unavailable) by a uniformly random available action",
                   "jaxmarl's scripted SMAX heuristic (`create_heuristic_policy(env, 0, "
                   "attack_mode='closest')`, stateless) against the env's heuristic enemies; "
                   "the expert reference is the heuristic alone, the random reference uniform "
                   f"random available actions ({REFERENCE_EPISODES} episodes each; win rates "
                   f"{100 * refs['behaviour']['win_rate']:.0f}% and "
                   f"{100 * refs['random']['win_rate']:.0f}%)")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
