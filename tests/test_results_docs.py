"""The committed results as the README and docs/results.md quote them: every figure of their
learning tables, the guidance sweep, the ablations, the noise and width comparisons and the
training times is the committed csv's or table's, so a re-run that changes a number fails here
until the prose follows."""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from results_lab import RESULTS, ROOT, md_table, run_script

pytest.importorskip("gymnasium_robotics", reason="needs the envs extra: pip install -e '.[envs]'")
pytest.importorskip("matplotlib")

HM, HMR = "hopper-3x1-medium", "hopper-3x1-medium-replay"


def _rendered(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``reevaluate.py --render --csv csv_path`` (which must succeed)."""
    res = run_script("reevaluate.py", "--render", "--csv", str(csv_path))
    assert res.returncode == 0, res.stderr
    return md_table(res.stdout, "dataset")


def _hopper_ablations(dataset: str = HM) -> dict[str, tuple[str, str, str]]:
    """ABLATIONS.md's section of ``dataset``: variant label -> (mean ± 2σ, seed count, mean
    learning curve)."""
    ablations = (RESULTS / "ablations" / "ABLATIONS.md").read_text()
    head, rows = md_table(ablations.split(f"## {dataset} (", 1)[1], "variant")
    col, seeds = head.index("normalised (mean ± 2σ, sd)"), head.index("seeds")
    curve = next(i for i, h in enumerate(head) if h.startswith("curve"))
    return {r[0]: (r[col].split(" (sd")[0], r[seeds], r[curve]) for r in rows}


def test_docs_ablation_table_quotes_ablations_md() -> None:
    """Every VGM²P / MLP-BC figure of docs/results.md's hopper-3x1-medium ablation table, and
    the README's figure for the defaults, is a mean ± 2σ of ABLATIONS.md's hopper section (a
    bare figure: a one-seed row's mean)."""
    ablations = _hopper_ablations().values()
    quoted = {mean for mean, _, _ in ablations}
    one_seed = {mean.split(" ± ")[0] for mean, n, _ in ablations if n == "1"}
    docs = (ROOT / "docs" / "results.md").read_text()
    d_head, d_rows = md_table(docs, "change (hopper-3x1-medium)")
    assert d_head == ["change (hopper-3x1-medium)", "VGM²P normalised"] and len(d_rows) > 10
    for label, cell in d_rows:
        for figure in cell.split(" / "):
            assert figure in (quoted if "±" in figure else one_seed), (label, figure)
    defaults = next(c for label, c in d_rows if "the new defaults" in label)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"critic warm-up instead of 500 (tokens from a fitted critic) to {defaults};" in readme


def test_readme_headline_numbers_are_the_committed_tables() -> None:
    """Every number the README's learning table shows is the committed RESULTS.md's: the
    mean ± 2σ of each method and the target verdicts, dataset by dataset."""
    readme = (ROOT / "README.md").read_text()
    headline = readme.split("<!-- results:headline -->", 1)[1].split("<!-- /results:headline",
                                                                      1)[0]
    results = (RESULTS / "RESULTS.md").read_text()
    head, rows = md_table(headline, "dataset")
    r_head, r_rows = md_table(results, "dataset")
    t_head, t_rows = md_table(results.split("## Targets", 1)[1], "dataset")
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
    r_head, r_rows = md_table(results, "dataset")
    by_name = {re.sub(r"\[([^]]+)\].*", r"\1", r[0]): r for r in r_rows}
    t_head, t_rows = md_table(results.split("## Targets", 1)[1], "dataset")
    targets = {r[0]: r for r in t_rows}
    label = lambda h: re.sub(r" \(.*\)$", "", h)  # noqa: E731  ("flow-matching BC (1 seed)")
    first = "dataset | behaviour | VGM²P | MLP-BC"
    tables = [md_table(docs, first), md_table(docs.split("## The other rows", 1)[1], first)]
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
    _, re_rows = _rendered(RESULTS / "reevaluate.csv")
    # (dataset, method) -> (seeds, "score (return; win)") for the policies' default noise
    evals = {(r[0], r[1]): (r[3], f"{r[5]} ({r[6]}; {r[7]})") for r in re_rows
             if r[2] in ("auto", "none")}
    method_of = {v: k for k, v in LABELS.items()}
    head, rows = md_table(docs.split("### The SMAX rows on 100 episodes", 1)[1], "dataset")
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

    _, re_rows = _rendered(RESULTS / "noise-continuous.csv")
    evals = {(r[0], r[1], r[2]): (r[5].split(" ±")[0], r[3]) for r in re_rows}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Continuous actions at e = 0", 1)[1], "dataset")
    r_head, r_rows = md_table((RESULTS / "RESULTS.md").read_text(), "dataset")
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
    _assert_reproduces_table(RESULTS / "noise-continuous.csv")


def test_docs_sampler_paragraph_quotes_its_noise_csv() -> None:
    """The (r, t) sampler paragraph's five-step and e = 0 figures are reevaluate.py --render of
    ablations/sampler-noise.csv, whose sampled rows reproduce the runs' final evaluations; its
    defaults figures are ABLATIONS.md's e = 0 row and sampling-steps.csv's seeds 0-2 at e = 0."""
    folder, r75 = RESULTS / "ablations", "vgm2p-w3000-ratio0.75"
    _, rows = _rendered(folder / "sampler-noise.csv")
    cell = {(r[0], r[1], r[2]): r[5] for r in rows}
    text = _paragraph("The (r, t) sampler rows")
    variants = ["vgm2p-w3000-ratio0.5", r75, "vgm2p-w3000-tsigma1.6", "vgm2p-w3000-tsigma2"]
    five = [cell[(HMR, v, "auto@5")] for v in variants]
    assert f"(to {', '.join(five[:3])} and {five[3]}," in text, (five, text)
    zero_defaults = _hopper_ablations(HMR)["VGM²P, defaults, evaluation noise e = 0"][0]
    assert (f"0.75 returns {cell[(HMR, r75, 'zero')]} on hopper-3x1-medium-replay (the "
            f"defaults: {zero_defaults} on these seeds)") in text, text
    table_zero = [v for s, v in _by_seed(RESULTS / "sampling-steps.csv", HM, "zero").items()
                  if s in (0, 1, 2)]
    assert len(table_zero) == 3
    assert (f"and {cell[(HM, r75, 'zero')]} on hopper-3x1-medium (the defaults: "
            f"{sum(table_zero) / 3:.1f})") in text, text
    with open(folder / "runs.csv", newline="") as f:
        final = {(r["dataset"], r["variant"], r["seed"]): float(r["eval_return_mean"])
                 for r in csv.DictReader(f)}
    assert _assert_reproduces(folder / "sampler-noise.csv", {"auto"}, final,
                              lambda r: (r["dataset"], r["method"], r["seed"])) == 15


def test_docs_sampling_steps_table_is_its_csv() -> None:
    """docs/results.md's sampling-steps table is reevaluate.py --render of sampling-steps.csv
    (each cell's mean ± 2σ and its seed count; N steps is the csv's ``auto@N`` / ``zero@N``),
    and every one-step sampled row there reproduces its run's final table evaluation."""
    _, re_rows = _rendered(RESULTS / "sampling-steps.csv")
    evals = {(r[0], r[2]): (r[5], r[3]) for r in re_rows}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Sampling steps", 1)[1], "dataset")
    assert head == ["dataset", "steps", "seeds", "sampled", "e = 0"] and len(rows) >= 4, head
    for ds, steps, seeds, sampled, zero in rows:
        at = "" if steps == "1" else f"@{steps}"
        assert evals[(ds, f"auto{at}")] == (sampled, seeds), (ds, steps, sampled)
        assert evals[(ds, f"zero{at}")] == (zero, seeds), (ds, steps, zero)
    assert _assert_reproduces_table(RESULTS / "sampling-steps.csv") == 10


def test_docs_test_guidance_table_is_its_csv() -> None:
    """docs/results.md's test-time guidance table is reevaluate.py --render of test-guidance.csv
    (W is the csv's ``auto~W``, W = 1 its ``auto``), its e = 0 figures are the csv's
    ``zero~1.5`` against sampling-steps.csv's ``zero``, and the W = 1 rows reproduce the
    table's final evaluations."""
    evals = {(r[0], r[2]): (r[5], r[3]) for r in _rendered(RESULTS / "test-guidance.csv")[1]}
    steps = {(r[0], r[2]): r[5] for r in _rendered(RESULTS / "sampling-steps.csv")[1]}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Test-time guidance", 1)[1], "dataset")
    assert head == ["dataset", "test guidance", "seeds", "sampled"] and len(rows) == 12, head
    for ds, w, seeds, sampled in rows:
        assert evals[(ds, "auto" if w == "1" else f"auto~{w}")] == (sampled, seeds), (ds, w)
    text = _paragraph("On hopper-3x1-medium no W beats 1")
    for ds, end in ((HM, " at 1"), (HMR, ")")):
        want = f"W = 1.5 gives {evals[(ds, 'zero~1.5')][0]} against {steps[(ds, 'zero')]}{end}"
        assert want in text, (want, text)
    assert _assert_reproduces_table(RESULTS / "test-guidance.csv") == 10
    readme = " ".join((ROOT / "README.md").read_text().split())
    mean = {w: evals[(HM, f"auto~{w}")][0].split(" ±")[0] for w in ("0.75", "1.5")}
    assert (f"(docs/results.md#test-time-guidance) 0.75 / 1.5 {mean['0.75']} / {mean['1.5']} "
            f"({evals[(HM, 'auto~1.5')][1]} seeds): none better") in readme


def test_docs_temperature_table_is_its_csv() -> None:
    """docs/results.md's sampling-temperature table is reevaluate.py --render of temperature.csv
    (T = 1 is the csv's ``auto``, T = 0 its ``zero``, any other T its ``sample*T``); the csv's
    models are the table's (its ``auto`` rows reproduce runs.csv, its ``zero`` rows
    noise-continuous.csv); and the verdict below the table holds: no T puts VGM²P both at or
    above MLP-BC on hopper-3x1-medium and within 10 % of AW flow BC on medium-replay, with the
    figures the paragraph quotes."""
    path = RESULTS / "temperature.csv"
    evals = {tuple(r[:3]): (r[5], r[3]) for r in _rendered(path)[1]}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Sampling temperature", 1)[1], "dataset")
    assert head == ["dataset", "temperature T", "seeds", "VGM²P", "AW flow BC"], head
    assert len(rows) == 10
    setting = {"1": "auto", "0": "zero"}
    for ds, t, seeds, vgm, aw in rows:
        noise = setting.get(t, f"sample*{t}")
        assert evals[(ds, "vgm2p", noise)] == (vgm, seeds), (ds, t, vgm)
        assert evals[(ds, "awfm", noise)] == (aw, seeds), (ds, t, aw)
    key = lambda r: (r["dataset"], r["method"], r["seed"])  # noqa: E731
    assert _assert_reproduces_table(path) == 20
    with open(RESULTS / "noise-continuous.csv", newline="") as f:
        zero = {key(r): float(r["return_mean"]) for r in csv.DictReader(f) if r["noise"] == "zero"}
    assert _assert_reproduces(path, {"zero"}, zero, key) == 20

    with open(RESULTS / "runs.csv", newline="") as f:
        mlp = [float(r["eval_normalised"]) for r in csv.DictReader(f)
               if (r["dataset"], r["method"]) == (HM, "mlp-bc")]
    bar = sum(mlp) / len(mlp)

    def mean(ds: str, method: str, noise: str) -> float:
        got = _by_seed(path, ds, noise, method)
        assert sorted(got) == [0, 1, 2, 3, 4], (ds, method, noise)
        return sum(got.values()) / 5

    text = _paragraph("No T passes both.")
    for t in ("1", "0.75", "0.5", "0.25", "0"):
        noise = setting.get(t, f"sample*{t}")
        limit = 0.9 * mean(HMR, "awfm", noise)
        assert not (mean(HM, "vgm2p", noise) >= bar and mean(HMR, "vgm2p", noise) >= limit), t
        if t not in setting:   # below 1, AW flow BC gains more than VGM²P there
            gain = {m: mean(HMR, m, noise) - mean(HMR, m, "auto") for m in ("vgm2p", "awfm")}
            assert gain["awfm"] > gain["vgm2p"], (t, gain)
            limit_said = "against a limit of" if t == "0.75" else "against"
            want = f"{mean(HMR, 'vgm2p', noise):.1f} {limit_said} {limit:.1f} at {t}"
            assert want in text, (want, text)
    want = (f"({mean(HM, 'vgm2p', 'sample*0.5'):.1f} at 0.5, "
            f"{mean(HM, 'vgm2p', 'sample*0.75'):.1f} at 0.75, against {bar:.1f})")
    assert want in text, (want, text)
    seed3 = {n: _by_seed(path, HMR, n, "vgm2p")[3] for n in ("auto", "sample*0.5", "zero")}
    assert (f"(seed 3: {seed3['auto']:.1f} sampled, {seed3['sample*0.5']:.1f} at 0.5, "
            f"{seed3['zero']:.1f} at e = 0)") in text
    aw = _by_seed(path, HMR, "sample*0.5", "awfm")
    assert all(aw[s] > v for s, v in _by_seed(path, HMR, "auto", "awfm").items())
    assert f"(its lowest at 0.5: {min(aw.values()):.1f})" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "as does each [temperature](docs/results.md#sampling-temperature) tried that" in readme


def test_docs_self_distill_paragraph_is_its_csv() -> None:
    """The self-distillation paragraph's per-seed figures are self-distill-noise.csv's, the
    table's beside them sampling-steps.csv's (seeds 0-2), and the csv names the patch."""
    new, table = RESULTS / "ablations" / "self-distill-noise.csv", RESULTS / "sampling-steps.csv"
    text = _paragraph("A self-distilled one-step jump")
    for ds, noise, said in ((HMR, "auto", "{} sampled (the table's {})"),
                            (HMR, "zero", "{} from e = 0 ({})"),
                            (HMR, "auto@5", "{} sampled in five steps ({})"),
                            (HM, "auto", "on hopper-3x1-medium {} sampled ({})")):
        want = said.format(_said(_seeds_012(new, ds, noise)), _said(_seeds_012(table, ds, noise)))
        assert want in text, (want, text)
    patch = (RESULTS / "ablations" / "self-distill.patch").read_text()
    assert "def _distill(" in patch and "distill_share: float = 0.25" in patch
    with open(new, newline="") as f:
        assert {r["commit"] for r in csv.DictReader(f)} == {"92ee2a9+self-distill.patch"}
    hm = _seeds_012(new, HM, "auto")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"a self-distilled one-step jump {sum(hm) / 3:.1f} and" in readme


def test_docs_awr_paragraph_is_its_csv() -> None:
    """The paragraph on AW weights inside VGM²P quotes ablations/awr-noise.csv (each seed from
    e = 0, the mean ± 2σ of reevaluate.py --render), whose sampled rows are the ablation runs'
    final evaluations and ABLATIONS.md's means; the defaults beside them are the table's models
    (noise-continuous.csv, seeds 0-2); and every weighted figure is below its default's."""
    new, table = RESULTS / "ablations" / "awr-noise.csv", RESULTS / "noise-continuous.csv"
    variant = "vgm2p-w3000-awr"
    cell = {(r[0], r[2]): r[5] for r in _rendered(new)[1] if r[1] == variant}
    text = _paragraph("Advantage weighting inside VGM²P")
    for ds in (HMR, HM):
        mine, base = _seeds_012(new, ds, "zero", variant), _seeds_012(table, ds, "zero", "vgm2p")
        want = f"{_said(mine)} ({cell[(ds, 'zero')]}) on {ds} against {_said(base)}"
        assert want in text, (want, text)
        assert all(m < b for m, b in zip(mine, base)), (ds, mine, base)
        mine, base = _seeds_012(new, ds, "auto", variant), _seeds_012(table, ds, "auto", "vgm2p")
        assert all(m < b for m, b in zip(mine, base)), (ds, mine, base)
        label = "VGM²P, defaults, rows also weighted exp(A / std A) (awr, clipped at 100)"
        assert _hopper_ablations(ds)[label][0] == cell[(ds, "auto")], ds
    want = (f"sampled, {cell[(HMR, 'auto')]} and {cell[(HM, 'auto')]} against "
            f"{_said(_seeds_012(table, HMR, 'auto', 'vgm2p'))} and "
            f"{_said(_seeds_012(table, HM, 'auto', 'vgm2p'))}")
    assert want in text, (want, text)
    with open(RESULTS / "ablations" / "runs.csv", newline="") as f:
        final = {(r["dataset"], r["variant"], r["seed"]): float(r["eval_return_mean"])
                 for r in csv.DictReader(f)}
    assert _assert_reproduces(new, {"auto"}, final,
                              lambda r: (r["dataset"], r["method"], r["seed"])) == 6
    assert f"seed 0, returned {final[(HMR, 'vgm2p-w3000-zero', '0')]:.3f} again" in text


def test_docs_tokens_section_is_its_csv() -> None:
    """docs/results.md's tokens tables are tokens.py --render of tokens.csv, and every figure of
    the paragraphs after them is that csv's (shares, masses, the best group's part of the rows
    and its per-seed mass range) or noise-continuous.csv's (the e = 0 returns it quotes); the
    table runs the intro compares AW flow BC's re-trained seeds with are runs.csv's."""
    res = run_script("tokens.py", "--render", "--csv", str(RESULTS / "tokens.csv"))
    assert res.returncode == 0, res.stderr
    docs = (ROOT / "docs" / "results.md").read_text()
    section = docs.split("### What the tokens pick on medium-replay data", 1)[1]
    shown = res.stdout.split("#### ")[1:]
    assert shown and section.count("#### ") == len(shown)
    for part in shown:   # one table per dataset, under its name
        ds = part.split("\n", 1)[0]
        assert md_table(section.split(f"#### {ds}\n", 1)[1], "group") == md_table(part, "group")
    with open(RESULTS / "tokens.csv", newline="") as f:
        every = list(csv.DictReader(f))
    rows = [r for r in every if r["dataset"] == HMR]
    best = max(int(r["group"]) for r in rows)
    by_group = defaultdict(list)
    for r in rows:
        by_group[(r["method"], int(r["group"]))].append(r)

    def mean(method: str, group: int, col: str) -> float:
        got = by_group[(method, group)]
        return sum(float(r[col]) for r in got) / len(got)

    rows_of = {g: int(by_group[("vgm2p", g)][0]["rows"]) for g in range(best + 1)}
    low = [mean("vgm2p", g, "share") for g in range(best + 1)
           if float(by_group[("vgm2p", g)][0]["return_mean"]) < 300]
    masses = [float(r["mass"]) for r in by_group[("vgm2p", best)]]
    zero = {m: _by_seed(RESULTS / "noise-continuous.csv", HMR, "zero", m)
            for m in ("vgm2p", "fm-bc")}
    others = [v for s, v in zero["vgm2p"].items() if s not in (2, 3)]
    text = _paragraph("On hopper-3x1-medium-replay the advantage tilts")
    for said in (
            f"({float(by_group[('vgm2p', best)][0]['return_mean']):.0f}, "
            f"{100 * rows_of[best] / sum(rows_of.values()):.0f} % of the data) are "
            f"advantageous at {100 * mean('vgm2p', best, 'share'):.0f} %",
            f"against {100 * min(low):.0f}-{100 * max(low):.0f} % for each checkpoint below 300",
            f"make up {100 * mean('vgm2p', best, 'mass'):.0f} % of VGM²P's advantageous rows "
            f"({100 * mean('awfm', best, 'mass'):.0f} % of AW flow BC's weight)",
            f"returns {min(zero['fm-bc'].values()):.1f}-{max(zero['fm-bc'].values()):.1f} from "
            f"e = 0 on every seed",
            f"mass is {min(masses):.3f}-{max(masses):.3f} on all five seeds",
            f"({zero['vgm2p'][2]:.1f} and {zero['vgm2p'][3]:.1f} from e = 0, against "
            f"{min(others):.1f}-{max(others):.1f})"):
        assert said in text, (said, text)
    # the HalfCheetah contrast, from the same csv, and the table runs it compares with
    hc = [r for r in every if r["dataset"] == "halfcheetah-2x3-medium-replay"]
    last = max(int(r["group"]) for r in hc)

    def hc_mean(group: int, col: str) -> float:
        got = [float(r[col]) for r in hc if (r["method"], int(r["group"])) == ("vgm2p", group)]
        return sum(got) / len(got)

    top = next(r for r in hc if int(r["group"]) == last)
    n_rows = sum(int(r["rows"]) for r in hc if (r["method"], r["seed"]) == ("vgm2p", "0"))
    text = _paragraph("On halfcheetah-2x3-medium-replay the same token")
    for said in (
            f"from {100 * hc_mean(0, 'share'):.0f} % on the first to "
            f"{100 * hc_mean(last, 'share'):.0f} % on the best ({float(top['return_mean']):.0f}, "
            f"{100 * int(top['rows']) / n_rows:.0f} % of the rows), which makes up "
            f"{100 * hc_mean(last, 'mass'):.0f} % of VGM²P's advantageous rows",
            f"Hopper's best checkpoint gets {100 * mean('vgm2p', best, 'mass'):.0f} % from "
            f"{100 * rows_of[best] / sum(rows_of.values()):.0f} % of the rows"):
        assert said in text, (said, text)
    with open(RESULTS / "runs.csv", newline="") as f:
        aw = {r["seed"]: float(r["eval_return_mean"]) for r in csv.DictReader(f)
              if (r["dataset"], r["method"]) == ("halfcheetah-2x3-medium-replay", "awfm")}
    assert f"against {aw['3']:.1f} and {aw['4']:.1f};" in _paragraph("Why is VGM²P's mode")


def _by_seed(path: Path, dataset: str, noise: str, method: str | None = None
             ) -> dict[int, float]:
    """Seed -> normalised return of the reevaluate.py csv ``path``'s rows of one dataset and
    noise setting (and of one method, for a csv of several)."""
    with open(path, newline="") as f:
        return {int(r["seed"]): float(r["normalised"]) for r in csv.DictReader(f)
                if (r["dataset"], r["noise"]) == (dataset, noise)
                and method in (None, r["method"])}


def _seeds_012(path: Path, dataset: str, noise: str, method: str | None = None
               ) -> list[float]:
    """:func:`_by_seed`'s seeds 0, 1 and 2, rounded to the one decimal the docs quote."""
    got = _by_seed(path, dataset, noise, method)
    return [round(got[s], 1) for s in (0, 1, 2)]


def _said(values: list[float]) -> str:
    """Per-seed figures as the docs quote them: ``27.7 / 29.3 / 17.8``."""
    return " / ".join(f"{v:.1f}" for v in values)


def _assert_reproduces(path: Path, noises: set[str], final: dict, key) -> int:
    """Every row of the reevaluate.py csv ``path`` whose noise is in ``noises`` returns its
    run's final training evaluation, ``final[key(row)]`` (to 1e-6); how many rows that is."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["noise"] in noises]
    for r in rows:
        got, table = float(r["return_mean"]), final[key(r)]
        assert abs(got - table) < 1e-6 * abs(table), (path.name, key(r), got, table)
    return len(rows)


def _assert_reproduces_table(path: Path) -> int:
    """:func:`_assert_reproduces` of ``path``'s sampled (``auto``) rows against the table's
    runs.csv, keyed by dataset, method and seed."""
    with open(RESULTS / "runs.csv", newline="") as f:
        final = {(r["dataset"], r["method"], r["seed"]): float(r["eval_return_mean"])
                 for r in csv.DictReader(f)}
    return _assert_reproduces(path, {"auto"}, final,
                              lambda r: (r["dataset"], r["method"], r["seed"]))


def _paragraph(opening: str) -> str:
    """The docs/results.md paragraph that starts with ``opening``, on one line."""
    docs = (ROOT / "docs" / "results.md").read_text()
    return " ".join(docs.split(f"\n{opening}", 1)[1].split("\n\n", 1)[0].split())


@pytest.mark.parametrize("opening, quotes", [
    ("The budget rows", {(HM, "vgm2p-w3000-steps20k"): "VGM²P ends at ",
                         (HM, "mlp-lr1e3-steps20k"): "MLP-BC at "}),
    ("The width rows", {(HM, "vgm2p-w3000-h512"): "VGM²P ends at ",
                        (HM, "mlp-lr1e3-h512"): "MLP-BC at "}),
    ("The frequency rows", {(HM, "vgm2p-w3000-freq1"): "at 1 VGM²P ends at ",
                            (HM, "vgm2p-w3000-freq10"): "at 10 at "}),
    ("The (r, t) sampler rows", {
        (HMR, "vgm2p-w3000-ratio0.5"): "0.5 gives ",
        (HMR, "vgm2p-w3000-ratio0.75"): "0.75 gives ",
        (HM, "vgm2p-w3000-ratio0.75"): "on hopper-3x1-medium 0.75 gives ",
        (HMR, "vgm2p-w3000-tsigma1.6"): "scale 1.6 (10 % with t > 0.9) gives ",
        (HMR, "vgm2p-w3000-tsigma2"): "scale 2 (18 %) gives "}),
    ("The budget at e = 0", {(HMR, "vgm2p-w3000-zero-steps20k"): "VGM²P ends at ",
                             (HMR, "awfm-w3000-zero-steps20k"): "AW flow BC at "}),
    ("The EMA rows", {(HMR, "vgm2p-w3000-zero-ema999"): "VGM²P ends at ",
                      (HM, "vgm2p-w3000-zero-ema999"): "medium-replay and at "})])
def test_docs_ablation_paragraphs_quote_their_runs(opening: str, quotes: dict) -> None:
    """docs/results.md's paragraphs on the 20,000-step, the 3 x 512, the time-frequency, the
    (r, t) sampler, the e = 0 20,000-step and the e = 0 EMA ablations quote, after the words
    given, every seed's final evaluation of each (dataset, variant) (ablations/runs.csv) and
    its mean ± 2σ (ABLATIONS.md)."""
    folder = RESULTS / "ablations"
    with open(folder / "runs.csv", newline="") as f:
        runs = [r for r in csv.DictReader(f) if (r["dataset"], r["variant"]) in quotes]
    text = _paragraph(opening)
    for (dataset, variant), words in quotes.items():
        mine = sorted((int(r["seed"]), r) for r in runs
                      if (r["dataset"], r["variant"]) == (dataset, variant))
        assert [s for s, _ in mine] == [0, 1, 2], (dataset, variant)
        seeds = " / ".join(f"{float(r['eval_normalised']):.1f}" for _, r in mine)
        want = f"{words}{seeds} ({_hopper_ablations(dataset)[mine[0][1]['label']][0]})"
        assert want in text, (want, text)


def test_docs_ema_paragraph_quotes_its_defaults() -> None:
    """The EMA paragraph's defaults are the table's models from e = 0 (noise-continuous.csv,
    seeds 0-2), and its seed-2 returns are ablations/runs.csv's, EMA against defaults row."""
    text = _paragraph("The EMA rows")
    base = [_said(_seeds_012(RESULTS / "noise-continuous.csv", ds, "zero", "vgm2p"))
            for ds in (HMR, HM)]
    assert f"on the same seeds ({base[0]} and {base[1]})" in text, (base, text)
    with open(RESULTS / "ablations" / "runs.csv", newline="") as f:
        ret = {r["variant"]: float(r["eval_return_mean"]) for r in csv.DictReader(f)
               if (r["dataset"], r["seed"]) == (HMR, "2")}
    said = (f"Seed 2 returns {ret['vgm2p-w3000-zero-ema999']:.1f} against the defaults' "
            f"{ret['vgm2p-w3000-zero']:.1f} on medium-replay")
    assert said in text, (said, text)


def test_docs_budget_paragraph_quotes_its_noise_csv() -> None:
    """The 20,000-step paragraph's e = 0 figure is reevaluate.py --render of
    ablations/steps20k-noise.csv, whose sampled and MLP rows reproduce the runs' final
    evaluations in ablations/runs.csv."""
    folder = RESULTS / "ablations"
    _, rows = _rendered(folder / "steps20k-noise.csv")
    zero = next(r[5] for r in rows if r[1:4] == ["vgm2p", "zero", "3"])
    text = _paragraph("The budget rows")
    assert f"models return {zero} on the same episodes" in text, (text, zero)
    with open(folder / "runs.csv", newline="") as f:
        final = {(r["variant"].split("-")[0], r["seed"]): float(r["eval_return_mean"])
                 for r in csv.DictReader(f)
                 if r["dataset"] == HM and r["variant"].endswith("-steps20k")}
    checked = _assert_reproduces(folder / "steps20k-noise.csv", {"auto", "none"}, final,
                                 lambda r: (r["method"].removesuffix("-bc"), r["seed"]))
    assert checked == 6 and len(final) == 6, (checked, final)


def test_docs_budget_at_zero_noise_paragraph_quotes_its_baselines() -> None:
    """The e = 0 budget paragraph's 10,000-step figures are the same seeds' e = 0 rows of
    noise-continuous.csv, its VGM²P curve the e = 0 defaults row of ABLATIONS.md, seed 1's
    swing that run's curve in ablations/runs.csv and its limit 90 % of AW flow BC's mean."""
    text = _paragraph("The budget at e = 0")
    zero = [_by_seed(RESULTS / "noise-continuous.csv", HMR, "zero", m) for m in ("vgm2p", "awfm")]
    means = [sum(z[s] for s in (0, 1, 2)) / 3 for z in zero]
    assert f"the same seeds gave {means[0]:.1f} and {means[1]:.1f}." in text, (means, text)
    curve = _hopper_ablations(HMR)["VGM²P, defaults, evaluation noise e = 0"][2]
    assert f"at 10,000 steps ({curve})" in text, (curve, text)
    with open(RESULTS / "ablations" / "runs.csv", newline="") as f:
        runs = {(r["variant"], r["seed"]): r for r in csv.DictReader(f) if r["dataset"] == HMR}
    s1 = dict(p.split(":") for p in runs["vgm2p-w3000-zero-steps20k", "1"]["eval_curve"].split())
    assert (f"seed 1: {float(s1['12000']):.1f} at 12,000 steps, {float(s1['20000']):.1f} at "
            f"20,000") in text, (s1, text)
    aw = [float(runs["awfm-w3000-zero-steps20k", s]["eval_normalised"]) for s in "012"]
    vg = [float(runs["vgm2p-w3000-zero-steps20k", s]["eval_normalised"]) for s in "012"]
    want = f"({sum(vg) / 3:.1f} against a limit of at least {0.9 * sum(aw) / 3:.1f}, "
    assert want in text, (want, text)


def test_docs_fit_table_is_its_csv() -> None:
    """docs/results.md's action-error table is fit.py --render --at 4000 10000 of the committed
    fit.csv, row for row."""
    res = run_script("fit.py", "--render", "--csv", str(RESULTS / "fit.csv"), "--at", "4000",
                     "10000")
    assert res.returncode == 0, res.stderr
    want = md_table(res.stdout, "dataset")
    docs = (ROOT / "docs" / "results.md").read_text()
    got = md_table(docs.split("### How closely each policy fits the data's actions", 1)[1],
                  "dataset")
    assert want[1], "fit.csv has no rows at policy steps 4000 and 10000"
    assert got == want


def test_docs_and_readme_guidance_sweep_is_the_committed_table() -> None:
    """docs/results.md's guidance table is RESULTS.md's sweep, cell for cell, and the README's
    'w = 1.5 / 3 / 4 change VGM²P by a / b / c %' per dataset and its count of points outside
    ±10 % are that table's."""
    results = (RESULTS / "RESULTS.md").read_text().split("## Guidance-scale sweep", 1)[1]
    head, rows = md_table(results, "dataset")
    assert head[1:] == ["w = 1.5", "w = 2", "w = 3", "w = 4"] and rows, head
    docs = (ROOT / "docs" / "results.md").read_text().split("## Guidance scale", 1)[1]
    d_head, d_rows = md_table(docs, "dataset")
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
    scale_of = {"vgm2p-g1.5": 1.5, "vgm2p": 2.0, "vgm2p-g3": 3.0, "vgm2p-g4": 4.0}
    for dataset in ("smax-3m-medium", "smax-2s3z-medium"):
        pts = {w: [float(r["normalised"]) for r in evals
                   if r["dataset"] == dataset and r["method"] == m] for m, w in scale_of.items()}
        change = sweep_change(pts)          # the same change as the 10-episode table's
        means = " / ".join(f"{stats(pts[w])[0]:.1f}" for w in change)
        rel = " / ".join(f"{round(c):+d}" for c in change.values())   # +0, never -0
        assert (f"{dataset}: {means} against the default's {stats(pts[2.0])[0]:.1f}, "
                f"{rel} %") in flat, dataset
        assert f"{dataset} {rel} %" in " ".join(readme.split()), dataset


def test_docs_training_time_table_is_the_no_critic_table() -> None:
    """docs/results.md's side-by-side training times are no-critic/RESULTS.md's, and its ratio
    column is VGM²P's time over MLP-BC's."""
    docs = (ROOT / "docs" / "results.md").read_text().split("## Training time", 1)[1]
    results = (RESULTS / "no-critic" / "RESULTS.md").read_text().split("Training time", 1)[1]
    head, rows = md_table(docs, "dataset")
    r_head, r_rows = md_table(results, "dataset")
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
    head, rows = md_table((folder / "RESULTS.md").read_text(), "dataset")
    cell = dict(zip(head, rows[0]))
    for method in ("VGM²P", "MLP-BC", "MeanFlow-BC"):
        mean_2sigma = cell[method].split(" (sd")[0]
        assert mean_2sigma in docs, (method, mean_2sigma)
    n_head, n_rows = _rendered(folder / "noise.csv")
    score = {(r[1], r[2]): r[n_head.index("normalised (mean ± 2σ)")] for r in n_rows}
    assert f"At e = 0 seeds 5-9 give {score[('vgm2p', 'zero')]} (sampled: " \
           f"{score[('vgm2p', 'auto')]})" in docs
    # the mode-plus-noise table is reevaluate.py --render of width.csv, cell for cell
    w_head, w_rows = _rendered(folder / "width.csv")
    width = {(r[1], r[2]): r[w_head.index("normalised (mean ± 2σ)")] for r in w_rows}
    assert {r[w_head.index("episodes")] for r in w_rows} == {"100"}
    assert {r[w_head.index("seeds")] for r in w_rows} == {"5"}
    head, rows = md_table(section.split("[width.csv]", 1)[1], "method")
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
