"""The VGM²P trainer: value guidance + CFG MeanFlow behaviour cloning (design 1.1-1.2), and the
baselines of the results tables on the same loop.

One loop of ``value_warmup + steps`` iterations. Every iteration samples a batch of dataset rows
(one ``randint`` + gather) and takes a critic step; after the warm-up it also takes a policy
step on the same rows. Every ``refresh_every`` iterations the estimator recomputes the
advantages of the **whole dataset** (``ops.gae`` for the default), which re-derives the tokens
(or the weights of advantage-weighted BC). A policy that reads no advantages (the BC presets)
fits no critic: its loop is ``steps`` policy-only iterations. Every ``eval_interval`` policy
steps, and at the end, the EMA policy is evaluated on the same fixed episodes.

Outputs in the run folder (``runs.py`` for the rules): ``metrics.jsonl``, TensorBoard events in
``tb/``, ``learning_curve.png``, ``checkpoint-<iteration>.pt`` (the last ``keep_checkpoints``),
``policy.pt`` (the EMA policy; ``vgm2p_fast.policy.load_policy`` reads it), ``config.json`` and
``summary.json`` (the final evaluation, the field's convention, and the whole curve).

Multi-process data parallel: launched by ``torchrun``, each rank samples its own rows and
DistributedDataParallel averages the gradients (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..advantage import AdvantageEstimator, make_estimator
from ..datasets import OfflineDataset, load_dataset
from ..io import atomic_write
from ..policy import MeanFlowPolicy, MLPPolicy
from ..value import quantiles, tokens_from_advantage
from . import runs
from .config import TrainConfig
from .evaluation import Evaluator
from .metrics import MetricsLogger, plot_curve

# |reward| above this overflows float32 discounted returns (sum of ~1/(1-gamma) = 100 steps
# of 1e30 is inf) and the critic's output scale; refuse rather than train on NaN.
_MAX_REWARD = 1e30


class _Objective(nn.Module):
    """Policy + estimator (None: no critic) behind one forward, so DistributedDataParallel sees
    every gradient."""

    def __init__(self, policy: MeanFlowPolicy | MLPPolicy, estimator: AdvantageEstimator | None,
                 cfg: TrainConfig) -> None:
        super().__init__()
        self.policy, self.estimator, self.kind = policy, estimator, cfg.policy_loss

    def forward(self, batch: dict[str, torch.Tensor], idx: torch.Tensor,
                cond: torch.Tensor | None, weights: torch.Tensor | None, train_policy: bool,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, info = torch.zeros((), device=idx.device), {}
        if self.estimator is not None:
            loss, info = self.estimator.loss(batch, idx)
            info["critic_loss"] = loss.detach()
        if train_policy:
            obs, act = batch["observations"], batch["actions"]
            if self.kind == "mse":
                p_loss, p_info = self.policy.bc_loss(obs, act, batch.get("avail_actions"))
            elif self.kind == "flow_matching":
                p_loss, p_info = self.policy.flow_matching_loss(obs, act, cond,
                                                                generator=generator,
                                                                weights=weights)
            else:
                p_loss, p_info = self.policy.meanflow_loss(obs, act, cond, generator=generator,
                                                           weights=weights)
            loss = loss + p_loss
            info.update(p_info)
        return loss, info


def build_policy(cfg: TrainConfig, ds: OfflineDataset) -> MeanFlowPolicy | MLPPolicy:
    """The policy a config describes, for the dataset's shapes and bounds, with the dataset's
    observation statistics inside."""
    bounds = {} if ds.discrete else {"action_low": ds.action_low.cpu(),
                                     "action_high": ds.action_high.cpu()}
    if cfg.policy_loss == "mse":
        if not cfg.share_parameters:
            raise ValueError("share_parameters: the mse (MLP BC) baseline has one network for "
                             "all agents; expected true, found false")
        policy: MeanFlowPolicy | MLPPolicy = MLPPolicy(
            ds.obs_dim, ds.action_dim, ds.n_agents, ds.discrete, hidden_dims=cfg.hidden_dims,
            **bounds)
    else:
        # "none" (behaviour cloning) trains on the null token only, so it must also act with it
        n_tokens = {"quantile": cfg.n_bins, "binary": 2, "none": 0}[cfg.condition]
        policy = MeanFlowPolicy(
            ds.obs_dim, ds.action_dim, ds.n_agents, ds.discrete, hidden_dims=cfg.hidden_dims,
            share_parameters=cfg.share_parameters, n_tokens=n_tokens, jvp=cfg.jvp,
            backend=cfg.backend, omega=cfg.omega, kappa=cfg.kappa,
            cond_dropout=cfg.cond_dropout, ratio_r_neq_t=cfg.ratio_r_neq_t,
            time_mu=cfg.time_mu, time_sigma=cfg.time_sigma, max_freq=cfg.time_max_freq,
            **bounds)
    obs = ds.observations.reshape(-1, ds.obs_dim)
    policy.set_obs_normalization(obs.mean(0).cpu(), obs.std(0).cpu())
    return policy


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}"
                            if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: expected cpu, cuda, cuda:<i> or auto, found {name!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but torch sees no CUDA device (torch "
                         f"{torch.__version__}, built with CUDA {torch.version.cuda}); use "
                         f"--device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r} asked for, but only {torch.cuda.device_count()} "
                         f"CUDA device(s) exist")
    return dev


def _check_trainable(ds: OfflineDataset, batch_size: int) -> None:
    """One-line errors for data no run can learn from (before anything is written)."""
    if ds.n_transitions < 2:
        raise ValueError(f"dataset: {ds.source} has {ds.n_transitions} transition(s); "
                         f"expected at least 2 to fit a critic and a policy")
    r = ds.rewards
    big = float(r.abs().max())
    if not math.isfinite(big) or big > _MAX_REWARD:
        raise ValueError(f"dataset: rewards of {ds.source} reach |r| = {big:.3g}; returns "
                         f"overflow float32 above {_MAX_REWARD:.0e}: rescale the rewards")


def _weights(adv: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Advantage-weighted BC: ``min(exp(A / (beta std A)), max_weight)`` per row."""
    scale = cfg.awr_beta * adv.std().clamp_min(1e-8)
    return torch.exp(adv / scale).clamp(max=cfg.awr_max_weight)


