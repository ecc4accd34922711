"""Backend selection shared by every op (docs: backends).

Each public op implements a subset of three backends:

- ``torch``:  pure-torch math, always available (the reference, and the CPU fast path).
- ``ext``:    the compiled extension ``vgm2p_fast._C`` (C++ on CPU, CUDA on GPU), optional.
- ``triton``: fused Triton kernels (``vgm2p_fast.kernels``), CUDA tensors only, or CPU tensors
              under ``TRITON_INTERPRET=1`` (the interpreter: slow, for tests only).

``auto`` picks the fastest one that can run on the input's device: triton > ext > torch.
A backend is forced per call (``backend="ext"``) or for the whole process with the environment
variable ``VGM2P_BACKEND``: either one name (``VGM2P_BACKEND=torch``, applied to every op that
implements that backend; the others keep ``auto``) or per-op pairs
(``VGM2P_BACKEND=gae=ext,linear_jvp=torch``, strict). A forced backend that cannot run raises
:class:`BackendUnavailableError` with the reason and the fix; it never silently falls back.

Public API (what ``ops/``, ``vgm2p info`` and users call):

- :func:`extension_status`, :func:`triton_installed`: is the extension built / triton installed.
- :func:`status` (and :func:`ext_status`, :func:`triton_status`): can a backend run an op on a
  device, and why not.
- :func:`resolve`: the backend name one call gets; :func:`implementation`: the function to call.
- :func:`report`: what ``auto`` picks per op and why the faster ones were skipped.

Layering: ``ops -> backends -> _checks``; the kernels are imported here lazily, by name, only
when the ``triton`` backend is chosen, and they import nothing of the package but ``_checks``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

from ._checks import BackendUnavailableError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "PREFERENCE",
    "BackendUnavailableError",
    "Status",
    "ext_status",
    "extension_status",
    "implementation",
    "report",
    "resolve",
    "status",
    "triton_installed",
    "triton_status",
]

BACKENDS = ("torch", "ext", "triton")
ENV_VAR = "VGM2P_BACKEND"
PREFERENCE = ("triton", "ext", "torch")  # the order ``auto`` tries them in


class Status(NamedTuple):
    """Whether something can run, with a detail: where it is / its version when ``ok``, why not
    and the fix otherwise. Unpacks as ``ok, detail = ...``."""

    ok: bool
    detail: str


@functools.cache
def extension_status() -> Status:
    """Whether the compiled extension ``vgm2p_fast._C`` imports; detail: its file, or why not.

    Cached: the import is tried once per process.
    """
    try:
        mod = importlib.import_module("vgm2p_fast._C")
    except ImportError as exc:
        return Status(False, (
            f"the compiled extension vgm2p_fast._C is not importable ({exc}); reinstall with "
            "`pip install --no-build-isolation -e .` after installing torch (VGM2P_BUILD_EXT=1 "
            "turns a failed build into an error that shows the compiler output)"))
    return Status(True, str(mod.__file__))


@functools.cache
def triton_installed() -> Status:
    """Whether triton imports; detail: its version, or why not. Importing it costs ~1 s, so
    this is only called when a ``triton`` backend is considered (cached afterwards)."""
    try:
        triton = importlib.import_module("triton")
    except ImportError as exc:
        return Status(False, f"triton is not installed ({exc}); `pip install -e '.[triton]'`")
    return Status(True, str(triton.__version__))


def ext_status(op: str, device: torch.device) -> Status:
    """Whether ``torch.ops.vgm2p_fast.<op>`` has a kernel for ``device``, and why not."""
    ext = extension_status()
    if not ext.ok:
        return ext
    if device.type not in ("cpu", "cuda"):
        return Status(False, f"the extension has no kernels for device type {device.type!r}")
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vgm2p_fast::{op}", key):
        fix = (
            "rebuild with a CUDA build of torch and nvcc on PATH (docs/gpu_check.md, or "
            "scripts/build_cuda_ext.sh)"
            if key == "CUDA"
            else "rebuild the extension"
        )
        return Status(False, f"vgm2p_fast._C was built without a {key} kernel for {op}; {fix}")
    return Status(True, ext.detail)


def triton_status(device: torch.device) -> Status:
    """Whether the Triton kernels can run on ``device`` (CUDA, or CPU under the interpreter)."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return Status(False, (
            "Triton kernels run on CUDA tensors; on CPU tensors only under the interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported: slow, for tests only)"))
    if device.type not in ("cpu", "cuda"):
        return Status(False, f"no Triton kernels for device type {device.type!r}")
    return triton_installed()


def status(backend: str, op: str, device: torch.device) -> Status:
    """Whether ``backend`` can run ``op`` on ``device``, with the reason when it cannot."""
    if backend == "torch":
        return Status(True, "")
    if backend == "ext":
        return ext_status(op, device)
    return triton_status(device)


