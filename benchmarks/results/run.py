"""Run the learning-results table: datasets x methods x seeds, and the guidance-scale sweep.

Every run is one ``vgm2p train`` process writing to its own directory
``table-runs/<dataset>/<method>/seed<k>/`` (``vgm2p-g<W>`` for the sweep's scales; not in git);
a run whose ``summary.json`` exists is skipped, one with a checkpoint is resumed, so the
script can be stopped and re-run at any time. When a run finishes (or is found finished), its
row of ``runs.csv`` is written or refreshed: one row per (dataset, method, seed) with the
summary's numbers, the config, the code commit and repo-relative paths. That file is what git
keeps and what ``make_table.py`` turns into ``RESULTS.md`` and the plots. ``--csv`` chooses it;
the default is ``benchmarks/results/runs.csv`` for the default ``--runs`` and
``<runs>/runs.csv`` for any other.

Methods (all the same network widths, data, budget and evaluation) are the trainer's presets,
``vgm2p train --method NAME`` (``vgm2p_fast.train.METHODS``):

- ``vgm2p``: CFG MeanFlow on the sign of the GAE advantage (VGM²P).
- ``meanflow-bc``: the same MeanFlow policy without value guidance.
- ``fm-bc``: a flow-matching behaviour-cloning policy, sampled in 10 Euler steps.
- ``mlp-bc``: a deterministic MLP behaviour cloner (squared error; cross-entropy over the
  available actions for discrete actions): the simplest baseline.
- ``awfm``: advantage-weighted flow-matching BC (weights ``exp(A / (beta std A))``, clipped).

    python benchmarks/results/run.py --table --sweep --jobs 2     # what RESULTS.md shows
    python benchmarks/results/run.py --datasets halfcheetah-2x3-medium --methods vgm2p \\
        --seeds 0 --steps 500 --runs /tmp/runs        # one quick run, row in /tmp/runs/runs.csv

A dataset name is looked up in ``benchmarks/data/<name>.h5`` first, then wherever
``vgm2p train --dataset NAME`` finds it (bundled data, ``$VGM2P_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = HERE.parent / "data"
RUNS = HERE / "table-runs"
CSV = HERE / "runs.csv"
# One row per run: the summary's numbers (eval_returns space-separated), the config as JSON
# without its two paths, the code commit (``git rev-parse --short HEAD``, ``+dirty`` when
# tracked files had uncommitted changes) and paths relative to the repository root.
COLUMNS = ["dataset", "method", "seed", "steps", "iterations", "eval_episodes",
           "eval_return_mean", "eval_return_std", "eval_win_rate", "eval_returns",
           "eval_normalised", "dataset_return_mean", "dataset_return_std", "ref_random",
           "ref_expert", "eval_curve", "train_time_s", "samples_per_s", "world_size",
           "guidance", "env", "dataset_file", "run_dir", "commit", "config"]
_CSV_LOCK = threading.Lock()

METHODS = ("vgm2p", "meanflow-bc", "fm-bc", "mlp-bc", "awfm")   # vgm2p_fast.train.METHODS
# The headline rows (where the targets are judged): every medium and medium-replay dataset,
# 5 seeds; the other rows 3 seeds. Runs go seed-major over HEADLINE first, so a cut-short run
# of the script still leaves whole rows.
HEADLINE = ["hopper-3x1-medium", "hopper-3x1-medium-replay", "halfcheetah-2x3-medium",
            "halfcheetah-2x3-medium-replay", "smax-3m-medium", "smax-2s3z-medium",
            "halfcheetah-6x1-medium", "halfcheetah-6x1-medium-replay"]
OTHERS = ["hopper-3x1-expert", "halfcheetah-2x3-expert", "halfcheetah-2x3-medium-expert",
          "smax-3m-poor", "smax-3m-good", "halfcheetah-6x1-expert",
          "halfcheetah-6x1-medium-expert", "smax-2s3z-poor", "smax-2s3z-good"]
TABLE_DATASETS = HEADLINE + OTHERS
HEADLINE_SEEDS, OTHER_SEEDS = [0, 1, 2, 3, 4], [0, 1, 2]
# The guidance sweep: the paper claims coefficient-insensitivity; checked on the five medium
# sets (the issue's "on the medium sets"), 5 seeds (the headline rows' count; 3 until a0749b1),
# the default scale taken from the table.
SWEEP_DATASETS = ["hopper-3x1-medium", "halfcheetah-2x3-medium", "smax-3m-medium",
                  "halfcheetah-6x1-medium", "smax-2s3z-medium"]
SWEEP_GUIDANCE = [1.5, 2.0, 3.0, 4.0]
SWEEP_SEEDS = [0, 1, 2, 3, 4]


def dataset_arg(name: str) -> str:
    """benchmarks/data/<name>.h5 when it exists, else the name (bundled or cached)."""
    path = DATA / f"{name}.h5"
    return str(path) if path.exists() else name


def method_args(method: str) -> list[str]:
    """CLI options of a method name: a METHODS key, or ``vgm2p-g<W>`` (guidance W)."""
    if method in METHODS:
        return ["--method", method]
    if method.startswith("vgm2p-g"):
        return ["--method", "vgm2p", "--guidance-scale", method.removeprefix("vgm2p-g")]
    raise ValueError(f"method: expected one of {sorted(METHODS)} or vgm2p-g<W>, found "
                     f"{method!r}")


def sweep_method(w: float) -> str:
    """The run name of guidance ``w``: the table's ``vgm2p`` runs at the default scale."""
    from vgm2p_fast.train import TrainConfig  # here: make_table.py needs none of the package

    return "vgm2p" if w == TrainConfig.guidance_scale else f"vgm2p-g{w:g}"


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository root when it is inside it, else unchanged."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def code_commit() -> str:
    """Short HEAD commit, ``+dirty`` if tracked files differ from it; "" outside a checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return ""
    return head + ("+dirty" if head and dirty else "")


def csv_row(run_dir: Path, dataset: str, method: str, seed: int) -> dict[str, str]:
    """The runs.csv row of a finished run directory (its summary.json and commit.txt)."""
    s = json.loads((run_dir / "summary.json").read_text())
    cfg = {k: v for k, v in s["config"].items() if k not in ("dataset", "out")}
    commit = run_dir / "commit.txt"
    row = {k: s.get(k, "") for k in COLUMNS}
    refs = s.get("references") or ("", "")
    row.update(dataset=dataset, method=method, seed=seed,
               eval_returns=" ".join(map(repr, s.get("eval_returns", []))),
               ref_random=refs[0], ref_expert=refs[1],
               eval_curve=" ".join(f"{c['policy_step']}:{c['eval_return_mean']!r}"
                                   for c in s.get("eval_curve", [])),
               guidance=cfg.get("guidance", cfg.get("guidance_scale", "")),
               dataset_file=repo_relative(s["dataset"]), run_dir=repo_relative(run_dir),
               commit=commit.read_text().strip() if commit.exists() else "",
               config=json.dumps(cfg, sort_keys=True, separators=(",", ":")))
    return {k: str(v) for k, v in row.items()}


def stats(x: Sequence[float]) -> tuple[float, float, float]:
    """(mean, sd with ddof 1, standard error sd / sqrt(n)) of per-seed numbers (sd = se = 0 for
    one seed): every results table's mean ± 2σ."""
    n = len(x)
    m = sum(x) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1)) if n > 1 else 0.0
    return m, sd, sd / math.sqrt(n)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a runs.csv (none if it does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def upsert_row(path: Path, row: dict[str, str]) -> None:
    """Write ``row`` into ``path`` in place of the row of the same (dataset, method, seed), if
    any; rows stay sorted by that key (the file does not depend on the order runs finish in).
    The file is rewritten atomically (temp file + rename) under a lock the workers share."""
    def key(r: dict[str, str]) -> tuple[str, str, int]:
        return r["dataset"], r["method"], int(r["seed"])

    with _CSV_LOCK:
        rows = {key(r): r for r in read_csv(path)}
        rows[key(row)] = row
        rows = [rows[k] for k in sorted(rows)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)


def plan(datasets: list[str], methods: list[str], seeds: list[int]
         ) -> list[tuple[str, str, int]]:
    """(dataset, method, seed) in run order: seed-major, so each seed completes a full row."""
    return [(d, m, s) for s in seeds for d in datasets for m in methods]


def run_one(runs: Path, dataset: str, method: str, seed: int, *, train_args: list[str],
            vgm2p: list[str], env: dict[str, str], table: Path, commit: str) -> str:
    """Train (or resume, or skip) one run and write its row of ``table`` (runs.csv); a line
    saying which and how long."""
    out = runs / dataset / method / f"seed{seed}"
    if (out / "summary.json").exists():
        upsert_row(table, csv_row(out, dataset, method, seed))
        return f"done already  {out}"
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("checkpoint-*.pt")):
        cmd = [*vgm2p, "train", "--resume", str(out), "--quiet"]
        old = (out / "commit.txt").read_text().split() if (out / "commit.txt").exists() else []
        if commit not in old:               # a resumed run names every commit it ran at
            (out / "commit.txt").write_text(" ".join([*old, commit]) + "\n")
    else:
        cmd = [*vgm2p, "train", "--dataset", dataset_arg(dataset), "--seed", str(seed),
               "--out", str(out), "--quiet", *method_args(method), *train_args]
        (out / "commit.txt").write_text(commit + "\n")
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.perf_counter()
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}; see {out}/train.log")
    upsert_row(table, csv_row(out, dataset, method, seed))
    return f"{time.perf_counter() - t0:7.1f} s  {out}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Options after -- go to every `vgm2p train` unchanged.")
    p.add_argument("--table", action="store_true", help="the table's datasets x methods x seeds")
    p.add_argument("--sweep", action="store_true", help="the guidance sweep (VGM²P only)")
    p.add_argument("--datasets", nargs="+", default=None, help="instead of the table's")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"instead of {list(METHODS)} (also vgm2p-g<W>)")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"seeds (default: {HEADLINE_SEEDS} on the headline rows, "
                        f"{OTHER_SEEDS} on the others, {SWEEP_SEEDS} in the sweep)")
    p.add_argument("--steps", type=int, default=None,
                   help="policy gradient steps per run (default: the trainer's default budget)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--runs", type=Path, default=RUNS, help="root of the run directories")
    p.add_argument("--csv", type=Path, default=None,
                   help=f"the runs.csv to write (default: {repo_relative(CSV)} for the default "
                        "--runs, <runs>/runs.csv otherwise)")
    p.add_argument("--jobs", type=int, default=1, help="training processes at once")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (OMP_NUM_THREADS; default: torch's own)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    a, extra = p.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if a.jobs < 1:
        p.error(f"--jobs: expected >= 1, found {a.jobs}")
    for m in a.methods or []:
        try:
            method_args(m)
        except ValueError as exc:
            p.error(f"--methods: {exc}")

    todo: list[tuple[str, str, int]] = []
    if a.table or a.datasets or a.methods:
        methods = a.methods or list(METHODS)
        if a.datasets:
            todo += plan(a.datasets, methods, a.seeds or OTHER_SEEDS)
        else:
            todo += plan(HEADLINE, methods, a.seeds or HEADLINE_SEEDS)
            todo += plan(OTHERS, methods, a.seeds or OTHER_SEEDS)
    if a.sweep:
        todo += plan(SWEEP_DATASETS, [sweep_method(w) for w in SWEEP_GUIDANCE],
                     a.seeds or SWEEP_SEEDS)
    if not todo:
        p.error("nothing to run: give --table, --sweep, --datasets or --methods")
    todo = list(dict.fromkeys(todo))     # the sweep's default scale is the table's vgm2p run
    train_args = [*(["--steps", str(a.steps)] if a.steps else []), "--eval-episodes",
                  str(a.eval_episodes), *extra]
    exe = shutil.which("vgm2p")
    vgm2p = [exe] if exe else [sys.executable, "-m", "vgm2p_fast.cli"]
    print(f"{len(todo)} runs, {a.jobs} at a time, `vgm2p train {' '.join(train_args)}`",
          flush=True)
    if a.dry_run:
        for d, m, s in todo:
            print(f"  {d} {m} seed{s}")
        return 0
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    failed = 0
    with ThreadPoolExecutor(a.jobs) as pool:
        table = a.csv or (CSV if a.runs.resolve() == RUNS else a.runs / "runs.csv")
        one = functools.partial(run_one, a.runs, train_args=train_args, vgm2p=vgm2p, env=env,
                                table=table, commit=code_commit())
        futures = [pool.submit(one, d, m, s) for d, m, s in todo]
        for f in futures:
            try:
                print(f.result(), flush=True)
            except RuntimeError as exc:      # one failed run must not stop the others
                failed += 1
                print(f"FAILED  {exc}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