def _stats(adv: torch.Tensor, tokens: torch.Tensor | None) -> dict[str, float]:
    q = quantiles(adv, torch.tensor([0.05, 0.5, 0.95]))
    out = {"adv_mean": float(adv.mean()), "adv_std": float(adv.std()), "adv_p05": float(q[0]),
           "adv_p50": float(q[1]), "adv_p95": float(q[2]),
           "adv_share_nonneg": float((adv >= 0).float().mean())}
    if tokens is not None:
        out["share_exec_token"] = float((tokens == tokens.max()).float().mean())
    return out


def _finite_or_stop(x: torch.Tensor, what: str, iteration: int, out: Path) -> None:
    if not bool(torch.isfinite(x).all()):
        kept = runs.checkpoints(out)
        keep = f"; the last good checkpoint is {kept[-1]}" if kept else ""
        raise ValueError(f"iteration {iteration}: {what} became NaN or inf (learning rate, "
                         f"reward scale or a degenerate dataset?); the run stopped{keep}")


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one training job; returns the summary (also written to summary.json).

    ``resume`` continues the run in ``cfg.out`` from its newest readable checkpoint (exactly:
    RNG, optimiser and EMA states are restored); ``overwrite`` replaces a run already in
    ``cfg.out`` (refused otherwise). Every option and the dataset are validated before the run
    folder is touched; errors are one-line ValueErrors naming the option or file.
    """
    job = _Run(cfg, resume, overwrite)
    lock = runs.RunLock(job.out) if job.main_rank else None
    if lock is not None:
        lock.__enter__()
    try:
        return job.loop(progress)
    finally:
        if lock is not None:
            lock.__exit__()
        if job.distributed and dist.is_initialized():
            dist.destroy_process_group()


class _Run:
    """One run's state: validated setup (``__init__``) and the loop (``loop``)."""

    def __init__(self, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.main_rank = self.rank == 0
        self.device = device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        if resume and not cfg.out:
            raise ValueError("resume: expected the run folder to resume (--resume DIR)")
        if self.distributed and not cfg.out:
            raise ValueError("out: give --out under torchrun, so every rank writes one folder")
        out = Path(cfg.out) if cfg.out else runs.default_out(cfg)
        if not resume and runs.holds_run(out) and not overwrite:
            raise ValueError(f"out: {out} already holds a run; pass --resume {out} to continue "
                             f"it, --overwrite to replace it, or another --out")
        self.cfg = cfg = dataclasses.replace(cfg, out=str(out))
        self.out, self.overwrite = out, overwrite

        # Everything is validated before the run folder is touched.
        ds = load_dataset(cfg.dataset)
        _check_trainable(ds, cfg.batch_size)
        env = cfg.env or ds.env
        self.evaluator = Evaluator(
            ds, env, cfg.eval_episodes, cfg.eval_seed, test_guidance=cfg.test_guidance,
            n_steps=cfg.eval_steps, noise=cfg.eval_noise,
            sampler="euler" if cfg.policy_loss == "flow_matching" else "meanflow")
        if self.evaluator.enabled:
            ds.check_env(env)  # a wrong --env or mismatched data fails in seconds
        self.data_hash = runs.sha256(ds.source) if Path(ds.source).is_file() else None
        self.state = None
        if resume:
            self.state = runs.latest_checkpoint(out, device)
            runs.check_resume(cfg, self.state["config"], self.data_hash,
                              self.state.get("dataset_sha256"))

        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.world = dist.get_world_size() if self.distributed else 1
        self.ds = ds = ds.to(device, pin_memory=False)
        torch.manual_seed(cfg.seed)
        self.policy = policy = build_policy(cfg, ds).to(device)
        self.estimator = self.c_opt = None
        if cfg.uses_critic:
            self.estimator = make_estimator(cfg.advantage, ds, hidden=cfg.value_hidden,
                                            gamma=cfg.gamma, lam=cfg.lam, tau=cfg.tau).to(device)
            self.c_opt = torch.optim.AdamW(self.estimator.parameters(), lr=cfg.value_lr)
        self.ema = copy.deepcopy(policy).requires_grad_(False)
        self.p_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr,
                                       weight_decay=cfg.weight_decay)
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + self.rank)
        self.objective = _Objective(policy, self.estimator, cfg)
        self.model: nn.Module = self.objective
        if self.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)  # the policy sits out the critic warm-up
        self.start, self.adv, self.train_time, self.policy_time = 0, None, 0.0, 0.0
        self.curve: list[dict[str, Any]] = []
        if self.state is not None:
            st = self.state
            if runs.fitted_critic(st) != cfg.uses_critic:
                # earlier versions fitted a critic for every method; their iteration counts
                # include its warm-up, so the policy step would be misread
                raise ValueError(f"resume: {out}'s checkpoint was written by a version that "
                                 f"fitted a critic for --condition {cfg.condition} "
                                 f"--weighting {cfg.weighting}; this one does not: start a "
                                 f"new run (--overwrite or another --out)")
            self.objective.load_state_dict(st["objective"])
            self.ema.load_state_dict(st["ema"])
            self.p_opt.load_state_dict(st["p_opt"])
            if self.c_opt is not None:
                self.c_opt.load_state_dict(st["c_opt"])
            self.gen.set_state(st["generators"][self.rank].cpu())
            self.start, self.adv, self.train_time = st["iteration"], st["adv"], st["time"]
            self.policy_time, self.curve = st["policy_time"], st["curve"]
        if self.main_rank:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"out: cannot create {out} ({exc.strerror})") from exc
            if not os.access(out, os.W_OK):
                raise ValueError(f"out: {out} is not writable")

    def _begin(self) -> None:
        """config.json, the start line, and (``overwrite``) the old run's files removed."""
        cfg, out, ev = self.cfg, self.out, self.evaluator
        if self.state is not None:
            runs.set_aside_newer(out, self.start)
        if self.overwrite and self.state is None:
            for old in [*runs.checkpoints(out), out / "metrics.jsonl", out / "summary.json",
                        out / "policy.pt"]:
                old.unlink(missing_ok=True)
        text = json.dumps(dataclasses.asdict(cfg), indent=2)
        atomic_write(out / "config.json", lambda f: f.write(text.encode()))
        what = (f"evaluation every {cfg.eval_interval} policy steps ({cfg.eval_episodes} "
                f"episodes of {ev.env})" if ev.enabled else ev.reason)
        how = f"resuming at iteration {self.start}" if self.state else "new run"
        critic = (f"critic warm-up {cfg.warmup} iterations, then" if cfg.uses_critic else
                  "no critic (the policy reads no advantages),")
        print(f"vgm2p train: {self.ds.source} ({self.ds.n_transitions} transitions, "
              f"{self.ds.n_agents} agents) on {self.device}; {how} in {out}; {critic} "
              f"{cfg.steps} policy steps; {what}",
              file=sys.stderr, flush=True)

    def _derive(self) -> None:
        """Tokens (or awr weights) of every dataset row from the current advantages."""
        cfg = self.cfg
        self.tokens = tokens_from_advantage(self.adv, cfg.condition, cfg.n_bins)
        self.weights = _weights(self.adv, cfg) if cfg.weighting == "awr" else None

    def _checkpoint(self, done: int) -> None:
        # a finite loss can still step to NaN weights (an overflowing gradient): never save them
        weights = [p.detach().reshape(-1) for m in (self.objective, self.ema)
                   for p in m.parameters()]
        _finite_or_stop(torch.cat(weights), "the weights", done, self.out)
        gens = [self.gen.get_state()]
        if self.distributed:  # every rank's sampler state, so that all ranks resume exactly
            gens = [None] * self.world
            dist.all_gather_object(gens, self.gen.get_state())
        if self.main_rank:
            runs.save_checkpoint(self.out, {
                "iteration": done, "objective": self.objective.state_dict(),
                "ema": self.ema.state_dict(), "p_opt": self.p_opt.state_dict(),
                "c_opt": None if self.c_opt is None else self.c_opt.state_dict(),
                "generators": gens, "adv": self.adv,
                "time": self.train_time, "policy_time": self.policy_time, "curve": self.curve,
                "config": dataclasses.asdict(self.cfg), "dataset_sha256": self.data_hash},
                self.cfg.keep_checkpoints)

    def loop(self, progress: bool) -> dict[str, Any]:
        cfg, ds, out, ev = self.cfg, self.ds, self.out, self.evaluator
        if self.main_rank:
            self._begin()
        logger = MetricsLogger(out, self.main_rank, self.start if self.state else None)
        self.tokens = self.weights = None
        if self.adv is not None:
            self._derive()
        total = cfg.warmup + cfg.steps
        bar = None
        if progress and self.main_rank:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.start, unit="it", dynamic_ncols=True,
                       file=sys.stderr, desc="critic warm-up" if self.start < cfg.warmup
                       else "policy training")
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # non-finite loss, no sync
        window_start, window_rows = time.perf_counter(), 0
        for it in range(self.start, total):
            if self.estimator is not None and (it % cfg.refresh_every == 0 or self.adv is None):
                self.adv = self.estimator.refresh(ds)
                _finite_or_stop(self.adv, "the dataset advantages", it, out)
                self._derive()
                logger.log({"iteration": it, "event": "refresh",
                            **_stats(self.adv, self.tokens)})
                logger.histogram("advantage", self.adv, it)
            train_policy = it >= cfg.warmup
            if bar is not None and it == cfg.warmup:
                bar.set_description("policy training")
            t0 = time.perf_counter()
            idx = ds.sample_indices(cfg.batch_size, self.gen)
            loss, info = self.model(
                ds.batch(idx), idx, None if self.tokens is None else self.tokens[idx],
                None if self.weights is None else self.weights[idx], train_policy, self.gen)
            bad |= ~torch.isfinite(loss.detach())
            self.p_opt.zero_grad(set_to_none=True)
            if self.c_opt is not None:
                self.c_opt.zero_grad(set_to_none=True)
            loss.backward()
            # clipped separately: the critic's gradient must not shrink the policy's step
            grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            if self.estimator is not None:
                nn.utils.clip_grad_norm_(self.estimator.parameters(), cfg.grad_clip)
                self.c_opt.step()
            if train_policy:
                self.p_opt.step()
                with torch.no_grad():
                    for pe, pp in zip(self.ema.parameters(), self.policy.parameters()):
                        pe.lerp_(pp, 1.0 - cfg.ema_decay)
            if self.estimator is not None:
                self.estimator.after_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            self.policy_time += dt if train_policy else 0.0
            window_rows += cfg.batch_size * self.world
            done = it + 1
            policy_step = max(0, done - cfg.warmup)
            checkpoint = done % cfg.checkpoint_every == 0 or done == total
            evaluate = train_policy and ev.enabled and self.main_rank and (
                policy_step % cfg.eval_interval == 0 or done == total)
            if bool(bad) and (done % cfg.log_every == 0 or checkpoint or evaluate):
                # never log, evaluate or checkpoint a diverged run: the last good checkpoint
                # stays the latest
                c_loss = info.get("critic_loss")
                what = ("the critic loss" if c_loss is not None and not torch.isfinite(c_loss)
                        else "the policy loss")
                _finite_or_stop(loss, what, done, out)
            if done % cfg.log_every == 0 or done == total:
                now = time.perf_counter()
                record = {"iteration": done, "policy_step": policy_step,
                          "samples_per_s": window_rows / max(now - window_start, 1e-9),
                          "grad_norm": float(grad_norm),
                          **{k: float(v) for k, v in info.items()}}
                window_start, window_rows = now, 0
                logger.log(record)
                if bar is not None:
                    bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "value_loss")
                                     if k in record})
            if bar is not None:
                bar.update(1)
            if evaluate:
                rec = ev(self.ema, done, policy_step)
                self.curve.append({k: v for k, v in rec.items()
                                   if k not in ("iteration", "event")})
                logger.log(rec)
                if bar is not None:
                    bar.write(f"policy step {policy_step}: eval return "
                              f"{rec['eval_return_mean']:.2f} +- {rec['eval_return_std']:.2f}",
                              file=sys.stderr)
            if checkpoint:
                self._checkpoint(done)
        if bar is not None:
            bar.close()
        summary = self._finish()
        logger.close()
        if self.distributed:
            dist.barrier()
        return summary

    def _finish(self) -> dict[str, Any]:
        """policy.pt, summary.json (the final evaluation and the curve) and the plot."""
        cfg, ev = self.cfg, self.evaluator
        policy_rows = cfg.steps * cfg.batch_size * self.world
        summary: dict[str, Any] = {
            "dataset": self.ds.source, "dataset_sha256": self.data_hash, "env": ev.env,
            "steps": cfg.steps, "iterations": cfg.warmup + cfg.steps,
            "world_size": self.world,
            "samples_per_s": policy_rows / max(self.policy_time, 1e-9),
            "train_time_s": self.train_time, "config": dataclasses.asdict(cfg),
            "dataset_return_mean": ev.dataset_mean, "dataset_return_std": ev.dataset_std,
            "dataset_episodes": self.ds.n_episodes, "references": ev.refs,
        }
        if self.distributed:
            summary["ddp_max_weight_divergence"] = _divergence(self.policy)
        if not self.main_rank:
            return summary
        sampler = "euler" if cfg.policy_loss == "flow_matching" else "meanflow"
        self.ema.save(self.out / "policy.pt", metadata={
            "env": ev.env, "dataset": self.ds.source, "eval_steps": cfg.eval_steps,
            "sampler": sampler, "eval_noise": cfg.eval_noise,
            "test_guidance": cfg.test_guidance})
        if ev.enabled and self.curve:
            final = self.curve[-1]
            summary.update({k: v for k, v in final.items() if k.startswith("eval_")})
            summary.update(eval_episodes=cfg.eval_episodes, eval_policy_step=final["policy_step"])
            if "dataset_normalised" in final:
                summary["dataset_normalised"] = final["dataset_normalised"]
        else:
            summary.update(eval_return_mean=None, eval_return_std=None,
                           eval_skipped=ev.reason or "no policy steps")
        summary["eval_curve"] = self.curve
        text = json.dumps(summary, indent=2)
        atomic_write(self.out / "summary.json", lambda f: f.write(text.encode()))
        plot_curve(self.out, cfg.warmup)
        return summary


def _divergence(policy: nn.Module) -> float:
    """Largest |difference| of any policy weight across ranks (0 when DDP is in sync)."""
    flat = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())
