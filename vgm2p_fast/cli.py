"""The ``vgm2p`` command line: ``train``, ``eval``, ``info`` and ``data``.

User errors (a bad dataset file, a bad option value, a missing extra) print one line
``vgm2p: error: ...`` and exit with status 2; ``VGM2P_DEBUG=1`` shows the traceback instead."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from typing import NoReturn

import torch

from . import __version__, backends
from .backends import BackendUnavailableError
from .cli_data import add_data_parser
from .cli_export import add_export_parser
from .cli_train import add_eval_parser, add_train_parser
from .envs import EnvUnavailableError
from .ops import REGISTRY


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgm2p", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vgm2p_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, extension/Triton availability, backends per op")
    p.set_defaults(func=cmd_info)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_data_parser(sub)
    add_export_parser(sub)
    return parser


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Usage errors of ``parser`` and its subcommands as one line ``vgm2p: error: <command>:
    <message>`` (exit 2), like every other user error, not the whole usage text."""
    command = parser.prog.partition(" ")[2]

    def error(message: str) -> NoReturn:
        where = f"{command}: " if command else ""
        parser.exit(2, f"vgm2p: error: {where}{message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _one_line_errors(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _one_line_errors(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError, BackendUnavailableError,
            EnvUnavailableError) as exc:
        if os.environ.get("VGM2P_DEBUG") == "1":
            raise
        print(f"vgm2p: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
