"""One-command performance report: ``python benchmarks/report.py``.

Runs the CPU suites (``bench_meanflow``, ``bench_act``, ``bench_gae``, ``bench_train``) in one
pytest-benchmark run, or reads a saved JSON (``--json FILE``), and writes ``benchmarks/REPORT.md``
with ratio tables (ours / floor, peer / ours), the goals met or missed (with a torch.profiler
table for each miss), and a PNG bar chart (``benchmarks/REPORT.png``); the run's JSON is kept
next to them (``benchmarks/REPORT.json``).

Default run: ``OMP_NUM_THREADS=1`` and ``--benchmark-timer=time.process_time`` (CPU time of one
thread): on the shared 2-core dev machine this is what stays stable while other jobs run; the
ratios use the minimum over rounds. ``--threads`` and ``--timer`` change both (and are stated in
the report). The ratios, not the absolute times, carry the claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = ("bench_meanflow.py", "bench_act.py", "bench_gae.py", "bench_train.py")


@dataclasses.dataclass(frozen=True)
class Role:
    """How one group's cases compare: ``ours`` against ``floor`` and the others (peers)."""

    prefix: str            # group name prefix
    ours: str
    floor: str | None
    title: str
    metric: str = "time"   # "time" (lower is better) or "samples_per_s" (higher is better)


ROLES = (
    Role("meanflow-step-kappa0", "fast", "flow_matching", "Training step, kappa = 0"),
    Role("meanflow-step-guided", "fast", None, "Training step, kappa = 0.5 (default guidance)"),
    Role("act-", "vgm2p", "mlp", "Action generation"),
    Role("gae-", "ext", "memcpy", "Advantage (GAE) over 4M transitions"),
    Role("train-end-to-end", "fused", None, "End-to-end training (vgm2p train)",
         "samples_per_s"),
)


@dataclasses.dataclass(frozen=True)
class Goal:
    """``num / den`` (cases of one group) must be ``<= bound`` (op "<=") or ``>= bound``."""

    text: str
    group: str
    num: str
    den: str
    op: str
    bound: float
    profile: str  # key of PROFILES that explains a miss
    why: str = ""  # what the profile shows when the goal is missed (printed above it)
    # (group or "" for the goal's own, num, den): a measured ratio that bounds this one
    bounded_by: tuple[str, str, str] | None = None


GOALS = (
    Goal("MeanFlow step <= 1.9x the flow-matching step (kappa = 0)",
         "meanflow-step-kappa0-B{b}-shared-continuous", "fast", "flow_matching", "<=", 1.9,
         "step"),
    Goal("MeanFlow step >= 2x faster than the torch.func.jvp step (kappa = 0)",
         "meanflow-step-kappa0-B{b}-shared-continuous", "func", "fast", ">=", 2.0, "step",
         "Both steps are matmul-bound at these sizes (`mm` + `addmm` lead each profile "
         "below). `func` runs the tangent matmuls on every row, `fast` only on the r < t "
         "quarter: in forward-pass units `fast` = 1 + 0.25 + 2 (backward) = 3.25 and `func` = "
         "1 + 1 + 2 = 4 (1.23x), plus `func`'s dual-number elementwise work (`aten::mul`, "
         "`aten::add` in its profile) and the extra tensors it saves for backward. A 2x ratio "
         "needs that per-op overhead to weigh as much as the matmuls. And `fast` is close "
         "to the flow-matching floor, so `func` ÷ `fast` can be at most about `func` ÷ "
         "`flow_matching` (below). The profiles are at batch 256 (at 4096 one takes minutes).",
         ("", "func", "flow_matching")),
    Goal("1-step action <= 1.2x the plain MLP forward at B = 1 env (6 agents)",
         "act-B1x6", "vgm2p", "mlp", "<=", 1.2, "act",
         "At one env both calls are ~20 small ops of 1-20 us each, so the ratio is op count: "
         "the same 5 matmuls and 4 activations, and ours adds the noise draw (`randn`), the "
         "folded first layer's bias lookup, and `cfg_sample`'s decode (`z - u`, clip, rescale) "
         "against the MLP's tanh + rescale, plus ~5 us of Python (input checks, backend "
         "dispatch, the fold cache's version check). The profiles below count them."),
    Goal("GAE <= 3x memcpy (batched)", "gae-batched-4M", "ext", "memcpy", "<=", 3.0, "none"),
    Goal("GAE <= 3x memcpy (flat)", "gae-flat-4M", "ext", "memcpy", "<=", 3.0, "none"),
    Goal("GAE >= 10x faster than TorchRL (batched)", "gae-batched-4M", "torchrl_vec", "ext",
         ">=", 10.0, "none"),
    Goal("GAE >= 10x faster than TorchRL (flat)", "gae-flat-4M", "torchrl_vec", "ext", ">=",
         10.0, "none"),
    Goal("End-to-end training >= 2x the samples/s of the torch.func.jvp backend",
         "train-end-to-end", "func", "fused", ">=", 2.0, "train",
         "A trainer iteration is the policy step plus work that costs the same on both "
         "backends: the critic step, batch gathering, AdamW, the EMA, and with the default "
         "guidance (kappa = 0.5) the CFG target's stacked no-grad pass over 2x the rows, which "
         "`func` and `fast` both pay. So the end-to-end ratio is at most the guided step's "
         "(below), diluted by the critic. The profiles are of the guided policy step (batch "
         "256) on each backend.", ("meanflow-step-guided-B256", "func", "fast")),
)


