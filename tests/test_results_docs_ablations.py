"""docs/results.md's ablation and acting paragraphs as their committed csvs say: the ablation
table and paragraphs (ablations/runs.csv, ABLATIONS.md), the evaluation-noise, sampler,
sampling-steps, test-guidance, temperature, self-distillation, AW and token figures, each
against the csv that holds it, so a re-run that changes a number fails here until the prose
follows."""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from results_lab import (
    HM,
    HMR,
    RESULTS,
    ROOT,
    assert_reproduces,
    assert_reproduces_table,
    by_seed,
    csv_rows,
    final_returns,
    hopper_ablations,
    md_table,
    paragraph,
    rendered,
    run_rows,
    run_script,
    run_seeds_012,
    seeds_012,
    seeds_text,
)

pytest.importorskip("gymnasium_robotics", reason="needs the envs extra: pip install -e '.[envs]'")
pytest.importorskip("matplotlib")


def test_docs_ablation_table_quotes_ablations_md() -> None:
    """Every VGM²P / MLP-BC figure of docs/results.md's hopper-3x1-medium ablation table, and
    the README's figure for the defaults, is a mean ± 2σ of ABLATIONS.md's hopper section (a
    bare figure: a one-seed row's mean)."""
    ablations = hopper_ablations().values()
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


def test_docs_continuous_noise_table_is_its_csv() -> None:
    """docs/results.md's 'sampled → e = 0' table is reevaluate.py --render of
    noise-continuous.csv (both means and the seed count of every cell), its MLP-BC column is
    RESULTS.md's, and every 'auto' row there reproduces its run's final table evaluation."""
    sys.path.insert(0, str(RESULTS))
    from make_table import LABELS

    _, re_rows = rendered(RESULTS / "noise-continuous.csv")
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
    assert_reproduces_table(RESULTS / "noise-continuous.csv")


def test_docs_sampler_paragraph_quotes_its_noise_csv() -> None:
    """The (r, t) sampler paragraph's five-step and e = 0 figures are reevaluate.py --render of
    ablations/sampler-noise.csv, whose sampled rows reproduce the runs' final evaluations; its
    defaults figures are ABLATIONS.md's e = 0 row and sampling-steps.csv's seeds 0-2 at e = 0."""
    folder, r75 = RESULTS / "ablations", "vgm2p-w3000-ratio0.75"
    _, rows = rendered(folder / "sampler-noise.csv")
    cell = {(r[0], r[1], r[2]): r[5] for r in rows}
    text = paragraph("The (r, t) sampler rows")
    variants = ["vgm2p-w3000-ratio0.5", r75, "vgm2p-w3000-tsigma1.6", "vgm2p-w3000-tsigma2"]
    five = [cell[(HMR, v, "auto@5")] for v in variants]
    assert f"(to {', '.join(five[:3])} and {five[3]}," in text, (five, text)
    zero_defaults = hopper_ablations(HMR)["VGM²P, defaults, evaluation noise e = 0"][0]
    assert (f"0.75 returns {cell[(HMR, r75, 'zero')]} on hopper-3x1-medium-replay (the "
            f"defaults: {zero_defaults} on these seeds)") in text, text
    table_zero = [v for s, v in by_seed(RESULTS / "sampling-steps.csv", HM, "zero").items()
                  if s in (0, 1, 2)]
    assert len(table_zero) == 3
    assert (f"and {cell[(HM, r75, 'zero')]} on hopper-3x1-medium (the defaults: "
            f"{sum(table_zero) / 3:.1f})") in text, text
    final = final_returns(folder / "runs.csv", "variant")
    assert assert_reproduces(folder / "sampler-noise.csv", {"auto"}, final,
                              lambda r: (r["dataset"], r["method"], r["seed"])) == 15


