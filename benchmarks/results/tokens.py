"""Which policies' rows the advantage picks (issue 12: why VGM²P's e = 0 mode is unreliable on
medium-replay data). A medium-replay set records episode groups of rising quality, one per
behaviour checkpoint, in the order its card lists them (the file's ``groups`` attribute). For
each finished run of ``run.py`` on such a set, its last advantage refresh (the checkpoint's
``adv``, A of every row) gives, per group:

    share = fraction of the group's rows with A >= 0        (VGM²P's advantageous token)
    mass  = the group's part of what the policy is fitted to: of the advantageous rows (a
            conditioned policy) or of the awr weights exp(A / (beta std A)), clipped (AW flow BC)

A token that picked the best policy would put most of the mass on the last groups; ``mass``
is what the policy's advantageous (or weighted) distribution is a mixture of.

    python benchmarks/results/tokens.py --runs DIR --datasets hopper-3x1-medium-replay \\
        --methods vgm2p awfm --seeds 0 1 2 3 4 --csv benchmarks/results/tokens.csv
    python benchmarks/results/tokens.py --render    # docs/results.md's table
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import dataset_arg, read_csv, stats  # noqa: E402

CSV = HERE / "tokens.csv"
COLUMNS = ["dataset", "method", "seed", "group", "label", "return_mean", "rows", "share",
           "mass"]


def groups_of(path: str) -> tuple[list[dict], torch.Tensor]:
    """The dataset's episode groups (label, episodes, returns) and the group id of every row
    ([T] long). The episodes must be in the groups' order: each group's mean episode return
    must equal the one its card records."""
    import torch

    from vgm2p_fast.datasets import load_dataset

    ds = load_dataset(path)
    if "groups" not in ds.attrs:
        raise ValueError(f"--datasets: {path} records no episode groups (a medium-replay "
                         f"set's 'groups' attribute); nothing to split the rows by")
    groups = json.loads(ds.attrs["groups"])
    counts = [int(g["episodes"]) for g in groups]
    if sum(counts) != ds.n_episodes:
        raise ValueError(f"--datasets: {path} has {ds.n_episodes} episodes, its groups "
                         f"{sum(counts)}")
    episode_group = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    returns = ds.episode_returns()
    for k, g in enumerate(groups):
        got, want = float(returns[episode_group == k].mean()), float(g["returns"]["mean"])
        if abs(got - want) > 1e-3 * max(1.0, abs(want)):
            raise ValueError(f"--datasets: {path}'s episodes are not in its groups' order "
                             f"(group {k}: mean return {got:.3f}, card {want:.3f})")
        # a label, or what sets the group apart (sigma=0.1)
        g.setdefault("label", " ".join(f"{key}={v}" for key, v in g.items()
                                       if key not in ("episodes", "returns")) or f"group {k}")
    return groups, episode_group[ds.episode_ids.cpu()]


def measure(run_dir: Path, groups: list[dict], row_group: torch.Tensor) -> list[dict]:
    """``share`` and ``mass`` (module docstring) of every group, from the run's last
    checkpoint."""
    import torch

    from vgm2p_fast.train import config_from
    from vgm2p_fast.train.loop import _weights
    from vgm2p_fast.train.runs import checkpoints
    from vgm2p_fast.value import tokens_from_advantage

    found = checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"--runs: no checkpoint in {run_dir}")
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    cfg = config_from(state["config"])
    if not cfg.uses_critic:
        raise ValueError(f"--methods: {run_dir} reads no advantages (method "
                         f"{cfg.method or 'custom'}); nothing to measure")
    adv = state["adv"].double()
    good = tokens_from_advantage(adv, "binary") == 1
    weight = _weights(adv, cfg) if cfg.weighting == "awr" else good.double()
    out = []
    for k, g in enumerate(groups):
        rows = row_group == k
        out.append({"group": k, "label": g["label"], "return_mean": f"{g['returns']['mean']:.1f}",
                    "rows": int(rows.sum()), "share": f"{float(good[rows].double().mean()):.4f}",
                    "mass": f"{float(weight[rows].sum() / weight.sum()):.4f}"})
    return out


def render(rows: list[dict]) -> str:
    """Per dataset and group: share and mass of each method, mean ± 2σ over seeds."""
    cells = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], int(r["group"]), r["method"])].append(r)
    methods = sorted({r["method"] for r in rows})
    lines = []
    for ds in sorted({r["dataset"] for r in rows}):
        head = ["group", "return", "rows", *(f"{m} {c}" for m in methods for c in
                                                ("share", "mass"))]
        lines += [f"#### {ds}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for k in sorted({g for d, g, _ in cells if d == ds}):
            first = next(cells[(ds, k, m)][0] for m in methods if (ds, k, m) in cells)
            row = [first["label"], first["return_mean"], first["rows"]]
            for m in methods:
                for col in ("share", "mass"):
                    got = [float(r[col]) for r in cells.get((ds, k, m), [])]
                    if got:
                        mean, _, se = stats(got)
                        row.append(f"{mean:.2f} ± {2 * se:.2f} ({len(got)})")
                    else:
                        row.append("")
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, help="root of run.py's run directories "
                   "(<runs>/<dataset>/<method>/seed<k>)")
    p.add_argument("--datasets", nargs="+", default=[],
                   help="datasets with episode groups (names or .h5 paths)")
    p.add_argument("--methods", nargs="+", default=["vgm2p"],
                   help="methods that read advantages (run.py's names)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--csv", type=Path, default=CSV, help="csv to write (or --render)")
    p.add_argument("--render", action="store_true", help="print the markdown table of --csv")
    a = p.parse_args(argv)
    if a.render:
        rows = read_csv(a.csv)
        if not rows:
            p.error(f"--csv: no rows in {a.csv}")
        print(render(rows))
        return 0
    if a.runs is None or not a.datasets:
        p.error("--runs and --datasets: required unless --render")
    out = []
    try:
        for ds in a.datasets:
            groups, row_group = groups_of(dataset_arg(ds))
            name = Path(ds).stem   # run.py's folder of a dataset given by path
            for m in a.methods:
                for s in a.seeds:
                    for r in measure(a.runs / name / m / f"seed{s}", groups, row_group):
                        out.append({"dataset": name, "method": m, "seed": s, **r})
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(out)
    print(f"wrote {a.csv} ({len(out)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
