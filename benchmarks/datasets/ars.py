"""Augmented Random Search (ARS V2-t, Mania et al. 2018) for a linear behaviour policy.

The policy is ``a = clip(M (o - mean) / std, -1, 1)`` on a single-agent gymnasium MuJoCo task
(``HalfCheetah-v5``); the running observation statistics are part of the policy. It is the
quick behaviour policy of the bundled dataset: 100 iterations of 16 directions (3,200 episodes
of 1,000 steps) took 143 s of one core here and reach a return of ~2,600, against ~-300 for
random play (numbers in ``cards/halfcheetah-2x3-small.md``).

    python benchmarks/datasets/ars.py --env HalfCheetah-v5 --iterations 100 \
        --out benchmarks/datasets/policies/halfcheetah-v5-ars.npz

Everything is seeded (numpy generator + environment reset seeds), so a run is reproducible on
the same machine and library versions.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from vgm2p_fast.envs import quiet_mujoco_compile


@dataclass
class LinearPolicy:
    """``a = clip(M (o - mean) / std, -1, 1)``; M: (act_dim, obs_dim)."""

    M: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs: (..., obs_dim) -> actions (..., act_dim) in [-1, 1]."""
        return np.clip(((obs - self.mean) / self.std) @ self.M.T, -1.0, 1.0)

    def save(self, path: str | Path, **meta: object) -> None:
        np.savez(path, M=self.M, mean=self.mean, std=self.std,
                 **{k: np.asarray(v) for k, v in meta.items()})

    @classmethod
    def load(cls, path: str | Path) -> LinearPolicy:
        with np.load(path) as f:
            return cls(M=f["M"], mean=f["mean"], std=f["std"])


class RunningStat:
    """Running mean/variance of every observation seen during training (ARS 'V2')."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def push_many(self, xs: np.ndarray) -> None:
        """Merge a batch (Chan et al.'s parallel update), xs: (n, dim)."""
        n_b = xs.shape[0]
        mean_b = xs.mean(axis=0)
        delta = mean_b - self.mean
        n = self.n + n_b
        self.m2 += ((xs - mean_b) ** 2).sum(axis=0) + delta**2 * self.n * n_b / n
        self.mean += delta * n_b / n
        self.n = n

    @property
    def std(self) -> np.ndarray:
        var = self.m2 / max(self.n - 1, 1)
        # std floor 1e-2: a coordinate that never moved (std 0) must not blow the input up.
        return np.sqrt(np.maximum(var, 1e-4))


def episode(env: gym.Env, policy: LinearPolicy, seed: int,
            record: list[np.ndarray] | None = None) -> float:
    """One episode's return; appends every observation to ``record`` when given."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        if record is not None:
            record.append(obs)
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        done = terminated or truncated
    return total


def train(env_id: str, iterations: int, directions: int, top: int, step_size: float,
          noise: float, seed: int, log_every: int = 10,
          snapshots: list[tuple[int, LinearPolicy, float]] | None = None
          ) -> tuple[LinearPolicy, list[float]]:
    """ARS V2-t; returns the policy and the evaluation return logged every ``log_every``.

    ``snapshots``, when given, receives ``(iteration, policy, eval return)`` at every log
    point: the intermediate policies the medium / medium-replay datasets are recorded from.
    Evaluation episodes use their own seeds (``10_000 + it``), so logging more often does not
    change the training trajectory.
    """
    with quiet_mujoco_compile():
        env = gym.make(env_id)
    obs_dim = env.observation_space.shape[0]
    act_dim = env.action_space.shape[0]
    rng = np.random.default_rng(seed)
    M = np.zeros((act_dim, obs_dim))
    stat = RunningStat(obs_dim)
    stat.push_many(np.zeros((1, obs_dim)))
    history: list[float] = []
    ep_seed = seed * 1_000_003
    for it in range(iterations):
        mean, std = stat.mean.copy(), stat.std.copy()   # frozen within an iteration
        deltas = rng.standard_normal((directions, act_dim, obs_dim))
        returns = np.zeros((directions, 2))
        seen: list[np.ndarray] = []
        for k in range(directions):
            for j, sign in enumerate((1.0, -1.0)):
                ep_seed += 1
                pol = LinearPolicy(M + sign * noise * deltas[k], mean, std)
                returns[k, j] = episode(env, pol, ep_seed, seen)
        stat.push_many(np.asarray(seen))
        best = np.argsort(-returns.max(axis=1))[:top]
        sigma_r = returns[best].std() + 1e-8
        step = np.einsum("k,kij->ij", returns[best, 0] - returns[best, 1], deltas[best])
        M = M + step_size / (top * sigma_r) * step
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            ret = episode(env, LinearPolicy(M, stat.mean, stat.std), 10_000 + it)
            history.append(ret)
            if snapshots is not None:
                snapshots.append((it + 1, LinearPolicy(M.copy(), stat.mean.copy(),
                                                       stat.std.copy()), ret))
            print(f"iter {it + 1:4d}  eval return {ret:9.1f}  "
                  f"mean of directions {returns.mean():9.1f}", flush=True)
    return LinearPolicy(M, stat.mean.copy(), stat.std.copy()), history


def save_snapshots(path: str | Path, snapshots: list[tuple[int, LinearPolicy, float]]) -> None:
    """Stack the snapshots into one .npz (``M`` (K, act, obs), ``mean``/``std`` (K, obs),
    ``iterations`` (K,), ``eval_returns`` (K,))."""
    np.savez(path, iterations=np.array([it for it, _, _ in snapshots]),
             eval_returns=np.array([r for _, _, r in snapshots]),
             M=np.stack([p.M for _, p, _ in snapshots]),
             mean=np.stack([p.mean for _, p, _ in snapshots]),
             std=np.stack([p.std for _, p, _ in snapshots]))


def load_snapshots(path: str | Path) -> list[tuple[int, LinearPolicy, float]]:
    with np.load(path) as f:
        return [(int(it), LinearPolicy(M, mean, std), float(r)) for it, r, M, mean, std in
                zip(f["iterations"], f["eval_returns"], f["M"], f["mean"], f["std"])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--step-size", type=float, default=0.02)
    p.add_argument("--noise", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--snapshots-out", default=None,
                   help=".npz of the policy at every log point (see save_snapshots)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    t0 = time.perf_counter()
    snaps: list[tuple[int, LinearPolicy, float]] = []
    policy, history = train(a.env, a.iterations, a.directions, a.top, a.step_size, a.noise,
                            a.seed, a.log_every, snaps)
    if a.snapshots_out:
        save_snapshots(a.snapshots_out, snaps)
    wall = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    policy.save(a.out, env=a.env, iterations=a.iterations, directions=a.directions, top=a.top,
                step_size=a.step_size, noise=a.noise, seed=a.seed, eval_history=history,
                wall_s=wall)
    print(f"saved {a.out}  ({wall:.0f} s)")


if __name__ == "__main__":
    main()
