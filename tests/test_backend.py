"""Backend selection (docs/design.md 2): auto, per-call and VGM2P_BACKEND forcing, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast import backends

CPU = torch.device("cpu")


def _ext(ok: bool, why: str = ""):
    """A stand-in for ``backends.ext_status``."""
    return lambda op, dev: backends.Status(ok, why)


def test_package_imports_without_triton_or_the_extension():
    code = ("import sys; import vgm2p_fast; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert 'vgm2p_fast.kernels' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "", "TRITON_INTERPRET": "0"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_auto_never_picks_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.resolve("linear_jvp", ("torch", "triton"), CPU) == "torch"


def test_auto_prefers_the_extension_when_it_has_a_kernel(monkeypatch):
    monkeypatch.setattr(backends, "ext_status", _ext(True))
    assert backends.resolve("gae", ("torch", "ext"), CPU) == "ext"
    monkeypatch.setattr(backends, "ext_status", _ext(False, "not built"))
    assert backends.resolve("gae", ("torch", "ext"), CPU) == "torch"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setattr(backends, "ext_status", _ext(False, "not built; rebuild"))
    with pytest.raises(vf.BackendUnavailableError, match=r"gae: backend='ext'.*not built"):
        backends.resolve("gae", ("torch", "ext"), CPU, "ext")
    monkeypatch.setenv("VGM2P_BACKEND", "gae=ext")
    with pytest.raises(vf.BackendUnavailableError, match=r"VGM2P_BACKEND='ext'"):
        backends.resolve("gae", ("torch", "ext"), CPU)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(vf.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        vf.ops.cfg_sample(torch.zeros(2, 3), torch.zeros(2, 3), backend="triton")


def test_unknown_backend_for_an_op_is_a_value_error(monkeypatch):
    with pytest.raises(ValueError, match=r"expected one of \('torch', 'ext', 'auto'\)"):
        backends.resolve("gae", ("torch", "ext"), CPU, "triton")
    monkeypatch.setenv("VGM2P_BACKEND", "cuda")
    with pytest.raises(ValueError, match="VGM2P_BACKEND must be one of"):
        backends.resolve("gae", ("torch", "ext"), CPU)


def test_global_env_name_applies_only_to_ops_that_have_it(monkeypatch):
    monkeypatch.setenv("VGM2P_BACKEND", "torch")
    monkeypatch.setattr(backends, "ext_status", _ext(True))
    assert backends.resolve("gae", ("torch", "ext"), CPU) == "torch"
    monkeypatch.setenv("VGM2P_BACKEND", "ext")  # linear_jvp has no ext: it stays on auto
    assert backends.resolve("linear_jvp", ("torch", "triton"), CPU) == "torch"
    assert backends.resolve("gae", ("torch", "ext"), CPU) == "ext"
    monkeypatch.setenv("VGM2P_BACKEND", "gae=torch,linear_jvp=auto")
    assert backends.resolve("gae", ("torch", "ext"), CPU) == "torch"


def test_implementation_returns_the_reference_for_torch():
    fn = backends.implementation("cfg_sample", ("torch", "triton"), CPU, "torch",
                                 vf.ops.cfg_sample_ref)
    assert fn is vf.ops.cfg_sample_ref


def test_status_api_says_what_is_there_and_why_not(monkeypatch):
    """The public status calls ``vgm2p info`` prints: ok with a detail (file, version), or
    not ok with the reason; ``status`` of a backend on a device type it cannot serve."""
    ext = backends.extension_status()
    assert isinstance(ext, backends.Status)
    assert ext.detail.endswith(".so") if ext.ok else "not importable" in ext.detail
    tri = backends.triton_installed()
    assert tri.ok == (tri.detail[:1].isdigit())  # a version such as "3.9.0", else a reason
    assert backends.status("torch", "gae", CPU) == (True, "")
    meta = torch.device("meta")
    assert not backends.status("triton", "cfg_sample", meta).ok
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = backends.status("triton", "cfg_sample", CPU)
    assert not ok and "TRITON_INTERPRET=1" in why


def test_private_alias_reexports_the_public_api():
    """``vgm2p_fast._backend`` (kept while old imports move over) is the same objects."""
    from vgm2p_fast import _backend

    for name in backends.__all__:
        assert getattr(_backend, name) is getattr(backends, name), name
    assert vf.BackendUnavailableError is backends.BackendUnavailableError


def _package_imports(path):
    """Absolute names of the vgm2p_fast modules ``path`` imports (lazy imports included)."""
    import ast
    from pathlib import Path

    pkg = Path(vf.__file__).parent
    mod = ".".join(("vgm2p_fast", *path.relative_to(pkg).with_suffix("").parts))
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("vgm2p_fast")}
        elif isinstance(node, ast.ImportFrom):
            src = node.module or ""
            if node.level:
                src = ".".join([*base[: len(base) - node.level + 1], *filter(None, [src])])
            if src.startswith("vgm2p_fast"):
                names.add(src)
    return names


def test_layering_is_one_way():
    """ops -> backends -> _checks, ops -> kernels only through backends (by name, lazily);
    kernels import nothing of the package but ``_checks`` and each other."""
    from pathlib import Path

    pkg = Path(vf.__file__).parent
    for path in sorted((pkg / "kernels").glob("*.py")):
        outside = {m for m in _package_imports(path) if not m.startswith("vgm2p_fast.kernels")}
        assert outside <= {"vgm2p_fast._checks"}, (path.name, outside)
    assert _package_imports(pkg / "backends.py") == {"vgm2p_fast._checks"}
    assert _package_imports(pkg / "_checks.py") == set()
    for path in sorted((pkg / "ops").glob("*.py")):
        bad = {m for m in _package_imports(path) if m.startswith("vgm2p_fast.kernels")}
        assert not bad, (path.name, bad)
