"""Shared by the results tests (``test_results_scripts.py``, ``test_results_docs.py``,
``test_results_docs_ablations.py``): the folders, a results script run as a subprocess, a
markdown table parsed into cells, and the readers of the committed csvs and docs paragraphs
that the docs tests quote."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HM, HMR = "hopper-3x1-medium", "hopper-3x1-medium-replay"


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/results/<script> args``, output captured."""
    return subprocess.run([sys.executable, str(RESULTS / script), *args], capture_output=True,
                          text=True, timeout=300)


def md_table(text: str, first: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first markdown table whose header starts with ``| first |``."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"| {first} |"))
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in itertools.takewhile(lambda ln: ln.startswith("|"), lines[i:])]
    return cells[0], cells[2:]


def csv_rows(path: Path) -> list[dict[str, str]]:
    """Every row of the csv ``path``, as ``csv.DictReader`` gives it."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def final_returns(path: Path, run: str) -> dict[tuple[str, str, str], float]:
    """(dataset, the ``run`` column, seed) -> final evaluation return of every row of a runs.csv
    (the table's: ``run = "method"``; ablations/runs.csv: ``"variant"``)."""
    return {(r["dataset"], r[run], r["seed"]): float(r["eval_return_mean"])
            for r in csv_rows(path)}


def rendered(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``reevaluate.py --render --csv csv_path`` (which must succeed)."""
    res = run_script("reevaluate.py", "--render", "--csv", str(csv_path))
    assert res.returncode == 0, res.stderr
    return md_table(res.stdout, "dataset")


def hopper_ablations(dataset: str = HM) -> dict[str, tuple[str, str, str]]:
    """ABLATIONS.md's section of ``dataset``: variant label -> (mean ± 2σ, seed count, mean
    learning curve)."""
    ablations = (RESULTS / "ablations" / "ABLATIONS.md").read_text()
    head, rows = md_table(ablations.split(f"## {dataset} (", 1)[1], "variant")
    col, seeds = head.index("normalised (mean ± 2σ, sd)"), head.index("seeds")
    curve = next(i for i, h in enumerate(head) if h.startswith("curve"))
    return {r[0]: (r[col].split(" (sd")[0], r[seeds], r[curve]) for r in rows}


def by_seed(path: Path, dataset: str, noise: str, method: str | None = None
            ) -> dict[int, float]:
    """Seed -> normalised return of the reevaluate.py csv ``path``'s rows of one dataset and
    noise setting (and of one method, for a csv of several)."""
    return {int(r["seed"]): float(r["normalised"]) for r in csv_rows(path)
            if (r["dataset"], r["noise"]) == (dataset, noise) and method in (None, r["method"])}


def seeds_012(path: Path, dataset: str, noise: str, method: str | None = None
              ) -> list[float]:
    """:func:`by_seed`'s seeds 0, 1 and 2, rounded to the one decimal the docs quote."""
    got = by_seed(path, dataset, noise, method)
    return [round(got[s], 1) for s in (0, 1, 2)]


def run_rows(path: Path, dataset: str, method: str) -> dict[int, dict[str, str]]:
    """Seed -> row of one dataset and method in the runs.csv ``path``."""
    return {int(r["seed"]): r for r in csv_rows(path)
            if (r["dataset"], r["method"]) == (dataset, method)}


def run_seeds_012(path: Path, dataset: str, method: str) -> list[float]:
    """Seeds 0, 1 and 2 of one dataset and method in the runs.csv ``path``: each run's final
    normalised return (``eval_normalised``), rounded to the one decimal the docs quote."""
    got = run_rows(path, dataset, method)
    return [round(float(got[s]["eval_normalised"]), 1) for s in (0, 1, 2)]


def seeds_text(values: list[float]) -> str:
    """Per-seed figures as the docs quote them: ``27.7 / 29.3 / 17.8``."""
    return " / ".join(f"{v:.1f}" for v in values)


def assert_reproduces(path: Path, noises: set[str], final: dict, key) -> int:
    """Every row of the reevaluate.py csv ``path`` whose noise is in ``noises`` returns its
    run's final training evaluation, ``final[key(row)]`` (to 1e-6); how many rows that is."""
    rows = [r for r in csv_rows(path) if r["noise"] in noises]
    for r in rows:
        got, table = float(r["return_mean"]), final[key(r)]
        assert abs(got - table) < 1e-6 * abs(table), (path.name, key(r), got, table)
    return len(rows)


def assert_reproduces_table(path: Path) -> int:
    """:func:`assert_reproduces` of ``path``'s sampled (``auto``) rows against the table's
    runs.csv, keyed by dataset, method and seed."""
    return assert_reproduces(path, {"auto"}, final_returns(RESULTS / "runs.csv", "method"),
                             lambda r: (r["dataset"], r["method"], r["seed"]))


def paragraph(opening: str) -> str:
    """The docs/results.md paragraph that starts with ``opening``, on one line."""
    docs = (ROOT / "docs" / "results.md").read_text()
    return " ".join(docs.split(f"\n{opening}", 1)[1].split("\n\n", 1)[0].split())


def rows_at_zero_noise(where: Callable[[str], bool]) -> tuple[list[dict], list[str], set]:
    """``make_table.collect``'s rows and methods of the table's runs.csv, with each cell of the
    datasets ``where`` accepts that noise-continuous.csv evaluated at e = 0 (the MaMuJoCo flow
    policies) replaced by those e = 0 returns, seed for seed; and the (dataset, method) pairs
    replaced."""
    sys.path.insert(0, str(RESULTS))
    from make_table import collect, normalise

    rows, _, methods = collect(RESULTS / "runs.csv")
    zero: dict[tuple[str, str], dict[int, float]] = {}
    for r in csv_rows(RESULTS / "noise-continuous.csv"):
        if r["noise"] == "zero":
            zero.setdefault((r["dataset"], r["method"]), {})[int(r["seed"])] = \
                float(r["return_mean"])
    seeds: dict[tuple[str, str], set[int]] = {}
    for r in csv_rows(RESULTS / "runs.csv"):
        seeds.setdefault((r["dataset"], r["method"]), set()).add(int(r["seed"]))
    replaced = set()
    for row in (r for r in rows if where(r["dataset"])):
        for m in methods:
            if (row["dataset"], m) in zero:
                by_seed = zero[(row["dataset"], m)]
                assert set(by_seed) == seeds[(row["dataset"], m)], (row["dataset"], m)
                row[m] = normalise([by_seed[s] for s in sorted(by_seed)], row["refs"])
                replaced.add((row["dataset"], m))
    return rows, methods, replaced
