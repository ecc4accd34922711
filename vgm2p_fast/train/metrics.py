"""Run metrics: ``metrics.jsonl`` (one JSON object per line), TensorBoard events, and the
``learning_curve.png`` drawn from them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch


class MetricsLogger:
    """metrics.jsonl + TensorBoard (rank 0 only). On resume, lines written after the checkpoint
    (before the crash) are dropped so the log has no duplicates: those past its iteration R,
    and events at R itself (a refresh is logged at the start of iteration R, after R's step
    record and checkpoint; the resumed run logs it again)."""

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
            step = record.get("policy_step", record["iteration"]) if record.get(
                "event") == "eval" else record["iteration"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in (
                        "iteration", "policy_step"):
                    self.tb.add_scalar(k, v, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.enabled and self.tb is not None and bool(torch.isfinite(values).all()):
            # fixed bins over the data's range: TensorBoard's default bins end at 1e20 and
            # leave the histogram of larger advantages empty (an error)
            self.tb.add_histogram(tag, values.float().cpu(), step, bins=64)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curve(out: Path, value_warmup: int) -> None:
    """learning_curve.png: evaluation return per policy step (with the dataset's mean), the
    policy and critic losses and the advantageous share per iteration; the critic warm-up is
    shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    evals = [r for r in rows if r.get("event") == "eval"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    ax = axes[0]
    if evals:
        x = [r["policy_step"] for r in evals]
        m = [r["eval_return_mean"] for r in evals]
        s = [r["eval_return_std"] for r in evals]
        ax.plot(x, m, marker="o", lw=1.2, label="EMA policy")
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)],
                        alpha=0.2)
        if "dataset_return_mean" in evals[-1]:
            ax.axhline(evals[-1]["dataset_return_mean"], color="k", ls="--", lw=1,
                       label="dataset mean")
        ax.legend(fontsize=8)
    ax.set_title("evaluation return (± std over episodes)", fontsize=10)
    ax.set_xlabel("policy step")
    for ax, key, title in zip(axes[1:], ("loss", "value_loss", "adv_share_nonneg"),
                              ("policy loss", "critic loss (normalised)",
                               "share of rows with A >= 0")):
        pts = [(r["iteration"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        else:  # no policy step yet, or (critic panels) a BC preset, which fits no critic
            ax.text(0.5, 0.5, "not logged" if key == "loss" else
                    "no critic (the policy reads no advantages)", ha="center",
                    transform=ax.transAxes)
        if value_warmup:
            ax.axvspan(0, value_warmup, color="0.85", label="critic warm-up")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)
