"""Backend selection shared by every op (DESIGN section 2).

Each public op implements a subset of three backends:

- ``torch``:  pure-torch math, always available (the reference, and the CPU fast path).
- ``ext``:    the compiled extension ``vgm2p_fast._C`` (C++ on CPU, CUDA on GPU), optional.
- ``triton``: fused Triton kernels, CUDA tensors only, or CPU tensors under ``TRITON_INTERPRET=1``
              (the interpreter: slow, for tests only).

``auto`` picks the fastest one that can run on the input's device: triton > ext > torch.
A backend is forced per call (``backend="ext"``) or for the whole process with the environment
variable ``VGM2P_BACKEND``: either one name (``VGM2P_BACKEND=torch``, applied to every op that
implements that backend; the others keep ``auto``) or per-op pairs
(``VGM2P_BACKEND=gae=ext,linear_jvp=torch``, strict). A forced backend that cannot run raises
:class:`BackendUnavailableError` with the reason and the fix; it never silently falls back.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Sequence
from types import ModuleType

import torch

BACKENDS = ("torch", "ext", "triton")
ENV_VAR = "VGM2P_BACKEND"
_PREFERENCE = ("triton", "ext", "torch")


class BackendUnavailableError(RuntimeError):
    """A backend was forced (per call or by ``VGM2P_BACKEND``) but cannot run here."""


@functools.cache
def _load_ext() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("vgm2p_fast._C"), ""
    except ImportError as exc:
        return None, (
            f"the compiled extension vgm2p_fast._C is not importable ({exc}); reinstall with "
            "`pip install --no-build-isolation -e .` after installing torch (VGM2P_BUILD_EXT=1 "
            "turns a failed build into an error that shows the compiler output)"
        )


def ext_status(op: str, device: torch.device) -> tuple[bool, str]:
    """Whether ``torch.ops.vgm2p_fast.<op>`` has a kernel for ``device``, and why not."""
    mod, reason = _load_ext()
    if mod is None:
        return False, reason
    key = "CUDA" if device.type == "cuda" else "CPU"
    if device.type not in ("cpu", "cuda"):
        return False, f"the extension has no kernels for device type {device.type!r}"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vgm2p_fast::{op}", key):
        fix = (
            "rebuild with a CUDA build of torch and nvcc on PATH (see README, 'CUDA build')"
            if key == "CUDA"
            else "rebuild the extension"
        )
        return False, f"vgm2p_fast._C was built without a {key} kernel for {op}; {fix}"
    return True, ""


@functools.cache
def _triton_import() -> tuple[bool, str]:
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return False, f"triton is not installed ({exc}); `pip install -e '.[triton]'`"
    return True, ""


def triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` (CUDA, or CPU under the interpreter)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False, (
            "Triton kernels run on CUDA tensors; on CPU tensors only under the interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported: slow, for tests only)"
        )
    if device.type not in ("cpu", "cuda"):
        return False, f"no Triton kernels for device type {device.type!r}"
    return _triton_import()


def status(backend: str, op: str, device: torch.device) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` on ``device``, with the reason when it cannot."""
    if backend == "torch":
        return True, ""
    if backend == "ext":
        return ext_status(op, device)
    return triton_status(device)


def _env_choice(op: str, implemented: Sequence[str]) -> tuple[str | None, bool]:
    """The backend ``VGM2P_BACKEND`` forces for ``op`` (or None), and whether it is strict."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw or raw == "auto":
        return None, False
    if "=" not in raw:
        if raw not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {(*BACKENDS, 'auto')} or op=backend "
                             f"pairs, found {raw!r}")
        # One global name applies to the ops that have that backend; the rest stay on auto.
        return (raw, False) if raw in implemented else (None, False)
    for item in raw.split(","):
        name, _, choice = item.partition("=")
        if name.strip() == op:
            choice = choice.strip()
            return (None, False) if choice == "auto" else (choice, True)
    return None, False


def resolve(op: str, implemented: Sequence[str], device: torch.device,
            backend: str | None = None) -> str:
    """Pick the backend for one call of ``op`` on ``device``.

    ``backend``: None/"auto" (use ``VGM2P_BACKEND`` or the fastest available) or a name to force.
    Raises ``ValueError`` for a name ``op`` does not implement, and
    :class:`BackendUnavailableError` when a forced backend cannot run here.
    """
    forced = None if backend in (None, "auto") else backend
    source = "backend="
    if forced is None:
        forced, _ = _env_choice(op, implemented)
        source = f"{ENV_VAR}="
    if forced is not None:
        if forced not in implemented:
            raise ValueError(f"{op}: {source}{forced!r} is not a backend of this op; "
                             f"expected one of {(*implemented, 'auto')}")
        ok, reason = status(forced, op, device)
        if not ok:
            raise BackendUnavailableError(f"{op}: {source}{forced!r} cannot run on "
                                          f"{device.type}: {reason}")
        return forced
    for name in _PREFERENCE:
        # The interpreter is never an automatic choice: it is only for tests.
        interpreter = name == "triton" and device.type != "cuda"
        if name in implemented and not interpreter and status(name, op, device)[0]:
            return name
    return "torch"


def implementation(op: str, implemented: Sequence[str], device: torch.device,
                   backend: str | None, ref: Callable) -> Callable:
    """The unchecked function that runs ``op`` on ``device`` with the resolved backend.

    Every backend of an op takes the arguments of its ``<op>_ref`` in the same order:
    ``torch`` is ``ref``, ``ext`` is ``torch.ops.vgm2p_fast.<op>``, ``triton`` is
    ``vgm2p_fast.kernels.<op>.<op>`` (imported here, lazily, so that the package imports
    without triton). Callers that validate once and call many times (MeanFlowPolicy runs ~6
    layers per forward) keep the returned function instead of paying the checks per call.
    """
    name = resolve(op, implemented, device, backend)
    if name == "ext":
        return getattr(torch.ops.vgm2p_fast, op)
    if name == "triton":
        return getattr(importlib.import_module(f"vgm2p_fast.kernels.{op}"), op)
    return ref


def report(ops: dict[str, Sequence[str]], device: torch.device) -> list[tuple[str, str, str]]:
    """For ``vgm2p info``: (op, backend auto picks on ``device``, why the faster ones were not)."""
    rows = []
    for op, implemented in ops.items():
        chosen = resolve(op, implemented, device)
        skipped = []
        for name in _PREFERENCE[: _PREFERENCE.index(chosen)]:
            if name in implemented:
                on_cpu_triton = name == "triton" and device.type == "cpu"
                why = ("CUDA tensors only (the interpreter runs it on CPU, for tests)"
                       if on_cpu_triton else status(name, op, device)[1])
                skipped.append(f"{name}: {why}")
        rows.append((op, chosen, "; ".join(skipped)))
    return rows