def test_docs_sampling_steps_table_is_its_csv() -> None:
    """docs/results.md's sampling-steps table is reevaluate.py --render of sampling-steps.csv
    (each cell's mean ± 2σ and its seed count; N steps is the csv's ``auto@N`` / ``zero@N``),
    and every one-step sampled row there reproduces its run's final table evaluation."""
    _, re_rows = rendered(RESULTS / "sampling-steps.csv")
    evals = {(r[0], r[2]): (r[5], r[3]) for r in re_rows}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Sampling steps", 1)[1], "dataset")
    assert head == ["dataset", "steps", "seeds", "sampled", "e = 0"] and len(rows) >= 4, head
    for ds, steps, seeds, sampled, zero in rows:
        at = "" if steps == "1" else f"@{steps}"
        assert evals[(ds, f"auto{at}")] == (sampled, seeds), (ds, steps, sampled)
        assert evals[(ds, f"zero{at}")] == (zero, seeds), (ds, steps, zero)
    assert assert_reproduces_table(RESULTS / "sampling-steps.csv") == 10


def test_docs_test_guidance_table_is_its_csv() -> None:
    """docs/results.md's test-time guidance table is reevaluate.py --render of test-guidance.csv
    (W is the csv's ``auto~W``, W = 1 its ``auto``), its e = 0 figures are the csv's
    ``zero~1.5`` against sampling-steps.csv's ``zero``, and the W = 1 rows reproduce the
    table's final evaluations."""
    evals = {(r[0], r[2]): (r[5], r[3]) for r in rendered(RESULTS / "test-guidance.csv")[1]}
    steps = {(r[0], r[2]): r[5] for r in rendered(RESULTS / "sampling-steps.csv")[1]}
    docs = (ROOT / "docs" / "results.md").read_text()
    head, rows = md_table(docs.split("### Test-time guidance", 1)[1], "dataset")
    assert head == ["dataset", "test guidance", "seeds", "sampled"] and len(rows) == 12, head
    for ds, w, seeds, sampled in rows:
        assert evals[(ds, "auto" if w == "1" else f"auto~{w}")] == (sampled, seeds), (ds, w)
    text = paragraph("On hopper-3x1-medium no W beats 1")
    for ds, end in ((HM, " at 1"), (HMR, ")")):
        want = f"W = 1.5 gives {evals[(ds, 'zero~1.5')][0]} against {steps[(ds, 'zero')]}{end}"
        assert want in text, (want, text)
    assert assert_reproduces_table(RESULTS / "test-guidance.csv") == 10
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
    evals = {tuple(r[:3]): (r[5], r[3]) for r in rendered(path)[1]}
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
    assert assert_reproduces_table(path) == 20
    zero = {key(r): float(r["return_mean"]) for r in csv_rows(RESULTS / "noise-continuous.csv")
            if r["noise"] == "zero"}
    assert assert_reproduces(path, {"zero"}, zero, key) == 20

    mlp = [float(r["eval_normalised"]) for r in csv_rows(RESULTS / "runs.csv")
           if (r["dataset"], r["method"]) == (HM, "mlp-bc")]
    bar = sum(mlp) / len(mlp)

    def mean(ds: str, method: str, noise: str) -> float:
        got = by_seed(path, ds, noise, method)
        assert sorted(got) == [0, 1, 2, 3, 4], (ds, method, noise)
        return sum(got.values()) / 5

    text = paragraph("No T passes both.")
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
    seed3 = {n: by_seed(path, HMR, n, "vgm2p")[3] for n in ("auto", "sample*0.5", "zero")}
    assert (f"(seed 3: {seed3['auto']:.1f} sampled, {seed3['sample*0.5']:.1f} at 0.5, "
            f"{seed3['zero']:.1f} at e = 0)") in text
    aw = by_seed(path, HMR, "sample*0.5", "awfm")
    assert all(aw[s] > v for s, v in by_seed(path, HMR, "auto", "awfm").items())
    assert f"(its lowest at 0.5: {min(aw.values()):.1f})" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "as does each [temperature](docs/results.md#sampling-temperature) tried that" in readme


