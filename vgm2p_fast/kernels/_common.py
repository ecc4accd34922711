"""Pieces shared by the kernels: the FP-fusion pin, dtype maps, launch wrapping, activations,
and the forward-mode AD switch.

Importing this module imports triton; only ``vgm2p_fast.kernels.*`` does that, lazily.
"""

from __future__ import annotations

import os

# Pinned before triton compiles anything: triton 3.9 warns that the default of FP fusion (FMA
# contraction of a * b + c) flips in 3.10. We keep it on (the 3.9 default, what the AOT report
# and the interpreter tolerances were taken with) and say so explicitly. A user's own setting wins.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch
import triton
import triton.language as tl
from torch.autograd import forward_ad

from .._checks import BackendUnavailableError

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# triton 3.9's interpreter gets bf16 tl.dot wrong (a 16x16x16 bf16 product is off by ~2e10;
# fp16 and fp32 are exact), so under the interpreter bf16 tiles are widened to float32 first.
# Same math as the GPU's bf16 MMA (bf16 x bf16 products are exact in float32, accumulated in
# float32); on a GPU this constant is False and tl.dot takes the bf16 tiles directly.
_WIDEN_BF16_DOT = tl.constexpr(INTERPRET)

# activation name -> constexpr id used inside the kernels
ACT_IDS = {"identity": 0, "relu": 1, "silu": 2, "gelu_tanh": 3}

# pointer type names for triton.compile signatures (kernels/aot.py)
SIG_DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
              torch.bfloat16: "bf16", torch.bool: "i1", torch.int32: "i32", torch.int64: "i64"}


# Row kernels (meanflow_target_loss, cfg_sample): one (BLOCK_R, BLOCK_D) tile per program.
ROW_BLOCK_ELEMS = 1024  # 8 elements per thread at ROW_NUM_WARPS = 4
ROW_BLOCK_DS = (16, 128, 1024)  # the only row widths launched (kernels/aot.py compiles each)
ROW_NUM_WARPS = 4


def row_blocks(d: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D) for rows of width ``d``: the smallest tile of ROW_BLOCK_DS that holds
    a row (wider rows loop over 1024-wide chunks) and ROW_BLOCK_ELEMS / BLOCK_D rows."""
    block_d = next((b for b in ROW_BLOCK_DS if d <= b), ROW_BLOCK_DS[-1])
    return ROW_BLOCK_ELEMS // block_d, block_d


def check_device(t: torch.Tensor) -> None:
    """CPU tensors can only run under the interpreter, and only if it was on when triton was
    imported (``TRITON_INTERPRET=1`` set later is not seen: triton would fail obscurely)."""
    if t.device.type == "cpu" and not INTERPRET:
        raise BackendUnavailableError(
            "triton kernels got CPU tensors but triton was imported without the interpreter: "
            "set TRITON_INTERPRET=1 before anything imports triton (slow, for tests only), or "
            "use CUDA tensors")


def forward_ad_active() -> bool:
    """Whether forward-mode AD may be running: inside ``torch.func.jvp`` (which enters a
    ``forward_ad.dual_level`` too) or a user's ``forward_ad.dual_level``.

    A ``triton_op`` has no forward-mode rule (``register_autograd`` is reverse mode only; its
    generated Function gives tangents of 0 without an error), so the launchers route a call
    through a ``torch.autograd.Function`` with a ``jvp`` only then: dynamo refuses Functions
    with a custom ``jvp`` ("Unsupported custom jvp"), and ``Function.apply`` costs a few us per
    layer that the plain op does not. One read of forward_ad's level counter (-1 outside).
    """
    return forward_ad._current_level >= 0


class _NoDerivative(torch.autograd.Function):
    """Runs a sampling kernel so that a tangent (or a gradient) reaching it raises instead of
    giving zeros: the sampling ops have no derivative on the triton backend."""

    @staticmethod
    def forward(name, fn, *args):
        return fn(*args)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.name = inputs[0]

    @staticmethod
    def jvp(ctx, *tangents):
        raise BackendUnavailableError(
            f"{ctx.name}: the triton backend has no forward-mode derivative (torch.func.jvp, "
            f"forward_ad); use backend='torch' or VGM2P_BACKEND={ctx.name}=torch")

    @staticmethod
    def backward(ctx, *grads):
        raise BackendUnavailableError(
            f"{ctx.name}: the triton backend has no gradient; use backend='torch' or "
            f"VGM2P_BACKEND={ctx.name}=torch")


def no_derivative(name: str, fn, *args):
    """``fn(*args)`` (a sampling op) under forward AD: a tangent that reaches it raises."""
    return _NoDerivative.apply(name, fn, *args)


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    """Accumulate in float64 for float64 inputs, else float32 (half inputs never accumulate in
    half: a 256-term bf16 sum would lose ~8 bits)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def fp32_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for float32 inputs: follow torch's own switch, so the kernel
    rounds like ``torch.matmul`` on the same machine (tf32 only when the user allowed it)."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """acc + a @ b with ``tl.dot`` (see _WIDEN_BF16_DOT for the interpreter's bf16)."""
    if _WIDEN_BF16_DOT:  # noqa: SIM102 (two constexpr tests; kept apart for readability)
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def tanh_f32(x):
    """tanh from exp2 (no libdevice call, so the interpreter and both GPU arches share it):
    tanh(x) = 1 - 2 / (exp(2x) + 1), exact limits +-1 at +-inf."""
    return 1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0)  # 2 / ln 2


@triton.jit
def act_and_grad(pre, ACT: tl.constexpr):
    """(act(pre), act'(pre)) for ACT in ACT_IDS; act' is 1 for the identity (callers skip it)."""
    if ACT == 1:  # relu
        h = tl.maximum(pre, 0.0)
        g = (pre > 0).to(pre.dtype)
    elif ACT == 2:  # silu: s = sigmoid(p), silu = p s, silu' = s (1 + p (1 - s))
        s = 1.0 / (1.0 + tl.exp(-pre))
        h = pre * s
        g = s * (1.0 + pre * (1.0 - s))
    elif ACT == 3:  # gelu(tanh): 0.5 p (1 + tanh(k (p + 0.044715 p^3))), k = sqrt(2 / pi)
        inner = 0.7978845608028654 * (pre + 0.044715 * pre * pre * pre)
        th = tanh_f32(inner)
        h = 0.5 * pre * (1.0 + th)
        d_inner = 0.7978845608028654 * (1.0 + 0.134145 * pre * pre)
        g = 0.5 * (1.0 + th) + 0.5 * pre * (1.0 - th * th) * d_inner
    else:
        h = pre
        g = pre * 0.0 + 1.0
    return h, g
