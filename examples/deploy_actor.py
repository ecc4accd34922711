"""Act with an exported VGM²P actor using torch alone: this script never imports vgm2p_fast.

Export first (on the machine that trained the policy)::

    vgm2p export --checkpoint runs/my-run --out actor.pt2      # or policy.export("actor.pt2")

then, anywhere torch is installed (a robot, a simulator farm)::

    python examples/deploy_actor.py actor.pt2 --batch 4 --steps 3

It reads the sizes from the program's ``vgm2p_actor.json``, feeds random observations (put your
environment's there: raw observations, the policy normalises them itself), draws the noise
``e ~ N(0, I)`` the program takes as an input, and prints each step's actions as one JSON line.
Per step it draws, from one ``torch.Generator`` seeded with ``--seed``: the observations
``[B, N, obs_dim]``, the noise ``[B, N, D]`` and, for a discrete policy, an availability mask
(each action available with probability 0.5, action 0 always). ``--mode`` uses zero noise: the
deterministic "mode" action.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def load_actor(path: str) -> tuple[torch.nn.Module, dict]:
    """The exported program's module and its metadata (sizes, inputs, guidance)."""
    extra = {"vgm2p_actor.json": ""}
    module = torch.export.load(path, extra_files=extra).module()
    return module, json.loads(extra["vgm2p_actor.json"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("actor", help="a .pt2 written by `vgm2p export` or MeanFlowPolicy.export")
    ap.add_argument("--batch", type=int, default=1, help="environments acting at once")
    ap.add_argument("--steps", type=int, default=1, help="steps to act")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", action="store_true", help="zero noise (the mode action)")
    args = ap.parse_args(argv)
    actor, meta = load_actor(args.actor)
    n, obs_dim, dim = meta["n_agents"], meta["obs_dim"], meta["action_dim"]
    print(f"# {meta['policy']}: {n} agents, obs {obs_dim}, "
          f"{'discrete ' if meta['discrete'] else ''}actions {dim}, inputs {meta['inputs']}, "
          f"test guidance {meta['test_guidance']}", file=sys.stderr)
    gen = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        for _ in range(args.steps):
            obs = torch.randn(args.batch, n, obs_dim, generator=gen)
            noise = torch.randn(args.batch, n, dim, generator=gen)
            if args.mode:
                noise.zero_()
            if meta["discrete"]:
                avail = torch.rand(args.batch, n, dim, generator=gen) < 0.5
                avail[..., 0] = True
                actions = actor(obs, avail, noise)
            else:
                actions = actor(obs, noise)
            print(json.dumps(actions.tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
