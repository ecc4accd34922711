"""``policy.export`` / ``vgm2p export``: a ``torch.export`` program of one-step sampling that
runs where ``vgm2p_fast`` cannot be imported and returns the actions ``policy.act`` returns
(``vgm2p_fast/policy/export.py``, ``docs/deploy.md``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.cli import main
from vgm2p_fast.policy import MLPPolicy
from vgm2p_fast.policy.export import export_policy

OBS, N = 5, 3
BATCHES = (1, 9)  # decentralised execution and a batch of envs (traced at B = 2)
ROOT = Path(__file__).resolve().parents[1]
# A process that cannot import vgm2p_fast: a meta-path finder placed before every other one
# (the editable install's finder included) refuses the package; `python -I` also drops the
# working directory, PYTHONPATH and user site from sys.path.
BLOCKER = """
import importlib.abc, sys
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "vgm2p_fast" or name.startswith("vgm2p_fast."):
            raise ModuleNotFoundError(f"{name} is blocked in this process")
sys.meta_path.insert(0, _Blocker())
try:
    import vgm2p_fast
except ModuleNotFoundError as exc:
    PROOF = str(exc)
else:
    raise SystemExit("vgm2p_fast is importable: the test proves nothing")
"""
RUNNER = BLOCKER + """
import torch
folder = sys.argv[1]
inputs = torch.load(f"{folder}/inputs.pt")
outputs = {}
for name, cases in inputs.items():
    actor = torch.export.load(f"{folder}/{name}.pt2").module()
    outputs[name] = [actor(*args) for args in cases]
assert not any(m.split(".")[0] == "vgm2p_fast" for m in sys.modules)
torch.save({"outputs": outputs, "proof": PROOF}, f"{folder}/outputs.pt")
"""


def _policy(kind: str) -> vf.MeanFlowPolicy | MLPPolicy:
    """``shared`` / ``per_agent`` MeanFlow or ``mlp``, ``-discrete`` or continuous; continuous
    MeanFlow policies have per-agent bounds (N, D) except ``shared-continuous-d``."""
    torch.manual_seed(0)
    discrete = kind.endswith("discrete")
    dim = 4 if discrete else 3
    low = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, -1.0, -1.0], [0.0, 0.5, -3.0]])
    bounds = {} if discrete else {"action_low": low, "action_high": low + 1.5}
    if kind.startswith("mlp"):
        policy = MLPPolicy(OBS, dim, N, discrete, hidden_dims=(16, 16), **bounds)
    else:
        if kind == "shared-continuous-d":
            bounds = {"action_low": [-2.0, -1.0, 0.0], "action_high": [2.0, 1.0, 3.0]}
        policy = vf.MeanFlowPolicy(OBS, dim, N, discrete, hidden_dims=(16, 12), n_tokens=3,
                                   share_parameters=not kind.startswith("per_agent"), **bounds)
    policy.set_obs_normalization(torch.randn(OBS), torch.rand(OBS) + 0.5)
    return policy


# name -> (policy kind, test-time guidance baked in)
CASES = {
    "shared-continuous": ("shared-continuous", 1.0),
    "shared-continuous-guided": ("shared-continuous-d", 2.5),
    "shared-discrete": ("shared-discrete", 1.0),
    "shared-discrete-guided": ("shared-discrete", 2.0),
    "per_agent-continuous-guided": ("per_agent-continuous", 1.5),
    "per_agent-discrete": ("per_agent-discrete", 1.0),
    "mlp-continuous": ("mlp-continuous", 1.0),
    "mlp-discrete": ("mlp-discrete", 1.0),
}


def _args(policy, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, N, OBS, generator=g) * 2
    noise = torch.randn(batch, N, policy.action_dim, generator=g)
    if not policy.discrete:
        return obs, noise
    avail = torch.rand(batch, N, policy.action_dim, generator=g) < 0.4
    avail[..., -1] = True
    return obs, avail, noise


def _act(policy, guidance: float, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    avail = args[1] if policy.discrete else None
    if isinstance(policy, MLPPolicy):
        return policy.act(args[0], avail)
    return policy.act(args[0], avail, noise=args[-1], test_guidance=guidance)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported, run in ONE subprocess that cannot import vgm2p_fast."""
    folder = tmp_path_factory.mktemp("export")
    policies, inputs = {}, {}
    for name, (kind, guidance) in CASES.items():
        policy = _policy(kind)
        export_policy(policy, folder / f"{name}.pt2", test_guidance=guidance)
        policies[name] = (policy, guidance)
        inputs[name] = [_args(policy, b, seed) for seed, b in enumerate(BATCHES)]
    torch.save(inputs, folder / "inputs.pt")
    res = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(folder)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = torch.load(folder / "outputs.pt")
    return folder, policies, inputs, result


def test_the_runner_cannot_import_the_library(exported):
    assert "vgm2p_fast is blocked" in exported[3]["proof"]


@pytest.mark.parametrize("name", list(CASES))
def test_exported_actions_equal_act_at_two_batch_sizes(exported, name):
    _, policies, inputs, result = exported
    policy, guidance = policies[name]
    for args, got in zip(inputs[name], result["outputs"][name]):
        want = _act(policy, guidance, args)
        assert got.shape == want.shape and got.dtype == want.dtype
        if policy.discrete:
            assert torch.equal(got, want), name
            avail = args[1]  # masks obeyed: every chosen action is available
            assert bool(avail.gather(-1, got.unsqueeze(-1)).all())
        else:  # the same op sequence as act: equal up to float32 round-off
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=name)
            low, high = policy.action_low, policy.action_high  # (N, D) per agent, or (D,)
            assert bool(((got >= low) & (got <= high)).all())


