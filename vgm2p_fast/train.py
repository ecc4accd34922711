"""The VGM²P trainer: value guidance + CFG MeanFlow behaviour cloning (DESIGN 1.1-1.2).

One loop of ``value_warmup + steps`` iterations. Every iteration samples a batch of dataset rows
(one ``randint`` + gather, no per-sample Python) and takes a critic step; after the warm-up it
also takes a policy step on the same rows, conditioned on the rows' tokens. Every
``refresh_every`` iterations the target critic is synced and the advantages of the **whole
dataset** are recomputed (``ops.gae``), which re-derives the tokens.

Outputs in ``out``: ``metrics.jsonl`` (one JSON object per log line), TensorBoard events in
``tb/``, ``learning_curve.png``, ``checkpoint.pt`` (written atomically every
``checkpoint_every`` iterations: temp file + rename, so a kill -9 at any moment leaves the
previous complete checkpoint), ``policy.pt`` (the EMA policy, ``MeanFlowPolicy.load``-able),
``config.json`` and ``summary.json``. ``resume=True`` continues from ``checkpoint.pt`` with the
exact RNG, optimiser and EMA state: on CPU the result equals an uninterrupted run.

Multi-process data parallel: launched by ``torchrun``, each rank samples its own rows
(``batch_size`` per rank) and DistributedDataParallel averages the gradients (gloo on CPU, nccl
on CUDA). The JVP fast path is plain autograd on the primal, so it works under DDP.
"""

from __future__ import annotations

import contextlib
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
import torch.nn.functional as F
from torch import nn

from .datasets import BUNDLED_DEFAULT, OfflineDataset, load_dataset
from .policy import MeanFlowPolicy
from .value import CONDITIONS, ValueGuidance, quantiles, tokens_from_advantage

