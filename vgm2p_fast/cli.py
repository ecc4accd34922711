"""The ``vgm2p`` command line: ``train``, ``eval``, ``info`` and ``data``.

User errors (a bad dataset file, a bad option value, a missing extra) print one line
``vgm2p: error: ...`` and exit with status 2; ``VGM2P_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__, backends
from .backends import BackendUnavailableError
from .datasets import add_cli as add_data_cli
from .envs import EnvUnavailableError
from .ops import REGISTRY
from .policy import MeanFlowPolicy
from .train import TrainConfig, evaluate_policy, train
from .value import CONDITIONS


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, extension/Triton availability and the backend ``auto`` picks per op."""
    print(f"vgm2p_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}"
          f"  threads {torch.get_num_threads()}")
    ext = backends.extension_status()
    where = f"built ({ext.detail})" if ext.ok else f"missing: {ext.detail}"
    print("extension vgm2p_fast._C:", where)
    triton = backends.triton_installed()
    print(f"triton: {triton.detail}" if triton.ok else f"triton: missing: {triton.detail}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"cuda: {torch.cuda.get_device_name(0)}")
    else:
        print(f"cuda: not available (torch built with CUDA {torch.version.cuda})")
    for dev in devices:
        print(f"backends on {dev.type} (auto):")
        for op, chosen, why in backends.report(REGISTRY, dev):
            print(f"  {op:22s} {chosen:7s} {f'(skipped {why})' if why else ''}")
    if not ext.ok:
        print("note: running on the torch references for ops the extension would provide")
    return 0


def _config_file(path: str) -> dict[str, Any]:
    """A JSON or TOML file of TrainConfig fields."""
    text = Path(path).read_text()
    if path.endswith(".toml"):
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; expected some of {sorted(known)}")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) VGM²P; prints the summary's headline numbers."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values: dict[str, Any] = {}
    if args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there")
        values.update(json.loads(saved.read_text()))
        values["out"] = args.resume
    elif args.config:
        values.update(_config_file(args.config))
    values.update(given)
    cfg = TrainConfig(**values)
    summary = train(cfg, resume=bool(args.resume), progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        ev = summary.get("eval_return_mean")
        ev_text = (f"{ev:.2f} +- {summary['eval_return_std']:.2f} over "
                   f"{summary['eval_episodes']} episodes" if ev is not None
                   else f"skipped ({summary.get('eval_skipped')})")
        print(f"trained {cfg.steps} policy steps on {summary['dataset']} at "
              f"{summary['samples_per_s']:.0f} samples/s; eval return {ev_text} "
              f"(dataset mean {summary['dataset_return_mean']:.2f}); results in {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a saved policy (a run directory or a policy.pt file) in its environment."""
    path = Path(args.checkpoint)
    path = path / "policy.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no policy.pt there")
    policy = MeanFlowPolicy.load(path, map_location=args.device)
    env = args.env or policy.metadata.get("env")
    if not env:
        raise ValueError("--env: the checkpoint does not record its environment; pass --env")
    meta = policy.metadata
    res = evaluate_policy(policy, env, args.episodes, args.seed, args.guidance,
                          args.steps or meta.get("eval_steps", 1),
                          meta.get("mean_velocity", True))
    if args.json:
        print(json.dumps(res))
    else:
        extra = f", win rate {res['win_rate']:.2f}" if "win_rate" in res else ""
        print(f"{env}: return {res['return_mean']:.2f} +- {res['return_std']:.2f} over "
              f"{res['episodes']} episodes{extra}")
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train VGM²P on an offline dataset and evaluate it",
                       description="Train VGM²P. Every option defaults to TrainConfig's value; "
                       "precedence: defaults < --config file < options given here.")
    defaults = TrainConfig(out="unused")
    for f in dataclasses.fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        shown = "runs/<dataset>-<condition>-seed<seed>" if f.name == "out" else default
        kw: dict[str, Any] = {"default": None, "help": f"(default: {shown})"}
        if isinstance(default, bool):
            kw["type"] = lambda x: x.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            kw.update(type=int, nargs="+")
        else:
            kw["type"] = type(default)
        if f.name == "condition":
            kw["choices"] = list(CONDITIONS)
        p.add_argument(flag, dest=f.name, **kw)
    p.add_argument("--config", help="JSON or TOML file of the options above")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained policy in its environment")
    p.add_argument("--checkpoint", required=True, help="run directory or policy.pt")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--env", help="environment spec (default: the one the policy was trained for)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=1.0, help="test-time guidance w")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: what the run was trained to use, 1 for VGM²P)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgm2p", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vgm2p_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, extension/Triton availability, backends per op")
    p.set_defaults(func=cmd_info)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    add_data_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, BackendUnavailableError, EnvUnavailableError) as exc:
        if os.environ.get("VGM2P_DEBUG") == "1":
            raise
        print(f"vgm2p: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
