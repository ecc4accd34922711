"""The ablations that chose the trainer's defaults (issue 12): run them, and render ABLATIONS.md.

Each ablation is one ``vgm2p train`` run per seed on a dataset of this repository, at the
ablation budget (10,000 policy steps unless a variant sets ``--steps``, 10 evaluation episodes,
one CPU thread), differing from the others by the options in :data:`VARIANTS`. Runs write
``<runs>/<name>-s<seed>/`` (not in git); ``--table`` merges their summaries into
``ablations/runs.csv`` (what git keeps; its rows of runs that are not under ``--runs`` stay)
and renders ``ablations/ABLATIONS.md``: the final normalised return per variant, mean ± 2σ (σ =
sd / √n) with the seed sd, and the mean learning curve. ``--variants`` restricts ``--run`` to
some of them.

    python benchmarks/results/ablations.py --run --jobs 2 --runs /tmp/ablation-runs
    python benchmarks/results/ablations.py --run --variants vgm2p-w3000-tau09 --runs /tmp/a
    python benchmarks/results/ablations.py --table --runs /tmp/ablation-runs
    python benchmarks/results/ablations.py --render      # ABLATIONS.md from runs.csv alone

Options are spelled in full, so the rows stay what they were when the defaults move.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# run.py is the script beside this one (sys.path[0] when run as a script)
from run import code_commit, read_csv, stats

HERE = Path(__file__).resolve().parent
OUT = HERE / "ablations"
DATA = HERE.parent / "data"
OLD = ["--lr", "3e-4", "--value-warmup", "500"]        # the defaults before issue 12
NEW = ["--lr", "1e-3", "--value-warmup", "3000"]       # the defaults these ablations chose
BASE = ["--steps", "10000", "--eval-episodes", "10", "--eval-noise", "sample"]

# (dataset short name, dataset, variant name, label, options)
VARIANTS: list[tuple[str, str, str, str, list[str]]] = []
for short, ds in (("hm", "hopper-3x1-medium"), ("hcm", "halfcheetah-2x3-medium"),
                  ("s3m", "smax-3m-medium")):
    VARIANTS += [
        (short, ds, "vgm2p", "VGM²P, lr 3e-4, warm-up 500 (old defaults)", OLD),
        (short, ds, "vgm2p-lr1e3", "VGM²P, lr 1e-3", ["--lr", "1e-3", "--value-warmup", "500"]),
        (short, ds, "vgm2p-lr1e3-w3000", "VGM²P, lr 1e-3, warm-up 3000 (new defaults)",
         NEW),
        (short, ds, "vgm2p-lr1e3-zero", "VGM²P, lr 1e-3, evaluation noise e = 0",
         ["--lr", "1e-3", "--value-warmup", "500", "--eval-noise", "zero"]),
        (short, ds, "mlp", "MLP-BC, lr 3e-4", ["--method", "mlp-bc", *OLD]),
        (short, ds, "mlp-lr1e3", "MLP-BC, lr 1e-3", ["--method", "mlp-bc", "--lr", "1e-3",
                                                    "--value-warmup", "500"]),
    ]
VARIANTS += [(short, ds, "vgm2p-lr2e3-w3000", "VGM²P, lr 2e-3, warm-up 3000",
              ["--lr", "2e-3", "--value-warmup", "3000"])
             for short, ds in (("hm", "hopper-3x1-medium"), ("hcm", "halfcheetah-2x3-medium"))]
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-zero", "VGM²P, lr 3e-4, evaluation noise e = 0",
     [*OLD, "--eval-noise", "zero"]),
    ("hm", "hopper-3x1-medium", "vgm2p-lr2e3", "VGM²P, lr 2e-3",
     ["--lr", "2e-3", "--value-warmup", "500"]),
    ("hm", "hopper-3x1-medium", "vgm2p-lr5e4-w3000", "VGM²P, lr 5e-4, warm-up 3000",
     ["--lr", "5e-4", "--value-warmup", "3000"]),
    ("hm", "hopper-3x1-medium", "vgm2p-lr1e3-b512", "VGM²P, lr 1e-3, batch 512",
     ["--lr", "1e-3", "--value-warmup", "500", "--batch-size", "512"]),
    ("hm", "hopper-3x1-medium", "vgm2p-lr1e3-g3", "VGM²P, lr 1e-3, guidance scale 3",
     ["--lr", "1e-3", "--value-warmup", "500", "--guidance-scale", "3"]),
    ("hm", "hopper-3x1-medium", "vgm2p-a1", "VGM²P, lr 3e-4, zero-noise anchor weight 1 "
     "(option since removed)", [*OLD, "--anchor-weight", "1"]),
    ("hm", "hopper-3x1-medium", "vgm2p-lr1e3-a1", "VGM²P, lr 1e-3, zero-noise anchor "
     "weight 1 (option since removed)", ["--lr", "1e-3", "--value-warmup", "500",
                                         "--anchor-weight", "1"]),
    ("hm", "hopper-3x1-medium", "mfbc", "MeanFlow-BC, lr 3e-4", ["--method", "meanflow-bc",
                                                                 *OLD]),
    ("hm", "hopper-3x1-medium", "mfbc-lr1e3", "MeanFlow-BC, lr 1e-3",
     ["--method", "meanflow-bc", "--lr", "1e-3", "--value-warmup", "500"]),
]
# issue 12's one miss (hopper-3x1-medium, VGM²P 31.9 against MLP-BC 32.5 at the defaults):
# options of the current defaults that could move a final one-step sample of a single noisy
# policy's data, each against the defaults row above ("vgm2p-lr1e3-w3000")
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-ema999", "VGM²P, defaults, EMA decay 0.999",
     [*NEW, "--ema-decay", "0.999"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-quantile", "VGM²P, defaults, 4 quantile tokens",
     [*NEW, "--condition", "quantile", "--n-bins", "4"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-drop02", "VGM²P, defaults, condition dropout 0.2",
     [*NEW, "--cond-dropout", "0.2"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-tau09", "VGM²P, defaults, value expectile 0.9",
     [*NEW, "--tau", "0.9"]),
    # same effective scale omega / (1 - kappa) = 2, less of the model's own guided output in
    # its target (kappa 0: v_g = 2 v - u(null), no bootstrap)
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-kappa0", "VGM²P, defaults, kappa 0 (omega 2)",
     [*NEW, "--guidance-scale", "2", "--kappa", "0"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-kappa025", "VGM²P, defaults, kappa 0.25 (omega 1.5)",
     [*NEW, "--guidance-scale", "2", "--kappa", "0.25"]),
]
# the same miss, critic side (issue 12, third pass): the advantage behind the tokens (GAE
# lambda, IQL's Q(s, a) - V(s)), a median-like expectile, a longer critic warm-up
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-lam05", "VGM²P, defaults, GAE lambda 0.5",
     [*NEW, "--lam", "0.5"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-lam1", "VGM²P, defaults, GAE lambda 1 "
     "(Monte-Carlo advantage)", [*NEW, "--lam", "1.0"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-iql", "VGM²P, defaults, IQL advantage "
     "(twin Q(s, a) - V(s))", [*NEW, "--advantage", "iql"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-tau05", "VGM²P, defaults, value expectile 0.5",
     [*NEW, "--tau", "0.5"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w6000", "VGM²P, defaults, critic warm-up 6000",
     ["--lr", "1e-3", "--value-warmup", "6000"]),
]
# the refresh schedule (issue 12's list; the defaults re-derive every row's token every 500
# iterations while the critic keeps learning): tokens held 6x as long, or refreshed 5x as often
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-refresh3000", "VGM²P, defaults, advantage "
     "refresh every 3000 iterations (not 500)", [*NEW, "--refresh-every", "3000"]),
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-refresh100", "VGM²P, defaults, advantage "
     "refresh every 100 iterations (not 500)", [*NEW, "--refresh-every", "100"]),
]
# an e = 0 protocol would meet every target if VGM²P's mode on hopper-3x1-medium-replay were
# within 10 % of AW flow BC's (22.0 against 26.1 at the defaults, docs/results.md): the
# defaults at e = 0, and three sharper conditions (the e = 0 mode of a mixture of twelve
# policies is an action none of them takes unless the condition singles out the good ones)
ZERO = [*NEW, "--eval-noise", "zero"]
VARIANTS += [
    ("hmr", "hopper-3x1-medium-replay", "vgm2p-w3000-zero", "VGM²P, defaults, evaluation "
     "noise e = 0", ZERO),
    ("hmr", "hopper-3x1-medium-replay", "vgm2p-w3000-zero-g15", "VGM²P, defaults, e = 0, "
     "guidance 1.5", [*ZERO, "--guidance-scale", "1.5"]),
    ("hmr", "hopper-3x1-medium-replay", "vgm2p-w3000-zero-quantile", "VGM²P, defaults, e = 0, "
     "4 quantile tokens", [*ZERO, "--condition", "quantile", "--n-bins", "4"]),
    ("hmr", "hopper-3x1-medium-replay", "vgm2p-w3000-zero-tau09", "VGM²P, defaults, e = 0, "
     "value expectile 0.9", [*ZERO, "--tau", "0.9"]),
]
# the budget (issue 12: "the policy loss is still falling at 20,000 steps"; at 10,000 no
# method has converged on Hopper, docs/results.md's action errors): twice the policy steps for
# VGM²P and the MLP cloner, evaluated every 4,000 (steps / 5), ~8 minutes a VGM²P run
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-steps20k", "VGM²P, defaults, 20,000 policy "
     "steps (not 10,000)", [*NEW, "--steps", "20000"]),
    ("hm", "hopper-3x1-medium", "mlp-lr1e3-steps20k", "MLP-BC, lr 1e-3, 20,000 policy steps "
     "(not 10,000)", ["--method", "mlp-bc", *NEW, "--steps", "20000"]),
]
# the width (issue 12's list; never ablated before): a policy twice as wide, 3 x 512, for
# VGM²P and the MLP cloner alike (the baselines share the widths); 2-4x each layer's FLOPs
WIDE = ["--hidden-dims", "512", "512", "512"]
VARIANTS += [
    ("hm", "hopper-3x1-medium", "vgm2p-w3000-h512", "VGM²P, defaults, policy 3 x 512 "
     "(not 3 x 256)", [*NEW, *WIDE]),
    ("hm", "hopper-3x1-medium", "mlp-lr1e3-h512", "MLP-BC, lr 1e-3, policy 3 x 512 "
     "(not 3 x 256)", ["--method", "mlp-bc", *NEW, *WIDE]),
]
# the time-embedding frequencies (issue 12's list): the top angular frequency of the
# geometric ladder [1, max] at a third of the default's 3 (all 16 at 1) and at 10
VARIANTS += [
    ("hm", "hopper-3x1-medium", f"vgm2p-w3000-freq{f}", f"VGM²P, defaults, time-embedding "
     f"frequencies up to {f} (not 3)", [*NEW, "--time-max-freq", f]) for f in ("1", "10")
]
# the (r, t) sampler's share of r < t rows (issue 12's list), on hopper-3x1-medium-replay,
# where the one-step jump costs: the table's seed 0-4 models sampled in 5 steps return 21.6
# normalised against 16.8 in one (docs/results.md); more rows with r < t train the average
# velocity of long jumps on more of the batch (MeanFlow's 0.25 was tuned for images)
VARIANTS += [
    ("hmr", "hopper-3x1-medium-replay", f"vgm2p-w3000-ratio{r}", f"VGM²P, defaults, share of "
     f"r < t rows {r} (not 0.25)", [*NEW, "--ratio-r-neq-t", r]) for r in ("0.5", "0.75")
]
# ... and the better of the two on hopper-3x1-medium, the one set where VGM²P ties MLP-BC
VARIANTS += [("hm", "hopper-3x1-medium", "vgm2p-w3000-ratio0.75", "VGM²P, defaults, share of "
              "r < t rows 0.75 (not 0.25)", [*NEW, "--ratio-r-neq-t", "0.75"])]
# the (r, t) sampler's scale (issue 12's list): at MeanFlow's logit-normal(-0.4, 1) only 0.9 %
# of the rows have t > 0.9 and 0.1 % t - r > 0.8, so the one-step jump from pure noise,
# (r, t) = (0, 1), is hardly trained; scale 1.6 / 2 gives t > 0.9 on 10 / 18 % of the rows
VARIANTS += [
    ("hmr", "hopper-3x1-medium-replay", f"vgm2p-w3000-tsigma{v}", f"VGM²P, defaults, (r, t) "
     f"logit-normal scale {v} (not 1)", [*NEW, "--time-sigma", v]) for v in ("1.6", "2")
]
# an e = 0 protocol's one miss (above) at twice the budget: VGM²P's e = 0 curve on
# hopper-3x1-medium-replay was still rising at 10,000 steps (14 -> 9 -> 16 -> 18 -> 25, seeds
# 0-2), and AW flow BC, the best baseline there at e = 0 (26.1), gets the same 20,000 steps
VARIANTS += [
    ("hmr", "hopper-3x1-medium-replay", "vgm2p-w3000-zero-steps20k", "VGM²P, defaults, e = 0, "
     "20,000 policy steps (not 10,000)", [*ZERO, "--steps", "20000"]),
    ("hmr", "hopper-3x1-medium-replay", "awfm-w3000-zero-steps20k", "AW flow BC, defaults, "
     "e = 0, 20,000 policy steps (not 10,000)", ["--method", "awfm", *ZERO, "--steps", "20000"]),
]
# advantage weighting inside VGM²P: an e = 0 protocol misses only where VGM²P's mode on a
# mixture of twelve policies is unreliable (seeds 11.8-29.3 on hopper-3x1-medium-replay) and AW
# flow BC's is not (26.1 +- 2.9): its weights exp(A / std A) leave the conditional
# distribution closer to one policy's. The tokens and the guidance stay; rows get AW weights
VARIANTS += [
    (short, ds, "vgm2p-w3000-awr", "VGM²P, defaults, rows also weighted exp(A / std A) "
     "(awr, clipped at 100)", [*NEW, "--weighting", "awr"])
    for short, ds in (("hmr", "hopper-3x1-medium-replay"), ("hm", "hopper-3x1-medium"))
]
# ... and the swings of that mode between evaluations (seed 1 at 20,000 steps: 29.4 at 12,000,
# 12.5 at 20,000): an EMA of the policy over ~1,000 steps (decay 0.999) instead of ~200, at e = 0
VARIANTS += [
    (short, ds, "vgm2p-w3000-zero-ema999", "VGM²P, defaults, e = 0, EMA decay 0.999",
     [*ZERO, "--ema-decay", "0.999"])
    for short, ds in (("hmr", "hopper-3x1-medium-replay"), ("hm", "hopper-3x1-medium"))
]
# GAE lambda at e = 0 (never tried there): the Monte-Carlo advantage G_t - V(s_t) carries the
# episode's own future, so on a mixture of checkpoints it may single out the better ones where
# lambda 0.95's short horizon gave the best one only 21 % of the advantageous rows (tokens.csv)
VARIANTS += [
    (short, ds, "vgm2p-w3000-zero-lam1", "VGM²P, defaults, e = 0, GAE lambda 1 "
     "(Monte-Carlo advantage)", [*ZERO, "--lam", "1.0"])
    for short, ds in (("hmr", "hopper-3x1-medium-replay"), ("hm", "hopper-3x1-medium"))
]
# variants of options the code no longer has: their rows are kept, they are not re-run
REMOVED = {"vgm2p-a1", "vgm2p-lr1e3-a1"}
COLUMNS = ["dataset", "variant", "label", "seed", "eval_return_mean", "eval_normalised",
           "dataset_return_mean", "dataset_normalised", "eval_curve", "train_time_s",
           "commit", "options"]


def _seeds_of(runs: Path, short: str, name: str) -> list[Path]:
    return sorted(p for p in runs.glob(f"{short}-{name}-s*") if (p / "summary.json").exists()
                  and p.name.removeprefix(f"{short}-{name}-s").isdigit())


def collect(runs: Path, commit: str) -> list[dict[str, str]]:
    """One csv row per finished run of :data:`VARIANTS` under ``runs``; its commit is the
    run's ``commit.txt`` (written by :func:`run`), else ``commit``."""
    rows = []
    for short, ds, name, label, opts in VARIANTS:
        for p in _seeds_of(runs, short, name):
            s = json.loads((p / "summary.json").read_text())
            curve = " ".join(f"{c['policy_step']}:{c.get('eval_normalised', '')}"
                             for c in s.get("eval_curve", []))
            rows.append({"dataset": ds, "variant": name, "label": label,
                         "seed": p.name.rsplit("-s", 1)[1],
                         "eval_return_mean": s["eval_return_mean"],
                         "eval_normalised": s.get("eval_normalised", ""),
                         "dataset_return_mean": s["dataset_return_mean"],
                         "dataset_normalised": s.get("dataset_normalised", ""),
                         "eval_curve": curve, "train_time_s": round(s["train_time_s"], 1),
                         "commit": (p / "commit.txt").read_text().strip()
                         if (p / "commit.txt").exists() else commit,
                         "options": " ".join(opts)})
    return rows