CHECKPOINT = "checkpoint.pt"


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a run (``vgm2p train --help`` documents them; defaults run the bundled
    dataset in a few minutes on a 2-core CPU)."""

    dataset: str = BUNDLED_DEFAULT
    out: str = ""                      # default: runs/<dataset name>-<condition>-seed<seed>
    steps: int = 10000                 # policy gradient steps (after the critic warm-up)
    seed: int = 0
    batch_size: int = 256              # transitions per step (per rank under DDP)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.995           # EMA of policy weights, used for evaluation
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    share_parameters: bool = True
    condition: str = "binary"          # binary | quantile | none (plain MeanFlow BC)
    policy_loss: str = "meanflow"      # meanflow | flow_matching (the plain flow-matching baseline)
    eval_steps: int = 1                # sampling steps at evaluation (flow matching needs ~10)
    n_bins: int = 4                    # quantile bins
    guidance: float = 2.0              # effective CFG scale omega / (1 - kappa)
    kappa: float = 0.5
    cond_dropout: float = 0.1
    test_guidance: float = 1.0         # extra test-time guidance w (1 = off)
    advantage: str = "gae"             # gae (V + GAE) | iql (min Q - V)
    gamma: float = 0.99
    lam: float = 0.95
    tau: float = 0.7
    value_hidden: tuple[int, ...] = (256, 256)
    value_lr: float = 3e-4
    value_warmup: int = 500            # critic-only iterations before the policy trains
    refresh_every: int = 500
    eval_episodes: int = 5
    env: str = ""                      # default: the dataset's env attribute
    log_every: int = 50
    checkpoint_every: int = 500
    device: str = "auto"
    backend: str = "auto"              # MeanFlowPolicy backend (auto | torch | triton | func)

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition: expected one of {CONDITIONS}, found {self.condition!r}")
        if self.policy_loss not in ("meanflow", "flow_matching"):
            raise ValueError(f"policy_loss: expected meanflow or flow_matching, found "
                             f"{self.policy_loss!r}")
        if self.eval_steps < 1:
            raise ValueError(f"eval_steps: expected >= 1, found {self.eval_steps}")
        if self.advantage not in ("gae", "iql"):
            raise ValueError(f"advantage: expected gae or iql, found {self.advantage!r}")
        for name in ("steps", "value_warmup", "eval_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, found {getattr(self, name)}")
        for name in ("batch_size", "refresh_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, found {getattr(self, name)}")
        if not 0 <= self.kappa < 1 or self.guidance <= 0:
            raise ValueError(f"kappa in [0, 1) and guidance > 0 expected, found {self.kappa}, "
                             f"{self.guidance}")
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.value_hidden = tuple(int(h) for h in self.value_hidden)
        if not self.out:
            name = Path(str(self.dataset)).name.removesuffix(".h5")
            self.out = str(Path("runs") / f"{name}-{self.condition}-seed{self.seed}")

    @property
    def omega(self) -> float:
        """omega such that the effective guidance omega / (1 - kappa) equals ``guidance``."""
        return self.guidance * (1.0 - self.kappa)


class _Objective(nn.Module):
    """Policy + critic behind one forward, so DistributedDataParallel sees every gradient."""

    def __init__(self, policy: MeanFlowPolicy, critic: ValueGuidance, policy_loss: str) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic
        self.policy_loss = (policy.meanflow_loss if policy_loss == "meanflow"
                            else policy.flow_matching_loss)

    def forward(self, batch: dict[str, torch.Tensor], returns: torch.Tensor | None,
                joint: torch.Tensor | None, cond: torch.Tensor | None, train_policy: bool,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, info = self.critic.loss(batch, returns, joint)
        if train_policy:
            p_loss, p_info = self.policy_loss(batch["observations"], batch["actions"], cond,
                                              generator=generator)
            loss = loss + p_loss
            info.update(p_info)
        return loss, info


def _joint_actions(ds: OfflineDataset, actions: torch.Tensor) -> torch.Tensor:
    """[B, N, D] or [B, N] ids -> [B, N * D] (discrete: one-hot) for Q(s, a_joint)."""
    if ds.discrete:
        actions = F.one_hot(actions.long(), ds.n_actions).float()
    return actions.reshape(actions.shape[0], -1)


def build_policy(cfg: TrainConfig, ds: OfflineDataset) -> MeanFlowPolicy:
    """The MeanFlowPolicy a config describes, for the dataset's shapes and bounds."""
    # "none" (behaviour cloning) trains on the null token only, so it must also act with it
    n_tokens = {"quantile": cfg.n_bins, "binary": 2, "none": 0}[cfg.condition]
    policy = MeanFlowPolicy(
        ds.obs_dim, ds.action_dim, ds.n_agents, ds.discrete, hidden_dims=cfg.hidden_dims,
        share_parameters=cfg.share_parameters, n_tokens=n_tokens,
        action_low=None if ds.discrete else ds.action_low,
        action_high=None if ds.discrete else ds.action_high,
        omega=cfg.omega, kappa=cfg.kappa, cond_dropout=cfg.cond_dropout, backend=cfg.backend)
    obs = ds.observations.reshape(-1, ds.obs_dim)
    policy.set_obs_normalization(obs.mean(0), obs.std(0))
    return policy


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{rank % torch.cuda.device_count()}"
                            if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half


