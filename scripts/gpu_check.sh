#!/usr/bin/env bash
# One command that proves every GPU path on the first machine with a CUDA device (issue 17).
#
#   scripts/gpu_check.sh [OUT_DIR]     # default OUT_DIR: build/gpu-check
#   scripts/gpu_check.sh --plan        # the numbered steps and their time budgets; runs nothing
#
# Without a CUDA device (none listed by nvidia-smi, or CUDA_VISIBLE_DEVICES empty) it says so
# and exits 0 at once: CI runs it that way. With one, every step runs under its own `timeout`;
# a failing or timed-out step is recorded and the next one runs. The budgets sum to under
# 10 minutes (the device time a task gets is ~15 minutes, start-up included). Results: one log
# per step, pytest junit XML, pytest-benchmark JSON, two training runs, then GPU_REPORT.md and
# gpu_report.json (scripts/gpu_report.py) in OUT_DIR. Exit status: 0 when every step passed.
#
# Environment: PYTHON (default: python on PATH; it needs a CUDA build of torch, pytest and
# pytest-benchmark, which step 1 installs from the registry when missing), GPU_CHECK_STEPS
# (a subset, e.g. "env tests report"). No network beyond the package registries is used.
set -uo pipefail
cd "$(dirname "$0")/.."

# name:budget_s:description (the budgets sum to 575 s)
STEPS=(
  "env:45:device, driver, torch/triton versions; pytest + pytest-benchmark present"
  "build:150:build vgm2p_fast._C with CUDA for this GPU's arch (TORCH_CUDA_ARCH_LIST), check the CUDA gae kernel"
  "tests:110:pytest -m cuda (CUDA graphs, streams, inductor), then the Triton/gae op tests on real CUDA tensors"
  "bench:120:the CUDA benchmark cases (pytest benchmarks/ -m cuda): linear_jvp, meanflow_target_loss, cfg_sample, mlp_cfg_sample, gae vs eager torch / memcpy / TorchRL"
  "train:135:vgm2p train 2000 steps, seed 0, on CUDA and on CPU at the same time; compare losses and samples/s"
  "report:15:write GPU_REPORT.md and gpu_report.json from the logs"
)

plan() {
  local i=0 total=0 name budget desc
  echo "scripts/gpu_check.sh: steps (each under its own timeout; a failure does not stop the rest)"
  for s in "${STEPS[@]}"; do
    IFS=: read -r name budget desc <<<"$s"
    i=$((i + 1)); total=$((total + budget))
    printf '%d. %-7s %4d s  %s\n' "$i" "$name" "$budget" "$desc"
  done
  printf 'total budget: %d s (%d min %d s)\n' "$total" $((total / 60)) $((total % 60))
}

if [ "${1:-}" = "--plan" ]; then plan; exit 0; fi
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,17p' "$0"; exit 0; fi

has_device() {
  # CUDA_VISIBLE_DEVICES="" (or -1) hides every device from CUDA, as it does from torch.
  if [ "${CUDA_VISIBLE_DEVICES+set}" = set ] && { [ -z "$CUDA_VISIBLE_DEVICES" ] || [ "$CUDA_VISIBLE_DEVICES" = "-1" ]; }; then
    return 1
  fi
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

if ! has_device; then
  echo "gpu_check: no CUDA device on this machine (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them): nothing to check; see --plan for what a GPU machine runs"
  exit 0
fi

OUT=$(mkdir -p "${1:-build/gpu-check}" && cd "${1:-build/gpu-check}" && pwd)
PY=${PYTHON:-python}
export OUT PY
unset TRITON_INTERPRET                      # the kernels must run for real here
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
: >"$OUT/steps.tsv"

step_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  "$PY" -m pip --version
  for mod in pytest pytest_benchmark; do
    "$PY" -c "import $mod" 2>/dev/null || "$PY" -m pip install -q "${mod//_/-}"
  done
  "$PY" - <<'PY'
import json, os, platform, subprocess, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError as exc:
    info["triton"] = f"missing ({exc})"
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout
name, driver, cap = (f.strip() for f in smi.splitlines()[0].split(","))
info.update(device=name, driver=driver, compute_capability=cap)
if torch.cuda.is_available():
    info["device_torch"] = torch.cuda.get_device_name(0)
json.dump(info, open(os.path.join(os.environ["OUT"], "env.json"), "w"), indent=1)
print(info)
if not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__} cannot use the GPU (a CPU build, or a driver "
                     "too old for its CUDA): install a CUDA build, e.g. `pip install torch "
                     "--index-url https://download.pytorch.org/whl/cu128`, and rerun")