def test_docs_self_distill_paragraph_is_its_csv() -> None:
    """The self-distillation paragraph's per-seed figures are self-distill-noise.csv's, the
    table's beside them sampling-steps.csv's (seeds 0-2), and the csv names the patch."""
    new, table = RESULTS / "ablations" / "self-distill-noise.csv", RESULTS / "sampling-steps.csv"
    text = paragraph("A self-distilled one-step jump")
    for ds, noise, said in ((HMR, "auto", "{} sampled (the table's {})"),
                            (HMR, "zero", "{} from e = 0 ({})"),
                            (HMR, "auto@5", "{} sampled in five steps ({})"),
                            (HM, "auto", "on hopper-3x1-medium {} sampled ({})")):
        want = said.format(seeds_text(seeds_012(new, ds, noise)),
                           seeds_text(seeds_012(table, ds, noise)))
        assert want in text, (want, text)
    patch = (RESULTS / "ablations" / "self-distill.patch").read_text()
    assert "def _distill(" in patch and "distill_share: float = 0.25" in patch
    assert {r["commit"] for r in csv_rows(new)} == {"92ee2a9+self-distill.patch"}
    hm = seeds_012(new, HM, "auto")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"a self-distilled one-step jump {sum(hm) / 3:.1f} and" in readme


def test_docs_cosine_sentence_is_its_csv() -> None:
    """The cosine-decay sentence quotes ablations/lr-cosine.csv seed by seed and the table's
    runs.csv beside it (seeds 0-2), both methods are below the table on average, and the csv
    names the committed patch."""
    new, table = RESULTS / "ablations" / "lr-cosine.csv", RESULTS / "runs.csv"
    mine = {m: run_seeds_012(new, HM, f"{m}+lr-cosine") for m in ("vgm2p", "mlp-bc")}
    base = {m: run_seeds_012(table, HM, m) for m in ("vgm2p", "mlp-bc")}
    want = (f"returned {seeds_text(mine['vgm2p'])} for VGM²P and {seeds_text(mine['mlp-bc'])} "
            f"for MLP-BC on seeds 0-2, against the table's {seeds_text(base['vgm2p'])} and "
            f"{seeds_text(base['mlp-bc'])}: lower for both, on average")
    assert want in paragraph("Two more things were tried as patches"), want
    assert all(sum(mine[m]) < sum(base[m]) for m in mine), (mine, base)
    assert {r["commit"] for r in csv_rows(new)} == {"d252ae2+lr-cosine.patch"}
    patch = (RESULTS / "ablations" / "lr-cosine.patch").read_text()
    assert 'VGM2P_EXPERIMENT_LR") == "cosine"' in patch and "math.cos(math.pi * frac)" in patch


