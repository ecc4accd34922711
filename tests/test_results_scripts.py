"""benchmarks/results: run.py trains and resumes per-run directories and keeps one runs.csv row
per run; make_table.py turns the csv into RESULTS.md + plots with scores normalised by the
dataset's references (toy budget); reevaluate.py, ablations.py, fit.py and tokens.py; the
committed tables re-render from their csv. How the README and docs quote them:
``test_results_docs.py`` and ``test_results_docs_ablations.py``."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import h5py
import pytest
from results_lab import RESULTS, ROOT, run_script

pytest.importorskip("gymnasium_robotics", reason="needs the envs extra: pip install -e '.[envs]'")
pytest.importorskip("matplotlib")


def test_run_and_table_end_to_end(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    toy = ["--datasets", "halfcheetah-2x3-small", "--methods", "vgm2p", "vgm2p-g3",
           "--seeds", "0", "--steps", "4", "--eval-episodes", "1", "--runs", str(runs),
           "--jobs", "2", "--", "--value-warmup", "2", "--batch-size", "16",
           "--hidden-dims", "16", "16", "--value-hidden", "16", "--log-every", "2"]
    res = run_script("run.py", *toy)
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
    again = run_script("run.py", *toy)
    assert again.returncode == 0 and again.stdout.count("done already") == 2, again.stdout
    assert table.read_bytes() == before
    assert (own_csv.read_bytes() if own_csv.exists() else None) == own

    res = run_script("make_table.py", "--csv", str(table), "--out", str(out), "--seeds", "1",
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
    # action plus N(0, S^2) in [-1, 1] units: S = 0 is the e = 0 evaluation; sample*T starts
    # from N(0, T^2 I): T = 0 is the e = 0 evaluation, T = 0.5 another one. A setting@N
    # samples in N steps instead of the run's one, a setting~W with test-time guidance W.
    from vgm2p_fast.policy import load_policy
    from vgm2p_fast.train.evaluation import evaluate_policy

    re_csv = tmp_path / "re.csv"
    res = run_script("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                     "--methods", "vgm2p", "--seeds", "0", "--episodes", "2", "--eval-seed", "7",
                     "--noise", "auto", "zero", "zero@3", "zero~3@2", "mode+0", "mode+0.5",
                     "sample*0", "sample*0.5", "--csv", str(re_csv))
    assert res.returncode == 0, res.stdout + res.stderr
    with open(re_csv, newline="") as f:
        got = {r["noise"]: r for r in csv.DictReader(f)}
    assert sorted(got) == ["auto", "mode+0", "mode+0.5", "sample*0", "sample*0.5", "zero",
                           "zero@3", "zero~3@2"]
    mode = {k: float(got[k]["return_mean"])
            for k in ("zero", "mode+0", "mode+0.5", "sample*0", "sample*0.5")}
    assert mode["mode+0"] == pytest.approx(mode["zero"], rel=1e-6)
    assert mode["sample*0"] == pytest.approx(mode["zero"], rel=1e-6)
    assert mode["mode+0.5"] != pytest.approx(mode["mode+0"], rel=1e-3)
    assert mode["sample*0.5"] != pytest.approx(mode["zero"], rel=1e-3)
    run_dir = runs / "halfcheetah-2x3-small" / "vgm2p" / "seed0"
    policy = load_policy(run_dir / "policy.pt")
    for key in ("auto", "zero", "zero@3", "zero~3@2"):
        rest, _, steps = key.partition("@")
        noise, _, w = rest.partition("~")
        r = got[key]
        ref = evaluate_policy(policy, "mamujoco/HalfCheetah-2x3", 2, 7, noise=noise,
                              n_steps=int(steps or 1), test_guidance=float(w or 1))
        assert (r["episodes"], r["eval_seed"]) == ("2", "7")
        assert float(r["return_mean"]) == pytest.approx(ref["return_mean"], rel=1e-6)
        assert float(r["normalised"]) == pytest.approx(
            100 * (ref["return_mean"] - lo) / (hi - lo), rel=1e-6)
    table = run_script("reevaluate.py", "--render", "--csv", str(re_csv)).stdout
    assert re.search(r"\| halfcheetah-2x3-small \| vgm2p \| zero \| 1 \| 2 \| -?\d+\.\d ± 0\.0 \|",
                     table), table
    typo = run_script("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                      "--noise", "mode+wide", "--csv", str(re_csv))
    assert typo.returncode == 2 and "--noise: expected one of" in typo.stderr
    steps0 = run_script("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                        "--noise", "zero@0", "--csv", str(re_csv))
    assert steps0.returncode == 2 and "N >= 1 sampling steps, found 'zero@0'" in steps0.stderr
    assert float(got["zero@3"]["return_mean"]) != pytest.approx(mode["zero"], rel=1e-6)
    assert got["zero~3@2"]["return_mean"] != got["zero@3"]["return_mean"]
    for bad_t in ("sample*-0.5", "sample*x", "sample*inf@2"):
        t0 = run_script("reevaluate.py", "--runs", str(runs), "--datasets",
                        "halfcheetah-2x3-small", "--noise", bad_t, "--csv", str(re_csv))
        assert t0.returncode == 2 and f"temperature T >= 0, found '{bad_t}'" in t0.stderr
    for bad_w in ("zero~0", "auto~x@2", "zero~inf"):
        w0 = run_script("reevaluate.py", "--runs", str(runs), "--datasets",
                        "halfcheetah-2x3-small", "--noise", bad_w, "--csv", str(re_csv))
        assert w0.returncode == 2 and f"test-time guidance W > 0, found '{bad_w}'" in w0.stderr
    bad = run_script("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
                     "--seeds", "5", "--csv", str(re_csv))
    assert bad.returncode == 2 and "not a finished run" in bad.stderr
    before = re_csv.read_text()
    skip = run_script("reevaluate.py", "--runs", str(runs), "--datasets", "halfcheetah-2x3-small",
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
    res = run_script("reevaluate.py", "--runs", str(tmp_path / "runs"), "--datasets",
                     "smax-3m-medium", "--methods", "vgm2p", "--seeds", "0", "--noise", "mode+0.1",
                     "--csv", str(re_csv))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--noise mode+0.1: continuous actions only" in res.stderr
    assert str(run_dir) in res.stderr and "Traceback" not in res.stderr
    assert re_csv.read_text() == "kept\n"


def test_reevaluate_refuses_test_guidance_without_a_condition(tmp_path: Path) -> None:
    """~W sets the test-time guidance between the advantageous and the null token: a run with
    no condition (MeanFlow-BC, n_tokens 0) is a usage error naming --noise and the run."""
    from vgm2p_fast.policy import MeanFlowPolicy

    run_dir = tmp_path / "runs" / "hopper-3x1-medium" / "meanflow-bc" / "seed0"
    run_dir.mkdir(parents=True)
    MeanFlowPolicy(5, 1, 3, n_tokens=0, hidden_dims=(8,)).save(
        run_dir / "policy.pt", metadata={"env": "mamujoco/Hopper-3x1"})
    (run_dir / "summary.json").write_text(json.dumps({"references": None}))
    re_csv = tmp_path / "re.csv"
    res = run_script("reevaluate.py", "--runs", str(tmp_path / "runs"), "--datasets",
                     "hopper-3x1-medium", "--methods", "meanflow-bc", "--seeds", "0",
                     "--noise", "auto~1.5", "--csv", str(re_csv))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--noise auto~1.5: test-time guidance needs a conditioned flow policy" in res.stderr
    assert str(run_dir) in res.stderr and "Traceback" not in res.stderr
    assert not re_csv.exists()


def test_committed_ablations_come_from_their_csv(tmp_path: Path) -> None:
    """ABLATIONS.md is what ``ablations.py --render`` writes from the runs.csv beside it."""
    folder = RESULTS / "ablations"
    res = run_script("ablations.py", "--render", "--csv", str(folder / "runs.csv"), "--out",
                     str(tmp_path / "ABLATIONS.md"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "ABLATIONS.md").read_text() == (folder / "ABLATIONS.md").read_text()


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
    res = run_script("ablations.py", "--table", "--runs", str(tmp_path / "runs"), "--csv",
                     str(table), "--out", str(tmp_path / "A.md"), "--commit", "new")
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
    res = run_script("ablations.py", "--run", "--variants", "nope", "--runs", str(tmp_path))
    assert res.returncode == 2 and "--variants" in res.stderr and "'nope'" in res.stderr


def test_ablations_needs_runs_for_table() -> None:
    res = run_script("ablations.py", "--table")
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
    res = run_script("fit.py", *args)
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
    again = run_script("fit.py", *args)
    assert again.returncode == 0, again.stderr
    assert table.read_bytes() == before
    shown = run_script("fit.py", "--render", "--csv", str(table))
    assert shown.returncode == 0 and "| halfcheetah-2x3-small | mlp-bc | 500 | 1 |" in shown.stdout
    bad = run_script("fit.py", "--datasets", "halfcheetah-2x3-small", "--every", "700")
    assert bad.returncode == 2 and "--every" in bad.stderr


def test_tokens_splits_the_advantage_by_episode_group(tmp_path: Path) -> None:
    """tokens.py reads each run's last advantage refresh and splits it by the dataset's episode
    groups: every group's share is its rows' fraction of A >= 0 (they add up to the run's
    count), a conditioned run's mass is proportional to share x rows, every run's masses sum
    to 1; a run that
    reads no advantages, a dataset without groups and one whose episodes are out of its groups'
    order are refused with the option named."""
    import torch

    runs, table, name = tmp_path / "runs", tmp_path / "tokens.csv", "halfcheetah-2x3-small"
    res = run_script("run.py", "--datasets", name, "--methods", "vgm2p", "awfm", "mlp-bc",
                     "--seeds", "0", "--steps", "4", "--eval-episodes", "0", "--runs", str(runs),
                     "--", "--value-warmup", "3", "--batch-size", "16", "--hidden-dims", "16",
                     "--value-hidden", "16", "--refresh-every", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_script("tokens.py", "--runs", str(runs), "--datasets", name, "--methods", "vgm2p",
                     "awfm", "--seeds", "0", "--csv", str(table))
    assert res.returncode == 0, res.stdout + res.stderr
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    from vgm2p_fast.datasets import load_dataset

    groups = json.loads(load_dataset(name).attrs["groups"])
    assert len(rows) == 2 * len(groups) and len(groups) > 1
    for method in ("vgm2p", "awfm"):
        mine = [r for r in rows if r["method"] == method]
        assert [int(r["group"]) for r in mine] == list(range(len(groups)))
        assert [int(r["rows"]) > 0 for r in mine] == [True] * len(groups)
        assert abs(sum(float(r["mass"]) for r in mine) - 1) < 1e-3
        ckpt = sorted((runs / name / method / "seed0").glob("checkpoint-*.pt"))[-1]
        adv = torch.load(ckpt, weights_only=False)["adv"]
        n_good = sum(float(r["share"]) * int(r["rows"]) for r in mine)
        assert abs(n_good - int((adv >= 0).sum())) < 1e-3 * len(adv) + 0.5, (method, n_good)
        if method == "vgm2p":
            for r in mine:
                want = float(r["share"]) * int(r["rows"]) / n_good
                assert abs(float(r["mass"]) - want) < 1e-3, r
    shown = run_script("tokens.py", "--render", "--csv", str(table))
    assert shown.returncode == 0 and f"#### {name}" in shown.stdout
    assert "| group | return | rows | awfm share | awfm mass | vgm2p share | vgm2p mass |" \
        in shown.stdout
    bad = run_script("tokens.py", "--runs", str(runs), "--datasets", name, "--methods",
                     "mlp-bc", "--seeds", "0", "--csv", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "--methods" in bad.stderr and "mlp-bc" in bad.stderr
    src = load_dataset(name).source
    for case, edit in (("none", lambda f: f.attrs.__delitem__("groups")),
                       ("order", lambda f: f.attrs.__setitem__(
                           "groups", json.dumps(groups[::-1])))):
        path = tmp_path / f"{case}.h5"
        path.write_bytes(Path(src).read_bytes())
        with h5py.File(path, "r+") as f:
            edit(f)
        bad = run_script("tokens.py", "--runs", str(runs), "--datasets", str(path), "--seeds",
                         "0", "--csv", str(tmp_path / "x.csv"))
        assert bad.returncode == 2 and "--datasets" in bad.stderr, (case, bad.stderr)
        assert ("no episode groups" if case == "none" else "not in its groups' order") \
            in bad.stderr, (case, bad.stderr)


def test_run_refuses_unknown_method(tmp_path: Path) -> None:
    res = run_script("run.py", "--methods", "dqn", "--runs", str(tmp_path))
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
        res = run_script("make_table.py", "--csv", str(folder / "runs.csv"), "--out", str(out),
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
