#!/usr/bin/env bash
# Proof that the CUDA sources of vgm2p_fast._C compile and link on a machine without a GPU:
# builds the extension against a CUDA build of PyTorch (torch 2.14.1+cu130 in its own virtual
# environment, .venv-cuda/, so the system torch is never touched) with nvcc for sm_80 and sm_90,
# then checks that the shared object carries device code for both and registers a CUDA kernel.
#
#   scripts/build_cuda_ext.sh            # ~3 min for the venv the first time, then the build
#
# Environment: VENV (default .venv-cuda), OUT (default build/cuda-ext), CUDA_HOME (default: the
# toolkit named by the nvcc on PATH), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), MAX_JOBS (2).
# The normal install (pip install -e .) is not affected: it builds the CPU-only extension.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-cuda}
OUT=${OUT:-build/cuda-ext}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-2}

command -v nvcc >/dev/null || { echo "nvcc is not on PATH: install the CUDA toolkit"; exit 1; }
if [ -z "${CUDA_HOME:-}" ]; then
  # nvcc may be a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`): take the real one.
  real=$(grep -o '/[^ "]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null | head -1 || true)
  [ -n "$real" ] || real=$(readlink -f "$(command -v nvcc)")
  CUDA_HOME=$(dirname "$(dirname "$real")")
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
echo "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -2 | head -1))"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 ninja "setuptools>=64" wheel numpy
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.version.cuda); sys.exit(torch.version.cuda is None)' \
  || { echo "$VENV has a CPU-only torch: remove it and rerun"; exit 1; }
# A minimal toolkit lacks the library headers (cusparse.h, cublas.h, ...) that torch's CUDA
# headers include; the cu13 wheels ship them, as a full toolkit would.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"

rm -rf "$OUT"
start=$(date +%s)
VGM2P_BUILD_EXT=1 "$PY" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp"
echo "build took $(( $(date +%s) - start )) s"

so=$(ls "$OUT"/lib/vgm2p_fast/_C*.so)
ls -l "$so"
echo "== sections with device code"
readelf -S -W "$so" | grep -E 'nv_fatbin|nvFatBinSegment' || { echo "no .nv_fatbin section"; exit 1; }
"$PY" - "$so" <<'PY'
# The .nv_fatbin section holds one CUDA ELF (e_machine 190) per -gencode target; its e_flags
# carry the SM version in bits 8-15 (0x50 = sm_80, 0x5a = sm_90). The kernels' names sit in
# each cubin's symbol table.
import re, struct, subprocess, sys, importlib.util, torch
so = sys.argv[1]
for line in subprocess.check_output(["readelf", "-S", "-W", so], text=True).splitlines():
    if ".nv_fatbin" in line:
        f = line.split()
        k = f.index(".nv_fatbin")
        off, size = int(f[k + 3], 16), int(f[k + 4], 16)
data = open(so, "rb").read()[off:off + size]
starts = [m.start() for m in re.finditer(rb"\x7fELF", data)]
archs = set()
for a, b in zip(starts, [*starts[1:], len(data)]):
    machine = struct.unpack_from("<H", data, a + 18)[0]
    flags = struct.unpack_from("<I", data, a + 48)[0]
    sm = (flags >> 8) & 0xFF
    kernels = {k: len(re.findall(k.encode(), data[a:b])) for k in ("scan_kernel", "carry_kernel", "fix_kernel")}
    print(f"cubin at +{a}: e_machine {machine} (190 = CUDA), sm_{sm}, kernel symbols {kernels}")
    assert machine == 190 and all(kernels.values()), "not a CUDA cubin with the gae kernels"
    archs.add(sm)
assert {80, 90} <= archs, f"expected sm_80 and sm_90 cubins, found {sorted(archs)}"
spec = importlib.util.spec_from_file_location("vgm2p_fast._C", so)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
for key in ("CPU", "CUDA"):
    ok = torch._C._dispatch_has_kernel_for_dispatch_key("vgm2p_fast::gae", key)
    print(f"vgm2p_fast::gae has a {key} kernel: {ok}")
    assert ok, key
print("cuda available here:", torch.cuda.is_available())
PY
echo "OK: $so"