def test_docs_four_settings_paragraph_is_its_csv() -> None:
    """The paragraph on Adam's beta2, ReLU, a network per agent and gradient clipping quotes
    ablations/more-settings.csv seed by seed against the table's runs.csv (seeds 0-2), each
    setting is below the defaults on average on hopper-3x1-medium, ReLU's step-2,000 figures
    are its curve's, and the csv names the committed patch, which gates both experiments on
    environment variables."""
    new, table = RESULTS / "ablations" / "more-settings.csv", RESULTS / "runs.csv"
    text = paragraph("Four settings that no earlier pass had varied")
    base = run_seeds_012(table, HM, "vgm2p")
    assert f"against the table's {seeds_text(base)}" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    for variant, label in (("adam-beta2-0.95", "Adam beta2 0.95"), ("relu", "ReLU"),
                           ("per-agent", "per-agent networks"),
                           ("grad-clip-100", "no gradient clipping")):
        mine = run_seeds_012(new, HM, f"vgm2p+{variant}")
        assert f"gave {seeds_text(mine)}" in text, (variant, mine)
        assert sum(mine) < sum(base), (variant, mine, base)
        runs = [float(r["eval_normalised"])
                for r in run_rows(new, HM, f"vgm2p+{variant}").values()]
        assert len(runs) == 3 and f"{label} {sum(runs) / 3:.1f}," in readme, (label, runs)
    hmr, hmr_base = run_seeds_012(new, HMR, "vgm2p+relu"), run_seeds_012(table, HMR, "vgm2p")
    assert f"on {HMR} it gave {seeds_text(hmr)} against {seeds_text(hmr_base)}" in text
    assert all(m < b for m, b in zip(hmr, hmr_base)), (hmr, hmr_base)

    sys.path.insert(0, str(RESULTS))
    from make_table import normalise

    def at_2000(path: Path, method: str) -> list[float]:
        """Seeds 0-2's normalised step-2,000 evaluation, from each run's ``eval_curve``."""
        rows, out = run_rows(path, HM, method), []
        for s in (0, 1, 2):
            curve = dict(e.split(":") for e in rows[s]["eval_curve"].split())
            refs = {k: float(rows[s][f"ref_{k}"]) for k in ("random", "expert")}
            out.append(round(float(normalise(float(curve["2000"]), refs)), 1))
        return out

    relu, mlp, silu = (at_2000(new, "vgm2p+relu"), at_2000(table, "mlp-bc"),
                       at_2000(table, "vgm2p"))
    want = (f"({seeds_text(relu)}) are close to the MLP cloner's ({seeds_text(mlp)}), where "
            f"SiLU's are {seeds_text(silu)}")
    assert want in text, want
    assert min(relu) > max(silu)
    assert {r["commit"] for r in csv_rows(new)} == {"0a9ac8f+betas-activation.patch"}
    unset = final_returns(new, "method")[(HM, "vgm2p+patch-unset", "0")]
    assert unset == final_returns(table, "method")[(HM, "vgm2p", "0")]
    assert f"bit for bit, {unset:.2f}, the csv's `vgm2p+patch-unset` row" in text
    patch = (RESULTS / "ablations" / "betas-activation.patch").read_text()
    assert 'os.environ.get("VGM2P_EXPERIMENT_ACT", "silu")' in patch
    assert 'os.environ.get("VGM2P_EXPERIMENT_BETAS", "0.9,0.999")' in patch


def test_docs_awr_paragraph_is_its_csv() -> None:
    """The paragraph on AW weights inside VGM²P quotes ablations/awr-noise.csv (each seed from
    e = 0, the mean ± 2σ of reevaluate.py --render), whose sampled rows are the ablation runs'
    final evaluations and ABLATIONS.md's means; the defaults beside them are the table's models
    (noise-continuous.csv, seeds 0-2); and every weighted figure is below its default's."""
    new, table = RESULTS / "ablations" / "awr-noise.csv", RESULTS / "noise-continuous.csv"
    variant = "vgm2p-w3000-awr"
    cell = {(r[0], r[2]): r[5] for r in rendered(new)[1] if r[1] == variant}
    text = paragraph("Advantage weighting inside VGM²P")
    for ds in (HMR, HM):
        mine, base = seeds_012(new, ds, "zero", variant), seeds_012(table, ds, "zero", "vgm2p")
        want = f"{seeds_text(mine)} ({cell[(ds, 'zero')]}) on {ds} against {seeds_text(base)}"
        assert want in text, (want, text)
        assert all(m < b for m, b in zip(mine, base)), (ds, mine, base)
        mine, base = seeds_012(new, ds, "auto", variant), seeds_012(table, ds, "auto", "vgm2p")
        assert all(m < b for m, b in zip(mine, base)), (ds, mine, base)
        label = "VGM²P, defaults, rows also weighted exp(A / std A) (awr, clipped at 100)"
        assert hopper_ablations(ds)[label][0] == cell[(ds, "auto")], ds
    want = (f"sampled, {cell[(HMR, 'auto')]} and {cell[(HM, 'auto')]} against "
            f"{seeds_text(seeds_012(table, HMR, 'auto', 'vgm2p'))} and "
            f"{seeds_text(seeds_012(table, HM, 'auto', 'vgm2p'))}")
    assert want in text, (want, text)
    final = final_returns(RESULTS / "ablations" / "runs.csv", "variant")
    assert assert_reproduces(new, {"auto"}, final,
                              lambda r: (r["dataset"], r["method"], r["seed"])) == 6
    assert f"seed 0, returned {final[(HMR, 'vgm2p-w3000-zero', '0')]:.3f} again" in text