PY
}

step_build() {
  local cap
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
  export TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=${MAX_JOBS:-16} VGM2P_BUILD_EXT=1
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  "$PY" -m pip install -q ninja >/dev/null 2>&1 || true
  "$PY" -m pip install --no-build-isolation --no-deps -e . || return 1
  "$PY" -c "
import torch
from vgm2p_fast import backends
ok, why = backends.ext_status('gae', torch.device('cuda'))
print('gae CUDA kernel:', 'yes' if ok else why)
raise SystemExit(0 if ok else 1)"
}

step_tests() {
  local rc=0
  "$PY" -m pytest -q -m cuda tests/ --junitxml="$OUT/tests-cuda.xml" -p no:cacheprovider || rc=1
  "$PY" -m pytest -q -m "not cuda" -p no:cacheprovider --junitxml="$OUT/tests-ops.xml" \
    tests/test_linear_jvp.py tests/test_meanflow_target_loss.py tests/test_cfg_sample.py \
    tests/test_mlp_cfg_sample.py tests/test_gae.py tests/test_backend.py || rc=1
  return $rc
}

step_bench() {
  "$PY" -m pytest -q -m cuda benchmarks/ --benchmark-only -p no:cacheprovider \
    --benchmark-json="$OUT/bench.json" --benchmark-max-time=0.3 --benchmark-min-rounds=5 \
    --benchmark-columns=min,median,rounds
}

step_train() {
  # Both at once: the CUDA run uses the GPU (and a core), the CPU run 8 of the 16 cores.
  local common=(train --steps 2000 --seed 0 --eval-episodes 0 --quiet --overwrite)
  "$PY" -m vgm2p_fast.cli "${common[@]}" --device cuda --out "$OUT/train-cuda" \
    >"$OUT/train-cuda.log" 2>&1 &
  local cuda=$!
  OMP_NUM_THREADS=8 "$PY" -m vgm2p_fast.cli "${common[@]}" --device cpu \
    --out "$OUT/train-cpu" >"$OUT/train-cpu.log" 2>&1 &
  local cpu=$!
  trap 'kill $cuda $cpu 2>/dev/null' TERM  # the step timed out: stop both runs, keep their logs
  local rc=0
  wait $cuda || { echo "CUDA run failed (train-cuda.log)"; rc=1; }
  wait $cpu || { echo "CPU run failed (train-cpu.log)"; rc=1; }
  tail -n 2 "$OUT/train-cuda.log" "$OUT/train-cpu.log"
  return $rc
}

step_report() { "$PY" scripts/gpu_report.py "$OUT"; }

export -f step_env step_build step_tests step_bench step_train step_report
failed=0
for s in "${STEPS[@]}"; do
  IFS=: read -r name budget _ <<<"$s"
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then continue; fi
  start=$(date +%s%N)
  timeout --kill-after=5 "$budget" bash -c "step_$name" >"$OUT/$name.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  secs=$((ms / 1000)).$(( (ms % 1000) / 100 ))
  # the report reads this file: it sees every step before it
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$budget" >>"$OUT/steps.tsv"
  status=ok; [ "$rc" = 0 ] || status="FAILED (rc $rc$([ "$rc" = 124 ] && echo ', timed out'))"
  printf '[%s] %s in %s s of %s s (log: %s/%s.log)\n' "$name" "$status" "$secs" "$budget" "$OUT" "$name"
  [ "$rc" = 0 ] || failed=$((failed + 1))
done
echo "gpu_check: $failed step(s) failed; report: $OUT/GPU_REPORT.md"
[ "$failed" = 0 ]
