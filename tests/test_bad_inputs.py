"""Bad inputs, table by table (issue 13, item 7): own data, run folders, resume and checkpoints,
policy files, CLI options and config files, numbers, each refused before anything is written;
API arguments; the CLI's help.

A CLI case runs ``vgm2p_fast.cli.main`` in-process and must exit 2 with exactly one stderr
line ``vgm2p: error: ...`` that names the field or file, no traceback, and no file or folder
under the test's directory created, changed or removed (the refused run wrote nothing, the
earlier run is intact). An API case must raise ValueError naming the argument. Subprocesses
only where the property needs one: stdout purity of ``vgm2p eval --json``. Faults during a run
(folders, resume, numbers mid-run) are in ``test_run_faults.py``; the shared lab is
``bad_input_lab.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from bad_input_lab import EVAL, TINY, Lab, R, T, damage, data, refused, run_cli

from vgm2p_fast import envs
from vgm2p_fast.cli import build_parser
from vgm2p_fast.datasets import DatasetError, load_dataset, write_dataset
from vgm2p_fast.policy import MeanFlowPolicy, MLPPolicy, load_policy
from vgm2p_fast.train import TrainConfig, config_from, train
from vgm2p_fast.train.config import METHODS


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
    "time-max-freq-below-1": (T("--time-max-freq", "0.5"), ["time_max_freq", "0.5"], None),
    "time-sigma-0": (T("--time-sigma", "0"), ["time_sigma", "0.0"], None),
    "time-mu-inf": (T("--time-mu", "inf"), ["time_mu", "inf"], None),
    "steps-negative": (T("--steps", "-1"), ["steps", "-1"], None),
    "steps-not-a-number": (T("--steps", "ten"), ["--steps", "ten"], None),
    "batch-size-0": (T("--batch-size", "0"), ["batch_size"], None),
    "hidden-dims-0": (T("--hidden-dims", "0"), ["hidden_dims"], None),
    "method-unknown": (T("--method", "nope"), ["--method", "nope"], None),
    "condition-unknown": (T("--condition", "bogus"), ["--condition", "bogus"], None),
    "mse-with-tokens": (T("--policy-loss", "mse", "--condition", "binary"), ["condition"], None),
    "test-guidance-without-tokens": (T("--method", "meanflow-bc", "--test-guidance", "2"),
                                     ["test_guidance", "condition", "none", "2"], None),
    "mse-with-awr": (T("--method", "mlp-bc", "--weighting", "awr"), ["weighting", "mse", "awr"],
                     None),
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
