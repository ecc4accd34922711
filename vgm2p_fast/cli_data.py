"""``vgm2p data info|list|convert|verify``: the dataset commands of the command line.

Registered by :mod:`vgm2p_fast.cli` (:func:`add_data_parser`). They live here, not in
:mod:`vgm2p_fast.datasets`, so the data layer imports no converter and no CLI: imports go
cli -> cli_data -> convert -> datasets. User errors raise ``ValueError`` (``DatasetError`` is
one), which ``cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import data_dir, list_datasets, load_dataset

# A checkout has benchmarks/ beside the package (an installed wheel has none).
CHECKOUT_BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks" / "data"
MANIFEST = CHECKOUT_BENCHMARKS / "MANIFEST.sha256"
_FORMATS = ("auto", "vault", "madiff", "omar", "omiga", "omiga-smac")


# ------------------------------------------------------------------------------------ info
def _score_refs(attrs: Mapping[str, Any], return_mean: float) -> dict[str, float]:
    """Normalised-score references of a file (benchmarks/datasets writes them), if any.

    Score = 100 (R - random) / (behaviour - random): 0 is the random policy, 100 the
    behaviour policy the references name.
    """
    if "ref_random_return" not in attrs or "ref_behaviour_return" not in attrs:
        return {}
    lo, hi = float(attrs["ref_random_return"]), float(attrs["ref_behaviour_return"])
    return {"ref_random_return": lo, "ref_behaviour_return": hi,
            "normalised_return_mean": 100.0 * (return_mean - lo) / (hi - lo)}


def _format_summary(s: Mapping[str, Any]) -> str:
    if s["action_space"] == "discrete":
        space = f"discrete ({s['action_dim']} actions)"
    else:
        bounds = f"bounds [{np.min(s['action_low']):g}, {np.max(s['action_high']):g}]"
        space = f"continuous (action_dim {s['action_dim']}, env {bounds})"
    rows = [
        ("env", s["env"]), ("source", s["source"]), ("agents", s["agents"]),
        ("action space", space), ("obs_dim", s["obs_dim"]), ("state_dim", s["state_dim"]),
        ("transitions", f"{s['transitions']:,}"),
        ("episodes", f"{s['episodes']:,} (length mean {s['episode_length_mean']:.1f}, "
                     f"min {s['episode_length_min']}, max {s['episode_length_max']}; "
                     f"{s['terminals']:,} terminals, {s['truncations']:,} truncations)"),
        ("return", f"mean {s['return_mean']:.4g}  std {s['return_std']:.4g}  "
                   f"min {s['return_min']:.4g}  max {s['return_max']:.4g}"),
    ]
    if "ref_random_return" in s:
        rows.append(("score refs", f"random {s['ref_random_return']:.4g}, behaviour "
                     f"{s['ref_behaviour_return']:.4g}: normalised return mean "
                     f"{s['normalised_return_mean']:.1f} (100 (R - random) / (behaviour - "
                     "random))"))
    return "\n".join(f"{k:<13} {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> int:
    """Validate a dataset; print its sizes, return statistics and score references."""
    ds = load_dataset(args.file)
    summary = ds.summary()
    summary.update(_score_refs(ds.attrs, summary["return_mean"]))
    print(json.dumps(summary, indent=2) if args.json else _format_summary(summary))
    return 0


# ------------------------------------------------------------------------------------ list
def cmd_list(args: argparse.Namespace) -> int:
    """One line per dataset: name, kind (bundled, cached, benchmark) and path."""
    bundled = Path(str(importlib.resources.files("vgm2p_fast") / "data"))
    rows = []
    for name in list_datasets():  # the names load_dataset takes: bundled first, then cached
        path = bundled / f"{name}.h5"
        kind = "bundled" if path.is_file() else "cached"
        rows.append((name, kind, path if kind == "bundled" else data_dir() / f"{name}.h5"))
    if CHECKOUT_BENCHMARKS.is_dir():  # by path only: load_dataset does not look there
        rows += [(p.stem, "benchmark", p) for p in sorted(CHECKOUT_BENCHMARKS.glob("*.h5"))]
    width = max((len(r[0]) for r in rows), default=0)
    for name, kind, path in rows:
        print(f"{name:<{width}}  {kind:<9}  {path}")
    if not rows:
        print(f"no datasets (bundled none; cache {data_dir()} is empty)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a dataset of another project (OG-MARL, MADiff, OMAR, OMIGA) to our format."""
    from .convert import convert

    # A missing optional package (tensorstore for vaults) is an ImportError: cli.main prints it.
    print(convert(args.source, args.out, format=args.format, env=args.env, uid=args.uid,
                  episode_limit=args.episode_limit, reward=args.reward,
                  action_low=args.action_low, action_high=args.action_high,
                  compression=None if args.compression == "none" else args.compression,
                  progress=not args.quiet and sys.stderr.isatty()))
    return 0