def case_of(bench: dict) -> str:
    params = bench.get("params") or {}
    for key in ("case", "kind", "backend", "jvp"):
        if key in params:
            return str(params[key])
    return bench["name"]


def role_of(group: str) -> Role | None:
    return next((r for r in ROLES if group.startswith(r.prefix)), None)


def load_groups(data: dict) -> dict[str, dict[str, dict]]:
    """{group: {case: benchmark entry}} of the JSON's benchmarks."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or "", {})[case_of(bench)] = bench
    return groups


def cost(bench: dict, metric: str) -> float:
    """A lower-is-better cost: the minimum time, or 1 / samples per second."""
    if metric == "samples_per_s":
        return 1.0 / bench["extra_info"]["samples_per_s"]
    return bench["stats"]["min"]


def ratio(groups: dict, group: str, num: str, den: str) -> float | None:
    """cost(num) / cost(den) within ``group``, None if either case is missing."""
    cases = groups.get(group, {})
    role = role_of(group)
    if num not in cases or den not in cases or role is None:
        return None
    return cost(cases[num], role.metric) / cost(cases[den], role.metric)


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def group_table(group: str, cases: dict[str, dict], role: Role) -> list[str]:
    ours = cases.get(role.ours)
    floor = cases.get(role.floor) if role.floor else None
    if role.metric == "samples_per_s":
        lines = ["| case | samples/s (best round) | rounds, samples/s "
                 "| peer ÷ ours (time per sample) |", "|---|---|---|---|"]
        for name, b in cases.items():
            sps = b["extra_info"]["samples_per_s"]
            rounds = ", ".join(f"{x:.0f}" for x in b["extra_info"].get("samples_per_s_rounds", []))
            rel = ("**ours**" if name == role.ours else
                   f"{cost(b, role.metric) / cost(ours, role.metric):.2f}" if ours else "–")
            lines.append(f"| `{name}` | {sps:.0f} | {rounds} | {rel} |")
        return lines
    lines = ["| case | min | median | rounds | ours ÷ floor / peer ÷ ours |",
             "|---|---|---|---|---|"]
    for name, b in sorted(cases.items(), key=lambda kv: kv[1]["stats"]["min"]):
        s = b["stats"]
        if name == role.ours:
            rel = (f"**ours: {s['min'] / floor['stats']['min']:.2f}x the floor**" if floor
                   else "**ours**")
        elif name == role.floor:
            rel = "floor"
        else:
            rel = f"{s['min'] / ours['stats']['min']:.2f}" if ours else "–"
        lines.append(f"| `{name}` | {_fmt_time(s['min'])} | {_fmt_time(s['median'])} | "
                     f"{s['rounds']} | {rel} |")
    return lines


def evaluate_goals(groups: dict) -> list[dict]:
    """Each goal at every batch its group exists for; ``met`` None when a case is missing."""
    rows = []
    for goal in GOALS:
        names = ([goal.group.format(b=b) for b in (256, 4096)] if "{b}" in goal.group
                 else [goal.group])
        for group in names:
            value = ratio(groups, group, goal.num, goal.den)
            met = None if value is None else (value <= goal.bound if goal.op == "<="
                                              else value >= goal.bound)
            rows.append({"goal": goal, "group": group, "value": value, "met": met})
    return rows


# ----------------------------------------------------------------------------- profiles
def _profile_table(label: str, fn: Callable[[], object], calls: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return f"`{label}`, {calls} calls, {torch.get_num_threads()} thread(s):\n\n```\n{table}\n```"


def profile_act() -> list[str]:
    import torch
    from bench_act import _actor

    obs = torch.randn(1, 6, 24)
    actors = {case: _actor(case) for case in ("vgm2p", "mlp")}
    return [_profile_table(f"{case} at B = 1 env", lambda a=act: a(obs), 300)
            for case, act in actors.items()]


def profile_step(batch: int = 256, kappa: float = 0.0) -> list[str]:
    from bench_meanflow import _make_step

    return [_profile_table(f"{kind} training step, batch {batch}, kappa = {kappa}",
                           _make_step(kind, kappa, batch), 5)
            for kind in ("fast", "func", "flow_matching")]


PROFILES: dict[str, Callable[[], list[str]]] = {
    "act": profile_act,
    "step": profile_step,
    # the trainer's policy step runs the default guidance (kappa = 0.5)
    "train": lambda: profile_step(256, 0.5)[:2],
}


# ----------------------------------------------------------------------------- chart
def chart(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [g for g in ("meanflow-step-kappa0-B256-shared-continuous",
                          "meanflow-step-kappa0-B4096-shared-continuous", "act-B1x6",
                          "act-B1024x6", "gae-batched-4M", "train-end-to-end") if g in groups]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.0 * len(panels) + 0.5))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, group in zip(axes, panels):
        role = role_of(group)
        cases = groups[group]
        ours = cost(cases[role.ours], role.metric)
        names = sorted(cases, key=lambda n: cost(cases[n], role.metric))
        vals = [cost(cases[n], role.metric) / ours for n in names]
        colors = ["tab:green" if n == role.ours else "tab:gray" if n == role.floor
                  else "tab:red" for n in names]
        ax.barh(names, vals, color=colors)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(1.0, color="black", lw=0.8)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=8)
        ax.set_title(f"{group}: cost relative to ours (green); floor gray", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def run_suites(json_path: Path, threads: int, timer: str, extra: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "pytest", *(str(HERE / s) for s in SUITES), "--benchmark-only",
           f"--benchmark-timer={timer}", f"--benchmark-json={json_path}", "-q", "-p",
           "no:cacheprovider", *extra]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, cwd=HERE.parent, check=True)
    data = json.loads(json_path.read_text())
    for bench in data["benchmarks"]:  # per-round samples: ~0.7 MB, the report uses stats only
        bench["stats"].pop("data", None)
    json_path.write_text(json.dumps(data, indent=1))


def write_report(data: dict, out: Path, chart_path: Path, source: str, profiles: bool) -> str:
    groups = load_groups(data)
    info = data["machine_info"]
    extra = info.get("vgm2p", {})
    commit = data.get("commit_info", {})
    goals = evaluate_goals(groups)
    lines = [
        "# Performance report",
        "",
        f"Written by `python benchmarks/report.py` from {source}. Date of the run: "
        f"{data.get('datetime', '?')} (UTC).",
        "",
        f"- Machine: {extra.get('cpu_model', info.get('cpu', {}).get('brand_raw', '?'))}, "
        f"{extra.get('cpu_count', '?')} cores, {info.get('system', '')} "
        f"{info.get('release', '')}; Python {info.get('python_version', '?')}, torch "
        f"{extra.get('torch', '?')} (CUDA available: {extra.get('cuda_available', '?')}).",
        f"- Threads: {extra.get('threads', '?')} (`OMP_NUM_THREADS={extra.get('omp_num_threads')}`)"
        f"; timer: `{extra.get('timer', '?')}`; load average at the start "
        f"{extra.get('load_average')} (the machine is shared with other jobs).",
        f"- Commit {commit.get('id', '?')[:10]}{' (dirty tree)' if commit.get('dirty') else ''}.",
        "- Ratios use the minimum over rounds of each case, all from this one run. "
        "`ours ÷ floor`: our case against the cheapest thing that does the job without our "
        "features; `peer ÷ ours`: > 1 means ours is faster.",
        "- End-to-end training reports the trainer's own samples/s (wall clock of the training "
        "loop, best of its rounds), not the timer above.",
        "- CUDA cases (Triton kernels) are skipped on a machine without a GPU and are not "
        "reported here.",
        "",
        "## Goals",
        "",
        "| goal | group | measured | verdict |",
        "|---|---|---|---|",
    ]
    for row in goals:
        g = row["goal"]
        value = "not run" if row["value"] is None else f"{row['value']:.2f}"
        verdict = {None: "not measured", True: "met", False: "**MISSED**"}[row["met"]]
        lines.append(f"| {g.text} | `{row['group']}` | `{g.num}` ÷ `{g.den}` = {value} "
                     f"({g.op} {g.bound}) | {verdict} |")
    missed = [r for r in goals if r["met"] is False]
    lines += ["", f"![ratios]({chart_path.name})", ""]
    for role in ROLES:
        for group in sorted(g for g in groups if g.startswith(role.prefix)):
            lines += [f"## {role.title}: `{group}`", "", *group_table(group, groups[group], role),
                      ""]
    if missed:
        lines += ["## Profiles of the missed goals", "",
                  "torch.profiler tables (self CPU time, top 12 ops) of the cases behind each "
                  "miss, taken by `report.py` after the benchmark run, same thread count.", ""]
        done = set()
        for row in missed:
            key = row["goal"].profile
            lines.append(f"### {row['goal'].text}: {row['value']:.2f} in `{row['group']}`")
            lines.append("")
            if row["goal"].why:
                lines += [row["goal"].why, ""]
            if row["goal"].bounded_by:
                group, num, den = row["goal"].bounded_by
                group = group or row["group"]
                value = ratio(groups, group, num, den)
                shown = "not run" if value is None else f"{value:.2f}"
                lines += [f"Bound in this run: `{num}` ÷ `{den}` in `{group}` = {shown}.", ""]
            if key == "none":
                lines.append("A single op against a single copy: no profile to break down; "
                             "see docs/performance.md (gae) for the analysis.")
            elif not profiles:
                lines.append("(profiles skipped: `--no-profile`)")
            elif key in done:
                lines.append("Same profile as above.")
            else:
                done.add(key)
                lines += [t + "\n" for t in PROFILES[key]()]
            lines.append("")
    out.write_text("\n".join(lines) + "\n")
    chart(groups, chart_path)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="read this pytest-benchmark JSON instead of running")
    ap.add_argument("--out", type=Path, default=HERE / "REPORT.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timer", default="time.process_time")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiles of misses")
    args, pytest_args = ap.parse_known_args(argv)  # the rest goes to pytest (e.g. -k act)
    if args.json is None:
        json_path = args.out.with_suffix(".json")
        run_suites(json_path, args.threads, args.timer, pytest_args)
        source = f"a fresh run of {', '.join(SUITES)} (saved as `{json_path.name}`)"
    else:
        json_path = args.json
        source = f"the saved run `{json_path.name}`"
    import torch

    torch.set_num_threads(args.threads)  # the profiles run like the benchmarks did
    data = json.loads(json_path.read_text())
    write_report(data, args.out, args.out.with_suffix(".png"), source, not args.no_profile)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))  # bench_* modules for the profiles
    main()
