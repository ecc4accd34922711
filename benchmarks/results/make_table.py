"""Write ``RESULTS.md`` and the plots from a ``runs.csv`` written by ``run.py``.

Protocol (docs/design.md 7): every run reports its FINAL evaluation (the field's convention,
not the best checkpoint), on fixed evaluation episodes. A cell is over training seeds:
normalised score ``100 (R - R_random) / (R_expert - R_random)`` as ``mean ± 2σ`` with
``σ = sd / sqrt(n)`` the standard error of the mean (MAC-Flow's convention), the seed standard
deviation ``sd`` (ddof 1) beside it, and the raw return mean. The behaviour column is the
dataset's own episodes. References (file attributes ``ref_random_return`` /
``ref_behaviour_return``) come from the csv, or from the dataset file for rows written before
the csv carried them. Nothing is filled in for a missing run: a cell says how many seeds it has.

Verdicts (for VGM²P, on the rows where VGM²P, MLP-BC and MeanFlow-BC have every seed; other
baselines count towards "best" with the seeds they have):
``≥ MLP-BC`` and ``≥ data`` compare means; ``> MF-BC by 2σ`` asks the margin to exceed
``2 sqrt(σ_a² + σ_b²)``; ``≤ 10% below best`` asks the mean to be at least the best baseline's
minus 10% of its magnitude. The guidance sweep reports each scale's change from the default.

    python benchmarks/results/make_table.py     # runs.csv -> RESULTS.md, results.png, ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    CSV,
    HEADLINE,
    HEADLINE_SEEDS,
    METHODS,
    OTHER_SEEDS,
    ROOT,
    SWEEP_DATASETS,
    TABLE_DATASETS,
    read_csv,
    stats,
)

LABELS = {"behaviour": "behaviour (data)", "vgm2p": "VGM²P", "meanflow-bc": "MeanFlow-BC",
          "fm-bc": "flow-matching BC", "mlp-bc": "MLP-BC", "awfm": "AW flow BC"}
BASELINES = ("meanflow-bc", "fm-bc", "mlp-bc", "awfm")
JUDGED = ("vgm2p", "mlp-bc", "meanflow-bc")   # need every seed for a row to be judged
CARDS = HERE.parent / "datasets" / "cards"
SUFFIXES = ("-medium", "-medium-replay")   # the rows the targets are judged on


class Seeds:
    """The seeds a complete cell of ``dataset`` has: ``fixed`` for all, or the run plan's."""

    def __init__(self, fixed: int | None) -> None:
        self.fixed = fixed
        self.text = (str(fixed) if fixed else
                     f"{len(HEADLINE_SEEDS)} (medium, medium-replay) or {len(OTHER_SEEDS)}")

    def __call__(self, dataset: str) -> int:
        if self.fixed:
            return self.fixed
        return len(HEADLINE_SEEDS) if dataset in HEADLINE else len(OTHER_SEEDS)


def _float(x: str) -> float | None:
    return float(x) if x not in ("", "None", None) else None