def merged(rows: list[dict[str, str]], path: Path) -> list[dict[str, str]]:
    """``rows`` with the rows of ``path`` (an existing runs.csv) whose (dataset, variant,
    seed) they do not have: runs finished on another machine, or whose folders are gone, stay
    in the table. Order: the file's rows first (new ones in place), then new keys in
    :data:`VARIANTS` order."""
    def key(r: dict[str, str]) -> tuple[str, str, str]:
        return r["dataset"], r["variant"], str(r["seed"])

    new = {key(r): r for r in rows}
    out = [new.pop(key(r), r) for r in read_csv(path)]
    return out + list(new.values())


def render(rows: list[dict[str, str]]) -> str:
    lines = ["# Ablations behind the trainer's defaults", "",
             "10,000 policy steps (unless the variant says otherwise), 10 evaluation episodes on "
             "fixed seeds, final evaluation; normalised return mean ± 2σ (σ = sd / √n) over the "
             "seeds listed, seed sd, raw return mean. Produced by "
             "`python benchmarks/results/ablations.py` (module docstring); one row per run in "
             "[runs.csv](runs.csv).", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == ds]
        data = float(sel[0]["dataset_normalised"] or "nan")
        lines += [f"## {ds} (behaviour: normalised {data:.1f}, return "
                  f"{float(sel[0]['dataset_return_mean']):.4g})", "",
                  "| variant | seeds | normalised (mean ± 2σ, sd) | return | curve (mean "
                  "normalised at each evaluation) |", "|---|---|---|---|---|"]
        for name in dict.fromkeys(r["variant"] for r in sel):
            vr = [r for r in sel if r["variant"] == name]
            x = [float(r["eval_normalised"]) for r in vr]
            n = len(x)
            m, sd, se = stats(x)
            ret = sum(float(r["eval_return_mean"]) for r in vr) / n
            pts: dict[str, list[float]] = {}
            for r in vr:
                for p in r["eval_curve"].split():
                    step, val = p.split(":")
                    if val:
                        pts.setdefault(step, []).append(float(val))
            curve = " → ".join(f"{sum(v) / len(v):.0f}" for v in pts.values())
            lines.append(f"| {vr[0]['label']} | {n} | {m:.1f} ± {2 * se:.1f} "
                         f"(sd {sd:.1f}) | {ret:.4g} | {curve} |")
        lines.append("")
    return "\n".join(lines)


