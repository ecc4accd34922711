"""Ahead-of-time witness for the Triton kernels: ``python -m vgm2p_fast.kernels.aot``.

No GPU is needed. Every kernel is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))`` for sm_80 and sm_90, at exactly the block sizes, warps and
constexpr switches its launcher uses, for each storage dtype. A cubin must come out, and the
PTX is then run through the ``ptxas`` triton itself uses for that arch (shipped in the wheel)
with ``-v`` for the registers, spill bytes and shared memory of each configuration. One line
per kernel x configuration x arch; the exit status is 1 if any compile fails or any
configuration spills (a spill would mean changing the launcher's block sizes or warps). It
refuses to run under ``TRITON_INTERPRET=1``: the interpreter replaces ``triton.jit`` and
nothing would be compiled.

Options: ``--arch 80 90`` (default both), ``--quick`` (one dtype per kernel, for tests).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import _common, cfg_sample, linear_jvp, meanflow_target_loss, mlp_cfg_sample
from ._common import ACT_IDS, SIG_DTYPES, acc_dtype

_FLOAT_ARGS = {"p", "eps", "w", "step"}


@dataclass
class Config:
    """One launch configuration: kernel, storage dtype, constexprs, pointer dtype overrides."""

    name: str
    kernel: object
    dtype: torch.dtype
    constexprs: dict
    num_warps: int
    pointers: dict = field(default_factory=dict)  # arg name -> torch dtype (default: dtype)

    def signature(self) -> dict[str, str]:
        sig = {}
        for arg in self.kernel.arg_names:
            if arg in self.constexprs:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = "*" + SIG_DTYPES[self.pointers.get(arg, self.dtype)]
            elif arg in _FLOAT_ARGS:
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
        return sig


def _short(dtype: torch.dtype) -> str:
    return SIG_DTYPES[dtype]


def _matmul_variants(dtypes: list[torch.dtype]) -> list[tuple[torch.dtype, str, str]]:
    """(dtype, tl.dot input precision, label): float32 both ways, since ``fp32_precision``
    follows ``torch.backends.cuda.matmul.allow_tf32`` at launch time."""
    out = []
    for dt in dtypes:
        out.append((dt, "ieee", _short(dt)))
        if dt == torch.float32:
            out.append((dt, "tf32", "fp32-tf32"))
    return out


def configs(quick: bool = False) -> list[Config]:
    """Every configuration the launchers can pick, with the launchers' own block tables.

    linear_jvp: every storage dtype x activation (forward) and dtype (backward, whose code does
    not depend on the activation beyond a multiply). Row kernels: every tile of ROW_BLOCK_DS,
    plus the multi-chunk path of rows wider than 1024, for float32 and bfloat16 (float16 and
    float64 only change the load/store widths). Each kernel's constexpr switches are compiled
    both ways (bias, tangent, saved act', p = 1, gradient, null, bounds, guidance).
    mlp_cfg_sample: its one block table and action tile, guided (GELU) and not (SiLU), both
    decodings, the storage dtypes of ``mlp_cfg_sample.MLP_DTYPES`` (no float64 MMA variant).
    float32 matmuls both as IEEE and TF32 (linear_jvp follows torch's allow_tf32 switch).
    ``quick``: bfloat16, one activation and one tile per kernel.
    """
    dtypes = [torch.bfloat16] if quick else [torch.float32, torch.bfloat16, torch.float16,
                                             torch.float64]
    acts = ["gelu_tanh"] if quick else list(ACT_IDS)
    out = []
    bwd = linear_jvp.BWD
    for dt, prec, label in _matmul_variants(dtypes):
        fwd = linear_jvp.fwd_config(dt)
        for act in acts:
            out.append(Config(
                f"linear_jvp.fwd[{act},{label}]", linear_jvp._fwd_kernel, dt,
                {"ACT": ACT_IDS[act], "HAS_BIAS": True, "HAS_TANGENT": True, "SAVE_GRAD": True,
                 "ACC": acc_dtype(dt), "PRECISION": prec,
                 "BM": fwd["BM"], "BN": fwd["BN"], "BK": fwd["BK"]}, fwd["num_warps"]))
        if not quick:  # the inference layer: no bias, no tangent, nothing saved
            out.append(Config(
                f"linear_jvp.fwd[silu,plain,{label}]", linear_jvp._fwd_kernel, dt,
                {"ACT": ACT_IDS["silu"], "HAS_BIAS": False, "HAS_TANGENT": False,
                 "SAVE_GRAD": False, "ACC": acc_dtype(dt), "PRECISION": prec,
                 "BM": fwd["BM"], "BN": fwd["BN"], "BK": fwd["BK"]}, fwd["num_warps"]))
        blk = {"BM": bwd["BM"], "BN": bwd["BN"], "BK": bwd["BK"]}
        out.append(Config(
            f"linear_jvp.bwd_dx[silu,{label}]", linear_jvp._bwd_dx_kernel, dt,
            {"ACT": ACT_IDS["silu"], "ACC": acc_dtype(dt), "PRECISION": prec, **blk},
            bwd["num_warps"]))
        part = torch.float64 if dt == torch.float64 else torch.float32
        for has_bias in (True,) if quick else (True, False):
            out.append(Config(
                f"linear_jvp.bwd_dw[silu,{'bias' if has_bias else 'no bias'},{label}]",
                linear_jvp._bwd_dw_kernel, dt,
                {"ACT": ACT_IDS["silu"], "HAS_BIAS": has_bias, "ACC": acc_dtype(dt),
                 "PRECISION": prec, **blk}, bwd["num_warps"], {"dw_ptr": part, "db_ptr": part}))
    row_dtypes = [torch.bfloat16] if quick else [torch.float32, torch.bfloat16]
    widths = [16] if quick else [*_common.ROW_BLOCK_DS, _common.ROW_BLOCK_DS[-1] + 1]
    for dt in row_dtypes:
        for d in widths:
            block_r, block_d = _common.row_blocks(d)
            tile = {"ACC": acc_dtype(dt), "BLOCK_R": block_r, "BLOCK_D": block_d}
            out.append(Config(
                f"meanflow_target_loss[D={d},{_short(dt)}]", meanflow_target_loss._kernel, dt,
                {"P_ONE": False, "NEED_GRAD": True, "ONE_TILE": d <= block_d, **tile},
                _common.ROW_NUM_WARPS))
            for discrete in (False, True):
                kind = "discrete" if discrete else "continuous"
                out.append(Config(
                    f"cfg_sample[{kind},D={d},{_short(dt)}]", cfg_sample._kernel, dt,
                    {"HAS_NULL": True, "HAS_BOUNDS": not discrete, "DISCRETE": discrete,
                     **tile}, _common.ROW_NUM_WARPS,
                    {"avail_ptr": torch.bool, "out_ptr": torch.int64} if discrete else {}))
        if not quick:  # the other constexpr branches: p = 1 without gradient; no null/bounds
            block_r, block_d = _common.row_blocks(16)
            tile = {"ACC": acc_dtype(dt), "BLOCK_R": block_r, "BLOCK_D": block_d}
            out.append(Config(
                f"meanflow_target_loss[D=16,p=1,no grad,{_short(dt)}]",
                meanflow_target_loss._kernel, dt,
                {"P_ONE": True, "NEED_GRAD": False, "ONE_TILE": True, **tile},
                _common.ROW_NUM_WARPS))
            out.append(Config(
                f"cfg_sample[continuous,D=16,unguided,unbounded,{_short(dt)}]", cfg_sample._kernel,
                dt, {"HAS_NULL": False, "HAS_BOUNDS": False, "DISCRETE": False, **tile},
                _common.ROW_NUM_WARPS))
    mlp = mlp_cfg_sample.MLP
    mlp_cases = [(True, False)] if quick else [(g, d) for g in (True, False) for d in (False, True)]
    mlp_dtypes = [torch.bfloat16] if quick else list(mlp_cfg_sample.MLP_DTYPES)
    for dt in mlp_dtypes:  # always IEEE float32: see mlp_cfg_sample.MLP
        prec, label = "ieee", _short(dt)
        for guided, discrete in mlp_cases:
            kind = "discrete" if discrete else "continuous"
            act = "gelu_tanh" if guided else "silu"
            out.append(Config(
                f"mlp_cfg_sample[{kind},{act},{'guided' if guided else 'unguided'},{label}]",
                mlp_cfg_sample._mlp_kernel, dt,
                {"ACT": ACT_IDS[act], "GUIDED": guided, "HAS_BOUNDS": not discrete,
                 "DISCRETE": discrete, "ACC": acc_dtype(dt),
                 "PRECISION": prec, "BM": mlp["BM"], "BN": mlp["BN"],
                 "BK": mlp["BK"], "DP": mlp_cfg_sample.MLP_DP}, mlp["num_warps"],
                {"dims_ptr": torch.int32, "scr_ptr": torch.float32,
                 **({"avail_ptr": torch.bool, "out_ptr": torch.int64} if discrete else {})}))
    return out


def _ptxas(arch: int) -> str:
    """The ptxas triton itself uses for ``arch`` (in 3.9: the wheel's ``ptxas`` below sm_90 and
    ``ptxas-blackwell``, a 13.x ptxas, from sm_90 on: the legacy one rejects the sm_90 PTX)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def compile_one(cfg: Config, arch: int, workdir: Path) -> dict:
    """Compile ``cfg`` for ``sm_<arch>``; returns registers, spill bytes, shared memory."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=cfg.kernel, signature=cfg.signature(), constexprs=cfg.constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": cfg.num_warps, "enable_fp_fusion": True})
    if not k.asm.get("cubin"):
        raise RuntimeError(f"{cfg.name}: no cubin for sm_{arch}")
    ptx = workdir / f"k{arch}.ptx"
    ptx.write_text(k.asm["ptx"])
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    # the flags triton's own make_cubin passes, so the counts are those of the shipped cubin
    cmd = [_ptxas(arch), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
           str(ptx), "-o", str(workdir / f"k{arch}.cubin")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"{cfg.name}: ptxas failed for {gpu}:\n{log}")
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {"regs": int(regs.group(1)) if regs else -1,
            "spill_stores": int(spill.group(1)) if spill else -1,
            "spill_loads": int(spill.group(2)) if spill else -1,
            "shared": int(k.metadata.shared)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgm2p_fast.kernels.aot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--quick", action="store_true", help="one dtype per kernel")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    bad = 0
    print(f"{'kernel [config]':48s} {'arch':6s} {'regs':>5s} {'spill st/ld (B)':>16s} "
          f"{'smem (B)':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configs(args.quick):
            for arch in args.arch:
                try:
                    r = compile_one(cfg, arch, Path(tmp))
                except Exception as exc:  # report every failure, then fail
                    bad += 1
                    print(f"{cfg.name:48s} sm_{arch:<3d} FAILED: {exc}")
                    continue
                spills = r["spill_stores"] + r["spill_loads"]
                bad += spills != 0
                flag = "" if spills == 0 else "  <- SPILLS"
                print(f"{cfg.name:48s} sm_{arch:<3d} {r['regs']:5d} "
                      f"{r['spill_stores']:>7d}/{r['spill_loads']:<8d} {r['shared']:9d}{flag}")
    print(f"aot: {'FAILED: ' + str(bad) + ' problem(s)' if bad else 'ok, 0 spills'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
