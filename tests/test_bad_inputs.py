"""Bad inputs and faults, table by table (issue 13, item 7): own data, run folders, resume,
checkpoints and policy files, CLI options and config files, numbers.

A CLI case runs ``vgm2p_fast.cli.main`` in-process and must exit 2 with exactly one stderr
line ``vgm2p: error: ...`` that names the field or file, no traceback, and no file or folder
under the test's directory created, changed or removed (the refused run wrote nothing, the
earlier run is intact). An API case must raise ValueError naming the argument. Subprocesses
only where the property needs one: stdout purity of ``vgm2p eval --json`` and two runs at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vgm2p_fast import envs
from vgm2p_fast.cli import build_parser, main
from vgm2p_fast.datasets import DatasetError, load_dataset, write_dataset
from vgm2p_fast.policy import MeanFlowPolicy, MLPPolicy, load_policy
from vgm2p_fast.train import RESUMABLE, TrainConfig, config_from, train
from vgm2p_fast.train.config import METHODS
from vgm2p_fast.train.runs import RunLock, checkpoints

TINY = ["--steps", "5", "--value-warmup", "2", "--hidden-dims", "16", "--value-hidden", "16",
        "--batch-size", "16", "--eval-episodes", "0", "--quiet"]


def data(path: Path, *, t: int = 40, n: int = 2, obs_dim: int = 4, act_dim: int = 2,
         discrete: bool = False, env: str = "my-sim", reward_scale: float = 1.0, seed: int = 0,
         **kw) -> Path:
    """A small dataset of 10-step episodes (continuous actions unless ``discrete``)."""
    rng = np.random.default_rng(seed)
    ends = np.zeros(t, bool)
    ends[9::10] = True
    ends[-1] = True
    if discrete:
        actions = rng.integers(0, act_dim, (t, n))
        kw.setdefault("n_actions", act_dim)
    else:
        actions = rng.uniform(-1, 1, (t, n, act_dim)).astype(np.float32)
    write_dataset(path, observations=rng.normal(size=(t, n, obs_dim)).astype(np.float32),
                  actions=actions, rewards=(rng.normal(size=t) * reward_scale).astype(np.float32),
                  terminals=ends, truncations=np.zeros(t, bool), env=env, **kw)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``root``: equal before and after = nothing written."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse's exits included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def refused(argv: list[str], names: list[str], root: Path | None) -> str:
    """Assert the CLI refuses ``argv`` in one line naming ``names``, writing nothing under
    ``root`` (None: a folder another process writes to)."""
    before = tree(root) if root is not None else None
    rc, _, err = run_cli(argv)
    lines = err.splitlines()
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("vgm2p: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert root is None or tree(root) == before, "a refused command changed files"
    return lines[0]


class Lab:
    """The files of one case under ``tmp``: datasets, a trained run, a fresh --out path."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ds = data(tmp / "d.h5")
        self.out = tmp / "fresh"
        self._run: Path | None = None

    @property
    def run(self) -> Path:
        """A finished run: checkpoints at iterations 3, 6 and 7, the newest 2 kept."""
        if self._run is None:
            self._run = self.tmp / "run"
            rc, _, err = run_cli(["train", "--dataset", str(self.ds), "--out", str(self._run),
                                  *TINY, "--checkpoint-every", "3"])
            assert rc == 0, err
            assert [p.name for p in checkpoints(self._run)] == ["checkpoint-6.pt",
                                                                "checkpoint-7.pt"]
        return self._run

    def fill(self, argv: list[str]) -> list[str]:
        fields = {"ds": lambda: self.ds, "out": lambda: self.out, "tmp": lambda: self.tmp,
                  "run": lambda: self.run}
        return [re.sub(r"\{(\w+)\}", lambda m: str(fields[m.group(1)]()), a) for a in argv]


@pytest.fixture
def lab(tmp_path) -> Lab:
    return Lab(tmp_path)


def T(*extra: str) -> list[str]:
    """A tiny ``vgm2p train`` into a fresh folder (later options override earlier ones)."""
    return ["train", "--dataset", "{ds}", "--out", "{out}", *TINY, *extra]


def R(*extra: str) -> list[str]:
    """``vgm2p train --resume`` of the lab's finished run."""
    return ["train", "--resume", "{run}", "--quiet", *extra]


def EVAL(*extra: str) -> list[str]:
    return ["eval", "--checkpoint", "{run}", "--episodes", "1", *extra]