def test_docs_episode_return_paragraph_is_its_csv() -> None:
    """The episode-return paragraph quotes ablations/episode-return-noise.csv seed by seed (and
    the top 10 %'s sampled mean ± 2σ of reevaluate.py --render), the defaults beside them are the
    table's models (noise-continuous.csv, seeds 0-2), every variant is below the defaults from
    e = 0 on average, and the csv names the committed patch."""
    new = RESULTS / "ablations" / "episode-return-noise.csv"
    table = RESULTS / "noise-continuous.csv"
    text = paragraph("Would a token that does single out the better episodes")
    variants = ("vgm2p+return-mean", "vgm2p+return-top10", "vgm2p+return-mean-and-A")
    for noise, said in (("zero", "from e = 0, the mean threshold returns {}, the top 10 % {} and "
                                 "the conjunction {}, against the defaults' {}"),
                        ("auto", "sampled, {}, {} and {} against {}")):
        mine = [seeds_012(new, HMR, noise, v) for v in variants]
        base = seeds_012(table, HMR, noise, "vgm2p")
        want = said.format(*map(seeds_text, mine), seeds_text(base))
        assert want in text, (want, text)
    for v in variants:      # below the defaults from e = 0, on average
        assert sum(seeds_012(new, HMR, "zero", v)) < sum(seeds_012(table, HMR, "zero", "vgm2p"))
    cell = {(r[0], r[1], r[2]): r[5] for r in rendered(new)[1]}
    base = seeds_012(table, HMR, "auto", "vgm2p")
    assert (f"sampled ({cell[(HMR, 'vgm2p+return-top10', 'auto')]} against "
            f"{sum(base) / 3:.1f})") in text
    top = {n: seeds_012(new, HM, n, "vgm2p+return-top10") for n in ("auto", "zero")}
    base = {n: seeds_012(table, HM, n, "vgm2p") for n in ("auto", "zero")}
    want = (f"the top 10 % returns {seeds_text(top['auto'])} sampled and "
            f"{seeds_text(top['zero'])} from e = 0, against the defaults' "
            f"{seeds_text(base['auto'])} and {seeds_text(base['zero'])}: below MLP-BC and the data")
    assert want in text, (want, text)
    sys.path.insert(0, str(RESULTS))
    from make_table import normalise

    hm = [r for r in csv_rows(RESULTS / "runs.csv") if r["dataset"] == HM]
    mlp = [float(r["eval_normalised"]) for r in hm if r["method"] == "mlp-bc"]
    refs = {"random": float(hm[0]["ref_random"]), "expert": float(hm[0]["ref_expert"])}
    data = float(normalise(float(hm[0]["dataset_return_mean"]), refs))
    assert all(sum(v) / 3 < min(sum(mlp) / len(mlp), data) for v in top.values()), (top, data)
    assert {r["commit"] for r in csv_rows(new)} == {"da169ca+episode-return.patch"}
    patch = (RESULTS / "ablations" / "episode-return.patch").read_text()
    assert "VGM2P_EXPERIMENT_TOKEN" in patch and "torch.quantile(ep, 0.9)" in patch


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
    every = csv_rows(RESULTS / "tokens.csv")
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
    zero = {m: by_seed(RESULTS / "noise-continuous.csv", HMR, "zero", m)
            for m in ("vgm2p", "fm-bc")}
    others = [v for s, v in zero["vgm2p"].items() if s not in (2, 3)]
    text = paragraph("On hopper-3x1-medium-replay the advantage tilts")
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
    text = paragraph("On halfcheetah-2x3-medium-replay the same token")
    for said in (
            f"from {100 * hc_mean(0, 'share'):.0f} % on the first to "
            f"{100 * hc_mean(last, 'share'):.0f} % on the best ({float(top['return_mean']):.0f}, "
            f"{100 * int(top['rows']) / n_rows:.0f} % of the rows), which makes up "
            f"{100 * hc_mean(last, 'mass'):.0f} % of VGM²P's advantageous rows",
            f"Hopper's best checkpoint gets {100 * mean('vgm2p', best, 'mass'):.0f} % from "
            f"{100 * rows_of[best] / sum(rows_of.values()):.0f} % of the rows"):
        assert said in text, (said, text)
    aw = {r["seed"]: float(r["eval_return_mean"]) for r in csv_rows(RESULTS / "runs.csv")
          if (r["dataset"], r["method"]) == ("halfcheetah-2x3-medium-replay", "awfm")}
    assert f"against {aw['3']:.1f} and {aw['4']:.1f};" in paragraph("Why is VGM²P's mode")


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
                      (HM, "vgm2p-w3000-zero-ema999"): "medium-replay and at "}),
    ("The GAE lambda rows at e = 0", {(HMR, "vgm2p-w3000-zero-lam1"): "VGM²P ends at ",
                                      (HM, "vgm2p-w3000-zero-lam1"): "medium-replay and at "})])
