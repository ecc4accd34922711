"""Input validation at the public boundary (flash-attention style: kernels assume valid input).

Every failure is a ``ValueError`` that names the argument, what was expected and what was found,
except a backend that cannot run, which is a :class:`BackendUnavailableError`. This module
imports nothing of the package, so that ``vgm2p_fast.kernels`` can raise that error too without
importing the dispatcher (``vgm2p_fast.backends``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """A backend was forced (per call or by ``VGM2P_BACKEND``) but cannot run here; the message
    says why and how to fix it. Exported as ``vgm2p_fast.BackendUnavailableError``."""


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    shape: Sequence[int | None] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Validate ``x``; ``shape`` may use None for "any size" in a dimension."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, found shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, "
                         f"found shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name}: expected dtype in ({want}), found {str(x.dtype)[6:]}")
    if shape is not None:
        ok = len(shape) == x.dim() and all(s is None or s == d for s, d in zip(shape, x.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, found {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, found one on {x.device}")
    return x


def check_same_shape(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """All ``tensors`` share the first one's shape."""
    ref = tuple(tensors[0].shape)
    for name, x in zip(names[1:], tensors[1:]):
        if tuple(x.shape) != ref:
            raise ValueError(f"{name}: expected shape {ref} (the shape of {names[0]}), "
                             f"found {tuple(x.shape)}")


def check_avail(avail: torch.Tensor, name: str = "avail_actions") -> None:
    """Every row of a (..., K) availability mask must allow at least one action."""
    empty = ~avail.any(dim=-1)
    if bool(empty.any()):
        idx = [int(i) for i in empty.nonzero()[0]]
        where = f"row {idx[0]}, agent {idx[1]}" if len(idx) == 2 else f"index {tuple(idx)}"
        raise ValueError(f"{name}: {where} marks every action unavailable "
                         f"({int(empty.sum())} such rows in all); expected at least one True")
