"""Backend selection (DESIGN section 2): auto, per-call and VGM2P_BACKEND forcing, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast import _backend

CPU = torch.device("cpu")


def test_package_imports_without_triton_or_the_extension():
    code = ("import sys; import vgm2p_fast; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert 'vgm2p_fast.kernels' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "", "TRITON_INTERPRET": "0"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_auto_never_picks_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.resolve("linear_jvp", ("torch", "triton"), CPU) == "torch"


def test_auto_prefers_the_extension_when_it_has_a_kernel(monkeypatch):
    monkeypatch.setattr(_backend, "ext_status", lambda op, dev: (True, ""))
    assert _backend.resolve("gae", ("torch", "ext"), CPU) == "ext"
    monkeypatch.setattr(_backend, "ext_status", lambda op, dev: (False, "not built"))
    assert _backend.resolve("gae", ("torch", "ext"), CPU) == "torch"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setattr(_backend, "ext_status", lambda op, dev: (False, "not built; rebuild"))
    with pytest.raises(vf.BackendUnavailableError, match=r"gae: backend='ext'.*not built"):
        _backend.resolve("gae", ("torch", "ext"), CPU, "ext")
    monkeypatch.setenv("VGM2P_BACKEND", "gae=ext")
    with pytest.raises(vf.BackendUnavailableError, match=r"VGM2P_BACKEND='ext'"):
        _backend.resolve("gae", ("torch", "ext"), CPU)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(vf.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        vf.ops.cfg_sample(torch.zeros(2, 3), torch.zeros(2, 3), backend="triton")


def test_unknown_backend_for_an_op_is_a_value_error(monkeypatch):
    with pytest.raises(ValueError, match=r"expected one of \('torch', 'ext', 'auto'\)"):
        _backend.resolve("gae", ("torch", "ext"), CPU, "triton")
    monkeypatch.setenv("VGM2P_BACKEND", "cuda")
    with pytest.raises(ValueError, match="VGM2P_BACKEND must be one of"):
        _backend.resolve("gae", ("torch", "ext"), CPU)


def test_global_env_name_applies_only_to_ops_that_have_it(monkeypatch):
    monkeypatch.setenv("VGM2P_BACKEND", "torch")
    monkeypatch.setattr(_backend, "ext_status", lambda op, dev: (True, ""))
    assert _backend.resolve("gae", ("torch", "ext"), CPU) == "torch"
    monkeypatch.setenv("VGM2P_BACKEND", "ext")  # linear_jvp has no ext: it stays on auto
    assert _backend.resolve("linear_jvp", ("torch", "triton"), CPU) == "torch"
    assert _backend.resolve("gae", ("torch", "ext"), CPU) == "ext"
    monkeypatch.setenv("VGM2P_BACKEND", "gae=torch,linear_jvp=auto")
    assert _backend.resolve("gae", ("torch", "ext"), CPU) == "torch"


def test_implementation_returns_the_reference_for_torch():
    fn = _backend.implementation("cfg_sample", ("torch", "triton"), CPU, "torch",
                                 vf.ops.cfg_sample_ref)
    assert fn is vf.ops.cfg_sample_ref