def _env_choice(op: str, implemented: Sequence[str]) -> str | None:
    """The backend ``VGM2P_BACKEND`` forces for ``op``, or None (auto)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw or raw == "auto":
        return None
    if "=" not in raw:
        if raw not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be one of {(*BACKENDS, 'auto')} or op=backend "
                             f"pairs, found {raw!r}")
        # One global name applies to the ops that have that backend; the rest stay on auto.
        return raw if raw in implemented else None
    for item in raw.split(","):
        name, _, choice = item.partition("=")
        if name.strip() == op:
            choice = choice.strip()
            return None if choice == "auto" else choice
    return None


def resolve(op: str, implemented: Sequence[str], device: torch.device,
            backend: str | None = None) -> str:
    """The backend one call of ``op`` on ``device`` gets: ``"torch"``, ``"ext"`` or ``"triton"``.

    Args:
        op: the op's name (``vgm2p_fast.ops.REGISTRY`` key).
        implemented: the backends the op has (its ``IMPLEMENTED``).
        device: the device of the op's inputs.
        backend: None/``"auto"`` (use ``VGM2P_BACKEND``, else the fastest available; the
            interpreter is never an automatic choice) or a name to force.

    Raises:
        ValueError: a name ``op`` does not implement (or a malformed ``VGM2P_BACKEND``).
        BackendUnavailableError: a forced backend that cannot run here (the message says why).

    Under ``torch.compile`` this function is a constant: dynamo calls it once at trace time and
    bakes the answer into the graph (it cannot trace the extension probe inside), so every op
    traces with ``fullgraph=True``; a later change of ``VGM2P_BACKEND`` does not reach an
    already compiled graph.
    """
    forced = None if backend in (None, "auto") else backend
    source = "backend="
    if forced is None:
        forced = _env_choice(op, implemented)
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
    for name in PREFERENCE:
        # The interpreter is never an automatic choice: it is only for tests.
        interpreter = name == "triton" and device.type != "cuda"
        if name in implemented and not interpreter and status(name, op, device).ok:
            return name
    return "torch"


# = torch.compiler.assume_constant_result(resolve) without its `import torch._dynamo` (which
# pulls sympy and triton in: ~3 s that `import vgm2p_fast` must not pay): the decorator only
# sets this flag (torch 2.4 to 2.13). The fullgraph tests of every op (tests/test_gae.py,
# tests/test_linear_jvp.py, tests/test_mlp_cfg_sample.py) fail if that ever changes.
resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]


def implementation(op: str, implemented: Sequence[str], device: torch.device,
                   backend: str | None, ref: Callable) -> Callable:
    """The unchecked function that runs ``op`` on ``device`` with the resolved backend.

    Every backend of an op takes the arguments of its ``<op>_ref`` in the same order:
    ``torch`` is ``ref``, ``ext`` is ``torch.ops.vgm2p_fast.<op>``, ``triton`` is
    ``vgm2p_fast.kernels.<op>.<op>`` (imported here, lazily, so that the package imports
    without triton). Callers that validate once and call many times (the policy runs ~6
    layers per forward) keep the returned function instead of paying the checks per call.
    Raises as :func:`resolve`.
    """
    name = resolve(op, implemented, device, backend)
    if name == "ext":
        return getattr(torch.ops.vgm2p_fast, op)
    if name == "triton":
        return getattr(sys.modules[_import_kernel(op)], op)
    return ref


def _import_kernel(op: str) -> str:
    """Import ``vgm2p_fast.kernels.<op>`` (and triton) on first use; returns the module name."""
    return importlib.import_module(f"vgm2p_fast.kernels.{op}").__name__


# A constant for dynamo too: it refuses to trace importlib.import_module, so the import runs
# once at trace time and the graph reads the module from sys.modules (which dynamo traces).
_import_kernel._dynamo_marked_constant = True  # type: ignore[attr-defined]


def report(ops: Mapping[str, Sequence[str]], device: torch.device
           ) -> list[tuple[str, str, str]]:
    """For ``vgm2p info``: per op of ``ops`` (name -> implemented backends, e.g.
    ``vgm2p_fast.ops.REGISTRY``), ``(op, backend auto picks on device, why the faster ones
    were skipped)``."""
    rows = []
    for op, implemented in ops.items():
        chosen = resolve(op, implemented, device)
        skipped = []
        for name in PREFERENCE[: PREFERENCE.index(chosen)]:
            if name in implemented:
                on_cpu_triton = name == "triton" and device.type == "cpu"
                why = ("CUDA tensors only (the interpreter runs it on CPU, for tests)"
                       if on_cpu_triton else status(name, op, device).detail)
                skipped.append(f"{name}: {why}")
        rows.append((op, chosen, "; ".join(skipped)))
    return rows