def load_runs(table: Path) -> dict[tuple[str, str], list[dict]]:
    """(dataset, method) -> the rows of its finished seeds (sorted by seed), numbers parsed."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in read_csv(table):
        s = {"dataset_file": r["dataset_file"], "seed": int(r["seed"]),
             "steps": int(r["steps"]), "guidance": float(r["guidance"]),
             "ret": float(r["eval_return_mean"]), "time": float(r["train_time_s"]),
             "win": _float(r.get("eval_win_rate", "")),
             "refs": _float(r.get("ref_random", "")), "data_mean": _float(
                 r.get("dataset_return_mean", "")),
             "curve": [tuple(map(float, p.split(":"))) for p in r.get("eval_curve", "").split()]}
        if s["refs"] is not None:
            s["refs"] = (float(r["ref_random"]), float(r["ref_expert"]))
            s["data"] = (float(r["dataset_return_mean"]), float(r["dataset_return_std"]))
        out[(r["dataset"], r["method"])].append(s)
    for v in out.values():
        v.sort(key=lambda s: s["seed"])
    return out


def dataset_refs(run: dict) -> dict:
    """(random, expert) references and the behaviour's return mean / std, from the csv row or
    (older rows) from the dataset file (a relative path is taken from the repository root)."""
    if run["refs"] is not None:
        return {"random": run["refs"][0], "expert": run["refs"][1], "mean": run["data"][0],
                "std": run["data"][1]}
    with h5py.File(ROOT / run["dataset_file"], "r") as f:
        rew = f["rewards"][:].astype(np.float64)
        ends = np.flatnonzero(f["terminals"][:] | f["truncations"][:])
        episodes = np.diff(np.concatenate([[0.0], np.cumsum(rew)[ends]]))
        return {"random": float(f.attrs["ref_random_return"]),
                "expert": float(f.attrs["ref_behaviour_return"]),
                "mean": float(episodes.mean()), "std": float(episodes.std())}


def normalise(r, refs: dict) -> np.ndarray:
    return 100.0 * (np.asarray(r, dtype=np.float64) - refs["random"]) / (
        refs["expert"] - refs["random"])


def cell(norm: np.ndarray | None, raw: np.ndarray | None, want: int) -> str:
    if norm is None or len(norm) == 0:
        return "—"
    m, sd, se = stats(norm)
    text = f"{m:.1f} ± {2 * se:.1f} (sd {sd:.1f}) · {np.mean(raw):.4g}"
    return text + (f" ({len(norm)}/{want} seeds)" if len(norm) < want else "")


def collect(table: Path) -> tuple[list[dict], dict, list[str]]:
    """Per-dataset rows (normalised and raw per method), sweep points, and the methods seen."""
    data = load_runs(table)
    methods = [m for m in METHODS if any(mm == m for _, mm in data)]
    names = [d for d in TABLE_DATASETS if any((d, m) in data for m in methods)]
    names += sorted({d for d, m in data if m in methods and d not in names})
    refs_of = {d: dataset_refs(v[0]) for (d, _), v in data.items()}
    rows = []
    for d in names:
        refs = refs_of[d]
        row = {"dataset": d, "refs": refs}
        for m in methods:
            runs = data.get((d, m), [])
            raw = np.array([s["ret"] for s in runs])
            row[m] = normalise(raw, refs) if runs else None
            row[f"{m}_raw"] = raw if runs else None
            row[f"{m}_time"] = float(np.mean([s["time"] for s in runs])) if runs else None
            row[f"{m}_steps"] = sorted({s["steps"] for s in runs})
            wins = [s["win"] for s in runs if s["win"] is not None]
            row[f"{m}_win"] = float(np.mean(wins)) if wins else None
            row[f"{m}_curve"] = [s["curve"] for s in runs if s["curve"]]
        rows.append(row)
    sweep: dict[str, dict[float, np.ndarray]] = {}
    for d in [d for d in SWEEP_DATASETS if d in refs_of] + sorted(set(refs_of) - {
            *SWEEP_DATASETS}):
        pts = {runs[0]["guidance"]: normalise([s["ret"] for s in runs], refs_of[d])
               for (dd, m), runs in data.items()
               if dd == d and (m == "vgm2p" or m.startswith("vgm2p-g"))}
        if len(pts) > 1:
            sweep[d] = dict(sorted(pts.items()))
    return rows, sweep, methods


def verdicts(row: dict, seeds, methods: list[str]) -> dict[str, str] | None:
    """The four targets for VGM²P on one row, or None when VGM²P or a baseline the targets
    name (``JUDGED``) lacks seeds (``seeds(dataset)``: the seeds a complete cell has). The
    other baselines count towards "best" with the seeds they have (their cells say how many)."""
    want = seeds(row["dataset"])
    if "vgm2p" not in methods or any(row[m] is None or len(row[m]) < want
                                     for m in JUDGED if m in methods):
        return None
    vm, _, vse = stats(row["vgm2p"])
    out = {"≥ data": "yes" if vm >= float(normalise(row["refs"]["mean"], row["refs"]))
           else "**no**"}
    if "mlp-bc" in methods:
        out["≥ MLP-BC"] = "yes" if vm >= stats(row["mlp-bc"])[0] else "**no**"
    if "meanflow-bc" in methods:
        bm, _, bse = stats(row["meanflow-bc"])
        need = 2 * math.hypot(vse, bse)
        out["> MF-BC by 2σ"] = ("yes" if vm - bm > need else "**no**") + \
            f" ({vm - bm:+.1f} vs {need:.1f})"
    base = [stats(row[m])[0] for m in BASELINES if m in methods and row[m] is not None]
    if base:
        best = max(base)
        out["≤ 10% below best"] = ("yes" if vm >= best - 0.1 * abs(best) else "**no**") + \
            f" ({vm - best:+.1f})"
    return out


def plot(rows: list[dict], sweep: dict, methods: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if rows:
        keys = ["behaviour", *methods]
        fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(rows)), 4))
        width = 0.8 / len(keys)
        for k, key in enumerate(keys):
            xs, ms, es = [], [], []
            for i, row in enumerate(rows):
                if key == "behaviour":
                    m, e = float(normalise(row["refs"]["mean"], row["refs"])), 0.0
                elif row[key] is not None and len(row[key]):
                    m, _, se = stats(row[key])
                    e = 2 * se
                else:
                    continue
                xs.append(i + (k - (len(keys) - 1) / 2) * width)
                ms.append(m)
                es.append(e)
            ax.bar(xs, ms, width, yerr=es, capsize=2, label=LABELS[key].split(" (")[0])
        ax.set_xticks(range(len(rows)), [r["dataset"] for r in rows], rotation=30, ha="right",
                      fontsize=8)
        ax.set_ylabel("normalised return (final, mean ± 2σ)")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "results.png", dpi=110)
        plt.close(fig)
        written.append("results.png")
    curved = [r for r in rows if r["dataset"].endswith(SUFFIXES)
              and any(r[f"{m}_curve"] for m in methods)]
    if curved:
        cols = min(4, len(curved))
        nrows = -(-len(curved) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
        for ax, row in zip(axes.flat, curved):
            for m in methods:
                curves = row[f"{m}_curve"]
                if not curves:
                    continue
                steps = sorted({s for c in curves for s, _ in c})
                mean = [np.mean([dict(c)[s] for c in curves if s in dict(c)]) for s in steps]
                ax.plot(steps, normalise(mean, row["refs"]), marker=".", lw=1.2,
                        label=LABELS[m])
            ax.axhline(float(normalise(row["refs"]["mean"], row["refs"])), color="k", ls="--",
                       lw=0.8, label="data")
            ax.set_title(row["dataset"], fontsize=9)
            ax.set_xlabel("policy step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(curved):]:
            ax.axis("off")
        axes.flat[0].set_ylabel("normalised return (mean over seeds)")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=110)
        plt.close(fig)
        written.append("curves.png")
    if sweep:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for d, pts in sweep.items():
            ws = list(pts)
            ax.errorbar(ws, [stats(pts[w])[0] for w in ws],
                        yerr=[2 * stats(pts[w])[2] for w in ws], marker="o", capsize=3, label=d)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("normalised return (VGM²P, ± 2σ)")
        # outside the axes: five curves leave no empty corner for it
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=110)
        plt.close(fig)
        written.append("sweep.png")
    return written


def sweep_change(pts: dict[float, np.ndarray]) -> dict[float, float]:
    """Percent change of each guidance scale's mean from the default's (w = 2),
    ``100 (mean_w - mean_2) / |mean_2|``, unrounded; empty without a (non-zero) default."""
    base = stats(pts[2.0])[0] if 2.0 in pts else 0.0
    if base == 0:
        return {}
    return {w: 100 * (stats(v)[0] - base) / abs(base) for w, v in pts.items() if w != 2.0}


def render(rows: list[dict], sweep: dict, methods: list[str], seeds, plots: list[str],
           preamble: str, cards: str) -> str:
    """RESULTS.md; ``cards`` is the cards folder relative to it (for the dataset links)."""
    lines = ["# Learning results", "", preamble.strip(), "",
             "Cells: normalised final return `100 (R - R_random) / (R_expert - R_random)` as "
             f"mean ± 2σ over {seeds.text} training seeds (σ = sd / √n), the seed sd, then `·` the "
             "raw return mean. Behaviour: the dataset's episodes (mean, sd over episodes). "
             "References per dataset are in its card.", ""]
    head = ["dataset", LABELS["behaviour"], *(LABELS[m] for m in methods), "steps"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        refs = row["refs"]
        steps = sorted({s for m in methods for s in row[f"{m}_steps"]})
        data = (f"{float(normalise(refs['mean'], refs)):.1f} (sd "
                f"{100 * refs['std'] / (refs['expert'] - refs['random']):.1f}) · "
                f"{refs['mean']:.4g}")
        card = f"[{row['dataset']}]({cards}/{row['dataset']}.md)"
        want = seeds(row["dataset"])
        lines.append("| " + " | ".join([card, data, *(cell(row[m], row[f"{m}_raw"], want)
                                                        for m in methods),
                                         ", ".join(map(str, steps)) or "—"]) + " |")
    judged = [(r["dataset"], v) for r in rows if (v := verdicts(r, seeds, methods))]
    if judged:
        keys = list(judged[0][1])
        lines += ["", "## Targets (VGM²P)", "", "| dataset | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += [f"| {d} | " + " | ".join(v[k] for k in keys) + " |" for d, v in judged]
        aimed = [(d, v) for d, v in judged if d.endswith(SUFFIXES)]
        if aimed:
            counts = ", ".join(f"{k}: {sum(v[k].startswith('yes') for _, v in aimed)} of "
                               f"{len(aimed)}" for k in keys)
            names = ", ".join(LABELS[m] for m in JUDGED[:-1]) + f" and {LABELS[JUDGED[-1]]}"
            lines += ["", f"On the medium and medium-replay rows: {counts}. Rows without "
                      f"every seed of {names} are not judged."]
    for key, title, fmt in (
            ("win", "Win rates (mean over seeds and evaluation episodes):",
             lambda v: f"{100 * v:.0f}%"),
            ("time", "Training time per run (s, one CPU thread; mean over seeds):",
             lambda v: f"{v:.0f}")):
        shown = [r for r in rows if any(r[f"{m}_{key}"] is not None for m in methods)]
        if shown:
            lines += ["", title, "", "| dataset | " + " | ".join(LABELS[m] for m in methods)
                      + " |", "|---|" + "---|" * len(methods)]
            lines += [f"| {r['dataset']} | " + " | ".join(
                "—" if r[f"{m}_{key}"] is None else fmt(r[f"{m}_{key}"]) for m in methods)
                + " |" for r in shown]
    if sweep:
        ws = sorted({w for pts in sweep.values() for w in pts})
        lines += ["", "## Guidance-scale sweep (VGM²P, normalised return, change from the "
                  "default scale)", "", "| dataset | " + " | ".join(f"w = {w:g}" for w in ws)
                  + " |", "|---|" + "---|" * len(ws)]
        for d, pts in sweep.items():
            change = sweep_change(pts)
            cells = []
            for w in ws:
                if w not in pts:
                    cells.append("—")
                    continue
                m, _, se = stats(pts[w])
                rel = f" ({change[w]:+.0f}%)" if w in change else ""
                cells.append(f"{m:.1f} ± {2 * se:.1f}{rel}")
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", type=Path, default=CSV, help="the runs.csv of run.py")
    p.add_argument("--out", type=Path, default=HERE, help="folder of RESULTS.md and the PNGs")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds a complete cell has (default: {len(HEADLINE_SEEDS)} on the "
                        f"headline rows, {len(OTHER_SEEDS)} on the others)")
    p.add_argument("--preamble", type=Path, default=HERE / "preamble.md",
                   help="markdown put under the title (budget, machine), if it exists")
    p.add_argument("--json", type=Path, default=None, help="also write the verdicts as JSON")
    a = p.parse_args(argv)
    rows, sweep, methods = collect(a.csv)
    seeds = Seeds(a.seeds)
    if not rows and not sweep:
        p.error(f"--csv: no finished run in {a.csv}")
    a.out.mkdir(parents=True, exist_ok=True)
    plots = plot(rows, sweep, methods, a.out)
    preamble = a.preamble.read_text() if a.preamble.exists() else ""
    cards = os.path.relpath(CARDS, a.out.resolve())
    (a.out / "RESULTS.md").write_text(render(rows, sweep, methods, seeds, plots, preamble,
                                             cards))
    if a.json:
        a.json.write_text(json.dumps({r["dataset"]: verdicts(r, seeds, methods)
                                      for r in rows}, indent=1))
    print(f"wrote {a.out / 'RESULTS.md'} and {', '.join(plots)} ({len(rows)} datasets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
