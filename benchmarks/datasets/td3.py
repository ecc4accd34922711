"""TD3 (Fujimoto et al. 2018) for a small MLP behaviour policy on a single-agent MuJoCo task.

Where a linear ARS policy is not good enough (``Hopper-v5``: ARS with 16 directions stalled at a
return of ~1,100, standing still for the alive bonus, over 100 iterations here), the MaMuJoCo
generators take their behaviour policy from this: an actor ``a = tanh(MLP(o))`` (2 x 256 ReLU)
trained with TD3's defaults (twin critics, target policy smoothing 0.2 clipped at 0.5, policy
delay 2, exploration noise 0.1, tau 0.005, batch 256, lr 3e-4, 10,000 random steps first).
Snapshots of the actor every ``--snapshot-every`` steps (with their noiseless evaluation
return) are what ``mamujoco.py`` picks the medium and medium-replay policies from.

    python benchmarks/datasets/td3.py --env Hopper-v5 --steps 200000 \
        --out benchmarks/datasets/policies/hopper-v5-td3.npz

Seeded (torch, numpy and the environment's reset seeds), so a run is reproducible on the same
machine, library versions and thread count (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from vgm2p_fast.envs import quiet_mujoco_compile


@dataclass
class MLPPolicy:
    """``a = tanh(W3 relu(W2 relu(W1 o + b1) + b2) + b3)`` in numpy (actions in [-1, 1])."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """obs: (..., obs_dim) -> actions (..., act_dim) in [-1, 1]."""
        h = np.asarray(obs, np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w.T + b
            h = np.maximum(h, 0.0) if i < len(self.weights) - 1 else np.tanh(h)
        return h

    @classmethod
    def from_module(cls, actor: nn.Sequential) -> MLPPolicy:
        lin = [m for m in actor if isinstance(m, nn.Linear)]
        return cls([m.weight.detach().double().numpy().copy() for m in lin],
                   [m.bias.detach().double().numpy().copy() for m in lin])


def _actor(obs_dim: int, act_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(obs_dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, act_dim), nn.Tanh())


def _critic(obs_dim: int, act_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(obs_dim + act_dim, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 1))


def evaluate(env: gym.Env, policy: MLPPolicy, episodes: int, seed: int) -> float:
    """Mean noiseless return over ``episodes`` episodes."""
    total = 0.0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total += float(r)
            done = term or trunc
    return total / episodes


def train(env_id: str, steps: int, seed: int, snapshot_every: int, start_steps: int = 10_000
          ) -> list[tuple[int, MLPPolicy, float]]:
    """TD3; returns ``(step, actor, noiseless return over 3 episodes)`` every
    ``snapshot_every`` steps (the last one is the final policy)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with quiet_mujoco_compile():
        env, eval_env = gym.make(env_id), gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor = _actor(obs_dim, act_dim)
    critics = nn.ModuleList([_critic(obs_dim, act_dim), _critic(obs_dim, act_dim)])
    actor_t, critics_t = copy.deepcopy(actor), copy.deepcopy(critics)
    a_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    c_opt = torch.optim.Adam(critics.parameters(), lr=3e-4)
    buf_o = np.zeros((steps, obs_dim), np.float32)
    buf_a = np.zeros((steps, act_dim), np.float32)
    buf_r = np.zeros(steps, np.float32)
    buf_o2 = np.zeros((steps, obs_dim), np.float32)
    buf_d = np.zeros(steps, np.float32)
    snaps: list[tuple[int, MLPPolicy, float]] = []
    obs, _ = env.reset(seed=seed)
    episode, ep_ret, t0 = 0, 0.0, time.perf_counter()
    for step in range(steps):
        if step < start_steps:
            act = rng.uniform(-1, 1, act_dim)
        else:
            with torch.no_grad():
                act = actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
            act = np.clip(act + 0.1 * rng.standard_normal(act_dim), -1, 1)
        obs2, r, term, trunc, _ = env.step(act)
        buf_o[step], buf_a[step], buf_r[step], buf_o2[step], buf_d[step] = obs, act, r, obs2, term
        obs, ep_ret = obs2, ep_ret + float(r)
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=seed + 1000 * episode)
            ep_ret = 0.0
        if step >= start_steps:
            idx = rng.integers(0, step + 1, 256)
            o, a, rr, o2, d = (torch.from_numpy(x[idx]) for x in (buf_o, buf_a, buf_r,
                                                                    buf_o2, buf_d))
            with torch.no_grad():
                noise = (0.2 * torch.randn_like(a)).clamp(-0.5, 0.5)
                a2 = (actor_t(o2) + noise).clamp(-1, 1)
                q2 = torch.min(*(c(torch.cat([o2, a2], -1)) for c in critics_t)).squeeze(-1)
                target = rr + 0.99 * (1 - d) * q2
            sa = torch.cat([o, a], -1)
            c_loss = sum(((c(sa).squeeze(-1) - target) ** 2).mean() for c in critics)
            c_opt.zero_grad()
            c_loss.backward()
            c_opt.step()
            if step % 2 == 0:  # delayed policy update
                a_loss = -critics[0](torch.cat([o, actor(o)], -1)).mean()
                a_opt.zero_grad()
                a_loss.backward()
                a_opt.step()
                with torch.no_grad():
                    for net, tgt in ((actor, actor_t), (critics, critics_t)):
                        for p, pt in zip(net.parameters(), tgt.parameters()):
                            pt.lerp_(p, 0.005)
        if (step + 1) % snapshot_every == 0:
            pol = MLPPolicy.from_module(actor)
            ret = evaluate(eval_env, pol, 3, 10_000 + step)
            snaps.append((step + 1, pol, ret))
            print(f"step {step + 1:7d}  eval return {ret:8.1f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return snaps


def compact(snaps: list[tuple[int, MLPPolicy, float]], share: float = 0.45, stride: int = 2
            ) -> list[tuple[int, MLPPolicy, float]]:
    """The snapshots a generator needs: every ``stride``-th one before the first whose logged
    return passes ``share`` of the final one's (medium and medium-replay come from them;
    ``mamujoco.py`` picks the one nearest 1/3 of the expert) and the final actor. Stored in
    float16 (140 KB each; all 60 in float64 would put 33 MB in git)."""
    final = snaps[-1]
    kept = []
    for snap in snaps[:-1]:
        if snap[2] > share * final[2]:
            break
        kept.append(snap)
    return [*kept[stride - 1 :: stride], final]


def save_snapshots(path: str | Path, snaps: list[tuple[int, MLPPolicy, float]], **meta) -> None:
    """One .npz: ``steps`` (K,), ``eval_returns`` (K,), ``w<i>``/``b<i>`` stacked over K."""
    arrays = {"steps": np.array([s for s, _, _ in snaps]),
              "eval_returns": np.array([r for _, _, r in snaps])}
    for i in range(len(snaps[0][1].weights)):
        arrays[f"w{i}"] = np.stack([p.weights[i] for _, p, _ in snaps]).astype(np.float16)
        arrays[f"b{i}"] = np.stack([p.biases[i] for _, p, _ in snaps]).astype(np.float16)
    np.savez(path, **arrays, **{k: np.asarray(v) for k, v in meta.items()})


def load_snapshots(path: str | Path) -> list[tuple[int, MLPPolicy, float]]:
    with np.load(path) as f:
        n_layers = sum(1 for k in f.files if k[0] == "w" and k[1:].isdigit())
        # float16 on disk (compact), float64 to act: the stored weights are the policy
        return [(int(s), MLPPolicy([f[f"w{i}"][k].astype(np.float64) for i in range(n_layers)],
                                   [f[f"b{i}"][k].astype(np.float64) for i in range(n_layers)]),
                 float(r))
                for k, (s, r) in enumerate(zip(f["steps"], f["eval_returns"]))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="Hopper-v5", help="single-agent gymnasium MuJoCo task")
    p.add_argument("--steps", type=int, default=200_000, help="environment steps")
    p.add_argument("--snapshot-every", type=int, default=5000,
                   help="steps between saved (and evaluated) actor snapshots")
    p.add_argument("--seed", type=int, default=0, help="torch / numpy / env seed")
    p.add_argument("--out", required=True, help=".npz of the snapshots (see save_snapshots)")
    p.add_argument("--all-snapshots", action="store_true",
                   help="keep every snapshot (default: compact(), what the generators need)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    snaps = train(a.env, a.steps, a.seed, a.snapshot_every)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_snapshots(a.out, snaps if a.all_snapshots else compact(snaps), env=a.env, seed=a.seed,
                   wall_s=time.perf_counter() - t0)
    print(f"saved {a.out} ({len(snaps)} snapshots, {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
