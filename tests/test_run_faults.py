"""Faults of a run (issue 13, item 7): run folders (a second run, the lock, two processes in
one folder), resume and damaged checkpoints, non-finite numbers mid-run, and own data that must
train (unknown environment families, per-agent bounds).

A refused command exits 2 with exactly one stderr line ``vgm2p: error: ...`` naming the field or
file, no traceback, and nothing under the test's directory changed; a run that stops mid-way
keeps a checkpoint that loads and holds finite numbers. The shared lab is ``bad_input_lab.py``;
the table of inputs refused before a run starts is ``test_bad_inputs.py``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_lab import TINY, Lab, R, T, damage, data, refused, run_cli, tree

from vgm2p_fast.datasets import load_dataset
from vgm2p_fast.policy import MeanFlowPolicy, load_policy
from vgm2p_fast.train import RESUMABLE
from vgm2p_fast.train.runs import RunLock, checkpoints

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
