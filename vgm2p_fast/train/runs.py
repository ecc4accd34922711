"""Run folders: never overwrite a run, one run per folder at a time, checkpoints that survive
a crash (design 7).

- A new run's default folder is unique (``runs/<dataset>-<method>-seed<k>-<UTC time>``); a
  folder that already holds a run (``config.json`` or a checkpoint) is refused unless the run
  resumes or ``overwrite`` is given. Nothing is written before the options and the dataset are
  validated (the caller opens the folder after loading both).
- ``RunLock``: an exclusive ``flock`` on ``<out>/.lock`` for the run's lifetime, so a second
  process started on the same folder fails at once instead of interleaving its files.
- Checkpoints ``checkpoint-<iteration>.pt``: written to a temp file, fsynced, renamed, then
  read back and checked; the last ``keep`` are kept. ``latest_checkpoint`` falls back to an
  older one (with a warning) when the newest is truncated or corrupt.
- Resume: the dataset (path and sha256) and every option outside ``RESUMABLE`` must equal the
  checkpoint's; a mismatch is one line naming the options, and config.json is not touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write
from .config import RESUMABLE, TrainConfig

_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")


def default_out(cfg: TrainConfig) -> Path:
    """``runs/<dataset>-<method>-seed<k>-<UTC yyyymmdd-hhmmss>``, with a numeric suffix if even
    that exists (two runs started in the same second)."""
    name = Path(str(cfg.dataset)).name.removesuffix(".h5")
    method = cfg.method or (cfg.condition if cfg.policy_loss == "meanflow" else cfg.policy_loss)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path("runs") / f"{name}-{method}-seed{cfg.seed}-{stamp}"
    out, k = base, 1
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return out


def holds_run(out: Path) -> bool:
    """Whether ``out`` already holds (part of) a run."""
    return (out / "config.json").exists() or any(checkpoints(out)) or (out / "policy.pt").exists()


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (1 MiB reads: ~0.3 s for the largest benchmark dataset)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class RunLock:
    """Exclusive, non-blocking ``flock`` on ``<out>/.lock``; released on exit or process death."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ValueError(f"out: {self.path.parent} is in use by another running "
                             f"`vgm2p train` (it holds {self.path}); wait for it or choose "
                             f"another --out") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def fitted_critic(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's run fitted a critic (saved critic optimiser state); its
    ``iteration`` then counts ``value_warmup`` warm-up iterations. Checkpoints of the BC presets
    from before they dropped their unused critic did."""
    return state.get("c_opt") is not None


def save_checkpoint(out: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoint-<iteration>.pt`` atomically, read it back, then drop all but the
    newest ``keep``. A file that does not read back as the one written (a full disk, bad
    storage) is removed, so the previous checkpoint stays the newest, and OSError names it."""
    path = out / f"checkpoint-{state['iteration']}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    try:
        back = torch.load(path, map_location="cpu", weights_only=False)
        ok = isinstance(back, dict) and back.get("iteration") == state["iteration"]
        why = "another iteration"
    except Exception as exc:  # torch's zip reader raises RuntimeError/EOFError/...
        ok, why = False, _reason(exc)
    if not ok:
        path.unlink(missing_ok=True)
        raise OSError(f"{path}: the checkpoint read back is not the one written ({why}); "
                      f"removed it, the newest checkpoint is the previous one")
    for old in checkpoints(out)[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return path


def latest_checkpoint(out: Path, device: torch.device) -> dict[str, Any]:
    """The newest checkpoint that loads, falling back to older ones with a warning on stderr
    per unreadable newer one; FileNotFoundError when none is there, ValueError (one line
    naming each file, no warnings) when none loads."""
    found = checkpoints(out)
    if not found:
        raise FileNotFoundError(f"resume: no checkpoint-<iteration>.pt in {out}; start "
                                f"without --resume")
    errors = []
    for path in reversed(found):
        try:
            state = torch.load(path, map_location=device, weights_only=False)
            if not isinstance(state, dict) or "iteration" not in state:
                raise ValueError("not a vgm2p checkpoint")
        except Exception as exc:  # torch's zip reader raises RuntimeError/EOFError/...
            errors.append((path, _reason(exc)))
            continue
        for bad, why in errors:
            print(f"vgm2p: warning: {bad} is unreadable ({why}); resuming from the older "
                  f"{path.name}", file=sys.stderr)
        return state
    shown = "; ".join(f"{p.name}: {why}" for p, why in errors)
    raise ValueError(f"resume: every checkpoint in {out} is unreadable ({shown}); start "
                     f"again with --overwrite")


def set_aside_newer(out: Path, iteration: int) -> None:
    """Rename the checkpoints newer than the one resumed from (the unreadable ones
    ``latest_checkpoint`` skipped) to ``*.unreadable``, so that the resumed run's checkpoints
    replace them and keep-K never keeps a bad file in place of a good one."""
    for path in checkpoints(out):
        if int(_CKPT.match(path.name).group(1)) > iteration:
            path.rename(path.with_name(path.name + ".unreadable"))


def _reason(exc: BaseException) -> str:
    """``Type: first sentence of the message`` (torch's zip errors run to five sentences)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text.split('. ')[0][:160]}" if text else type(exc).__name__


def check_resume(cfg: TrainConfig, saved: dict[str, Any], dataset_hash: str,
                 saved_hash: str | None) -> None:
    """One-line ValueError when the resumed run's dataset or a non-resumable option differs
    from the checkpoint's (``saved`` is its config dict)."""
    now = dataclasses.asdict(cfg)
    differ = [k for k in now if k not in RESUMABLE and k in saved
              and _norm(now[k]) != _norm(saved[k])]
    if differ:
        shown = ", ".join(f"{k} ({_norm(saved[k])!r} -> {_norm(now[k])!r})" for k in differ)
        raise ValueError(f"resume: options differ from the checkpoint's: {shown}; only "
                         f"{', '.join(RESUMABLE)} may change on resume")
    if saved_hash is not None and saved_hash != dataset_hash:
        raise ValueError(f"resume: the dataset {cfg.dataset} is not the one the run trained on "
                         f"(sha256 {dataset_hash[:12]}... vs {saved_hash[:12]}...)")


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v
