"""``vgm2p train`` and ``vgm2p eval``: options generated from ``TrainConfig`` (help text,
choices and defaults from its field metadata), config files, and the one-line summaries."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .train import TrainConfig, config_from, evaluate_policy, train
from .train.config import EVAL_NOISE

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def parse_bool(text: str) -> bool:
    """true/false/1/0/yes/no (any case); anything else is an argparse error."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected one of true/false/1/0/yes/no, found {text!r}")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, found {text!r}")
    return v


def config_file(path: str) -> dict[str, Any]:
    """The fields in a JSON or TOML file; a malformed file is a one-line error naming it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"--config: cannot read {path} ({exc.strerror})") from exc
    try:
        if path.endswith(".toml"):
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ValueError(f"{path}: invalid {kind} ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of options, found {type(data).__name__}")
    return data


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Whatever is written to stdout inside goes to stderr, at the file-descriptor level:
    jaxmarl's import sets ``sys.stdout = sys.__stdout__`` (undoing any ``redirect_stdout``)
    and then prints, so ``--json`` must move fd 1 itself to keep its JSON alone on stdout."""
    sys.stdout.flush()
    saved, saved_fd = sys.stdout, os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None:
                stream.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) a policy; prints the summary's headline numbers."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values: dict[str, Any] = {}
    source = "options"
    if args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there (not a run "
                                    f"folder)")
        values.update(config_file(str(saved)))
        values["out"] = args.resume
        source = str(saved)
    elif args.config:
        values.update(config_file(args.config))
        source = args.config
    if args.resume and given.get("out", args.resume) != args.resume:
        raise ValueError("--out: a resumed run stays in its folder; drop --out or --resume")
    values.update(given)
    try:
        cfg = config_from(values, source)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}" if source != "options" and not str(exc).startswith(
            source) else str(exc)) from exc
    summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite,
                    progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        ev = summary.get("eval_return_mean")
        ev_text = (f"{ev:.2f} +- {summary['eval_return_std']:.2f} over "
                   f"{summary['eval_episodes']} episodes" if ev is not None
                   else f"skipped ({summary.get('eval_skipped')})")
        norm = (f", normalised {summary['eval_normalised']:.1f}"
                if summary.get("eval_normalised") is not None else "")
        print(f"trained {cfg.steps} policy steps on {summary['dataset']} at "
              f"{summary['samples_per_s']:.0f} samples/s; final eval return {ev_text}{norm} "
              f"(dataset mean {summary['dataset_return_mean']:.2f}); results in "
              f"{summary['config']['out']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved policy (a run directory or a policy.pt file) in its environment."""
    from .policy import load_policy
    from .train.loop import _device

    path = Path(args.checkpoint)
    path = path / "policy.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no policy.pt there")
    policy = load_policy(path, map_location=_device(args.device, 0))
    meta = policy.metadata
    env = args.env or meta.get("env")
    if not env:
        raise ValueError("--env: the checkpoint does not record its environment; pass --env")
    sampler = meta.get("sampler", "meanflow" if meta.get("mean_velocity", True) else "euler")
    with _stdout_to_stderr() if args.json else contextlib.nullcontext():
        res = evaluate_policy(policy, env, args.episodes, args.seed,
                              args.test_guidance or meta.get("test_guidance", 1.0),
                              args.steps or meta.get("eval_steps", 1), sampler,
                              args.noise or meta.get("eval_noise", "sample"))
    if args.json:
        print(json.dumps(res))
    else:
        extra = f", win rate {res['win_rate']:.2f}" if "win_rate" in res else ""
        print(f"{env}: return {res['return_mean']:.2f} +- {res['return_std']:.2f} over "
              f"{res['episodes']} episodes{extra}")
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train VGM²P (or a baseline) on an offline dataset",
                       description="Train VGM²P on an offline multi-agent dataset, evaluating "
                       "it during training. Precedence: defaults < --method preset < --config "
                       "file < options given here.")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        shown = {"out": "a new runs/<dataset>-<method>-seed<k>-<time>", "method": "none"}.get(
            f.name, " ".join(map(str, default)) if isinstance(default, tuple) else default)
        kw: dict[str, Any] = {"default": None, "help": f"{f.metadata['help']} (default: {shown})"}
        if isinstance(default, bool):
            kw.update(type=parse_bool, metavar="BOOL")
        elif isinstance(default, tuple):
            kw.update(type=int, nargs="+", metavar="N")
        else:
            kw["type"] = type(default)
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        flags = [flag, "--guidance"] if f.name == "guidance_scale" else [flag]
        p.add_argument(*flags, dest=f.name, **kw)
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of the options above")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its newest readable checkpoint; only "
                   "steps, logging, checkpoint and evaluation options may change")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (refused otherwise)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained policy in its environment")
    p.add_argument("--checkpoint", required=True, help="run directory or policy.pt")
    p.add_argument("--episodes", type=int, default=10, help="episodes (default: 10)")
    p.add_argument("--env", help="environment spec (default: the one the policy was trained for)")
    p.add_argument("--seed", type=int, default=TrainConfig.eval_seed,
                   help=f"seed of the episodes (default: {TrainConfig.eval_seed}, training's)")
    p.add_argument("--test-guidance", "--guidance", dest="test_guidance", type=positive_float,
                   default=None, help="test-time guidance w > 0 (default: the run's, 1 = off)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: what the run was trained to use, 1 for VGM²P)")
    p.add_argument("--noise", choices=list(EVAL_NOISE), default=None,
                   help="initial noise: sample e ~ N(0, I), zero, or auto (zero for discrete "
                   "actions, sample for continuous) (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i> (default: cpu)")
    p.add_argument("--json", action="store_true", help="print only the result, as JSON")
    p.set_defaults(func=cmd_eval)
