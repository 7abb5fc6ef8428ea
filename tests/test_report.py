"""The report on a hand-written results folder (tests/fixtures/results).

The fixture: MiniLM on SST-2 and RTE. Each run's best dev accuracy is the last value of its
history. SST-2: lora lr 5e-4 r 8 (.90 .92 .91), lora lr 1e-3 r 8 (.93 .89 .88), lora lr 5e-4 r 4
(.895 .905 .90), lora r 16 (one run, status error); dora lr 5e-4 (.95 .96 .955; seed 2 logged
with another log_every, which is not a hyperparameter), dora lr 1e-3 (.97 .96 and a diverged
seed 2: never selected although its mean is higher); vera (.85, one seed); full (.915 .905 .93).
RTE: lora (.60 .64 .62), dora (.63 .61 .65), full (.66 .71 .68). Plus a foreign JSON, a
corrupt JSON, and three results in a sub-folder.
"""

from __future__ import annotations

import csv
import math
import statistics
import warnings
from pathlib import Path

import pytest

from lorabench import commands as cli
from lorabench import report

FIXTURE = Path(__file__).parent / "fixtures" / "results"
SST2 = {"lora": [0.90, 0.92, 0.91], "dora": [0.95, 0.96, 0.955], "full": [0.915, 0.905, 0.93], "vera": [0.85]}
RTE = {"lora": [0.60, 0.64, 0.62], "dora": [0.63, 0.61, 0.65], "full": [0.66, 0.71, 0.68]}


def cell(values: list[float]) -> str:
    std = "—" if len(values) == 1 else f"{100 * statistics.stdev(values):.2f}"
    return f"{100 * statistics.fmean(values):.2f} ± {std}"


def paired_p(a: list[float], b: list[float]) -> float:
    from scipy.stats import ttest_rel

    return float(ttest_rel(a, b).pvalue)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = report.write_report(FIXTURE, out, html=True, echo=False)
    return out, paths, [str(w.message) for w in caught]


def test_foreign_and_corrupt_json_are_skipped_with_a_warning(built):
    _, _, messages = built
    assert any("corrupt.json" in m and "not valid JSON" in m for m in messages)
    assert any("foreign.json" in m and "not a lorabench result" in m for m in messages)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = report.load_runs(FIXTURE)
    assert sorted(Path(str(w.message).split()[1].rstrip(":")).name for w in caught) == ["corrupt.json", "foreign.json"]
    assert len(runs) == 29  # 26 + 3 in the sub-folder; the two bad files are not among them


def test_best_selection_mean_std_and_averages_match_a_hand_computation():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = report.build_report(FIXTURE)
    best = rep.best
    sel = {(t, v): best[("minilm", t, v)] for (_, t, v) in best}
    assert sel[("sst2", "lora")].flat["lr"] == 5e-4 and sel[("sst2", "lora")].rank == 8
    assert sel[("sst2", "dora")].flat["lr"] == 5e-4  # lr 1e-3 has the higher mean but a diverged seed
    assert sel[("sst2", "dora")].n == 3  # the run with another log_every is the same configuration
    for task, table in (("sst2", SST2), ("rte", RTE)):
        for variant, values in table.items():
            c = sel[(task, variant)]
            assert c.mean == pytest.approx(statistics.fmean(values))
            if len(values) > 1:
                assert c.std == pytest.approx(statistics.stdev(values))
            else:
                assert c.std is None
    (t,) = rep.tables["best"]
    rows = {r[0]: r for r in t.rows}
    assert t.columns[:4] == ["method", "SST-2 (accuracy)", "RTE (accuracy)", "avg"]
    assert rows["lora"][1] == cell(SST2["lora"]) and rows["lora"][2] == cell(RTE["lora"])
    assert rows["vera"][1] == "85.00 ± —" and rows["vera"][2] == "—" and rows["vera"][3] == "—"
    avg_full = (statistics.fmean(SST2["full"]) + statistics.fmean(RTE["full"])) / 2
    assert rows["full"][3] == f"{100 * avg_full:.2f}"
    assert rows["lora"][3] == f"{100 * (0.91 + 0.62) / 2:.2f}"
    # bold: best per column (highest score, fewest params, least time and memory)
    bold = {(t.rows[i][0], t.columns[j]) for i, j in t.bold}
    assert ("dora", "SST-2 (accuracy)") in bold and ("full", "RTE (accuracy)") in bold and ("full", "avg") in bold
    assert ("vera", "params") in bold and ("lora", "train time") in bold and ("lora", "peak memory") in bold
    assert ("lora", "params") not in bold
    # every configuration tried, with its failed runs
    hp = {t.title.split("— ")[1]: t for t in rep.tables["hparams"]}
    assert list(hp) == ["lora", "dora", "full", "vera"] and sum(len(t.rows) for t in hp.values()) == 11
    lora_sst2 = [(r[2], r[4], r[5], r[6]) for r in hp["lora"].rows if r[1] == "sst2"]
    assert lora_sst2 == [("lr=0.0005 r=4", cell([0.895, 0.905, 0.90]), "3", "0"),
                         ("lr=0.0005 r=8", cell(SST2["lora"]), "3", "0"),
                         ("lr=0.0005 r=16", "—", "0", "1"),
                         ("lr=0.001 r=8", cell([0.93, 0.89, 0.88]), "3", "0")]
    assert (1, 4) in hp["lora"].bold and (0, 4) not in hp["lora"].bold  # the selected configuration
    assert [r[3] for r in hp["lora"].rows if r[1] == "sst2"][1] == f"{100 * statistics.fmean(SST2['lora']):.2f}"
    dora = {r[2]: (r[4], r[6]) for r in hp["dora"].rows if r[1] == "sst2"}
    assert dora["lr=0.001"] == (cell([0.97, 0.96]), "1")


