"""Backend selection (docs/design.md 2): auto, per-call and VGM2P_BACKEND forcing, clear errors."""

from __future__ import annotations

import os
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


def _package_imports(path, lazy=True):
    """Absolute names of the vgm2p_fast modules ``path`` imports; ``lazy=False``: only those
    imported at module level (not inside a function)."""
    import ast
    from pathlib import Path

    pkg = Path(vf.__file__).parent
    mod = ".".join(("vgm2p_fast", *path.relative_to(pkg).with_suffix("").parts))
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else tree.body
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("vgm2p_fast")}
        elif isinstance(node, ast.ImportFrom):
            src = node.module or ""
            if node.level:
                src = ".".join([*base[: len(base) - node.level + 1], *filter(None, [src])])
            if src == "vgm2p_fast":  # from vgm2p_fast import ops: the module vgm2p_fast.ops
                names |= {f"{src}.{a.name}" for a in node.names}
            elif src.startswith("vgm2p_fast"):
                names.add(src)
    return names


def test_layering_is_one_way():
    """ops -> backends -> _checks; ops -> kernels only lazily (inside functions); kernels import
    nothing of the package but ``_checks`` and each other; backends finds kernels by name."""
    from pathlib import Path

    pkg = Path(vf.__file__).parent
    for path in sorted((pkg / "kernels").glob("*.py")):
        outside = {m for m in _package_imports(path) if not m.startswith("vgm2p_fast.kernels")}
        assert outside <= {"vgm2p_fast._checks"}, (path.name, outside)
    assert _package_imports(pkg / "backends.py") == {"vgm2p_fast._checks"}
    assert _package_imports(pkg / "_checks.py") == set()
    for path in sorted((pkg / "ops").glob("*.py")):
        eager = {m for m in _package_imports(path, lazy=False)
                 if m.startswith("vgm2p_fast.kernels")}
        assert not eager, (path.name, eager)


def _op_calls():
    """op -> fn(backend) calling the PUBLIC op on small CPU inputs."""
    gen = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x, w, b, dx = mk(5, 7), mk(6, 7), mk(6), mk(5, 3)
    u, d, v, t, z = mk(4, 3), mk(4, 3), mk(4, 3), mk(4).abs(), mk(5, 3)
    pack = vf.ops.pack_mlp([mk(8, 7), mk(3, 8)], [mk(8), mk(3)])
    r, done = mk(2, 9), torch.rand(2, 9, generator=gen) < 0.2
    ops = vf.ops
    return {
        "linear_jvp": lambda be: ops.linear_jvp(x, w, b, dx, backend=be),
        "meanflow_target_loss": lambda be: ops.meanflow_target_loss(u, d, v, t, 0.5 * t,
                                                                    backend=be),
        "cfg_sample": lambda be: ops.cfg_sample(u, d, v, 2.0, backend=be),
        "mlp_cfg_sample": lambda be: ops.mlp_cfg_sample(x, pack, z, backend=be),
        "gae": lambda be: ops.gae(r, r, r, done, done, backend=be),
    }


def _runnable(op):
    """The backends of ``op`` that can run on CPU here (triton: the interpreter, conftest)."""
    return [be for be in vf.ops.REGISTRY[op] if backends.status(be, op, CPU).ok]


@pytest.mark.parametrize("op", sorted(vf.ops.REGISTRY))
def test_every_op_dispatches_under_torch_compile_fullgraph(op):
    """The public op, checks and dispatch included, traces with fullgraph=True on every backend
    that runs here (resolve and the kernel import are dynamo constants), the backend's kernel
    is a node of the graph, and the compiled result is the eager one."""
    call = _op_calls()[op]
    interpreted = "triton" in vf.ops.REGISTRY[op] and os.environ.get("TRITON_INTERPRET") == "1"
    assert "torch" in _runnable(op) and (not interpreted or "triton" in _runnable(op))
    for be in _runnable(op):
        graphs = []

        def capture(gm, _inputs, graphs=graphs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()  # one code object for every op and backend: fresh caches
        got = torch.compile(lambda be=be: call(be), fullgraph=True, backend=capture)()
        nodes = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
        kernel = {"triton": f"vgm2p_fast.triton_{op}", "ext": f"vgm2p_fast.{op}"}
        if be in kernel:  # the op packet or its .default overload
            assert nodes & {kernel[be], f"{kernel[be]}.default"}, (be, nodes)
        else:
            assert not any(n.startswith("vgm2p_fast.") for n in nodes), nodes
        want = call(be)
        for g, w_ in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want))):
            if g is not None:
                torch.testing.assert_close(g, w_)
