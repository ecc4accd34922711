"""How closely each method's policy reproduces a dataset's actions as training goes (issue 12,
item 3: why the MeanFlow policy clones worse than an MLP at the default budget).

Each run is one ``vgm2p train --method M --eval-episodes 0`` (the table's trainer and budget,
no environment), checkpointing every 500 iterations and keeping them all. At every ``--every``
policy steps the checkpoint's EMA policy (what the trainer evaluates) acts on ``--rows`` fixed
dataset rows, with the method's own sampler and step count:

    err_mode   = mean over rows and agents of  sum_d (a(e = 0) - a_data)^2
    err_sample = the same for one sampled e ~ N(0, I) per row
    spread     = mean over rows and agents of  sum_d Var_k a(e_k)   (``--draws`` draws a row)

in the dataset's [-1, 1] action units. A deterministic cloner has err_sample = err_mode and
spread 0; a policy that samples the data's own action distribution has, in expectation,
spread = the data's action variance at a state and err_sample = err_mode + spread. So
err_mode measures how well the policy's centre fits, spread how wide it samples. Continuous
actions only (for discrete ones the evaluation acts with e = 0 already).

    python benchmarks/results/fit.py --datasets hopper-3x1-medium --methods mlp-bc \\
        meanflow-bc vgm2p --seeds 0 1 2 --runs /tmp/fit-runs --jobs 2      # train + measure
    python benchmarks/results/fit.py --render --at 4000 10000   # docs/results.md's table

A finished run (its ``policy.pt`` exists) is measured again without training.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import code_commit, dataset_arg, method_args, read_csv, stats  # noqa: E402

CSV = HERE / "fit.csv"
COLUMNS = ["dataset", "method", "seed", "policy_step", "err_mode", "err_sample", "spread",
           "commit"]
CKPT_EVERY = 500   # iterations between the checkpoints the measurements read


def measure(run_dir: Path, every: int, rows: int, draws: int) -> list[dict]:
    """The three numbers (module docstring) at every ``every`` policy steps of ``run_dir``."""
    import torch

    from vgm2p_fast.datasets import load_dataset
    from vgm2p_fast.policy import MLPPolicy
    from vgm2p_fast.train import build_policy, config_from
    from vgm2p_fast.train.runs import checkpoints, fitted_critic

    found = {}
    for path in checkpoints(run_dir):
        state = torch.load(path, map_location="cpu", weights_only=False)
        found[state["iteration"]] = state
    cfg = config_from({k: v for k, v in next(iter(found.values()))["config"].items()},
                      f"{run_dir} checkpoint")
    ds = load_dataset(cfg.dataset)
    if ds.discrete:
        raise ValueError(f"{cfg.dataset}: fit.py measures continuous actions; found discrete")
    probe = ds.batch(torch.randperm(ds.n_transitions,
                                    generator=torch.Generator().manual_seed(0))[:rows])
    obs, data = probe["observations"], probe["actions"]
    sampler = "euler" if cfg.policy_loss == "flow_matching" else "meanflow"
    # fit.csv's BC runs (d3a3dec) still warmed up the critic they did not read
    warmup = cfg.value_warmup if fitted_critic(next(iter(found.values()))) else 0
    out = []
    for step in range(every, cfg.steps + 1, every):
        state = found.get(warmup + step)
        if state is None:
            raise ValueError(f"{run_dir}: no checkpoint at policy step {step} (iteration "
                             f"{warmup + step}); --every must be a multiple of "
                             f"{CKPT_EVERY}")
        policy = build_policy(cfg, ds)
        policy.load_state_dict(state["ema"])
        kw = {} if isinstance(policy, MLPPolicy) else {"n_steps": cfg.eval_steps,
                                                        "sampler": sampler}
        gen = torch.Generator().manual_seed(1)
        mode = _unit(policy, obs, torch.zeros_like(data), None, kw)
        samples = torch.stack([_unit(policy, obs, None, gen, kw) for _ in range(draws)])
        out.append({"policy_step": step,
                    "err_mode": float((mode - data).square().sum(-1).mean()),
                    "err_sample": float((samples[0] - data).square().sum(-1).mean()),
                    "spread": float(samples.var(0).sum(-1).mean())})
    return out


def _unit(policy, obs, noise, gen, kw: dict):
    """The policy's actions on ``obs`` in the dataset's [-1, 1] units (an MLP policy ignores
    the noise: it is deterministic)."""
    from vgm2p_fast.policy import MLPPolicy

    a = (policy.act(obs) if isinstance(policy, MLPPolicy) else
         policy.act(obs, noise=noise, generator=gen, **kw))
    return 2 * (a - policy.action_low) / (policy.action_high - policy.action_low) - 1


def train(runs: Path, dataset: str, method: str, seed: int, commit: str,
          extra: list[str]) -> Path:
    """Train one run (unless finished) with every checkpoint kept; its folder."""
    out = runs / dataset / method / f"seed{seed}"
    if (out / "policy.pt").exists():
        return out
    exe = shutil.which("vgm2p")
    cmd = [*([exe] if exe else [sys.executable, "-m", "vgm2p_fast.cli"]), "train",
           "--dataset", dataset_arg(dataset), "--seed", str(seed), "--out", str(out),
           "--overwrite", "--quiet", "--eval-episodes", "0", "--checkpoint-every",
           str(CKPT_EVERY), "--keep-checkpoints", "1000", *method_args(method), *extra]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}; see {out}/train.log")
    (out / "commit.txt").write_text(commit + "\n")
    return out


def render(rows: list[dict[str, str]], at: list[int] | None = None) -> str:
    """Markdown: per dataset, method and policy step (those in ``at``, or all), each number's
    mean ± 2σ over seeds (σ = sd / √n)."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in rows:
        if at is None or int(r["policy_step"]) in at:
            groups[(r["dataset"], r["method"], int(r["policy_step"]))].append(r)
    lines = ["| dataset | method | policy step | seeds | err_mode | err_sample | spread |",
             "|---|---|---|---|---|---|---|"]
    for (ds, method, step), rs in groups.items():
        cells = []
        for k in ("err_mode", "err_sample", "spread"):
            m, _, se = stats([float(r[k]) for r in rs])
            cells.append(f"{m:.4f} ± {2 * se:.4f}")
        lines.append(f"| {ds} | {method} | {step} | {len(rs)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Options after -- go to every `vgm2p train` unchanged.")
    p.add_argument("--datasets", nargs="+", default=[], help="continuous-action datasets")
    p.add_argument("--methods", nargs="+", default=["mlp-bc", "meanflow-bc", "vgm2p"],
                   help="run.py method names")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--runs", type=Path, default=HERE / "fit-runs", help="run folders (not kept)")
    p.add_argument("--every", type=int, default=2000,
                   help=f"policy steps between measurements (a multiple of {CKPT_EVERY})")
    p.add_argument("--rows", type=int, default=2048, help="fixed dataset rows measured")
    p.add_argument("--draws", type=int, default=8, help="sampled actions per row (spread)")
    p.add_argument("--jobs", type=int, default=1, help="training processes at once")
    p.add_argument("--csv", type=Path, default=CSV, help="csv the rows are merged into")
    p.add_argument("--render", action="store_true", help="print --csv as markdown and exit")
    p.add_argument("--at", type=int, nargs="+", default=None, metavar="STEP",
                   help="--render only these policy steps (default: all)")
    a, extra = p.parse_known_args(argv)
    extra = extra[1:] if extra[:1] == ["--"] else extra
    if a.render:
        print(render(read_csv(a.csv), a.at))
        return 0
    if not a.datasets:
        p.error("--datasets: give at least one (or --render)")
    if a.every < CKPT_EVERY or a.every % CKPT_EVERY or a.rows < 1 or a.draws < 2:
        p.error(f"--every: expected a multiple of {CKPT_EVERY}, --rows >= 1 and --draws >= 2; "
                f"found {a.every}, {a.rows}, {a.draws}")
    for m in a.methods:
        try:
            method_args(m)
        except ValueError as exc:
            p.error(f"--methods: {exc}")
    commit = code_commit()
    jobs = [(d, m, s) for s in a.seeds for d in a.datasets for m in a.methods]
    with ThreadPoolExecutor(a.jobs) as pool:
        dirs = list(pool.map(lambda j: train(a.runs, *j, commit, extra), jobs))
    key = lambda r: (r["dataset"], r["method"], int(r["seed"]), int(r["policy_step"]))  # noqa: E731
    table = {key(r): r for r in read_csv(a.csv)}
    for (d, m, s), run_dir in zip(jobs, dirs):
        made = (run_dir / "commit.txt").read_text().strip()
        for rec in measure(run_dir, a.every, a.rows, a.draws):
            row = {"dataset": d, "method": m, "seed": s, "commit": made,
                   **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()}}
            table[key(row)] = {k: str(v) for k, v in row.items()}
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(table[k] for k in sorted(table))
    print(render(list(table.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
