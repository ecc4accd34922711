"""The lab behind the bad-input and run-fault tests (``test_bad_inputs.py``,
``test_run_faults.py``): a tiny dataset writer, the CLI run in-process, the "refused in one line,
nothing written" check, and ``Lab``, the files of one case (a dataset, a finished run, a fresh
``--out``) that ``{ds}``, ``{run}``, ``{out}`` and ``{tmp}`` in an argv stand for.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vgm2p_fast.cli import main
from vgm2p_fast.datasets import write_dataset
from vgm2p_fast.train.runs import checkpoints

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


def T(*extra: str) -> list[str]:
    """A tiny ``vgm2p train`` into a fresh folder (later options override earlier ones)."""
    return ["train", "--dataset", "{ds}", "--out", "{out}", *TINY, *extra]


def R(*extra: str) -> list[str]:
    """``vgm2p train --resume`` of the lab's finished run."""
    return ["train", "--resume", "{run}", "--quiet", *extra]


def EVAL(*extra: str) -> list[str]:
    return ["eval", "--checkpoint", "{run}", "--episodes", "1", *extra]


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