def test_docs_ablation_paragraphs_quote_their_runs(opening: str, quotes: dict) -> None:
    """docs/results.md's paragraphs on the 20,000-step, the 3 x 512, the time-frequency, the
    (r, t) sampler, the e = 0 20,000-step, the e = 0 EMA and the e = 0 GAE lambda 1 ablations
    quote, after the words given, every seed's final evaluation of each (dataset, variant)
    (ablations/runs.csv) and its mean ± 2σ (ABLATIONS.md)."""
    folder = RESULTS / "ablations"
    runs = [r for r in csv_rows(folder / "runs.csv") if (r["dataset"], r["variant"]) in quotes]
    text = paragraph(opening)
    for (dataset, variant), words in quotes.items():
        mine = sorted((int(r["seed"]), r) for r in runs
                      if (r["dataset"], r["variant"]) == (dataset, variant))
        assert [s for s, _ in mine] == [0, 1, 2], (dataset, variant)
        seeds = " / ".join(f"{float(r['eval_normalised']):.1f}" for _, r in mine)
        want = f"{words}{seeds} ({hopper_ablations(dataset)[mine[0][1]['label']][0]})"
        assert want in text, (want, text)


def test_docs_ema_paragraph_quotes_its_defaults() -> None:
    """The EMA paragraph's defaults are the table's models from e = 0 (noise-continuous.csv,
    seeds 0-2), and its seed-2 returns are ablations/runs.csv's, EMA against defaults row."""
    text = paragraph("The EMA rows")
    base = [seeds_text(seeds_012(RESULTS / "noise-continuous.csv", ds, "zero", "vgm2p"))
            for ds in (HMR, HM)]
    assert f"on the same seeds ({base[0]} and {base[1]})" in text, (base, text)
    ret = {r["variant"]: float(r["eval_return_mean"])
           for r in csv_rows(RESULTS / "ablations" / "runs.csv")
           if (r["dataset"], r["seed"]) == (HMR, "2")}
    said = (f"Seed 2 returns {ret['vgm2p-w3000-zero-ema999']:.1f} against the defaults' "
            f"{ret['vgm2p-w3000-zero']:.1f} on medium-replay")
    assert said in text, (said, text)


