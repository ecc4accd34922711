"""Trainer, value guidance and CLI: end to end, resume after kill -9, determinism, DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vgm2p_fast as vf
from vgm2p_fast.advantage import GAEEstimator
from vgm2p_fast.cli import main
from vgm2p_fast.datasets import load_dataset, write_dataset
from vgm2p_fast.train import TrainConfig, train
from vgm2p_fast.train.loop import build_policy
from vgm2p_fast.train.runs import checkpoints
from vgm2p_fast.value import tokens_from_advantage

TINY = ["--hidden-dims", "32", "32", "--value-hidden", "32", "--batch-size", "64",
        "--log-every", "5", "--eval-episodes", "0"]


def _write(path: Path, discrete: bool = False, episodes: int = 6, length: int = 40) -> Path:
    """A small dataset whose reward prefers positive actions (so advantages carry signal)."""
    rng = np.random.default_rng(0)
    t, n = episodes * length, 2
    obs = rng.normal(size=(t, n, 5)).astype(np.float32)
    ends = np.zeros(t, bool)
    ends[length - 1 :: length] = True
    terminals = ends.copy()
    terminals[length - 1 :: 2 * length] = False  # every other episode is truncated instead
    kw: dict = {}
    if discrete:
        actions = rng.integers(0, 4, size=(t, n))
        kw["avail_actions"] = np.ones((t, n, 4), bool)
        kw["n_actions"] = 4
        rewards = (actions == 3).mean(1).astype(np.float32)
        env = "smax/3m"
    else:
        actions = rng.uniform(-1, 1, size=(t, n, 3)).astype(np.float32)
        kw["action_low"], kw["action_high"] = -np.ones(3), np.ones(3)
        rewards = actions.mean((1, 2)).astype(np.float32)
        env = "mamujoco/HalfCheetah-2x3"
    write_dataset(path, observations=obs, actions=actions, rewards=rewards, terminals=terminals,
                  truncations=ends & ~terminals, env=env, **kw)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("data") / "tiny.h5")


def _cli(*args: str, timeout: int = 300, env_extra: dict | None = None
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vgm2p_fast.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # wall-clock figures differ between runs by nature
        r.pop("samples_per_s", None)
    return rows


# ------------------------------------------------------------------ value guidance


def test_refresh_is_gae_of_the_target_value(tiny):
    ds = load_dataset(tiny)
    critic = GAEEstimator(ds, hidden=(16,), gamma=0.99, lam=0.95, tau=0.7)
    critic.init_stats(ds)
    adv = critic.refresh(ds)
    ret = critic.returns
    with torch.no_grad():
        v = critic.v_target(ds.states).squeeze(-1)
        nv = critic.v_target(ds.next_states).squeeze(-1)
    a_ref, r_ref = vf.ops.gae_ref(ds.rewards, v, nv, ds.dones, ds.terminals, 0.99, 0.95)
    torch.testing.assert_close(adv, a_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ret, r_ref, rtol=1e-4, atol=1e-4)


def test_tokens():
    adv = torch.tensor([-2.0, -0.5, 0.0, 0.1, 3.0, 7.0, -1.0, 2.0])
    assert tokens_from_advantage(adv, "binary").tolist() == [0, 0, 1, 1, 1, 1, 0, 1]
    assert tokens_from_advantage(adv, "none") is None
    q = tokens_from_advantage(adv, "quantile", n_bins=4)
    assert q.tolist() == [0, 1, 1, 2, 3, 3, 0, 2]  # two rows per quartile
    with pytest.raises(ValueError, match="condition"):
        tokens_from_advantage(adv, "median")


# ------------------------------------------------------------------ trainer


@pytest.mark.parametrize(("discrete", "condition", "advantage", "policy_loss"),
                         [(False, "binary", "gae", "meanflow"),
                          (True, "quantile", "iql", "meanflow"),
                          (False, "none", "gae", "flow_matching")])
def test_train_writes_every_output(tmp_path, discrete, condition, advantage, policy_loss):
    data = _write(tmp_path / "d.h5", discrete=discrete)
    cfg = TrainConfig(dataset=str(data), out=str(tmp_path / "run"), steps=30, value_warmup=10,
                      refresh_every=20, hidden_dims=(32,), value_hidden=(32,), batch_size=32,
                      log_every=10, eval_episodes=0, condition=condition, advantage=advantage,
                      policy_loss=policy_loss, eval_steps=1 if policy_loss == "meanflow" else 4,
                      time_max_freq=5.0, time_mu=-0.2, time_sigma=1.5)
    summary = train(cfg, progress=False)
    out = tmp_path / "run"
    # BC (condition none) reads no advantages, so it fits no critic: no warm-up iterations
    last = 30 if condition == "none" else 40
    for name in ("summary.json", "metrics.jsonl", "learning_curve.png", "policy.pt",
                 f"checkpoint-{last}.pt", "config.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir()), "no TensorBoard event file"
    saved = json.loads((out / "summary.json").read_text())
    for key in ("eval_return_mean", "eval_return_std", "steps", "samples_per_s", "dataset",
                "config"):
        assert key in saved, key
    assert saved["steps"] == 30 and summary["samples_per_s"] > 0
    assert saved["iterations"] == last
    rows = _metrics(out)
    refresh = [r for r in rows if r.get("event") == "refresh"]
    assert [r["iteration"] for r in refresh] == ([] if condition == "none" else [0, 20])
    assert refresh == [] or 0.0 < refresh[0]["adv_share_nonneg"] < 1.0
    assert any("critic_loss" in r for r in rows) == (condition != "none")
    assert any("loss" in r for r in rows) and all(np.isfinite(r.get("loss", 0.0)) for r in rows)
    policy = vf.MeanFlowPolicy.load(out / "policy.pt")
    assert policy.metadata["env"] == load_dataset(data).env
    assert policy.metadata["sampler"] == ("meanflow" if policy_loss == "meanflow" else "euler")
    assert policy.config["max_freq"] == 5.0   # --time-max-freq reaches the saved architecture
    # --time-mu / --time-sigma reach the training loss (not saved: a deployed policy has none)
    loss = build_policy(cfg, load_dataset(data)).loss_config
    assert (loss.time_mu, loss.time_sigma) == (-0.2, 1.5)
    # a BC policy is trained on the null token only and must act with it
    assert policy.n_tokens == {"binary": 2, "quantile": cfg.n_bins, "none": 0}[condition]
    assert (policy.exec_token == policy.null_token) == (condition == "none")
    obs = torch.randn(3, 2, 5)
    a = policy(obs, torch.ones(3, 2, 4, dtype=torch.bool) if discrete else None)
    assert a.shape == ((3, 2) if discrete else (3, 2, 3))


def test_only_methods_that_read_advantages_fit_a_critic(tiny, tmp_path, capsys):
    from vgm2p_fast.train.config import METHODS, config_from

    uses = {m: config_from({"method": m}).uses_critic for m in METHODS}
    assert uses == {"vgm2p": True, "meanflow-bc": False, "fm-bc": False, "mlp-bc": False,
                    "awfm": True}
    out = tmp_path / "bc"
    args = ["train", "--dataset", str(tiny), "--out", str(out), "--method", "mlp-bc",
            "--steps", "20", "--value-warmup", "5", "--eval-episodes", "0", *TINY]
    assert main(args) == 0
    assert "no critic" in capsys.readouterr().err
    assert [p.name for p in checkpoints(out)] == ["checkpoint-20.pt"]  # no warm-up iterations
    # a checkpoint of an earlier version, which fitted a critic for BC too, is refused: its
    # iteration counts the warm-up, so the policy step would be misread
    path = checkpoints(out)[-1]
    state = torch.load(path, weights_only=False)
    torch.save({**state, "c_opt": {"state": {}, "param_groups": []}}, path)
    with pytest.raises(ValueError, match="fitted a critic"):
        train(config_from({**state["config"], "steps": 30}), resume=True, progress=False)


@pytest.mark.parametrize("weighting", ["none", "awr"])
def test_awr_weights_reach_the_meanflow_loss(tiny, tmp_path, monkeypatch, weighting):
    """--weighting awr on VGM²P weights its MeanFlow rows by the clipped exp(A / (beta std A))
    of each batch row (an earlier version accepted the option and ignored it)."""
    seen = []
    loss = vf.MeanFlowPolicy.meanflow_loss

    def spy(self, *args, weights=None, **kwargs):
        seen.append(weights)
        return loss(self, *args, weights=weights, **kwargs)

    monkeypatch.setattr(vf.MeanFlowPolicy, "meanflow_loss", spy)
    args = ["train", "--dataset", str(tiny), "--out", str(tmp_path / "run"), "--steps", "5",
            "--value-warmup", "5", "--weighting", weighting,
            "--awr-max-weight", "4", "--eval-episodes", "0", "--quiet", *TINY]
    assert main(args) == 0
    assert len(seen) == 5
    if weighting == "none":
        assert all(w is None for w in seen)
    else:
        w = torch.stack(seen)
        assert w.shape == (5, 64) and bool((w > 0).all()) and float(w.max()) <= 4.0
        assert float(w.std()) > 0   # advantages differ across rows, so do their weights


def test_same_seed_same_metrics(tiny, tmp_path):
    runs = []
    for name in ("a", "b"):
        r = main(["train", "--dataset", str(tiny), "--out", str(tmp_path / name), "--steps", "20",
                  "--value-warmup", "5", "--quiet", *TINY])
        assert r == 0
        runs.append(_metrics(tmp_path / name))
    assert runs[0] == runs[1]


def test_resume_drops_the_log_lines_written_after_the_checkpoint(tmp_path):
    """A crash right after the checkpoint of iteration 40 leaves the refresh event that starts
    iteration 40 in the log; the resumed run logs it again, so it must be dropped (the step
    record of 40 was written before the checkpoint and stays). Found by the kill -9 test below
    when the kill landed in that window."""
    from vgm2p_fast.train.metrics import MetricsLogger

    lines = [{"iteration": 0, "event": "refresh"}, {"iteration": 20, "loss": 1.0},
             {"iteration": 40, "loss": 0.5}, {"iteration": 40, "event": "refresh"},
             {"iteration": 60, "loss": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    MetricsLogger(tmp_path, True, resume_from=40).close()
    assert _metrics(tmp_path) == lines[:3]


def test_resume_after_kill_9_equals_uninterrupted_run(tiny, tmp_path):
    args = ["train", "--dataset", str(tiny), "--steps", "400", "--value-warmup", "20",
            "--refresh-every", "50", "--checkpoint-every", "40", "--quiet", *TINY]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vgm2p_fast.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = checkpoints(out)
        if found and int(found[-1].stem.split("-")[1]) >= 120:
            break  # mid-run, and past a refresh and a few checkpoints
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert _metrics(out) == _metrics(tmp_path / "full")
    a = torch.load(out / "policy.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "full" / "policy.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_two_processes_keep_identical_weights(tiny, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "vgm2p_fast.cli",
         "train", "--dataset", str(tiny), "--out", str(out), "--steps", "15", "--value-warmup",
         "3", "--quiet", *TINY],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ddp_max_weight_divergence"] == 0.0
    single = vf.MeanFlowPolicy.load(out / "policy.pt")
    assert all(torch.isfinite(p).all() for p in single.parameters())


# ------------------------------------------------------------------ CLI


def test_cli_refuses_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    res = _cli("train", "--dataset", str(bad), "--out", str(tmp_path / "o"), "--quiet")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgm2p: error: ") and "bad.h5" in lines[0]
    assert "Traceback" not in res.stderr


def test_cli_bad_option_value():
    assert main(["train", "--condition", "binary", "--batch-size", "0", "--quiet"]) == 2


def test_info_lists_every_op(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in vf.ops.REGISTRY:
        assert op in out


def test_default_train_on_the_bundled_dataset(tmp_path):
    """`vgm2p train` with only a size override: the bundled dataset, value guidance, training,
    evaluation in the environment when the extra is installed, summary.json."""
    out = tmp_path / "run"
    res = _cli("train", "--out", str(out), "--steps", "250", "--value-warmup", "50",
               "--hidden-dims", "64", "64", "--eval-episodes", "1", "--quiet", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "mamujoco/HalfCheetah-2x3"
    if summary["eval_return_mean"] is None:
        pytest.skip(f"environment extra not installed: {summary['eval_skipped']}")
    assert np.isfinite(summary["eval_return_mean"]) and summary["eval_episodes"] == 1
    res = _cli("eval", "--checkpoint", str(out), "--episodes", "1", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["episodes"] == 1