def patch_h5(name: str, edit: Callable[[h5py.File], None], **kw) -> Callable[[Lab], None]:
    """Setup: write ``<tmp>/<name>`` and edit it with h5py (what ``write_dataset`` refuses)."""
    def setup(lab: Lab) -> None:
        path = data(lab.tmp / name, **kw)
        with h5py.File(path, "r+") as f:
            edit(f)
    return setup


def _set(key: str, index: tuple, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        arr = f[key][...]
        arr[index] = value
        f[key][...] = arr
    return edit


def _attr(key: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[key] = value
    return edit


def write(rel: str, text: str | bytes) -> Callable[[Lab], None]:
    def setup(lab: Lab) -> None:
        path = lab.tmp / rel
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def damage(how: str, *names: str) -> Callable[[Lab], None]:
    """Setup: garble, truncate, empty or replace files of the lab's run."""
    def setup(lab: Lab) -> None:
        for name in names:
            for path in sorted(lab.run.glob(name)):
                blob = path.read_bytes()
                new = {"garbage": b"PK\x03\x04" + os.urandom(64) + blob[200:],
                       "truncate": blob[: len(blob) // 2], "empty": b""}.get(how)
                if how == "foreign":
                    torch.save({"weights": torch.zeros(2)}, path)
                elif how == "delete":
                    path.unlink()
                else:
                    path.write_bytes(new)
    return setup


def both(*setups: Callable[[Lab], None]) -> Callable[[Lab], None]:
    def setup(lab: Lab) -> None:
        for s in setups:
            s(lab)
    return setup


# --------------------------------------------------------------- the refused CLI cases

# id -> (argv, what the line must name, setup run before the snapshot)
_CLASSES: dict[str, dict[str, tuple]] = {}

_CLASSES["data"] = {
    "dataset-missing": (T("--dataset", "{tmp}/nope.h5"), ["nope.h5"], None),
    "dataset-not-hdf5": (T("--dataset", "{tmp}/x.h5"), ["x.h5"], write("x.h5", b"no hdf5")),
    "nan-observations-in-file": (T("--dataset", "{tmp}/nan.h5"), ["nan.h5", "observations"],
                                 patch_h5("nan.h5", _set("observations", (3, 1, 0), np.nan))),
    "inf-rewards-in-file": (T("--dataset", "{tmp}/inf.h5"), ["inf.h5", "rewards"],
                            patch_h5("inf.h5", _set("rewards", (5,), np.inf))),
    "actions-out-of-range": (T("--dataset", "{tmp}/a.h5"), ["a.h5", "actions"],
                             patch_h5("a.h5", _set("actions", (0, 0, 0), 3.0))),
    "bounds-for-3-agents-of-2": (T("--dataset", "{tmp}/b.h5"), ["b.h5", "action_low"],
                                 patch_h5("b.h5", _attr("action_low", -np.ones((3, 2))))),
    "env-attribute-empty": (T("--dataset", "{tmp}/e.h5"), ["e.h5", "env"],
                            patch_h5("e.h5", _attr("env", ""))),
    "env-typo-of-a-family": (T("--env", "mamujoco/HalfCheetah", "--eval-episodes", "1"),
                             ["mamujoco/HalfCheetah"], None),
    "obs-dim-not-the-envs": (T("--env", "hold/2x5x2", "--eval-episodes", "1"),
                             ["obs_dim", "hold/2x5x2"], None),
    "agents-not-the-envs": (T("--env", "hold/3x4x2", "--eval-episodes", "1"),
                            ["n_agents", "hold/3x4x2"], None),
    "act-dim-not-the-envs": (T("--env", "hold/2x4x3", "--eval-episodes", "1"),
                             ["action_dim", "hold/2x4x3"], None),
    "bounds-not-the-envs": (T("--env", "hold/2x4x2w", "--eval-episodes", "1"),
                            ["action_low", "hold/2x4x2w"], None),
    "discrete-data-continuous-env": (
        T("--dataset", "{tmp}/disc.h5", "--env", "hold/2x4x2", "--eval-episodes", "1"),
        ["action_space"], lambda lab: data(lab.tmp / "disc.h5", discrete=True, act_dim=3)),
}

_CLASSES["folder"] = {
    "second-run-same-out": (T("--out", "{run}"), ["already holds a run", "--resume",
                                                  "--overwrite"], None),
    "second-run-out-with-only-policy": (T("--out", "{tmp}/p"), ["already holds a run"],
                                        both(lambda lab: (lab.tmp / "p").mkdir(),
                                             write("p/policy.pt", b"x"))),
    "out-is-a-file": (T("--out", "{tmp}/f"), ["out", "f"], write("f", b"a file")),
    "out-under-a-file": (T("--out", "{tmp}/f/run"), ["out", "f/run"], write("f", b"a file")),
    "resume-and-out": (R("--out", "{tmp}/elsewhere"), ["--out"], None),
}

_CLASSES["resume"] = {
    "other-dataset": (R("--dataset", "{tmp}/other.h5"), ["dataset", "other.h5"],
                      lambda lab: data(lab.tmp / "other.h5", seed=1)),
    "dataset-changed-in-place": (R(), ["d.h5", "sha256"],
                                 lambda lab: (lab.run, data(lab.ds, seed=2))),
    "hidden-dims": (R("--hidden-dims", "32"), ["hidden_dims", "[16] -> [32]"], None),
    "condition": (R("--condition", "none"), ["condition"], None),
    "seed": (R("--seed", "3"), ["seed"], None),
    "share-parameters": (R("--share-parameters", "false"), ["share_parameters"], None),
    "not-a-run-folder": (["train", "--resume", "{tmp}", "--quiet"], ["config.json"], None),
    "config-json-garbled": (R(), ["config.json", "JSON"],
                            lambda lab: (lab.run / "config.json").write_text("{\"steps\": ")),
    "no-checkpoint": (R(), ["no checkpoint"], damage("delete", "checkpoint-*.pt")),
    "every-checkpoint-corrupt": (R(), ["every checkpoint", "checkpoint-6.pt",
                                       "checkpoint-7.pt"], damage("garbage", "checkpoint-*.pt")),
    "every-checkpoint-truncated": (R(), ["every checkpoint"],
                                   damage("truncate", "checkpoint-*.pt")),
}

_CLASSES["policy-file"] = {
    f"policy-{how}": (EVAL(), ["policy.pt"], damage(how, "policy.pt"))
    for how in ("garbage", "truncate", "empty", "foreign")
}
_CLASSES["policy-file"].update({
    "policy-missing": (EVAL(), ["no policy.pt"], damage("delete", "policy.pt")),
    "env-unregistered-at-eval": (EVAL(), ["my-sim"], None),
})

_CLASSES["cli"] = {
    "share-parameters-treu": (T("--share-parameters", "treu"), ["--share-parameters", "treu"],
                              None),
    "share-parameters-2": (T("--share-parameters", "2"), ["--share-parameters"], None),
    "ema-decay-2": (T("--ema-decay", "2"), ["ema_decay", "[0, 1)"], None),
    "ema-decay-1": (T("--ema-decay", "1"), ["ema_decay"], None),
    "lr-0": (T("--lr", "0"), ["lr", "> 0", "found 0"], None),
    "lr-nan": (T("--lr", "nan"), ["lr"], None),
    "value-lr-inf": (T("--value-lr", "inf"), ["value_lr"], None),
    "lr-overflows-adamw": (T("--lr", "1e38"), ["lr", "float32", "1e+38"], None),
    "guidance-negative": (T("--guidance", "-1"), ["guidance_scale", "-1"], None),
    "test-guidance-0-train": (T("--test-guidance", "0"), ["test_guidance"], None),
    "eval-test-guidance-negative": (EVAL("--test-guidance", "-1"), ["--test-guidance", "-1"],
                                    None),
    "eval-guidance-nan": (EVAL("--guidance", "nan"), ["--test-guidance", "nan"], None),
    "kappa-1": (T("--kappa", "1"), ["kappa"], None),
    "steps-negative": (T("--steps", "-1"), ["steps", "-1"], None),
    "steps-not-a-number": (T("--steps", "ten"), ["--steps", "ten"], None),
    "batch-size-0": (T("--batch-size", "0"), ["batch_size"], None),
    "hidden-dims-0": (T("--hidden-dims", "0"), ["hidden_dims"], None),
    "method-unknown": (T("--method", "nope"), ["--method", "nope"], None),
    "condition-unknown": (T("--condition", "bogus"), ["--condition", "bogus"], None),
    "mse-with-tokens": (T("--policy-loss", "mse", "--condition", "binary"), ["condition"], None),
    "device-unknown": (T("--device", "tpu"), ["device", "tpu"], None),
    "device-missing-cuda": (T("--device", "{cuda}"), ["device", "CUDA"], None),
    "eval-device-missing-cuda": (EVAL("--device", "{cuda}"), ["device", "CUDA"], None),
    "eval-episodes-0": (EVAL("--episodes", "0"), ["episodes"], None),
    "config-missing": (T("--config", "{tmp}/none.toml"), ["none.toml"], None),
    "config-json-malformed": (T("--config", "{tmp}/c.json"), ["c.json", "JSON", "line 1"],
                              write("c.json", '{"steps": 5,}')),
    "config-toml-malformed": (T("--config", "{tmp}/c.toml"), ["c.toml", "TOML", "line 2"],
                              write("c.toml", "steps = 5\nlr = = 3\n")),
    "config-toml-wrong-type": (T("--config", "{tmp}/c.toml"), ["c.toml", "gamma", "str"],
                               write("c.toml", 'gamma = "high"\n')),
    "config-toml-bool-as-string": (T("--config", "{tmp}/c.toml"),
                                   ["c.toml", "share_parameters"],
                                   write("c.toml", 'share_parameters = "yes"\n')),
    "config-toml-list-of-str": (T("--config", "{tmp}/c.toml"), ["c.toml", "kappa"],
                                write("c.toml", 'kappa = [0.5, "a"]\n')),
    "config-unknown-key": (T("--config", "{tmp}/c.json"), ["c.json", "ema_decy"],
                           write("c.json", '{"ema_decy": 0.9}')),
    "config-not-a-table": (T("--config", "{tmp}/c.json"), ["c.json"], write("c.json", "[1, 2]")),
    "config-out-of-range": (T("--config", "{tmp}/c.json"), ["c.json", "ema_decay"],
                            write("c.json", '{"ema_decay": 2}')),
}

_CLASSES["numbers"] = {
    "one-transition": (T("--dataset", "{tmp}/one.h5"), ["one.h5", "1 transition"],
                       lambda lab: data(lab.tmp / "one.h5", t=1)),
    "rewards-1e30": (T("--dataset", "{tmp}/big.h5"), ["big.h5", "rewards"],
                     lambda lab: data(lab.tmp / "big.h5", reward_scale=1e30)),
}

REFUSED = [pytest.param(cls, *case, id=f"{cls}-{name}")
           for cls, cases in _CLASSES.items() for name, case in cases.items()]


def _missing_cuda() -> str:
    """A CUDA device this machine does not have."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


class Hold:
    """A pure-numpy family ``hold/<N>x<obs>x<act>[w]`` for the env checks: every observation is
    0, rewards are ``-|a|``, episodes end after 3 steps; bounds [-1, 1] (``w``: [-2, 2])."""

    discrete, n_actions, avail, episode_limit = False, None, None, 3

    def __init__(self, name: str, n: int) -> None:
        wide = name.endswith("w")
        self.n_agents, self.obs_dim, self.action_dim = (int(v) for v in name.rstrip("w")
                                                        .split("x"))
        self.state_dim = self.n_agents * self.obs_dim
        self.action_low = np.full(self.action_dim, -2.0 if wide else -1.0, np.float32)
        self.action_high = -self.action_low
        self.obs = np.zeros((n, self.n_agents, self.obs_dim), np.float32)
        self.state = np.zeros((n, self.state_dim), np.float32)

    def reset(self, slots, seeds) -> None:
        pass

    def step(self, actions, active):
        flags = np.zeros(len(self.obs), bool)
        return -np.abs(actions).sum((1, 2)), flags, flags, flags


@pytest.fixture
def hold(monkeypatch):
    from vgm2p_fast.envs import registry

    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    envs.register_family("hold", Hold, action_space="continuous", pattern=r"\d+x\d+x\d+w?")


@pytest.mark.parametrize("cls, argv, names, setup", REFUSED)
def test_cli_refuses_in_one_line_and_writes_nothing(lab, hold, cls, argv, names, setup):
    if setup is not None:
        setup(lab)
    argv = lab.fill([a.replace("{cuda}", _missing_cuda()) for a in argv])
    refused(argv, [lab.fill([n])[0] for n in names], lab.tmp)
    if str(lab.out) in argv:
        assert not lab.out.exists(), "the refused run created its folder"


def test_read_only_output_folder_is_one_line(lab):
    ro = lab.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # root ignores the mode: make the folder immutable instead
    if os.access(ro, os.W_OK) and subprocess.run(["chattr", "+i", str(ro)],
                                                 capture_output=True).returncode != 0:
        ro.chmod(0o755)
        pytest.skip("cannot make a read-only folder here (root without chattr +i)")
    try:
        refused(lab.fill(T("--out", str(ro))), ["out", "ro", "not writable"], lab.tmp)
        refused(lab.fill(T("--out", str(ro / "run"))), ["out", "ro/run", "cannot create"],
                lab.tmp)
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
        ro.chmod(0o755)


# ------------------------------------------------------------------- run folders


def test_second_run_refused_then_overwrite_replaces_it(lab):
    first = tree(lab.run)
    refused(lab.fill(T("--out", "{run}")), ["already holds a run"], lab.tmp)
    assert tree(lab.run) == first
    rc, _, err = run_cli(lab.fill(T("--out", "{run}", "--overwrite", "--seed", "1")))
    assert rc == 0, err
    assert json.loads((lab.run / "config.json").read_text())["seed"] == 1


def test_default_out_is_unique(lab, monkeypatch):
    monkeypatch.chdir(lab.tmp)
    argv = ["train", "--dataset", str(lab.ds), *TINY]
    assert run_cli(argv)[0] == 0 and run_cli(argv)[0] == 0
    made = sorted((lab.tmp / "runs").iterdir())
    assert len(made) == 2 and all((p / "policy.pt").exists() for p in made), made


def test_lock_refuses_a_second_run_in_the_same_folder(lab):
    """In-process: the folder's lock is held (a run in progress); --overwrite and --resume are
    refused, nothing is replaced; once released, --overwrite goes ahead."""
    with RunLock(lab.run):
        refused(lab.fill(T("--out", "{run}", "--overwrite")), ["in use", str(lab.run)], lab.tmp)
        refused(lab.fill(R()), ["in use"], lab.tmp)
    assert run_cli(lab.fill(T("--out", "{run}", "--overwrite")))[0] == 0


def test_two_processes_in_one_folder(lab):
    """A real second process: the run started first keeps its folder to itself."""
    out = lab.tmp / "busy"
    cmd = [sys.executable, "-m", "vgm2p_fast.cli", "train", "--dataset", str(lab.ds), "--out",
           str(out), *TINY, "--steps", "1000000"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not (out / "config.json").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.1)
        config = (out / "config.json").read_bytes()
        line = refused(lab.fill(T("--out", str(out), "--overwrite")), ["in use"], None)
        assert str(out) in line
        assert (out / "config.json").read_bytes() == config
        assert first.poll() is None, "the refused run disturbed the first one"
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead process's lock
    assert run_cli(lab.fill(T("--out", str(out), "--overwrite")))[0] == 0


# ------------------------------------------------------------------ resume and checkpoints


@pytest.mark.parametrize("how", ["garbage", "truncate", "empty"])
def test_bad_newest_checkpoint_falls_back_with_a_warning(lab, how):
    damage(how, "checkpoint-7.pt")(lab)
    rc, _, err = run_cli(lab.fill(R("--steps", "6")))
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("vgm2p: warning: ")]
    assert len(warnings) == 1 and "checkpoint-7.pt" in warnings[0], err
    assert "resuming at iteration 6" in err
    # the unreadable file is set aside, not kept in place of a good checkpoint
    assert [p.name for p in checkpoints(lab.run)] == ["checkpoint-6.pt", "checkpoint-8.pt"]
    assert (lab.run / "checkpoint-7.pt.unreadable").exists()
    assert torch.load(lab.run / "checkpoint-8.pt", weights_only=False)["iteration"] == 8


def test_resume_may_change_only_the_resumable_options(lab):
    assert {"steps", "eval_episodes", "log_every", "device"} <= set(RESUMABLE)
    assert "hidden_dims" not in RESUMABLE and "dataset" not in RESUMABLE
    rc, _, err = run_cli(lab.fill(R("--steps", "7", "--log-every", "3", "--keep-checkpoints",
                                    "3")))
    assert rc == 0, err
    saved = json.loads((lab.run / "config.json").read_text())
    assert (saved["steps"], saved["log_every"], saved["keep_checkpoints"]) == (7, 3, 3)


def test_failed_checkpoint_read_back_leaves_the_previous_one(lab, monkeypatch):
    """A checkpoint that reads back wrong (full disk, bad storage) is removed, the run stops in
    one line naming it, and the previous checkpoint stays the newest."""
    from vgm2p_fast.train import runs

    real = torch.load

    def flaky(path, *a, **kw):
        state = real(path, *a, **kw)
        if Path(path).name == "checkpoint-6.pt":
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        return state

    monkeypatch.setattr(runs.torch, "load", flaky)
    line = refused_run(lab, T("--checkpoint-every", "3"), ["checkpoint-6.pt"])
    assert "read back" in line
    assert [p.name for p in checkpoints(lab.out)] == ["checkpoint-3.pt"]
    assert not (lab.out / "policy.pt").exists()


def refused_run(lab: Lab, argv: list[str], names: list[str]) -> str:
    """A run that starts, then stops: exit 2 and one error line naming ``names``."""
    rc, _, err = run_cli(lab.fill(argv))
    errors = [ln for ln in err.splitlines() if ln.startswith("vgm2p: error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert len(err.splitlines()) == 2, err  # the start line, then the error
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------- numbers mid-run


def _nan_after(monkeypatch, owner, name: str, calls: int) -> None:
    """``owner.name`` (a loss method) returns NaN from its ``calls + 1``-th call on."""
    real, seen = getattr(owner, name), [0]

    def patched(self, *a, **kw):
        seen[0] += 1
        loss, info = real(self, *a, **kw)
        return (loss * float("nan"), info) if seen[0] > calls else (loss, info)

    monkeypatch.setattr(owner, name, patched)


def _nan_grads(monkeypatch, calls: int) -> None:
    """``clip_grad_norm_`` sets the gradients it clips to NaN at its ``calls + 1``-th call
    (the loss stays finite; only the weights go bad)."""
    real, seen = torch.nn.utils.clip_grad_norm_, [0]

    def patched(params, *a, **kw):
        params = list(params)
        seen[0] += 1
        if seen[0] == calls + 1:
            for p in params:
                p.grad.fill_(float("nan"))
        return real(params, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", patched)


def _nan_refresh(monkeypatch, calls: int) -> None:
    from vgm2p_fast.advantage import GAEEstimator

    real, seen = GAEEstimator.refresh, [0]

    def patched(self, ds):
        seen[0] += 1
        adv = real(self, ds)
        return adv * float("nan") if seen[0] > calls else adv

    monkeypatch.setattr(GAEEstimator, "refresh", patched)


@pytest.mark.parametrize("fault, quantity, stop, kept", [
    ("policy-loss", "the policy loss", 6, [2, 4]),
    ("critic-loss", "the critic loss", 4, [2]),
    ("advantages", "the dataset advantages", 4, [2, 4]),
    ("gradients", "the weights", 4, [2]),
])
def test_nan_mid_run_stops_naming_iteration_and_keeps_a_good_checkpoint(
        lab, monkeypatch, fault, quantity, stop, kept):
    """The policy loss turns NaN at its 3rd step (iteration 5), the critic's at iteration 3,
    the advantages at the refresh of iteration 4 (--refresh-every 4), the policy gradient
    (not the loss) at iteration 4, the checkpoint's: the run stops at the next check, keeps
    the checkpoints before, writes no policy.pt, and resumes from them."""
    from vgm2p_fast.advantage import GAEEstimator

    if fault == "policy-loss":
        _nan_after(monkeypatch, MeanFlowPolicy, "meanflow_loss", 2)
    elif fault == "critic-loss":
        _nan_after(monkeypatch, GAEEstimator, "loss", 2)
    elif fault == "gradients":
        _nan_grads(monkeypatch, 6)  # 2 clips an iteration: the policy's of iteration 4
    else:
        _nan_refresh(monkeypatch, 1)
    argv = T("--checkpoint-every", "2", "--refresh-every", "4")
    line = refused_run(lab, argv, [f"iteration {stop}", quantity, "NaN",
                                   f"checkpoint-{kept[-1]}.pt"])
    assert [p.name for p in checkpoints(lab.out)] == [f"checkpoint-{k}.pt" for k in kept], line
    state = torch.load(checkpoints(lab.out)[-1], weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["ema"].values() if v.is_floating_point())
    assert not (lab.out / "policy.pt").exists() and not (lab.out / "summary.json").exists()
    monkeypatch.undo()
    rc, _, err = run_cli(lab.fill(["train", "--resume", "{out}", "--quiet"]))
    assert rc == 0 and f"resuming at iteration {kept[-1]}" in err, err


@pytest.mark.parametrize("lr", ["1e30", "1e37"])
def test_diverging_learning_rate_stops_with_finite_checkpoints(lab, lr):
    """No monkeypatching: a learning rate of 1e30 or 1e37 (the largest accepted) makes the
    weights explode; the run stops naming the iteration, and every checkpoint it kept holds
    finite weights."""
    argv = T("--lr", lr, "--value-lr", lr, "--checkpoint-every", "1", "--steps", "30")
    line = refused_run(lab, argv, ["iteration", "NaN or inf"])
    assert re.search(r"iteration \d+: the (critic|policy) loss|weights", line), line
    for path in checkpoints(lab.out):
        state = torch.load(path, weights_only=False)
        for part in ("objective", "ema"):
            assert all(torch.isfinite(v).all() for v in state[part].values()
                       if v.is_floating_point()), (path, part)


def test_large_rewards_train_to_finite_numbers(lab):
    """Rewards of 1e25 (below the refusal threshold) train: losses, advantages and actions are
    finite (the TensorBoard histogram of the advantages included)."""
    big = data(lab.tmp / "big.h5", reward_scale=1e25)
    rc, _, err = run_cli(lab.fill(T("--dataset", str(big))))
    assert rc == 0, err
    rows = [json.loads(ln) for ln in (lab.out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(v) for r in rows for v in r.values()
                        if isinstance(v, float))
    policy = load_policy(lab.out / "policy.pt")
    assert torch.isfinite(policy.act(torch.randn(3, 2, 4))).all()


# -------------------------------------------------------------------- own data (accepted)


@pytest.mark.parametrize("env", ["my-sim", "vmas/navigation", "lab sim #3"])
def test_unknown_env_family_trains_and_says_why_evaluation_is_skipped(lab, env):
    ds = data(lab.tmp / "own.h5", env=env)
    rc, _, err = run_cli(lab.fill(T("--dataset", str(ds), "--eval-episodes", "2")))
    assert rc == 0, err
    family = env.partition("/")[0]
    summary = json.loads((lab.out / "summary.json").read_text())
    assert summary["eval_return_mean"] is None
    assert "evaluation skipped" in summary["eval_skipped"] and family in summary["eval_skipped"]
    assert "evaluation skipped" in err.splitlines()[0]  # said at the start too


def test_per_agent_bounds_train_and_act_inside_them(lab):
    low = np.array([[-1.0, -2.0], [0.0, 10.0]], np.float32)
    high = np.array([[1.0, 2.0], [0.5, 20.0]], np.float32)
    ds = data(lab.tmp / "pa.h5", action_low=low, action_high=high)
    assert tuple(load_dataset(ds).action_low.shape) == (2, 2)
    assert run_cli(lab.fill(T("--dataset", str(ds))))[0] == 0
    act = load_policy(lab.out / "policy.pt").act(torch.randn(256, 2, 4)).numpy()
    assert (act >= low - 1e-6).all() and (act <= high + 1e-6).all()
    assert act[:, 1, 1].min() >= 10.0  # agent 1's own bounds, not agent 0's


# ---------------------------------------------------------------------------- API cases


def _mf() -> MeanFlowPolicy:
    return MeanFlowPolicy(4, 2, 2, hidden_dims=(8,))


def _write_kw(**over) -> dict:
    t, n = 20, 2
    ends = np.zeros(t, bool)
    ends[-1] = True
    kw = {"observations": np.zeros((t, n, 3), np.float32),
          "actions": np.zeros((t, n, 2), np.float32), "rewards": np.zeros(t, np.float32),
          "terminals": ends, "truncations": np.zeros(t, bool), "env": "my-sim"}
    return {**kw, **over}


def _nan_obs() -> np.ndarray:
    obs = np.zeros((20, 2, 3), np.float32)
    obs[4, 1, 2] = np.nan
    return obs


def _bad_obs(value: float) -> torch.Tensor:
    obs = torch.zeros(2, 2, 4)
    obs[1, 0, 3] = value
    return obs


def _policy_file(tmp: Path, how: str) -> Path:
    path = tmp / "policy.pt"
    _mf().save(path)
    blob = path.read_bytes()
    if how == "foreign":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes({"garbage": b"PK\x03\x04" + os.urandom(200),
                          "truncate": blob[: len(blob) // 2], "empty": b""}[how])
    return path


API = {
    # own data
    "write-env-empty": (lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(env="")), "env"),
    "write-env-not-a-string": (lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(env=3)),
                               "env"),
    "write-env-typo-of-a-family": (
        lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(env="mamujoco/HalfCheetah")), "env"),
    "write-discrete-for-continuous-family": (
        lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(
            env="mamujoco/HalfCheetah-2x3", actions=np.zeros((20, 2), np.int64), n_actions=3)),
        "action_space"),
    "write-bounds-for-3-agents": (
        lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(action_low=-np.ones((3, 2)))),
        "action_low"),
    "write-rows-differ": (
        lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(rewards=np.zeros(19, np.float32))),
        "rewards"),
    "write-nan-observations": (
        lambda tmp: write_dataset(tmp / "x.h5", **_write_kw(observations=_nan_obs())),
        "observations"),
    # policy files
    **{f"load-policy-{how}": (lambda tmp, how=how: load_policy(_policy_file(tmp, how)),
                              "policy.pt") for how in ("garbage", "truncate", "empty", "foreign")},
    # numbers at act
    **{f"act-{v}-observations": (lambda tmp, v=v: _mf().act(_bad_obs(float(v))), "obs")
       for v in ("nan", "inf")},
    "act-nan-observations-mlp": (
        lambda tmp: MLPPolicy(4, 2, 2, hidden_dims=(8,)).act(_bad_obs(float("nan"))),
        "obs"),
    **{f"act-guidance-{g}": (lambda tmp, g=g: _mf().act(torch.zeros(1, 2, 4), test_guidance=g),
                             "test_guidance") for g in (float("nan"), float("inf"), 0.0, -1.0)},
    # config
    "config-bool-as-string": (lambda tmp: TrainConfig(share_parameters="treu"),
                              "share_parameters"),
    "config-lr-0": (lambda tmp: TrainConfig(lr=0.0), "lr"),
    "config-steps-float": (lambda tmp: TrainConfig(steps=1.5), "steps"),
    "config-ema-decay-2": (lambda tmp: TrainConfig(ema_decay=2.0), "ema_decay"),
    "config-unknown-key": (lambda tmp: config_from({"nope": 1}, "my.toml"), "my.toml: unknown "
                           "option 'nope'"),
    "config-method-unknown": (lambda tmp: config_from({"method": "x"}), "method"),
    "train-device-missing-cuda": (
        lambda tmp: train(TrainConfig(dataset=str(data(tmp / "d.h5")), out=str(tmp / "o"),
                                      device=_missing_cuda())), "device"),
}


@pytest.mark.parametrize("call, name", list(API.values()), ids=list(API))
def test_api_raises_value_error_naming_the_argument(tmp_path, call, name):
    with pytest.raises(ValueError) as info:
        call(tmp_path)
    assert name in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "o").exists()


def test_loader_refuses_nan_observations(tmp_path):
    patch_h5("nan.h5", _set("observations", (3, 1, 0), np.nan))(Lab(tmp_path))
    with pytest.raises(DatasetError, match=r"nan\.h5: observations: expected finite values"):
        load_dataset(tmp_path / "nan.h5")


# ------------------------------------------------------------------------- CLI surfaces


def _subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_every_option_has_help_and_shows_its_choices(command):
    p = _subparser(command)
    text = p.format_help()
    options = [a for a in p._actions if a.option_strings and a.dest != "help"]
    if command == "train":
        assert len(options) >= len(TrainConfig.__dataclass_fields__) + 4
        assert {a.dest for a in options} >= set(TrainConfig.__dataclass_fields__)
    for a in options:
        assert a.help and a.help.strip() and "\n" not in a.help, a.option_strings
        if a.choices:
            assert "{" + ",".join(map(str, a.choices)) + "}" in text, a.option_strings
    if command == "train":
        assert "{" + ",".join(METHODS) + "}" in text
        assert "true/false" in text or "BOOL" in text


def test_eval_json_on_smax_prints_only_json(tmp_path):
    """jaxmarl prints on import; ``--json`` output must still be exactly one JSON object."""
    ds = data(tmp_path / "smax.h5", env="smax/3m", n=3, obs_dim=75, act_dim=8, discrete=True,
              avail_actions=np.ones((40, 3, 8), bool))
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--dataset", str(ds), "--out", str(out), *TINY])
    assert rc == 0, err
    res = subprocess.run([sys.executable, "-m", "vgm2p_fast.cli", "eval", "--checkpoint",
                          str(out), "--episodes", "1", "--json"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["episodes"] == 1 and "win_rate" in got and np.isfinite(got["return_mean"])


def test_table_covers_every_class():
    counts = {cls: len(cases) for cls, cases in _CLASSES.items()}
    assert sum(counts.values()) + len(API) >= 40, counts
    assert all(counts.values())