def test_docs_lambda_paragraph_is_below_its_defaults() -> None:
    """The e = 0 GAE lambda 1 paragraph's "below the defaults on the same seeds on both sets":
    the mean of its seeds 0-2 (ablations/runs.csv) against noise-continuous.csv's e = 0
    defaults."""
    runs = csv_rows(RESULTS / "ablations" / "runs.csv")
    for ds in (HMR, HM):
        lam = [float(r["eval_normalised"]) for r in runs
               if (r["dataset"], r["variant"]) == (ds, "vgm2p-w3000-zero-lam1")]
        base = seeds_012(RESULTS / "noise-continuous.csv", ds, "zero", "vgm2p")
        assert len(lam) == 3 and sum(lam) < sum(base), (ds, lam, base)
    text = paragraph("The GAE lambda rows at e = 0")
    assert "below the defaults on the same seeds on both sets" in text, text


def test_docs_budget_paragraph_quotes_its_noise_csv() -> None:
    """The 20,000-step paragraph's e = 0 figure is reevaluate.py --render of
    ablations/steps20k-noise.csv, whose sampled and MLP rows reproduce the runs' final
    evaluations in ablations/runs.csv."""
    folder = RESULTS / "ablations"
    _, rows = rendered(folder / "steps20k-noise.csv")
    zero = next(r[5] for r in rows if r[1:4] == ["vgm2p", "zero", "3"])
    text = paragraph("The budget rows")
    assert f"models return {zero} on the same episodes" in text, (text, zero)
    final = {(r["variant"].split("-")[0], r["seed"]): float(r["eval_return_mean"])
             for r in csv_rows(folder / "runs.csv")
             if r["dataset"] == HM and r["variant"].endswith("-steps20k")}
    checked = assert_reproduces(folder / "steps20k-noise.csv", {"auto", "none"}, final,
                                 lambda r: (r["method"].removesuffix("-bc"), r["seed"]))
    assert checked == 6 and len(final) == 6, (checked, final)


def test_docs_budget_at_zero_noise_paragraph_quotes_its_baselines() -> None:
    """The e = 0 budget paragraph's 10,000-step figures are the same seeds' e = 0 rows of
    noise-continuous.csv, its VGM²P curve the e = 0 defaults row of ABLATIONS.md, seed 1's
    swing that run's curve in ablations/runs.csv and its limit 90 % of AW flow BC's mean."""
    text = paragraph("The budget at e = 0")
    zero = [by_seed(RESULTS / "noise-continuous.csv", HMR, "zero", m) for m in ("vgm2p", "awfm")]
    means = [sum(z[s] for s in (0, 1, 2)) / 3 for z in zero]
    assert f"the same seeds gave {means[0]:.1f} and {means[1]:.1f}." in text, (means, text)
    curve = hopper_ablations(HMR)["VGM²P, defaults, evaluation noise e = 0"][2]
    assert f"at 10,000 steps ({curve})" in text, (curve, text)
    runs = {(r["variant"], r["seed"]): r for r in csv_rows(RESULTS / "ablations" / "runs.csv")
            if r["dataset"] == HMR}
    s1 = dict(p.split(":") for p in runs["vgm2p-w3000-zero-steps20k", "1"]["eval_curve"].split())
    assert (f"seed 1: {float(s1['12000']):.1f} at 12,000 steps, {float(s1['20000']):.1f} at "
            f"20,000") in text, (s1, text)
    aw = [float(runs["awfm-w3000-zero-steps20k", s]["eval_normalised"]) for s in "012"]
    vg = [float(runs["vgm2p-w3000-zero-steps20k", s]["eval_normalised"]) for s in "012"]
    want = f"({sum(vg) / 3:.1f} against a limit of at least {0.9 * sum(aw) / 3:.1f}, "
    assert want in text, (want, text)
