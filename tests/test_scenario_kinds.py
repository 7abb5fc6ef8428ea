"""Scenario kinds are runs: one config (``RunConfig.kind`` + ``scenario``), one result envelope, one
report. Config checks run without compute; the end-to-end tests train 2-layer MiniLM on 32 examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import results, run
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.report import build_report
from lorabench.sweep import load_sweep

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 32, "eval_limit": 32, "max_length": 32,
        "batch_size": 8, "epochs": 1, "data_dir": str(GLUE), "quiet": True}
SCENARIOS = {"run": {}, "federated": {"method": "ffa_lora", "clients": 2, "rounds": 1, "beta": 0.5},
             "prune": {"method": "loraprune", "sparsity": 0.5}}


# ---- one config ---------------------------------------------------------------------------------
def test_a_scenario_config_is_complete_and_round_trips():
    fed = RunConfig.from_dict({"kind": "federated", "scenario": {"method": "ffa_lora", "beta": "inf"}})
    assert fed.variant == "ffa_lora" and fed.epochs == 1.0  # the kind decides them
    assert fed.scenario["beta"] == "inf" and fed.scenario["clients"] == 10 and fed.scenario["options"] == {}
    again = RunConfig.from_dict(fed.to_dict())
    assert again.resolved() == fed.resolved() and again.run_id({}) == fed.run_id({})
    assert fed.method() == "federated:ffa_lora (beta iid)"
    pr = RunConfig.from_dict({"kind": "prune", "scenario": {"method": "loram"}})
    assert pr.scenario["sparsity"] == 0.5 and pr.scenario["options"] == {"criterion": "magnitude"}
    assert pr.method() == "prune:loram@0.5"
    # a plain run's resolved config (and so its run id) has no trace of the kinds
    assert "kind" not in RunConfig().resolved() and "scenario" not in RunConfig().resolved()
    # another setting of the scenario is another run
    assert RunConfig.from_dict({"kind": "prune", "scenario": {"method": "loram", "sparsity": 0.25}}).run_id({}) \
        != pr.run_id({})


@pytest.mark.parametrize("data, needle", [
    ({"kind": "nope"}, "kind must be one of"),
    ({"scenario": {"method": "fedavg"}}, "need a scenario kind"),
    ({"kind": "federated"}, "needs scenario.method"),
    ({"kind": "federated", "scenario": {"method": "fedavg", "rounds": 0}}, "--rounds"),
    ({"kind": "federated", "scenario": {"method": "fedavg", "colour": 1}}, "'colour' is not a federated setting"),
    ({"kind": "prune", "scenario": {"method": "loraprune"}, "save_adapter": True}, "--save-adapter"),
    ({"kind": "federated", "scenario": {"method": "fedavg"}, "epochs": 2}, "local_epochs"),
    ({"kind": "prune", "scenario": {"method": "lora", "sparsity": 0.5}}, "does not prune"),
    ({"kind": "prune", "scenario": {"method": "loraprune", "sparsity": 1.5}}, "sparsity must be in"),
    ({"kind": "prune", "scenario": {"method": "loram", "options": {"ema": 0.5}}}, "not an option of loram"),
    ({"kind": "prune", "variant": "dora"}, "sets variant itself"),
    ({"kind": "prune", "head": "lm"}, "--head cls"),
])
def test_a_setting_a_kind_cannot_honour_is_refused_before_compute(data, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_dict(data)


# ---- the guarantees every kind keeps: test_every_kind.py --------------------------------------
@needs_glue
def test_a_federated_run_saves_its_global_adapter(tmp_path):
    from lorabench.pack.eval import evaluate_adapters

    cfg = RunConfig.from_dict({**TINY, "kind": "federated", "scenario": SCENARIOS["federated"], "save_adapter": True,
                               "out": str(tmp_path)})
    result = run.execute(cfg, progress=False)
    folder = tmp_path / f"run-{result['run_id']}-adapter"
    assert result["status"] == "ok" and result["adapter_bytes"] > 0 and folder.is_dir()
    [row] = evaluate_adapters([folder], "sst2", data_dir=str(GLUE), eval_limit=32, max_length=32)
    assert row["metrics"]["validation"] == pytest.approx(result["final"]["metrics"]["validation"], abs=1e-6)


# ---- one sweep, one report -----------------------------------------------------------------------
SWEEP = {"name": "kinds", "base": {k: v for k, v in TINY.items() if k not in ("model", "task")},
         "seeds": [0, 1], "variants": {
             "lora": {"lr": 2e-3},
             "fed-fedavg": {"kind": "federated", "lr": 2e-3, "scenario": {"method": "fedavg", "clients": 2,
                                                                          "rounds": 1}},
             "fed-ffa": {"kind": "federated", "lr": 2e-3, "scenario": {"method": "ffa_lora", "clients": 2, "rounds": 1}},
             "prune": {"kind": "prune", "lr": 2e-3, "scenario": {"method": "loraprune", "sparsity": [0.5]}}}}


def test_a_sweep_plans_scenario_blocks_like_runs(tmp_path):
    path = tmp_path / "kinds.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    planned = load_sweep(path)
    methods = sorted({r.config.method() for r in planned.runs})
    assert methods == ["federated:fedavg (beta iid)", "federated:ffa_lora (beta iid)", "lora", "prune:loraprune@0.5"]
    assert len(planned.runs) == 8 and sorted({r.config.seed for r in planned.runs}) == [0, 1]
    bad = dict(SWEEP, variants={"x": {"kind": ["federated", "prune"]}})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(Exception, match="cannot be a grid"):
        load_sweep(path)


@needs_glue
def test_a_sweep_of_scenario_kinds_and_runs_gives_one_report(tmp_path):
    path = tmp_path / "kinds.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    found = [r for _, r in results.load_results(out)]
    assert sorted(r["kind"] for r in found) == ["federated"] * 4 + ["prune"] * 2 + ["run"] * 2
    report = build_report(out)
    best = {k[2]: c for k, c in report.best.items()}
    assert set(best) == {"federated:fedavg (beta iid)", "federated:ffa_lora (beta iid)", "lora", "prune:loraprune@0.5"}
    assert all(c.n == 2 and c.std is not None for c in best.values())  # mean ± std over the two seeds
    [table] = report.tables["compare"]
    rows = {rec["variant"]: rec for rec in table.records}
    assert set(rows) == set(best) and all(rec["ci_low"] <= rec["mean"] <= rec["ci_high"] for rec in rows.values())
    assert all(rec["p_holm"] is not None for name, rec in rows.items() if name != "lora")
