"""Re-evaluate finished runs of ``run.py`` on more episodes and other noise settings.

A SMAX episode ends in a win (return 2.0) or a loss (~0.6-1.0), so the mean of the table's 10
evaluation episodes has a standard error of ~0.15 (~13 normalised points) on its own, as large
as the differences the targets judge. This script loads each run's final ``policy.pt`` and
evaluates it again, on ``--episodes`` episodes from ``--eval-seed`` (not the training
evaluation's seeds), once per ``--noise`` setting (``auto``, ``sample`` or ``zero``; an MLP
policy is deterministic and is evaluated once, noise ``none``). ``mode+S`` (any policy) acts
with the deterministic action (a flow's e = 0, the MLP's output) plus Gaussian noise of sd S
in the dataset's [-1, 1] action units, clipped: ``mode+0.1`` puts back the sd-0.1 noise the
MaMuJoCo behaviour policies record with. ``sample*T`` (continuous flow policies; an MLP is
evaluated once) samples at temperature T: initial noise e ~ N(0, T^2 I) from a generator seeded
by ``--eval-seed``, so T = 0 is ``zero`` and T = 1 samples as ``sample`` does (other draws). A
setting may end in ``@N``: a flow policy then samples in N steps instead of the run's own
(``zero@5``: the ODE from e = 0 in 5 Euler steps of the average velocity; an MLP ignores it),
and ``~W`` before it acts with test-time guidance W instead of the run's (``auto~1.5``,
``zero~2@5``: ``u_null + W (u_c - u_null)``; a conditioned flow policy only). One csv row per
evaluation:

    python benchmarks/results/reevaluate.py --runs benchmarks/results/table-runs \\
        --datasets smax-2s3z-medium smax-3m-medium --methods vgm2p meanflow-bc mlp-bc \\
        --seeds 0 1 --episodes 100 --noise auto sample --csv benchmarks/results/reevaluate.csv

``--render`` prints the csv as a markdown table (mean ± 2σ over seeds, σ = sd / √n, of the
normalised return; win rate over all episodes), which docs/results.md shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import read_csv, stats  # noqa: E402  (the table's csv convention)

# (dataset, method, seed) name the run (``<runs>/<dataset>/<method>/seed<k>``); commit is the
# code it was trained at (its commit.txt).
COLUMNS = ["dataset", "method", "seed", "noise", "episodes", "eval_seed", "return_mean",
           "return_std", "win_rate", "normalised", "commit"]


NOISE = ("auto", "sample", "zero", "mode+S", "sample*T")


def sampling_options(noise: str) -> tuple[str, int | None, float | None]:
    """``(setting, N, W)`` of a ``setting~W@N`` (both suffixes optional: N >= 1 sampling steps,
    W > 0 test-time guidance; None where absent); a bad N or W is a ValueError naming
    ``--noise``."""
    base, at, n = noise.rpartition("@") if "@" in noise else (noise, "", "")
    if at and not (n.isdigit() and int(n) >= 1):
        raise ValueError(f"--noise: expected SETTING@N with N >= 1 sampling steps, found {noise!r}")
    base, tilde, w = base.partition("~")
    try:
        guidance = float(w) if tilde else None
    except ValueError:
        guidance = -1.0
    if guidance is not None and not 0.0 < guidance < float("inf"):
        raise ValueError(f"--noise: expected SETTING~W with a finite test-time guidance W > 0, "
                         f"found {noise!r}")
    return base, int(n) if at else None, guidance


def temperature(noise: str) -> float | None:
    """T of a ``sample*T`` setting (T >= 0, optionally ``~W@N``), None for any other setting;
    a bad T is a ValueError naming ``--noise``."""
    base = sampling_options(noise)[0]
    if not base.startswith("sample*"):
        return None
    try:
        t = float(base.removeprefix("sample*"))
    except ValueError:
        t = -1.0
    if not 0.0 <= t < float("inf"):
        raise ValueError(f"--noise: expected sample*T with a finite temperature T >= 0, "
                         f"found {noise!r}")
    return t


def action_noise(noise: str) -> float | None:
    """S of a ``mode+S`` setting (S >= 0, optionally ``@N``), None for ``auto`` / ``sample`` /
    ``zero`` / ``sample*T``; anything else is a ValueError naming ``--noise``."""
    if temperature(noise) is not None:
        return None
    noise = sampling_options(noise)[0]
    if noise in NOISE[:3]:
        return None
    try:
        sd = float(noise.removeprefix("mode+")) if noise.startswith("mode+") else -1.0
    except ValueError:
        sd = -1.0
    if not sd >= 0.0:
        raise ValueError(f"--noise: expected one of {', '.join(NOISE)} (S >= 0), found {noise!r}")
    return sd


class NoiseError(ValueError):
    """A ``--noise`` setting a run cannot take (``mode+S`` on discrete actions, ``~W`` on an
    unconditioned or MLP policy)."""


def _evaluate_noised(policy, sd: float, env: str, episodes: int, eval_seed: int,
                     scale: float = 0.0, **sampling) -> dict:
    """``envs.evaluate`` of the action from initial noise e ~ N(0, scale^2 I) (a flow's ``act``
    with the run's ``sampling`` options: test_guidance, n_steps, sampler; scale 0 is e = 0, the
    deterministic action; an MLP's output, which takes none) plus N(0, sd^2) in [-1, 1] units,
    clipped (both noises from a generator seeded by ``eval_seed``: reruns give the same
    numbers)."""
    import contextlib

    import torch

    from vgm2p_fast import envs
    from vgm2p_fast.policy import MLPPolicy

    policy = policy.eval()
    gen = torch.Generator().manual_seed(eval_seed)
    low, high = policy.action_low, policy.action_high

    @torch.no_grad()
    def act(obs, avail):
        obs = torch.as_tensor(obs, dtype=policy.obs_mean.dtype, device=policy.obs_mean.device)
        if isinstance(policy, MLPPolicy):
            a = policy.act(obs, None)
        else:
            shape = (obs.shape[0], policy.n_agents, policy.action_dim)
            e = scale * torch.randn(shape, generator=gen).to(obs) if scale else torch.zeros(
                shape, dtype=obs.dtype, device=obs.device)
            a = policy.act(obs, None, noise=e, **sampling)
        if not sd:
            return a.cpu()
        unit = 2 * (a - low) / (high - low) - 1
        unit = unit + sd * torch.randn(unit.shape, generator=gen).to(unit)
        return (low + (unit.clamp(-1, 1) + 1) * (high - low) / 2).cpu()

    with contextlib.redirect_stdout(sys.stderr):
        return envs.evaluate(act, env, episodes, seed=eval_seed)


def evaluate_run(run_dir: Path, noise: str, episodes: int, eval_seed: int) -> dict:
    """One evaluation of ``run_dir/policy.pt`` (the run's env and guidance; its step count
    unless ``noise`` ends in ``@N``)."""
    from vgm2p_fast.policy import MLPPolicy, load_policy
    from vgm2p_fast.train.evaluation import evaluate_policy, normalised_score

    summary = json.loads((run_dir / "summary.json").read_text())
    policy = load_policy(run_dir / "policy.pt")
    meta = policy.metadata
    mlp = isinstance(policy, MLPPolicy)
    sampling = {"test_guidance": meta.get("test_guidance", 1.0),
                "n_steps": meta.get("eval_steps", 1), "sampler": meta.get("sampler", "meanflow")}
    sd, temp = action_noise(noise), temperature(noise)
    setting, steps, guidance = sampling_options(noise)
    sampling["n_steps"] = steps or sampling["n_steps"]
    if guidance is not None:
        if mlp or not policy.n_tokens:
            raise NoiseError(f"--noise {noise}: test-time guidance needs a conditioned flow "
                             f"policy, {run_dir} is not one")
        sampling["test_guidance"] = guidance
    if sd is not None or (temp is not None and not mlp):
        if policy.discrete:
            raise NoiseError(f"--noise {noise}: continuous actions only, {run_dir} is discrete")
        res = _evaluate_noised(policy, sd or 0.0, meta["env"], episodes, eval_seed,
                               scale=temp or 0.0, **sampling)
    else:
        res = evaluate_policy(policy, meta["env"], episodes, eval_seed, **sampling,
                              noise="auto" if mlp else setting)
    refs = summary.get("references")
    score = normalised_score(res["return_mean"], tuple(refs) if refs else None)
    commit = run_dir / "commit.txt"
    noise = "none" if mlp and sd is None else noise
    return {"noise": noise, "episodes": episodes, "eval_seed": eval_seed,
            "return_mean": res["return_mean"], "return_std": res["return_std"],
            "win_rate": res.get("win_rate", ""), "normalised": "" if score is None else score,
            "commit": commit.read_text().strip() if commit.exists() else ""}


def render(rows: list[dict[str, str]]) -> str:
    """Markdown: one line per (dataset, method, noise), mean ± 2σ over seeds."""
    cells: dict[tuple[str, str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        cells[(r["dataset"], r["method"], r["noise"])].append(r)
    lines = ["| dataset | method | noise | seeds | episodes | normalised (mean ± 2σ) | return "
             "| win rate |", "|---|---|---|---|---|---|---|---|"]
    for (ds, m, noise), rs in sorted(cells.items()):
        norm = [float(r["normalised"]) for r in rs if r["normalised"] != ""]
        ret = sum(float(r["return_mean"]) for r in rs) / len(rs)
        if norm:
            mean, _, se = stats(norm)
            score = f"{mean:.1f} ± {2 * se:.1f}"
        else:
            score = "—"
        wins = [float(r["win_rate"]) for r in rs if r["win_rate"] != ""]
        win = f"{100 * sum(wins) / len(wins):.0f} %" if wins else "—"
        lines.append(f"| {ds} | {m} | {noise} | {len(rs)} | {rs[0]['episodes']} | {score} | "
                     f"{ret:.3f} | {win} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=HERE / "table-runs",
                   help="root of run.py's run directories (<runs>/<dataset>/<method>/seed<k>)")
    p.add_argument("--datasets", nargs="+", default=[], help="datasets to re-evaluate")
    p.add_argument("--methods", nargs="+", default=["vgm2p", "meanflow-bc", "mlp-bc"],
                   help="methods (run.py's names)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds")
    p.add_argument("--episodes", type=int, default=100, help="episodes per evaluation")
    p.add_argument("--eval-seed", type=int, default=20_000,
                   help="seed of the episodes (default 20000: not training's 10000)")
    p.add_argument("--noise", nargs="+", default=["auto"], metavar="NOISE",
                   help="settings, one evaluation each: auto, sample, zero (the initial noise of "
                        "flow policies), mode+S (the deterministic action plus N(0, S^2) "
                        "in [-1, 1] units, clipped; continuous actions, MLP policies too) or "
                        "sample*T (initial noise N(0, T^2 I); continuous flow policies), "
                        "each optionally ~W (test-time guidance W, not the run's; conditioned "
                        "flow policies) and then @N (a flow policy samples in N steps, not the "
                        "run's): zero~1.5@5")
    p.add_argument("--csv", type=Path, default=HERE / "reevaluate.csv",
                   help="rows are written (and replaced, by dataset/method/seed/noise) here")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip (and name) a dataset/method/seed without a finished run instead "
                        "of stopping")
    p.add_argument("--render", action="store_true", help="print the csv as markdown and exit")
    a = p.parse_args(argv)
    old = read_csv(a.csv)
    if a.render:
        print(render(old), end="")
        return 0
    if a.episodes < 1:
        p.error(f"--episodes: expected >= 1, found {a.episodes}")
    for noise in a.noise:
        try:
            action_noise(noise)
        except ValueError as e:
            p.error(str(e))
    if not a.datasets:
        p.error("--datasets: expected at least one dataset")
    key = lambda r: (r["dataset"], r["method"], int(r["seed"]), r["noise"])  # noqa: E731
    rows = {key(r): r for r in old}
    for ds in a.datasets:
        for m in a.methods:
            for s in a.seeds:
                run_dir = a.runs / ds / m / f"seed{s}"
                if not (run_dir / "summary.json").exists():
                    if a.skip_missing:
                        print(f"{run_dir}: skipped, not a finished run", flush=True)
                        continue
                    p.error(f"{run_dir}: not a finished run (no summary.json)")
                deterministic = False    # an MLP's auto / sample / zero are one evaluation
                for noise in a.noise:
                    if deterministic and action_noise(noise) is None:
                        continue
                    try:
                        r = {"dataset": ds, "method": m, "seed": s,
                             **evaluate_run(run_dir, noise, a.episodes, a.eval_seed)}
                    except NoiseError as e:
                        p.error(str(e))
                    rows[key(r)] = {k: str(r[k]) for k in COLUMNS}
                    print(f"{ds} {m} seed{s} {r['noise']}: {r['return_mean']:.3f}", flush=True)
                    deterministic |= r["noise"] == "none"
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(a.csv, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows[k] for k in sorted(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