def test_guidance_is_baked_in(exported):
    """The guided program differs from the unguided act (w = 2.5 is not a no-op)."""
    _, policies, inputs, result = exported
    policy, _ = policies["shared-continuous-guided"]
    args = inputs["shared-continuous-guided"][1]
    unguided = policy.act(args[0], noise=args[1])
    assert not torch.allclose(result["outputs"]["shared-continuous-guided"][1], unguided)


def test_metadata_and_runtime_checks(exported):
    folder = exported[0]
    extra = {"vgm2p_actor.json": ""}
    actor = torch.export.load(folder / "shared-discrete.pt2", extra_files=extra).module()
    meta = json.loads(extra["vgm2p_actor.json"])
    assert meta["inputs"] == ["obs", "avail_actions", "noise"] and meta["n_agents"] == N
    assert meta["discrete"] and meta["action_dim"] == 4 and meta["test_guidance"] == 1.0
    obs, avail, noise = _args(_policy("shared-discrete"), 4, 0)
    bad = obs.clone()
    bad[2, 1, 0] = float("inf")
    with pytest.raises(RuntimeError, match="obs: expected finite"):
        actor(bad, avail, noise)
    empty = avail.clone()
    empty[1, 2] = False
    with pytest.raises(RuntimeError, match="avail_actions"):
        actor(obs, empty, noise)


def test_export_refuses_bad_arguments(tmp_path):
    policy = _policy("shared-continuous")
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="test_guidance"):
            policy.export(tmp_path / "a.pt2", test_guidance=bad)
    with pytest.raises(ValueError, match="MLPPolicy has no guidance"):
        export_policy(_policy("mlp-continuous"), tmp_path / "a.pt2", test_guidance=2.0)
    assert not (tmp_path / "a.pt2").exists()


def test_export_of_a_policy_made_in_inference_mode(tmp_path):
    """Inference tensors have no version counters to fold on; export works on a copy."""
    with torch.inference_mode():
        frozen = vf.MeanFlowPolicy(OBS, 3, N, hidden_dims=(8,))
        frozen.export(tmp_path / "a.pt2")
        obs, noise = torch.randn(2, N, OBS), torch.randn(2, N, 3)
        want = frozen.act(obs, noise=noise)
    actor = torch.export.load(tmp_path / "a.pt2").module()
    torch.testing.assert_close(actor(obs, noise), want, rtol=1e-6, atol=1e-6)


def test_cli_export(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    policy = _policy("shared-discrete")
    policy.save(run / "policy.pt", metadata={"env": "toy", "test_guidance": 2.0})
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "a.pt2")]) == 0
    assert "test guidance 2" in capsys.readouterr().out
    actor = torch.export.load(tmp_path / "a.pt2").module()
    args = _args(policy, 3, 1)
    assert torch.equal(actor(*args), policy.act(args[0], args[1], noise=args[2],
                                                test_guidance=2.0))
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "b.pt2"),
                 "--test-guidance", "1"]) == 0
    for argv, where in ((["--checkpoint", str(tmp_path / "nope")], "no policy.pt there"),
                        (["--checkpoint", str(run), "--out", str(tmp_path / "x" / "a.pt2")],
                         "does not exist")):
        argv = argv if "--out" in argv else [*argv, "--out", str(tmp_path / "c.pt2")]
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vgm2p: error:") and where in err and len(err.splitlines()) == 1


def test_deploy_example_runs_without_the_library(exported):
    """examples/deploy_actor.py in a process that cannot import vgm2p_fast; its actions are
    policy.act's on the inputs it documents (one generator: obs, noise, mask per step)."""
    folder, policies, _, _ = exported
    script = BLOCKER + "import runpy\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], " \
        "run_name='__main__')\n"
    for name in ("shared-continuous-guided", "per_agent-discrete"):
        res = subprocess.run([sys.executable, "-I", "-c", script,
                              str(ROOT / "examples" / "deploy_actor.py"),
                              str(folder / f"{name}.pt2"), "--batch", "4", "--steps", "2",
                              "--seed", "3"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        lines = res.stdout.strip().splitlines()
        policy, guidance = policies[name]
        g = torch.Generator().manual_seed(3)
        for line in lines:
            obs = torch.randn(4, N, OBS, generator=g)
            noise = torch.randn(4, N, policy.action_dim, generator=g)
            avail = None
            if policy.discrete:
                avail = torch.rand(4, N, policy.action_dim, generator=g) < 0.5
                avail[..., 0] = True
            want = policy.act(obs, avail, noise=noise, test_guidance=guidance)
            torch.testing.assert_close(torch.tensor(json.loads(line), dtype=want.dtype), want,
                                       rtol=1e-6, atol=1e-6)
        assert len(lines) == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="AOTInductor needs a C++ compiler")
def test_aoti_package_equals_the_program(exported, tmp_path):
    from torch._inductor import aoti_load_package

    from vgm2p_fast.policy.export import compile_aoti

    folder, policies, inputs, _ = exported
    package = compile_aoti(folder / "shared-continuous-guided.pt2", tmp_path / "a_aoti.pt2")
    runner = aoti_load_package(str(package))
    policy, guidance = policies["shared-continuous-guided"]
    for args in inputs["shared-continuous-guided"]:
        torch.testing.assert_close(runner(*args), _act(policy, guidance, args),
                                   rtol=1e-5, atol=1e-5)
