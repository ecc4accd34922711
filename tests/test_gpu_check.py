"""``scripts/gpu_check.sh``: the plan and its budgets, the no-device exit (CI's path), the steps
going on after a failure (with a stub ``nvidia-smi``), and ``scripts/gpu_report.py`` on a
fabricated results folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["env", "build", "tests", "bench", "train", "report"]


def _run(*args, env=None, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_plan_lists_numbered_steps_within_ten_minutes():
    res = _run("--plan")
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^(\d+)\. (\w+)\s+(\d+) s  (.+)$", res.stdout, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, len(STEPS) + 1))
    assert [r[1] for r in rows] == STEPS
    total = sum(int(r[2]) for r in rows)
    assert total < 600 and f"total budget: {total} s" in res.stdout


@pytest.mark.parametrize("how", ["CUDA_VISIBLE_DEVICES empty", "no nvidia-smi"])
def test_without_a_device_it_says_so_and_exits_0_at_once(tmp_path, how):
    env = ({"CUDA_VISIBLE_DEVICES": ""} if how.startswith("CUDA")
           else {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "0"})
    if how == "no nvidia-smi" and any(Path(d, "nvidia-smi").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("nvidia-smi is installed in /usr/bin here")
    start = time.monotonic()
    res = _run(str(tmp_path / "out"), env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.monotonic() - start < 5
    assert "no CUDA device" in res.stdout
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


STUB = """#!/usr/bin/env bash
# nvidia-smi stand-in: one GPU, and --query-gpu answered field by field
if [ "$1" = "-L" ]; then echo "GPU 0: Stub GPU (UUID: GPU-0)"; exit 0; fi
fields=$(printf '%s\\n' "$@" | sed -n 's/^--query-gpu=//p' | tr ',' ' ')
out=""
for f in $fields; do
  case $f in name) v="Stub GPU";; driver_version) v=555.42;; memory.total) v="81559 MiB";;
    compute_cap) v=9.0;; *) v=?;; esac
  out="${out:+$out, }$v"
done
echo "$out"
"""


def test_a_failing_step_is_reported_and_the_next_one_runs(tmp_path):
    """With a stub nvidia-smi the script takes the GPU path; here torch has no CUDA, so the env
    step fails with the fix, and the report step still runs and records it."""
    stub = tmp_path / "bin" / "nvidia-smi"
    stub.parent.mkdir()
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "GPU_CHECK_STEPS": "env report"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    res = _run(str(out), env={**env, "CUDA_VISIBLE_DEVICES": "0"}, timeout=180)
    steps = [ln.split("\t") for ln in (out / "steps.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == ["env", "report"]
    env_ok = torch.cuda.is_available()
    assert (steps[0][1] == "0") == env_ok and steps[1][1] == "0"
    assert (res.returncode == 0) == env_ok
    report = (out / "GPU_REPORT.md").read_text()
    assert re.search(r"\| env \| (ok|FAILED \(1\)) \|", report)
    if not env_ok:
        assert "cannot use the GPU" in (out / "env.log").read_text()
        assert "[env] FAILED (rc 1)" in res.stdout
    info = json.loads((out / "env.json").read_text())
    assert info["device"] == "Stub GPU" and info["driver"] == "555.42"


def _write_run(folder: Path, sps: float, losses: list[float]) -> None:
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"samples_per_s": sps, "train_time_s": 9.5,
                                                     "steps": 2000}))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"policy_step": 50 * (i + 1), "loss": v, "samples_per_s": sps}) + "\n"
        for i, v in enumerate(losses)))


def test_report_from_a_results_folder(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"device": "H200", "torch": "2.14.1"}))
    (tmp_path / "steps.tsv").write_text("env\t0\t3.1\t45\nbench\t124\t120.0\t120\n")
    (tmp_path / "tests-cuda.xml").write_text(
        '<testsuites><testsuite tests="12" failures="1" errors="0" skipped="2"/></testsuites>')
    bench = {"benchmarks": [
        {"group": "g", "name": "test_op[triton]",
         "stats": {"median": 10e-6, "min": 9e-6, "rounds": 50}},
        {"group": "g", "name": "test_op[torch]",
         "stats": {"median": 40e-6, "min": 35e-6, "rounds": 50}}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    _write_run(tmp_path / "train-cuda", 40000.0, [2.0] * 5 + [1.05] * 5)
    _write_run(tmp_path / "train-cpu", 10000.0, [2.0] * 5 + [1.00] * 5)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "gpu_report.json").read_text())
    assert rep["steps"][1] == {"step": "bench", "rc": 124, "seconds": 120.0, "budget_s": 120,
                               "timed_out": True}
    assert rep["tests"]["tests-cuda"] == {"tests": 12, "failures": 1, "errors": 0, "skipped": 2}
    ratios = {b["name"]: b["x_fastest"] for b in rep["benchmarks"]}
    assert ratios == {"test_op[triton]": 1.0, "test_op[torch]": 4.0}
    tr = rep["train"]
    assert tr["speedup"] == 4.0 and tr["cpu"]["final_loss"] == 1.0 and tr["cpu"]["complete"]
    assert abs(tr["final_loss_rel_diff"] - 0.05) < 1e-9 and tr["losses_agree"]
    md = (tmp_path / "GPU_REPORT.md").read_text()
    assert "| bench | timed out | 120.0 | 120 |" in md
    assert "CUDA / CPU samples/s: 4.00x" in md
    assert "| g | test_op[torch] | 40.0 | 35.0 | 4.00 | 50 |" in md


def test_report_compares_a_run_cut_short_over_the_common_steps(tmp_path):
    """A CPU run killed by the step's timeout still has its logged losses: the comparison uses
    the steps both runs reached, and the report says the run was cut short."""
    _write_run(tmp_path / "train-cuda", 40000.0, [3.0] * 5 + [1.0] * 5 + [0.5] * 10)
    _write_run(tmp_path / "train-cpu", 10000.0, [3.0] * 5 + [1.0] * 5)
    (tmp_path / "train-cpu" / "summary.json").unlink()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"), str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    tr = json.loads((tmp_path / "gpu_report.json").read_text())["train"]
    assert tr["compared_upto_step"] == 500 and tr["final_loss_rel_diff"] == 0.0
    assert not tr["cpu"]["complete"] and tr["speedup"] == 4.0
    assert "cpu: cut short after step 500" in (tmp_path / "GPU_REPORT.md").read_text()