# ---------------------------------------------------------------------------------- verify
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB reads: flat memory
            h.update(block)
    return h.hexdigest()


def cmd_verify(args: argparse.Namespace) -> int:
    """Check files against a ``sha256sum`` manifest: one line per file; exit 1 when a file
    differs, 2 when one is missing (or the manifest is)."""
    manifest = Path(args.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"--manifest {manifest}: no such file (a checkout has "
                                f"{MANIFEST.relative_to(MANIFEST.parents[2])})")
    status = 0
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().lstrip("*")  # sha256sum marks binary mode with '*'
        if len(digest) != 64 or not name:
            raise ValueError(f"{manifest}: line {n}: expected '<sha256>  <file>', found "
                             f"{line!r}")
        path = manifest.parent / name
        if not path.is_file():
            print(f"MISSING   {name}")
            status = 2
            continue
        found = _sha256(path)
        if found == digest.lower():
            print(f"OK        {name}")
        else:
            print(f"MISMATCH  {name}: expected {digest}, found {found}")
            status = max(status, 1)
    return status


# ---------------------------------------------------------------------------------- parser
def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``vgm2p data info|list|convert|verify`` on the top-level subparsers."""
    data = subparsers.add_parser("data", help="offline datasets: inspect, list, convert, verify")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("info", help="validate a dataset; print sizes, returns, score references")
    p.add_argument("file", help="dataset path, or a name from `vgm2p data list`")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("list", help="bundled, cached and (in a checkout) benchmark datasets")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser(
        "convert", help="convert an OG-MARL vault, MADiff, OMAR or OMIGA dataset to our format",
        description="Convert another project's offline dataset to a vgm2p HDF5 file, streaming "
                    "(memory stays near 200 MB whatever the size). docs/convert.md shows the "
                    "command for each format.")
    p.add_argument("source", help="what the source project's loader reads: a <scenario>.vlt "
                   "folder, a MADiff quality folder, an OMAR seed_<k>_data folder, an OMIGA "
                   ".hdf5 file or an OMIGA SMAC folder of episode files")
    p.add_argument("out", help="output .h5 file")
    p.add_argument("--format", choices=_FORMATS, default="auto",
                   help="source layout (default: recognised from the files)")
    p.add_argument("--env", help="label of the output's environment, any string (default: "
                   "what the source's layout implies, e.g. smac_v1/3m)")
    p.add_argument("--uid", help="vaults: the dataset inside the vault (Good, Medium, ...)")
    p.add_argument("--episode-limit", type=int, metavar="N",
                   help="formats without a truncation flag: an episode of exactly N rows was "
                        "cut by the time limit (default: omar 25, omiga 1000, else none)")
    p.add_argument("--reward", choices=("team", "mean", "sum"), default="team",
                   help="per-agent rewards -> team reward: 'team' requires them equal and "
                        "takes that value (default); 'mean'/'sum' combine differing ones")
    p.add_argument("--action-low", type=float, nargs="+", metavar="X",
                   help="environment bounds of continuous actions stored outside [-1, 1] "
                        "(act_dim values, or N x act_dim agent by agent); rescaled to [-1, 1]")
    p.add_argument("--action-high", type=float, nargs="+", metavar="X")
    p.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("verify", help="check datasets against a sha256 manifest")
    p.add_argument("--manifest", default=str(MANIFEST),
                   help="a sha256sum file; paths are relative to it (default: the checkout's "
                        "benchmarks/data/MANIFEST.sha256)")
    p.set_defaults(func=cmd_verify)