class _Logger:
    """metrics.jsonl + TensorBoard (rank 0 only). On resume, lines written after the checkpoint
    (before the crash) are dropped so the log has no duplicates: those past its iteration R,
    and a refresh event at R itself (logged at the start of iteration R, after the step record
    of R and the checkpoint; the resumed run logs it again)."""

    def __init__(self, out: Path, enabled: bool, resume_from: int | None) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_from is not None and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and self._before(json.loads(ln), resume_from)]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif self.path.exists():
            self.path.unlink()
        with contextlib.suppress(ImportError):  # tensorboard is a dependency; stay usable without
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_from)

    @staticmethod
    def _before(record: dict[str, Any], resume_from: int) -> bool:
        it = record.get("iteration", 0)
        return it < resume_from or (it == resume_from and record.get("event") != "refresh")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self.tb.add_scalar(k, v, record["iteration"])

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_histogram(tag, values.float().cpu(), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _advantage_stats(adv: torch.Tensor, tokens: torch.Tensor | None) -> dict[str, float]:
    q = quantiles(adv, torch.tensor([0.05, 0.5, 0.95]))
    out = {"adv_mean": float(adv.mean()), "adv_std": float(adv.std()), "adv_p05": float(q[0]),
           "adv_p50": float(q[1]), "adv_p95": float(q[2]),
           "adv_share_nonneg": float((adv >= 0).float().mean())}
    if tokens is not None:
        out["share_exec_token"] = float((tokens == tokens.max()).float().mean())
    return out


def _plot_curve(out: Path) -> None:
    """learning_curve.png: policy loss, critic loss and the advantageous share per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("loss", "value_loss", "adv_share_nonneg"),
                              ("policy loss", "critic loss (normalised expectile)",
                               "share of rows with A >= 0")):
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)


def evaluate_policy(policy: MeanFlowPolicy, env: str, episodes: int, seed: int,
                    guidance: float = 1.0, n_steps: int = 1,
                    mean_velocity: bool = True) -> dict[str, Any]:
    """Roll the policy out in ``env`` (``vgm2p_fast.envs``), decentralised, under the
    advantageous token: ``n_steps`` network evaluations per agent and step (1 for MeanFlow)."""
    from .envs import evaluate

    policy = policy.eval()
    dev, dtype = policy.obs_mean.device, policy.obs_mean.dtype

    def act(obs: torch.Tensor, avail: torch.Tensor | None) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=dtype, device=dev)
        if avail is not None:
            avail = torch.as_tensor(avail, dtype=torch.bool, device=dev)
        return policy.act(obs, avail, guidance=guidance, n_steps=n_steps,
                          mean_velocity=mean_velocity).cpu()

    return evaluate(act, env, episodes, seed=seed)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one training job; returns the summary (also written to summary.json)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size() if distributed else 1
    main_rank = rank == 0
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"resume: no {CHECKPOINT} in {out}; start without --resume")
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    ds = load_dataset(cfg.dataset)
    env = cfg.env or ds.env
    ds = ds.to(device, pin_memory=False)
    torch.manual_seed(cfg.seed)
    policy = build_policy(cfg, ds).to(device)
    joint_all = _joint_actions(ds, ds.actions) if cfg.advantage == "iql" else None
    critic = ValueGuidance(ds.state_dim, 0 if joint_all is None else joint_all.shape[1],
                           kind=cfg.advantage, hidden=cfg.value_hidden, gamma=cfg.gamma,
                           lam=cfg.lam, tau=cfg.tau).to(device)
    critic.init_stats(ds, joint_all)
    ema = copy.deepcopy(policy).requires_grad_(False)
    p_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    c_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.value_lr)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    objective = _Objective(policy, critic, cfg.policy_loss)
    model: nn.Module = objective
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # the policy sits out the critic warm-up

    start, adv, ret, tokens, train_time = 0, None, None, None, 0.0
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        objective.load_state_dict(state["objective"])
        ema.load_state_dict(state["ema"])
        p_opt.load_state_dict(state["p_opt"])
        c_opt.load_state_dict(state["c_opt"])
        gen.set_state(state["generators"][rank].cpu())
        start, adv, ret, train_time = state["iteration"], state["adv"], state["ret"], state["time"]
        tokens = tokens_from_advantage(adv, cfg.condition, cfg.n_bins)
    logger = _Logger(out, main_rank, start if resume else None)

    total = cfg.value_warmup + cfg.steps
    bar = None
    if progress and main_rank:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="vgm2p train", unit="it", dynamic_ncols=True,
                   file=sys.stderr)
    window_start, window_rows = time.perf_counter(), 0
    for it in range(start, total):
        if it % cfg.refresh_every == 0 or adv is None:
            if cfg.advantage == "gae":
                critic.update_targets(full=True)
            if cfg.advantage == "iql":  # no TD(lambda) targets: the critics bootstrap per step
                adv, ret = critic.iql_advantage(ds, joint_all), None
            else:
                adv, ret = critic.refresh(ds)
            tokens = tokens_from_advantage(adv, cfg.condition, cfg.n_bins)
            stats = _advantage_stats(adv, tokens)
            logger.log({"iteration": it, "event": "refresh", **stats})
            logger.histogram("advantage", adv, it)
        t0 = time.perf_counter()
        idx = ds.sample_indices(cfg.batch_size, gen)
        batch = ds.batch(idx)
        train_policy = it >= cfg.value_warmup
        cond = None if tokens is None else tokens[idx]
        joint = _joint_actions(ds, batch["actions"]) if cfg.advantage == "iql" else None
        loss, info = model(batch, None if ret is None else ret[idx], joint, cond, train_policy,
                           gen)
        p_opt.zero_grad(set_to_none=True)
        c_opt.zero_grad(set_to_none=True)
        loss.backward()
        # clipped separately: the critic's gradient must not shrink the policy's step
        grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
        c_opt.step()
        if train_policy:
            p_opt.step()
            with torch.no_grad():
                for pe, pp in zip(ema.parameters(), policy.parameters()):
                    pe.lerp_(pp, 1.0 - cfg.ema_decay)
        if cfg.advantage == "iql":
            critic.update_targets()
        train_time += time.perf_counter() - t0
        window_rows += cfg.batch_size * world
        done = it + 1
        if done % cfg.log_every == 0 or done == total:
            now = time.perf_counter()
            record = {"iteration": done, "policy_step": max(0, done - cfg.value_warmup),
                      "samples_per_s": window_rows / max(now - window_start, 1e-9),
                      "grad_norm": float(grad_norm),
                      **{k: float(v) for k, v in info.items()}}
            window_start, window_rows = now, 0
            logger.log(record)
            if bar is not None:
                bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "value_loss",
                                                                 "samples_per_s") if k in record})
        if bar is not None:
            bar.update(1)
        if done % cfg.checkpoint_every == 0 or done == total:
            gens = [gen.get_state()]
            if distributed:  # every rank's sampler state, so that all ranks resume exactly
                gens = [None] * world
                dist.all_gather_object(gens, gen.get_state())
            if main_rank:
                _atomic_save({"iteration": done, "objective": objective.state_dict(),
                              "ema": ema.state_dict(), "p_opt": p_opt.state_dict(),
                              "c_opt": c_opt.state_dict(), "generators": gens, "adv": adv,
                              "ret": ret, "time": train_time,
                              "config": dataclasses.asdict(cfg)}, ckpt_path)
    if bar is not None:
        bar.close()

    summary: dict[str, Any] = {
        "dataset": ds.source, "env": env, "steps": cfg.steps, "iterations": total,
        "samples_per_s": total * cfg.batch_size * world / max(train_time, 1e-9),
        "train_time_s": train_time, "world_size": world, "config": dataclasses.asdict(cfg),
        "dataset_return_mean": float(ds.episode_returns().mean()),
    }
    if distributed:
        summary["ddp_max_weight_divergence"] = _divergence(policy)
    if main_rank:
        ema.save(out / "policy.pt", metadata={"env": env, "dataset": ds.source,
                                              "eval_steps": cfg.eval_steps,
                                              "mean_velocity": cfg.policy_loss == "meanflow"})
        summary.update(_final_eval(ema, env, cfg))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        _plot_curve(out)
    logger.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _divergence(policy: MeanFlowPolicy) -> float:
    """Largest |difference| of any policy weight across ranks (0 when DDP is in sync)."""
    flat = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


def _final_eval(policy: MeanFlowPolicy, env: str, cfg: TrainConfig) -> dict[str, Any]:
    from .envs import EnvUnavailableError

    if cfg.eval_episodes == 0:
        return {"eval_return_mean": None, "eval_return_std": None, "eval_skipped": "episodes=0"}
    try:
        res = evaluate_policy(policy, env, cfg.eval_episodes, cfg.seed, cfg.test_guidance,
                              cfg.eval_steps, mean_velocity=cfg.policy_loss == "meanflow")
    except EnvUnavailableError as exc:
        print(f"vgm2p: evaluation skipped: {exc}", file=sys.stderr)
        return {"eval_return_mean": None, "eval_return_std": None, "eval_skipped": str(exc)}
    out = {"eval_return_mean": res["return_mean"], "eval_return_std": res["return_std"],
           "eval_returns": res["returns"], "eval_episodes": res["episodes"]}
    if "win_rate" in res:
        out["eval_win_rate"] = res["win_rate"]
    if not math.isfinite(out["eval_return_mean"]):
        raise RuntimeError(f"evaluation returned a non-finite mean return: {res['returns']}")
    return out