def test_significance_against_lora_is_a_paired_t_test_over_seeds_holm_corrected():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = report.build_report(FIXTURE)
    (t,) = rep.tables["best"]
    rows = {r[0]: r for r in t.rows}
    records = {(r["task"], r["variant"]): r for r in rep.tables["detail"][0].records}
    p = {k: r["p_vs_lora"] for k, r in records.items()}
    for task, table in (("sst2", SST2), ("rte", RTE)):
        raw = {v: paired_p(table[v], table["lora"]) for v in ("dora", "full")}
        low, high = sorted(raw, key=raw.get)  # Holm over the two tested methods (vera: one seed, untested)
        holm = {low: min(1.0, 2 * raw[low])}
        holm[high] = max(holm[low], raw[high])
        for variant in ("dora", "full"):
            assert p[(task, variant)] == pytest.approx(raw[variant], rel=1e-9)
            assert records[(task, variant)]["p_holm"] == pytest.approx(holm[variant], rel=1e-9)
            col = 1 if task == "sst2" else 2
            assert rows[variant][col].endswith("†") == (holm[variant] < 0.05)
    assert p[("sst2", "vera")] is None and p[("sst2", "lora")] is None  # one seed; the reference itself
    assert rows["dora"][1].endswith("†") and not rows["full"][1].endswith("†")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29])
def test_exact_student_t_matches_scipy(df):
    from scipy.stats import t as student

    for tval in (0.0, 0.3, 1.0, 2.2, 4.5, -3.1, 25.0):
        assert report.t_two_sided_p(tval, df) == pytest.approx(2 * student.sf(abs(tval), df), abs=1e-12)


def test_paired_t_test_without_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    a, b = [0.95, 0.96, 0.955, 0.93], [0.90, 0.92, 0.91, 0.915]
    expected = paired_p(a, b)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert report.paired_t_test(a, b) == pytest.approx(expected, rel=1e-10)
    assert report.paired_t_test([0.5], [0.4]) is None
    assert report.paired_t_test([0.5, 0.6], [0.5, 0.6]) == 1.0


def test_files_csv_latex_html_and_plots(built):
    out, paths, _ = built
    for name in ("report.md", "best.csv", "best.tex", "detail.csv", "hparams.csv", "hparams.tex", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert all(p.exists() for p in paths)
    rows = list(csv.DictReader((out / "detail.csv").open()))
    lora = next(r for r in rows if (r["task"], r["variant"]) == ("sst2", "lora"))
    assert math.isclose(float(lora["mean"]), 0.91) and math.isclose(float(lora["std"]), 0.01)
    assert lora["n"] == "3" and lora["trainable"] == "74498"
    assert len(list(csv.DictReader((out / "hparams.csv").open()))) == 11
    tex = (out / "best.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{95.50 $\pm$ 0.50$^\dagger$}" in tex
    assert "_" not in tex.replace(r"\_", "")  # underscores escaped
    md = (out / "report.md").read_text()
    assert "| **95.50 ± 0.50†** |" in md and "RuntimeError: boom" in md and "diverged" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "<table>" in html and "<b>95.50 ± 0.50†</b>" in html
    plots = out / "plots"
    for stem in ("pareto-minilm-sst2", "pareto-minilm-rte", "history-minilm-sst2", "rank-minilm-sst2",
                 "train-time-minilm", "peak-memory-minilm"):
        for ext in ("png", "svg"):
            assert (plots / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert not (plots / "rank-minilm-rte.png").exists()  # one rank on RTE: no rank plot


def test_pareto_front():
    from lorabench.plots import pareto_front

    pts = [(10, 80.0), (20, 85.0), (30, 84.0), (40, 90.0), (40, 70.0), (5, 60.0)]
    assert pareto_front(pts) == [(5, 60.0), (10, 80.0), (20, 85.0), (40, 90.0)]


def test_cli_report(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["report", str(FIXTURE), "--out", str(tmp_path), "--no-plots"]) == 0
    assert "### Best results — minilm" in capsys.readouterr().out
    assert (tmp_path / "best.csv").exists() and not (tmp_path / "plots").exists()
    assert cli.main(["report", str(tmp_path / "missing")]) == 2


def test_many_variants_get_distinct_styles_and_a_legend_beside_the_axes():
    from types import SimpleNamespace

    from lorabench import plots

    names = [f"v{i:02d}" for i in range(28)]
    fake = SimpleNamespace(best={("m", "t", n): None for n in names}, configs=[])
    styles = {(str(plots._style(fake, n)["color"]), plots._style(fake, n)["marker"]) for n in names}
    assert len(styles) == 28  # the zoo's 28 variants never share colour and marker
    for count, beside in ((5, False), (12, True)):
        fig, ax = plots._figure(entries=count)
        for i in range(count):
            ax.plot([0, 1], [i, i], label=f"v{i}")
        plots._legend(fig, ax)
        assert (ax.get_legend() is None) == beside and bool(fig.legends) == beside
    assert plots._figure(entries=40)[0].get_figwidth() > plots._figure(entries=5)[0].get_figwidth()


def test_a_report_names_its_folder_without_the_machines_absolute_path(tmp_path, monkeypatch):
    below = tmp_path / "runs" / "quick"
    below.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert report.shown_name(below) == str(Path("runs") / "quick")
    monkeypatch.chdir(below)
    assert report.shown_name(tmp_path / "runs") == "runs"  # not below the working directory: its name
    text = report.markdown(report.build_report(FIXTURE), FIXTURE)
    assert text.splitlines()[0] == "# lorabench report: results" and str(FIXTURE.parent) not in text
