"""Evaluation of a policy in its environment: the one-off ``evaluate_policy`` and the periodic
``Evaluator`` of a training run (fixed episode seeds, so every evaluation of a run sees the same
episodes and two checkpoints are compared on equal terms)."""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any

import torch

from .. import envs
from ..datasets import OfflineDataset
from ..policy import MeanFlowPolicy, MLPPolicy
from ..policy.sampling import resolve_noise


def normalised_score(ret: float, refs: tuple[float, float] | None) -> float | None:
    """``100 (R - random) / (expert - random)``, or None without references."""
    if refs is None:
        return None
    random, expert = refs
    return 100.0 * (ret - random) / (expert - random)


def references(ds: OfflineDataset) -> tuple[float, float] | None:
    """(random, expert) reference returns from the file attributes ``ref_random_return`` and
    ``ref_behaviour_return`` (written by the benchmark generators), or None."""
    a = ds.attrs
    if "ref_random_return" in a and "ref_behaviour_return" in a:
        lo, hi = float(a["ref_random_return"]), float(a["ref_behaviour_return"])
        if math.isfinite(lo) and math.isfinite(hi) and hi != lo:
            return lo, hi
    return None


def _initial_noise(policy: MeanFlowPolicy, noise: str, obs: torch.Tensor
                   ) -> torch.Tensor | None:
    """e = 0 [B, N, D] for obs [B, N, obs_dim] when ``noise`` resolves to zero, else None
    (``act`` samples e ~ N(0, I))."""
    if resolve_noise(noise, policy.discrete) != "zero":
        return None
    return torch.zeros(obs.shape[0], policy.n_agents, policy.action_dim, dtype=obs.dtype,
                       device=obs.device)


def evaluate_policy(policy: MeanFlowPolicy | MLPPolicy, env: str, episodes: int, seed: int,
                    test_guidance: float = 1.0, n_steps: int = 1, sampler: str = "meanflow",
                    noise: str = "auto") -> dict[str, Any]:
    """Roll ``policy`` out in ``env`` (``vgm2p_fast.envs``), decentralised, under the
    advantageous token: ``n_steps`` network evaluations per agent and step (1 for MeanFlow).

    ``noise``: ``sample`` draws the initial noise e ~ N(0, I) (seeded by ``seed``), ``zero``
    uses e = 0 (the flow's deterministic action), ``auto`` (``sampling.resolve_noise``) is zero for
    discrete actions and sample for continuous ones. An MLPPolicy is deterministic and ignores
    the sampling options. Output that jaxmarl or gymnasium print goes to stderr, so a caller
    can write JSON alone on stdout.
    """
    policy = policy.eval()
    dev, dtype = policy.obs_mean.device, policy.obs_mean.dtype
    resolve_noise(noise, policy.discrete)  # a bad value fails before the environment starts

    def act(obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=dtype, device=dev)
        if avail is not None:
            avail = torch.as_tensor(avail, dtype=torch.bool, device=dev)
        if isinstance(policy, MLPPolicy):
            return policy.act(obs, avail).cpu()
        return policy.act(obs, avail, test_guidance=test_guidance, n_steps=n_steps,
                          sampler=sampler, noise=_initial_noise(policy, noise, obs)).cpu()

    with contextlib.redirect_stdout(sys.stderr):
        return envs.evaluate(act, env, episodes, seed=seed)


class Evaluator:
    """The periodic evaluations of a run: whether they can run (and why not), the references
    for normalised scores (``refs``: (random, expert) or None), the dataset's episode-return
    mean and std, and one ``record`` per evaluation for metrics.jsonl."""

    def __init__(self, ds: OfflineDataset, env: str, episodes: int, seed: int, *,
                 test_guidance: float, n_steps: int, sampler: str, noise: str) -> None:
        self.env, self.episodes, self.seed = env, episodes, seed
        self.kw = {"test_guidance": test_guidance, "n_steps": n_steps, "sampler": sampler,
                   "noise": noise}
        self.refs = references(ds)
        # a fixed set of dataset rows for the per-agent action error of every evaluation
        g = torch.Generator(device="cpu").manual_seed(seed)
        rows = torch.randperm(ds.n_transitions, generator=g)[:1024].to(ds.device)
        self.probe = ds.batch(rows)
        returns = ds.episode_returns().double()
        self.dataset_mean = float(returns.mean())
        self.dataset_std = float(returns.std(correction=0))
        if episodes == 0:
            self.enabled, self.reason = False, "evaluation skipped: --eval-episodes 0"
        else:
            status = envs.evaluation_status(env)
            self.enabled, self.reason = bool(status.available), status.reason

    @torch.no_grad()
    def action_error(self, policy: MeanFlowPolicy | MLPPolicy) -> list[float]:
        """Per agent, on 1,024 fixed dataset rows: the mean squared error of the evaluation
        actions to the dataset's (continuous, in [-1, 1] units summed over dims) or the share
        of actions that differ (discrete). An underfit flow samples wider than the data; the
        MLP cloner's figure is the floor a denoised policy reaches."""
        b = self.probe
        obs, avail = b["observations"], b.get("avail_actions")
        if isinstance(policy, MLPPolicy):
            act = policy.act(obs, avail)
        else:
            e = _initial_noise(policy, self.kw["noise"], obs)
            gen = torch.Generator(device=obs.device).manual_seed(self.seed)
            act = policy.act(obs, avail, test_guidance=self.kw["test_guidance"],
                             n_steps=self.kw["n_steps"], sampler=self.kw["sampler"], noise=e,
                             generator=gen)
        if policy.discrete:
            return (act != b["actions"]).float().mean(0).tolist()
        low, high = policy.action_low, policy.action_high
        unit = 2 * (act - low) / (high - low) - 1          # back to the dataset's [-1, 1]
        return (unit - b["actions"]).square().sum(-1).mean(0).tolist()

    def __call__(self, policy: MeanFlowPolicy | MLPPolicy, iteration: int,
                 policy_step: int) -> dict[str, Any]:
        res = evaluate_policy(policy, self.env, self.episodes, self.seed, **self.kw)
        mean = res["return_mean"]
        if not math.isfinite(mean):
            raise ValueError(f"evaluation at policy step {policy_step}: non-finite return "
                             f"{res['returns']}")
        rec = {"iteration": iteration, "event": "eval", "policy_step": policy_step,
               "eval_return_mean": mean, "eval_return_std": res["return_std"],
               "eval_returns": res["returns"], "dataset_return_mean": self.dataset_mean,
               "action_error": self.action_error(policy)}
        if "win_rate" in res:
            rec["eval_win_rate"] = res["win_rate"]
        score = normalised_score(mean, self.refs)
        if score is not None:
            rec["eval_normalised"] = score
            rec["dataset_normalised"] = normalised_score(self.dataset_mean, self.refs)
        return rec
