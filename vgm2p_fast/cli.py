"""The ``vgm2p`` command line: ``info`` (versions and backends); ``train``/``eval``/``data`` are
added by the training pipeline."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

import torch

from . import __version__, _backend
from .datasets import add_cli as add_data_cli
from .ops import REGISTRY


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, extension/Triton availability and the backend ``auto`` picks per op."""
    print(f"vgm2p_fast {__version__}  python {platform.python_version()}  torch {torch.__version__}"
          f"  threads {torch.get_num_threads()}")
    ext, reason = _backend._load_ext()
    print("extension vgm2p_fast._C:", f"built ({ext.__file__})" if ext else f"missing: {reason}")
    ok, reason = _backend._triton_import()
    if ok:
        import triton

        print(f"triton: {triton.__version__}")
    else:
        print(f"triton: missing: {reason}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"cuda: {torch.cuda.get_device_name(0)}")
    else:
        print(f"cuda: not available (torch built with CUDA {torch.version.cuda})")
    for dev in devices:
        print(f"backends on {dev.type} (auto):")
        for op, chosen, why in _backend.report(REGISTRY, dev):
            print(f"  {op:22s} {chosen:7s} {('(not faster: ' + why + ')') if why else ''}")
    if not ext:
        print("note: running on the torch references for ops the extension would provide")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgm2p", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vgm2p_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, extension/Triton availability, backends per op")
    p.set_defaults(func=cmd_info)
    add_data_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
