"""benchmarks/results: run.py trains and resumes per-run directories and keeps one runs.csv row
per run; make_table.py turns the csv into RESULTS.md + plots with scores normalised by the
dataset's references (toy budget)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
pytest.importorskip("gymnasium_robotics", reason="needs the envs extra: pip install -e '.[envs]'")
pytest.importorskip("matplotlib")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RESULTS / script), *args], capture_output=True,
                          text=True, timeout=300)


def test_run_and_table_end_to_end(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    toy = ["--datasets", "halfcheetah-2x3-small", "--methods", "vgm2p", "vgm2p-g3",
           "--seeds", "0", "--steps", "4", "--eval-episodes", "1", "--runs", str(runs),
           "--jobs", "2", "--", "--value-warmup", "2", "--batch-size", "16",
           "--hidden-dims", "16", "16", "--value-hidden", "16", "--log-every", "2"]
    res = _run("run.py", *toy)
    assert res.returncode == 0, res.stdout + res.stderr
    summaries = {m: json.loads((runs / "halfcheetah-2x3-small" / m / "seed0" /
                                "summary.json").read_text()) for m in ("vgm2p", "vgm2p-g3")}
    assert summaries["vgm2p-g3"]["config"]["guidance_scale"] == 3.0
    assert summaries["vgm2p"]["config"]["guidance_scale"] == 2.0
    assert summaries["vgm2p"]["steps"] == 4
    # One csv row per run, numbers exactly the summary's, paths repo-relative where they can be.
    table = runs / "runs.csv"
    with open(table, newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["vgm2p", "vgm2p-g3"]
    for m, r in rows.items():
        s = summaries[m]
        assert (r["dataset"], r["seed"], int(r["steps"])) == ("halfcheetah-2x3-small", "0", 4)
        assert float(r["eval_return_mean"]) == s["eval_return_mean"]
        assert float(r["train_time_s"]) == s["train_time_s"]
        assert [float(x) for x in r["eval_returns"].split()] == s["eval_returns"]
        assert float(r["guidance"]) == s["config"]["guidance_scale"]
        assert not Path(r["dataset_file"]).is_absolute()      # the bundled file, in the repo
        assert (ROOT / r["dataset_file"]).resolve() == Path(s["dataset"]).resolve()
        assert "dataset" not in json.loads(r["config"]) and "out" not in json.loads(r["config"])
        assert r["commit"] == (runs / "halfcheetah-2x3-small" / m / "seed0" /
                               "commit.txt").read_text().strip()
    # A second call finds every run finished, trains nothing and rewrites the same csv
    # (the repository's own runs.csv is never touched by a run elsewhere).
    own_csv = RESULTS / "runs.csv"
    before, own = table.read_bytes(), own_csv.read_bytes() if own_csv.exists() else None
    table.unlink()
    again = _run("run.py", *toy)
    assert again.returncode == 0 and again.stdout.count("done already") == 2, again.stdout
    assert table.read_bytes() == before
    assert (own_csv.read_bytes() if own_csv.exists() else None) == own

    res = _run("make_table.py", "--csv", str(table), "--out", str(out), "--seeds", "1",
               "--preamble", str(tmp_path / "none.md"))
    assert res.returncode == 0, res.stdout + res.stderr
    text = (out / "RESULTS.md").read_text()
    with h5py.File(summaries["vgm2p"]["dataset"]) as f:
        lo, hi = float(f.attrs["ref_random_return"]), float(f.attrs["ref_behaviour_return"])
    want = 100 * (summaries["vgm2p"]["eval_return_mean"] - lo) / (hi - lo)
    row = next(ln for ln in text.splitlines() if ln.startswith("| [halfcheetah-2x3-small]"))
    assert f"| {want:.1f} ± 0.0 (sd 0.0) · " in row, row
    header = next(ln for ln in text.splitlines() if ln.startswith("| dataset | behaviour"))
    assert "VGM²P" in header and "MLP-BC" not in header   # only the methods that ran
    after = text.split("## Guidance-scale sweep", 1)[1]
    sweep = next(ln for ln in after.splitlines() if ln.startswith("| halfcheetah-2x3-small |"))
    g3 = 100 * (summaries["vgm2p-g3"]["eval_return_mean"] - lo) / (hi - lo)
    assert re.search(rf"\| {want:.1f} ± 0\.0 \| {g3:.1f} ± 0\.0 \([+-]\d+%\) \|", sweep), sweep
    assert "w = 2 | w = 3" in text
    for png in ("results.png", "sweep.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # reevaluate.py: the final policy again, on other episodes, once per noise setting; the
    # numbers are evaluate_policy's and the normalisation the table's. mode+S is the e = 0
    # action plus N(0, S^2) in [-1, 1] units: S = 0 is the e = 0 evaluation.
    from vgm2p_fast.policy import load_policy
    from vgm2p_fast.train.evaluation import evaluate_policy

    re_csv = tmp_path / "re.csv"
    res = _run("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
               "--methods", "vgm2p", "--seeds", "0", "--episodes", "2", "--eval-seed", "7",
               "--noise", "auto", "zero", "mode+0", "mode+0.5", "--csv", str(re_csv))
    assert res.returncode == 0, res.stdout + res.stderr
    with open(re_csv, newline="") as f:
        got = {r["noise"]: r for r in csv.DictReader(f)}
    assert sorted(got) == ["auto", "mode+0", "mode+0.5", "zero"]
    mode = {k: float(got[k]["return_mean"]) for k in ("zero", "mode+0", "mode+0.5")}
    assert mode["mode+0"] == pytest.approx(mode["zero"], rel=1e-6)
    assert mode["mode+0.5"] != pytest.approx(mode["mode+0"], rel=1e-3)
    run_dir = runs / "halfcheetah-2x3-small" / "vgm2p" / "seed0"
    policy = load_policy(run_dir / "policy.pt")
    for noise, r in [(k, got[k]) for k in ("auto", "zero")]:
        ref = evaluate_policy(policy, "mamujoco/HalfCheetah-2x3", 2, 7, noise=noise)
        assert (r["episodes"], r["eval_seed"]) == ("2", "7")
        assert float(r["return_mean"]) == pytest.approx(ref["return_mean"], rel=1e-6)
        assert float(r["normalised"]) == pytest.approx(
            100 * (ref["return_mean"] - lo) / (hi - lo), rel=1e-6)
    table = _run("reevaluate.py", "--render", "--csv", str(re_csv)).stdout
    assert re.search(r"\| halfcheetah-2x3-small \| vgm2p \| zero \| 1 \| 2 \| -?\d+\.\d ± 0\.0 \|",
                     table), table
    typo = _run("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                "--noise", "mode+wide", "--csv", str(re_csv))
    assert typo.returncode == 2 and "--noise: expected one of" in typo.stderr
    bad = _run("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
               "--seeds", "5", "--csv", str(re_csv))
    assert bad.returncode == 2 and "not a finished run" in bad.stderr
    before = re_csv.read_text()
    skip = _run("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                "--methods", "vgm2p", "--seeds", "5", "--skip-missing", "--csv", str(re_csv))
    assert skip.returncode == 0 and "seed5: skipped" in skip.stdout, skip.stdout + skip.stderr
    assert re_csv.read_text() == before   # nothing evaluated, the old rows kept


def test_reevaluate_refuses_action_noise_on_discrete_runs(tmp_path: Path) -> None:
    """mode+S adds Gaussian noise to a continuous action; a discrete run is a usage error that
    names --noise and the run, before any evaluation, and leaves the csv as it was."""
    from vgm2p_fast.policy import MeanFlowPolicy

    run_dir = tmp_path / "runs" / "smax-3m-medium" / "vgm2p" / "seed0"
    run_dir.mkdir(parents=True)
    MeanFlowPolicy(5, 4, 3, discrete=True, hidden_dims=(8,)).save(
        run_dir / "policy.pt", metadata={"env": "smax/3m"})
    (run_dir / "summary.json").write_text(json.dumps({"references": None}))
    re_csv = tmp_path / "re.csv"
    re_csv.write_text("kept\n")
    res = _run("reevaluate.py", "--runs", str(tmp_path / "runs"), "--datasets",
               "smax-3m-medium", "--methods", "vgm2p", "--seeds", "0", "--noise", "mode+0.1",
               "--csv", str(re_csv))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--noise mode+0.1: continuous actions only" in res.stderr
    assert str(run_dir) in res.stderr and "Traceback" not in res.stderr
    assert re_csv.read_text() == "kept\n"


def test_committed_ablations_come_from_their_csv(tmp_path: Path) -> None:
    """ABLATIONS.md is what ``ablations.py --render`` writes from the runs.csv beside it."""
    folder = RESULTS / "ablations"
    res = _run("ablations.py", "--render", "--csv", str(folder / "runs.csv"), "--out",
               str(tmp_path / "ABLATIONS.md"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "ABLATIONS.md").read_text() == (folder / "ABLATIONS.md").read_text()


def test_docs_ablation_table_quotes_ablations_md() -> None:
    """Every VGM²P / MLP-BC figure of docs/results.md's hopper-3x1-medium ablation table, and
    the README's figure for the defaults, is a mean ± 2σ of ABLATIONS.md's hopper section (a
    bare figure: a one-seed row's mean)."""
    ablations = (RESULTS / "ablations" / "ABLATIONS.md").read_text()
    head, rows = _table(ablations.split("## hopper-3x1-medium", 1)[1], "variant")
    col = head.index("normalised (mean ± 2σ, sd)")
    quoted = {r[col].split(" (sd")[0] for r in rows}
    one_seed = {r[col].split(" ± ")[0] for r in rows if r[head.index("seeds")] == "1"}
    docs = (ROOT / "docs" / "results.md").read_text()
    d_head, d_rows = _table(docs, "change (hopper-3x1-medium)")
    assert d_head == ["change (hopper-3x1-medium)", "VGM²P normalised"] and len(d_rows) > 10
    for label, cell in d_rows:
        for figure in cell.split(" / "):
            assert figure in (quoted if "±" in figure else one_seed), (label, figure)
    defaults = next(c for label, c in d_rows if "the new defaults" in label)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"critic warm-up instead of 500 (tokens from a fitted critic) to {defaults};" in readme


def test_ablations_table_keeps_rows_of_runs_it_does_not_have(tmp_path: Path) -> None:
    """--table merges the finished runs under --runs into the csv: a row whose run folder is
    elsewhere stays as it was, a run's row replaces its old one, and ABLATIONS.md shows both."""
    old = {"dataset": "hopper-3x1-medium", "variant": "mlp", "label": "MLP-BC, lr 3e-4",
           "seed": "0", "eval_return_mean": "800.0", "eval_normalised": "29.0",
           "dataset_return_mean": "866.9", "dataset_normalised": "31.5",
           "eval_curve": "10000:29.0", "train_time_s": "1.0", "commit": "old",
           "options": "--method mlp-bc"}
    table = tmp_path / "runs.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, list(old), lineterminator="\n")
        w.writeheader()
        w.writerows([old, {**old, "variant": "vgm2p-w3000-tau09", "label": "stale",
                           "eval_normalised": "1.0"}])
    run = tmp_path / "runs" / "hm-vgm2p-w3000-tau09-s0"
    run.mkdir(parents=True)
    other = tmp_path / "runs" / "hm-vgm2p-w3000-kappa0-s1"   # trained by --run: its commit
    other.mkdir()
    (other / "commit.txt").write_text("abc1234\n")
    (run / "summary.json").write_text(json.dumps({
        "eval_return_mean": 900.0, "eval_normalised": 33.0, "dataset_return_mean": 866.9,
        "dataset_normalised": 31.5, "train_time_s": 2.0,
        "eval_curve": [{"policy_step": 10000, "eval_normalised": 33.0}]}))
    (other / "summary.json").write_text((run / "summary.json").read_text())
    res = _run("ablations.py", "--table", "--runs", str(tmp_path / "runs"), "--csv", str(table),
               "--out", str(tmp_path / "A.md"), "--commit", "new")
    assert res.returncode == 0, res.stdout + res.stderr
    with open(table, newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["mlp"] == old
    assert rows["vgm2p-w3000-tau09"]["eval_normalised"] == "33.0"
    assert rows["vgm2p-w3000-tau09"]["commit"] == "new"
    assert rows["vgm2p-w3000-kappa0"]["commit"] == "abc1234"
    md = (tmp_path / "A.md").read_text()
    assert "| MLP-BC, lr 3e-4 | 1 | 29.0" in md and "value expectile 0.9 | 1 | 33.0" in md


def test_ablations_refuses_unknown_variant(tmp_path: Path) -> None:
    res = _run("ablations.py", "--run", "--variants", "nope", "--runs", str(tmp_path))
    assert res.returncode == 2 and "--variants" in res.stderr and "'nope'" in res.stderr


def test_ablations_needs_runs_for_table() -> None:
    res = _run("ablations.py", "--table")
    assert res.returncode == 2 and "--runs" in res.stderr


def test_fit_measures_mode_error_and_spread(tmp_path: Path) -> None:
    """fit.py trains each method with every checkpoint kept and measures, per checkpoint, the
    mode's and a sample's action error and the sampled spread: a deterministic cloner has no
    spread and equal errors, a flow policy a positive spread; a second call measures the same
    runs without training and rewrites the same csv."""
    table = tmp_path / "fit.csv"
    args = ["--datasets", "halfcheetah-2x3-small", "--methods", "mlp-bc", "meanflow-bc",
            "--seeds", "0", "--runs", str(tmp_path / "runs"), "--csv", str(table), "--every",
            "500", "--rows", "32", "--draws", "3", "--", "--steps", "1000", "--value-warmup",
            "0", "--hidden-dims", "16", "--batch-size", "16", "--log-every", "100"]
    res = _run("fit.py", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(table, newline="") as f:
        rows = {(r["method"], r["policy_step"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [("meanflow-bc", "1000"), ("meanflow-bc", "500"), ("mlp-bc", "1000"),
                            ("mlp-bc", "500")]
    for step in ("500", "1000"):
        mlp, flow = rows[("mlp-bc", step)], rows[("meanflow-bc", step)]
        assert float(mlp["spread"]) == 0.0 and mlp["err_mode"] == mlp["err_sample"]
        assert float(flow["spread"]) > 0.0 and float(flow["err_mode"]) > 0.0
    before = table.read_bytes()
    again = _run("fit.py", *args)
    assert again.returncode == 0, again.stderr
    assert table.read_bytes() == before
    shown = _run("fit.py", "--render", "--csv", str(table))
    assert shown.returncode == 0 and "| halfcheetah-2x3-small | mlp-bc | 500 | 1 |" in shown.stdout
    bad = _run("fit.py", "--datasets", "halfcheetah-2x3-small", "--every", "700")
    assert bad.returncode == 2 and "--every" in bad.stderr


def test_run_refuses_unknown_method(tmp_path: Path) -> None:
    res = _run("run.py", "--methods", "dqn", "--runs", str(tmp_path))
    assert res.returncode == 2 and "--methods" in res.stderr and "'dqn'" in res.stderr


def test_committed_tables_come_from_their_csv(tmp_path: Path) -> None:
    """Every committed RESULTS.md is what make_table.py writes from the runs.csv beside it, and
    no tracked csv holds a path outside the repository."""
    # ablations/ has its own renderer (the next test)
    folders = sorted(p.parent for p in RESULTS.glob("**/runs.csv")
                     if "table-runs" not in str(p) and p.parent.name != "ablations")
    assert folders, "no committed results table"
    for folder in folders:
        out = tmp_path / ("table_" + folder.relative_to(RESULTS).as_posix().replace("/", "_"))
        out.mkdir()
        # seeds.txt: a fixed seed count of a complete cell; without it, the run plan's
        seeds = (["--seeds", (folder / "seeds.txt").read_text().strip()]
                 if (folder / "seeds.txt").exists() else [])
        res = _run("make_table.py", "--csv", str(folder / "runs.csv"), "--out", str(out),
                   "--preamble", str(folder / "preamble.md"), *seeds)
        assert res.returncode == 0, res.stdout + res.stderr
        # card links are relative to the output folder: compare with those put back
        got = (out / "RESULTS.md").read_text()
        got = got.replace(os.path.relpath(ROOT / "benchmarks" / "datasets" / "cards", out),
                          os.path.relpath(ROOT / "benchmarks" / "datasets" / "cards", folder))
        assert got == (folder / "RESULTS.md").read_text(), folder
        with open(folder / "runs.csv", newline="") as f:
            for r in csv.DictReader(f):
                for k in ("dataset_file", "run_dir"):
                    assert not Path(r[k]).is_absolute(), (folder, k, r[k])


def _table(text: str, first: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first markdown table whose header starts with ``| first |``."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"| {first} |"))
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in itertools.takewhile(lambda ln: ln.startswith("|"), lines[i:])]
    return cells[0], cells[2:]


def test_readme_headline_numbers_are_the_committed_tables() -> None:
    """Every number the README's learning table shows is the committed RESULTS.md's: the
    mean ± 2σ of each method and the target verdicts, dataset by dataset."""
    readme = (ROOT / "README.md").read_text()
    headline = readme.split("<!-- results:headline -->", 1)[1].split("<!-- /results:headline",
                                                                      1)[0]
    results = (RESULTS / "RESULTS.md").read_text()
    head, rows = _table(headline, "dataset")
    r_head, r_rows = _table(results, "dataset")
    t_head, t_rows = _table(results.split("## Targets", 1)[1], "dataset")
    by_name = {re.sub(r"\[([^]]+)\].*", r"\1", r[0]): r for r in r_rows}
    targets = {r[0]: r for r in t_rows}
    assert rows, "the README's learning table is empty"
    for row in rows:
        name = row[0].strip("`")
        full = by_name[name]
        for label, cell in zip(head[1:], row[1:]):
            if label in r_head:
                assert full[r_head.index(label)].startswith(cell), (name, label, cell)
            elif label in t_head:
                assert targets[name][t_head.index(label)].startswith(cell), (name, label, cell)
            else:
                raise AssertionError(f"README column {label!r} is in neither table")


def test_docs_results_tables_are_the_committed_tables() -> None:
    """docs/results.md's medium table and its table of the other rows are RESULTS.md's (each
    cell, and the 'VGM²P − best baseline' column its Targets table's), and its 100-episode SMAX
    table is reevaluate.py --render's (score, return, win rate and seed count of every cell)."""
    sys.path.insert(0, str(RESULTS))
    from make_table import LABELS

    docs = (ROOT / "docs" / "results.md").read_text()
    results = (RESULTS / "RESULTS.md").read_text()
    r_head, r_rows = _table(results, "dataset")
    by_name = {re.sub(r"\[([^]]+)\].*", r"\1", r[0]): r for r in r_rows}
    t_head, t_rows = _table(results.split("## Targets", 1)[1], "dataset")
    targets = {r[0]: r for r in t_rows}
    label = lambda h: re.sub(r" \(.*\)$", "", h)  # noqa: E731  ("flow-matching BC (1 seed)")
    first = "dataset | behaviour | VGM²P | MLP-BC"
    tables = [_table(docs, first), _table(docs.split("## The other rows", 1)[1], first)]
    assert all(rows for _, rows in tables), "docs/results.md: the medium or other-rows table"
    for head, row in ((h, r) for h, rows in tables for r in rows):
        name = row[0].split(" (")[0]
        full = dict(zip(r_head, by_name[name]))
        for h, cell in zip(head[1:], row[1:]):
            if h == "VGM²P − best baseline":   # the Targets table's '≤ 10% below best'
                verdict = targets[name][t_head.index("≤ 10% below best")]
                gap = re.search(r"\(([-+][\d.]+)\)", verdict).group(1).replace("-", "−")
                assert cell.strip("*") == gap, (name, cell, verdict)
                assert cell.startswith("**") == verdict.startswith("**no"), (name, cell, verdict)
            else:
                key = "behaviour (data)" if h == "behaviour" else label(h)
                few = re.search(r" \((\d+)\)$", cell)   # "17.9 ± 3.2 (3)": 3 seeds of 5
                if few:
                    cell = cell[:few.start()]
                    assert re.search(rf"\({few.group(1)}/\d+ seeds\)$", full[key]), (name, h)
                assert full[key].startswith(cell), (name, h, cell, full[key])
    res = _run("reevaluate.py", "--render", "--csv", str(RESULTS / "reevaluate.csv"))
    assert res.returncode == 0, res.stderr
    _, re_rows = _table(res.stdout, "dataset")
    # (dataset, method) -> (seeds, "score (return; win)") for the policies' default noise
    evals = {(r[0], r[1]): (r[3], f"{r[5]} ({r[6]}; {r[7]})") for r in re_rows
             if r[2] in ("auto", "none")}
    method_of = {v: k for k, v in LABELS.items()}
    head, rows = _table(docs.split("### The SMAX rows on 100 episodes", 1)[1], "dataset")
    assert rows, "docs/results.md has no 100-episode table"
    from run import HEADLINE_SEEDS  # the SMAX medium sets are headline rows

    complete = str(len(HEADLINE_SEEDS))
    for row in rows:
        top = max(float(evals[(row[0], method_of[h])][1].split(" ±")[0]) for h in head[2:])
        for h, cell in zip(head[2:], row[2:]):
            seeds, text = evals[(row[0], method_of[h])]
            few = re.search(r" \((\d+)\)$", cell)   # "... (3)": 3 seeds, fewer than complete
            assert (few.group(1) if few else complete) == seeds, (row[0], h, cell, seeds)
            cell = cell[:few.start()] if few else cell
            assert cell.replace("**", "") == text, (row[0], h, cell, text)
            assert cell.startswith("**") == (float(text.split(" ±")[0]) == top), (row[0], h)


def test_docs_continuous_noise_table_is_its_csv() -> None:
    """docs/results.md's 'sampled → e = 0' table is reevaluate.py --render of
    noise-continuous.csv (both means and the seed count of every cell), its MLP-BC column is
    RESULTS.md's, and every 'auto' row there reproduces its run's final table evaluation."""
    sys.path.insert(0, str(RESULTS))
    from make_table import LABELS

    res = _run("reevaluate.py", "--render", "--csv", str(RESULTS / "noise-continuous.csv"))
    assert res.returncode == 0, res.stderr
    _, re_rows = _table(res.stdout, "dataset")
    evals = {(r[0], r[1], r[2]): (r[5].split(" ±")[0], r[3]) for r in re_rows}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = _table(docs.split("### Continuous actions at e = 0", 1)[1], "dataset")
    r_head, r_rows = _table((RESULTS / "RESULTS.md").read_text(), "dataset")
    by_name = {re.sub(r"\[([^]]+)\].*", r"\1", r[0]): dict(zip(r_head, r)) for r in r_rows}
    method_of = {v: k for k, v in LABELS.items()}
    assert len(rows) == 6, rows
    for row in rows:
        for h, cell in zip(head[1:], row[1:]):
            if h == "MLP-BC (deterministic)":
                assert by_name[row[0]]["MLP-BC"].startswith(cell + " ±"), (row[0], cell)
                continue
            m = method_of[h]
            want = (f"{evals[(row[0], m, 'auto')][0]} → {evals[(row[0], m, 'zero')][0]} "
                    f"({evals[(row[0], m, 'zero')][1]})")
            assert cell == want, (row[0], h, cell, want)
    with open(RESULTS / "runs.csv", newline="") as f:
        final = {(r["dataset"], r["method"], r["seed"]): float(r["eval_return_mean"])
                 for r in csv.DictReader(f)}
    with open(RESULTS / "noise-continuous.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["noise"] == "auto":
                got, table = float(r["return_mean"]), final[(r["dataset"], r["method"], r["seed"])]
                assert abs(got - table) < 1e-6 * abs(table), (r["dataset"], r["method"], r["seed"])


def test_docs_fit_table_is_its_csv() -> None:
    """docs/results.md's action-error table is fit.py --render --at 4000 10000 of the committed
    fit.csv, row for row."""
    res = _run("fit.py", "--render", "--csv", str(RESULTS / "fit.csv"), "--at", "4000", "10000")
    assert res.returncode == 0, res.stderr
    want = _table(res.stdout, "dataset")
    docs = (ROOT / "docs" / "results.md").read_text()
    got = _table(docs.split("### How closely each policy fits the data's actions", 1)[1],
                 "dataset")
    assert want[1], "fit.csv has no rows at policy steps 4000 and 10000"
    assert got == want


def test_docs_and_readme_guidance_sweep_is_the_committed_table() -> None:
    """docs/results.md's guidance table is RESULTS.md's sweep, cell for cell, and the README's
    'w = 1.5 / 3 / 4 change VGM²P by a / b / c %' per dataset and its count of points outside
    ±10 % are that table's."""
    results = (RESULTS / "RESULTS.md").read_text().split("## Guidance-scale sweep", 1)[1]
    head, rows = _table(results, "dataset")
    assert head[1:] == ["w = 1.5", "w = 2", "w = 3", "w = 4"] and rows, head
    docs = (ROOT / "docs" / "results.md").read_text().split("## Guidance scale", 1)[1]
    d_head, d_rows = _table(docs, "dataset")
    assert d_head == head
    assert [[c.replace(" %", "%") for c in r] for r in d_rows] == rows
    change = {r[0]: [re.search(r"\(([+-]\d+)%\)", c).group(1) for c in (r[1], r[3], r[4])]
              for r in rows}
    readme = (ROOT / "README.md").read_text()
    said = {m.group(4): [m.group(1), m.group(2), m.group(3)] for m in re.finditer(
        r"([+-]\d+)\s+/\s+([+-]\d+)\s+/\s+([+-]\d+)\s+%\s+on\s+([a-z0-9-]+)", readme)}
    assert said == change, (said, change)
    # counted on the unrounded changes (a cell's "-10%" can be -10.4 %)
    sys.path.insert(0, str(RESULTS))
    from make_table import CSV, collect, stats, sweep_change

    unrounded = {d: sweep_change(pts) for d, pts in collect(CSV)[1].items()}
    assert sorted(unrounded) == sorted(change)
    outside = sum(abs(r) > 10 for c in unrounded.values() for r in c.values())
    assert f"{outside} of {3 * len(rows)} points outside ±10 %" in " ".join(readme.split())
    flat = " ".join(docs.split())
    for d, c in unrounded.items():   # a point that rounds to ±10 % is given unrounded in the docs
        for w, r in c.items():
            assert round(r) not in (-10, 10) or f"{d}'s {round(r):+d} % is {r:+.1f} %" in flat \
                or f"its {round(r):+d} % is {r:+.1f} %" in flat, (d, w, r)
    # the SMAX points on 100 episodes (reevaluate.csv), in the docs and the README
    with open(RESULTS / "reevaluate.csv", newline="") as f:
        evals = list(csv.DictReader(f))
    scales = ("vgm2p-g1.5", "vgm2p-g3", "vgm2p-g4")
    for dataset in ("smax-3m-medium", "smax-2s3z-medium"):
        mean = {m: stats([float(r["normalised"]) for r in evals
                          if r["dataset"] == dataset and r["method"] == m])[0]
                for m in ("vgm2p", *scales)}
        pts = [mean[m] for m in scales]
        rel = " / ".join(f"{100 * (v / mean['vgm2p'] - 1):+.0f}" for v in pts)
        assert (f"{dataset}: {' / '.join(f'{v:.1f}' for v in pts)} against the default's "
                f"{mean['vgm2p']:.1f}, {rel} %") in flat, dataset
        assert f"{dataset} {rel} %" in " ".join(readme.split()), dataset


def test_docs_training_time_table_is_the_no_critic_table() -> None:
    """docs/results.md's side-by-side training times are no-critic/RESULTS.md's, and its ratio
    column is VGM²P's time over MLP-BC's."""
    docs = (ROOT / "docs" / "results.md").read_text().split("## Training time", 1)[1]
    results = (RESULTS / "no-critic" / "RESULTS.md").read_text().split("Training time", 1)[1]
    head, rows = _table(docs, "dataset")
    r_head, r_rows = _table(results, "dataset")
    by_name = {r[0]: dict(zip(r_head, r)) for r in r_rows}
    assert [r[0] for r in rows] == list(by_name)
    for row in rows:
        full = by_name[row[0]]
        cells = dict(zip(head, row))
        for method in r_head[1:]:
            assert cells[method] == f"{full[method]} s", (row[0], method)
        ratio = float(full["VGM²P"]) / float(full["MLP-BC"])
        assert cells["VGM²P ÷ MLP-BC"] == f"{ratio:.1f}x", row[0]


def test_docs_ten_seed_numbers_are_their_tables() -> None:
    """The 10-seed hopper-3x1-medium paragraph quotes hopper-10-seeds/RESULTS.md (sampled, every
    seed), reevaluate.py --render of its noise.csv (seeds 5-9, sampled and e = 0) and of its
    width.csv (seeds 5-9, 100 episodes, the deterministic action with and without noise)."""
    section = (ROOT / "docs" / "results.md").read_text().split("### hopper-3x1-medium on 10",
                                                                 1)[1].split("\n## ", 1)[0]
    docs = " ".join(section.split())
    folder = RESULTS / "hopper-10-seeds"
    head, rows = _table((folder / "RESULTS.md").read_text(), "dataset")
    cell = dict(zip(head, rows[0]))
    for method in ("VGM²P", "MLP-BC", "MeanFlow-BC"):
        mean_2sigma = cell[method].split(" (sd")[0]
        assert mean_2sigma in docs, (method, mean_2sigma)
    res = _run("reevaluate.py", "--render", "--csv", str(folder / "noise.csv"))
    assert res.returncode == 0, res.stderr
    n_head, n_rows = _table(res.stdout, "dataset")
    score = {(r[1], r[2]): r[n_head.index("normalised (mean ± 2σ)")] for r in n_rows}
    assert f"At e = 0 seeds 5-9 give {score[('vgm2p', 'zero')]} (sampled: " \
           f"{score[('vgm2p', 'auto')]})" in docs
    # the mode-plus-noise table is reevaluate.py --render of width.csv, cell for cell
    res = _run("reevaluate.py", "--render", "--csv", str(folder / "width.csv"))
    assert res.returncode == 0, res.stderr
    w_head, w_rows = _table(res.stdout, "dataset")
    width = {(r[1], r[2]): r[w_head.index("normalised (mean ± 2σ)")] for r in w_rows}
    assert {r[w_head.index("episodes")] for r in w_rows} == {"100"}
    assert {r[w_head.index("seeds")] for r in w_rows} == {"5"}
    head, rows = _table(section.split("[width.csv]", 1)[1], "method")
    labels = {"VGM²P": "vgm2p", "MeanFlow-BC": "meanflow-bc", "MLP-BC": "mlp-bc"}
    noise_of = {"deterministic (e = 0)": "zero", "+ N(0, 0.05²)": "mode+0.05",
                "+ N(0, 0.1²)": "mode+0.1", "sampled": "auto"}
    assert [r[0] for r in rows] == list(labels) and head[1:] == list(noise_of), (rows, head)
    for row in rows:
        m = labels[row[0]]
        for h, cell in zip(head[1:], row[1:]):
            noise = "none" if (m, noise_of[h]) == ("mlp-bc", "zero") else noise_of[h]
            assert cell == width.get((m, noise), ""), (row[0], h, cell)
    readme = " ".join((ROOT / "README.md").read_text().split())
    mean = {k: v.split(" ±")[0] for k, v in width.items()}
    assert (f"with the data's own action noise MLP-BC falls to {mean[('mlp-bc', 'mode+0.1')]} "
            f"and VGM²P's mode to {mean[('vgm2p', 'mode+0.1')]}") in readme


def test_docs_continuous_noise_verdicts_are_make_tables() -> None:
    """The 'judged at e = 0' sentence of docs/results.md is make_table's target counts (its
    RESULTS.md sentence 'On the medium and medium-replay rows: ...') on RESULTS.md's rows with
    every flow method's MaMuJoCo cells replaced by its e = 0 evaluations in noise-continuous.csv
    (SMAX is evaluated at e = 0 already; MLP-BC is deterministic)."""
    sys.path.insert(0, str(RESULTS))
    from make_table import SUFFIXES, Seeds, collect, normalise, render

    rows, _, methods = collect(RESULTS / "runs.csv")
    zero: dict[tuple[str, str], dict[int, float]] = {}
    with open(RESULTS / "noise-continuous.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["noise"] == "zero":
                zero.setdefault((r["dataset"], r["method"]), {})[int(r["seed"])] = \
                    float(r["return_mean"])
    replaced = set()
    for row in rows:
        for m in methods:
            if (row["dataset"], m) in zero:
                by_seed = zero[(row["dataset"], m)]
                row[m] = normalise([by_seed[s] for s in sorted(by_seed)], row["refs"])
                replaced.add((row["dataset"], m))
    # every flow cell of the six MaMuJoCo medium / medium-replay rows is at e = 0
    mamujoco = {r["dataset"] for r in rows if r["dataset"].startswith(("hopper", "halfcheetah"))
                and r["dataset"].endswith(SUFFIXES)}
    flows = {"vgm2p", "meanflow-bc", "fm-bc", "awfm"}
    assert len(mamujoco) == 6, mamujoco
    assert {(d, m) for d in mamujoco for m in flows} <= replaced, sorted(replaced)
    table = " ".join(render(rows, {}, methods, Seeds(None), [], "", "cards").split())
    counted = re.search(r"On the medium and medium-replay rows: ≥ data: (\d) of 8, ≥ MLP-BC: "
                        r"(\d) of 8, > MF-BC by 2σ: (\d) of 8, ≤ 10% below best: (\d) of 8\.",
                        table)
    assert counted, "make_table.py: the target-count sentence is gone or reworded"
    docs = " ".join((ROOT / "docs" / "results.md").read_text().split())
    said = re.search(r"the targets would read ≥ data (\d) of 8, ≥ MLP-BC \**(\d) of 8\**, "
                     r"> MeanFlow-BC by 2σ (\d) of 8 .*? ≤ 10 % below the best baseline "
                     r"\**(\d) of 8", docs)
    assert said, "docs/results.md: the e = 0 verdict sentence is gone or reworded"
    assert said.groups() == counted.groups(), (said.groups(), counted.groups())
