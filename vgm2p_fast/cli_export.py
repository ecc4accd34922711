"""``vgm2p export``: a trained run's policy as a ``torch.export`` program that needs only torch.

    vgm2p export --checkpoint RUN --out actor.pt2 [--test-guidance W] [--aoti actor_aoti.pt2]

``RUN`` is a run directory (its ``policy.pt``) or a policy file; a ``MeanFlowPolicy`` or the
``MLPPolicy`` baseline (deterministic: same signature, the noise input is ignored). The guidance
defaults to the one the run evaluated with (its metadata's ``test_guidance``, else 1). What the
program takes and returns: ``vgm2p_fast/policy/export.py`` and ``docs/deploy.md``. Errors are one
line and exit status 2 (``vgm2p_fast.cli.main``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_train import positive_float


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def cmd_export(args: argparse.Namespace) -> int:
    """Load the checkpoint, export it to ``--out`` (and ``--aoti``), print what was written."""
    from .policy import MeanFlowPolicy, load_policy
    from .policy.export import compile_aoti, export_policy

    path = Path(args.checkpoint)
    path = path / "policy.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no policy.pt there")
    for flag, out in (("--out", args.out), ("--aoti", args.aoti)):
        if out is not None and not Path(out).resolve().parent.is_dir():
            raise FileNotFoundError(f"{flag} {out}: folder {Path(out).resolve().parent} does "
                                    f"not exist")
    policy = load_policy(path, map_location=args.device)
    guidance = args.test_guidance
    if guidance is None:
        guidance = (float(policy.metadata.get("test_guidance", 1.0))
                    if isinstance(policy, MeanFlowPolicy) else 1.0)
    try:
        export_policy(policy, args.out, test_guidance=guidance)
    except ValueError:
        raise
    except Exception as exc:  # torch.export's own error types: one line, not a traceback
        raise ValueError(f"--checkpoint {args.checkpoint}: torch.export failed "
                         f"({_first_line(exc)})") from exc
    inputs = "(obs, avail_actions, noise)" if policy.discrete else "(obs, noise)"
    print(f"wrote {args.out}: {type(policy).__name__}, {policy.n_agents} agents, inputs "
          f"{inputs} with any batch size, test guidance {guidance:g}")
    if args.aoti is not None:
        try:
            compile_aoti(args.out, args.aoti)
        except Exception as exc:  # a missing C++ compiler, inductor errors
            raise ValueError(f"--aoti {args.aoti}: AOTInductor failed ({_first_line(exc)})"
                             ) from exc
        print(f"wrote {args.aoti}: AOTInductor package (torch._inductor.aoti_load_package)")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vgm2p export`` on the top-level subparsers."""
    p = sub.add_parser("export", help="write a trained policy as a torch.export program (.pt2) "
                       "that runs without vgm2p_fast",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run directory or policy.pt")
    p.add_argument("--out", required=True, help="the .pt2 file to write")
    p.add_argument("--test-guidance", "--guidance", dest="test_guidance", type=positive_float,
                   default=None, help="test-time guidance w > 0 baked into the program "
                   "(default: the run's, 1 = off)")
    p.add_argument("--aoti", default=None, help="also compile an AOTInductor package to this "
                   "path (needs a C++ compiler; minutes)")
    p.add_argument("--device", default="cpu",
                   help="device of the program: cpu, cuda, cuda:<i> (default: cpu)")
    p.set_defaults(func=cmd_export)