def run(runs: Path, jobs: int, seeds: list[int], names: list[str] | None = None) -> int:
    """Train the missing runs of ``seeds`` x the variants named ``names`` (all if None)."""
    exe = shutil.which("vgm2p")
    cmd0 = [exe] if exe else [sys.executable, "-m", "vgm2p_fast.cli"]
    todo = [(short, ds, name, opts, s) for s in seeds for short, ds, name, _, opts in VARIANTS
            if name not in REMOVED and (names is None or name in names)
            and not (runs / f"{short}-{name}-s{s}" / "summary.json").exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commit = code_commit()

    def one(job) -> int:
        short, ds, name, opts, seed = job
        out = runs / f"{short}-{name}-s{seed}"
        path = DATA / f"{ds}.h5"
        cmd = [*cmd0, "train", "--dataset", str(path if path.exists() else ds), "--seed",
               str(seed), "--out", str(out), "--overwrite", "--quiet", *BASE, *opts]
        rc = subprocess.run(cmd, env=env).returncode
        if rc == 0 and commit:   # --table records the code each run trained with
            (out / "commit.txt").write_text(commit + "\n")
        return rc

    with ThreadPoolExecutor(jobs) as pool:
        return max([0, *pool.map(one, todo)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=None,
                   help="folder of the run directories (for --run and --table)")
    p.add_argument("--run", action="store_true", help="train the variants' missing runs")
    p.add_argument("--table", action="store_true", help="write runs.csv and ABLATIONS.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="--run only these variants (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="training processes at once")
    p.add_argument("--commit", default="",
                   help="code commit recorded for runs without a commit.txt (older runs)")
    p.add_argument("--render", action="store_true",
                   help="only re-render ABLATIONS.md from the runs.csv in --csv")
    p.add_argument("--csv", type=Path, default=OUT / "runs.csv",
                   help="runs.csv that --render reads and --table merges into (its rows of "
                   "runs not under --runs are kept)")
    p.add_argument("--out", type=Path, default=OUT / "ABLATIONS.md",
                   help="where --render and --table write the table")
    a = p.parse_args(argv)
    if a.render:
        with open(a.csv, newline="") as f:
            a.out.write_text(render(list(csv.DictReader(f))))
        print(f"wrote {a.out}")
        return 0
    if not (a.run or a.table):
        p.error("nothing to do: give --run, --table or --render")
    if a.runs is None:
        p.error("--runs: required with --run and --table")
    known = {v[2] for v in VARIANTS} - REMOVED
    if a.variants and not set(a.variants) <= known:
        p.error(f"--variants: expected names from {sorted(known)}, found "
                f"{sorted(set(a.variants) - known)}")
    rc = run(a.runs, a.jobs, a.seeds, a.variants) if a.run else 0
    if a.table:
        rows = collect(a.runs, a.commit)
        if not rows:
            p.error(f"--runs: no finished ablation run in {a.runs}")
        rows = merged(rows, a.csv)
        a.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        a.out.write_text(render(rows))
        print(f"wrote {a.csv} and {a.out} ({len(rows)} runs)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
