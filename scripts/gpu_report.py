"""Write ``GPU_REPORT.md`` and ``gpu_report.json`` from what ``scripts/gpu_check.sh`` left in
OUT_DIR: ``steps.tsv`` (name, exit status, seconds, budget), ``env.json``, the pytest junit XML
files, the pytest-benchmark JSON and the two training runs (``train-cuda/``, ``train-cpu/``).

    python scripts/gpu_report.py OUT_DIR

Standard library only (it must run when the rest of the check failed). A missing input is
reported as missing, never invented. Exit status 0 once both files are written.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from statistics import mean

# |final CUDA loss - final CPU loss| / final CPU loss above which the report flags the runs:
# same seed, but different kernels (TF32 off, Triton vs torch matmuls) and a different RNG
# stream on each device, so the curves agree in level, not bit for bit.
LOSS_TOLERANCE = 0.10
FINAL_POINTS = 5  # logged points averaged for the "final" loss (log every 50 steps: the last 250)


def _steps(out: Path) -> list[dict]:
    rows = []
    path = out / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, secs, budget = line.split("\t")
        rows.append({"step": name, "rc": int(rc), "seconds": float(secs),
                     "budget_s": int(budget), "timed_out": int(rc) in (124, 137)})
    return rows


def _tests(out: Path) -> dict:
    res = {}
    for xml in sorted(out.glob("tests-*.xml")):
        suites = ET.parse(xml).getroot()
        suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
        if suite is None:  # an empty <testsuites/> (a collection error)
            res[xml.stem] = {"tests": 0, "failures": 0, "errors": 1, "skipped": 0}
            continue
        res[xml.stem] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors",
                                                           "skipped")}
    return res


def _benchmarks(out: Path) -> list[dict]:
    path = out / "bench.json"
    if not path.exists():
        return []
    rows = [{"group": b.get("group") or "", "name": b["name"],
             "median_us": b["stats"]["median"] * 1e6, "min_us": b["stats"]["min"] * 1e6,
             "rounds": b["stats"]["rounds"]}
            for b in json.loads(path.read_text())["benchmarks"]]
    for row in rows:  # how many times slower than the fastest case of its group
        best = min(r["median_us"] for r in rows if r["group"] == row["group"])
        row["x_fastest"] = row["median_us"] / best if best > 0 else float("nan")
    return sorted(rows, key=lambda r: (r["group"], r["median_us"]))


def _run(folder: Path) -> dict | None:
    """One training run: its summary (absent when the run was cut short) and logged losses."""
    metrics = folder / "metrics.jsonl"
    if not metrics.exists():
        return None
    losses, rates = [], []
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "policy_step" in rec:
            losses.append((rec["policy_step"], rec["loss"]))
            rates.append(rec.get("samples_per_s"))
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    logged = [r for r in rates if r is not None]
    return {"complete": bool(summary), "steps": summary.get("steps"),
            "last_logged_step": losses[-1][0] if losses else None,
            "samples_per_s": summary.get("samples_per_s", mean(logged) if logged else None),
            "train_time_s": summary.get("train_time_s"), "losses": losses}


def _final(losses: list[tuple[int, float]], upto: int) -> float:
    """Mean of the last FINAL_POINTS logged losses at policy steps <= ``upto``."""
    kept = [v for step, v in losses if step <= upto][-FINAL_POINTS:]
    return mean(kept) if kept else float("nan")


def _train(out: Path) -> dict:
    """Both runs, compared over the same window: the last points both of them logged."""
    cuda, cpu = _run(out / "train-cuda"), _run(out / "train-cpu")
    res = {"cuda": cuda, "cpu": cpu}
    if cuda and cpu and cuda["losses"] and cpu["losses"]:
        upto = min(cuda["last_logged_step"], cpu["last_logged_step"])
        for run in (cuda, cpu):
            run["final_loss"] = _final(run["losses"], upto)
        rel = abs(cuda["final_loss"] - cpu["final_loss"]) / abs(cpu["final_loss"])
        res.update(compared_upto_step=upto, final_loss_rel_diff=rel,
                   losses_agree=rel <= LOSS_TOLERANCE)
        if cuda["samples_per_s"] and cpu["samples_per_s"]:
            res["speedup"] = cuda["samples_per_s"] / cpu["samples_per_s"]
    return res


def _markdown(rep: dict) -> str:
    env = rep["env"]
    lines = ["# GPU check report", "",
             "Written by `scripts/gpu_check.sh` (`scripts/gpu_report.py`); numbers are one run.",
             "", "## Machine", ""]
    if env:
        lines += [f"- {k}: {v}" for k, v in env.items()]
    else:
        lines.append("- env.json missing (the env step did not finish)")
    lines += ["", "## Steps", "", "| step | status | seconds | budget (s) |", "|---|---|---|---|"]
    for s in rep["steps"]:
        status = ("ok" if s["rc"] == 0 else "timed out" if s["timed_out"]
                  else f"FAILED ({s['rc']})")
        lines.append(f"| {s['step']} | {status} | {s['seconds']:.1f} | {s['budget_s']} |")
    lines += ["", "## Tests", ""]
    for name, t in rep["tests"].items() or {"(none)": None}.items():
        lines.append(f"- {name}: " + ("no junit XML" if t is None else
                     f"{t['tests']} run, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped"))
    lines += ["", "## Benchmarks (CUDA cases)", ""]
    if rep["benchmarks"]:
        lines += ["| group | case | median (us) | min (us) | x fastest | rounds |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {b['group']} | {b['name']} | {b['median_us']:.1f} | {b['min_us']:.1f} | "
                  f"{b['x_fastest']:.2f} | {b['rounds']} |" for b in rep["benchmarks"]]
    else:
        lines.append("- bench.json missing (the bench step did not finish)")
    lines += ["", "## Training: 2000 steps, seed 0, CUDA vs CPU", ""]
    tr = rep["train"]
    for dev in ("cuda", "cpu"):
        run = tr[dev]
        if run is None:
            lines.append(f"- {dev}: no metrics.jsonl (the run did not start or log)")
            continue
        state = (f"{run['steps']} steps in {run['train_time_s']:.1f} s" if run["complete"] else
                 f"cut short after step {run['last_logged_step']}")
        final = (f", final loss {run['final_loss']:.4f}" if "final_loss" in run else "")
        lines.append(f"- {dev}: {state}, {run['samples_per_s'] or float('nan'):.0f} "
                     f"samples/s{final}")
    if "final_loss_rel_diff" in tr:
        verdict = "agree" if tr["losses_agree"] else "DISAGREE"
        lines.append(f"- final losses (mean of the last {FINAL_POINTS} logged points up to step "
                     f"{tr['compared_upto_step']}) differ by {100 * tr['final_loss_rel_diff']:.1f}%"
                     f" ({verdict}: tolerance {100 * LOSS_TOLERANCE:.0f}%)")
    if "speedup" in tr:
        lines.append(f"- CUDA / CPU samples/s: {tr['speedup']:.2f}x")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python scripts/gpu_report.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    env_path = out / "env.json"
    rep = {"env": json.loads(env_path.read_text()) if env_path.exists() else None,
           "steps": _steps(out), "tests": _tests(out), "benchmarks": _benchmarks(out),
           "train": _train(out)}
    (out / "gpu_report.json").write_text(json.dumps(rep, indent=1))
    (out / "GPU_REPORT.md").write_text(_markdown(rep))
    print(f"wrote {out / 'GPU_REPORT.md'} and {out / 'gpu_report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
