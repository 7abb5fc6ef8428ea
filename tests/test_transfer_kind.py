"""``kind: transfer``: one arm of a transfer method is a run (one config, one envelope, one report row).
The end-to-end tests run 1- and 2-layer real models on 32 SST-2 examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import results, run, selection
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.report import build_report
from lorabench.transfer import loop
from lorabench.transfer import organ as organs

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = {"model": "minilm", "layers": 1, "task": "sst2", "train_limit": 32, "eval_limit": 32, "max_length": 32,
        "batch_size": 16, "epochs": 1, "data_dir": str(GLUE), "quiet": True}
#: the distillation settings of test_transfer's end-to-end run: a 2-layer teacher, 8 synthetic inputs
DISTIL = {"method": "trans_lora", "source_layers": 2, "generator_layers": 2, "seeds": 3, "synthetic": 8,
          "max_new_tokens": 6, "distill_epochs": 1, "head_epochs": 2}
ORGAN = {"model": "smollm2-135m", "layers": 2, "head": "lm"}


# ---- one config ---------------------------------------------------------------------------------
def test_a_transfer_config_records_only_what_its_arm_uses():
    tl = RunConfig.from_dict({"kind": "transfer", "model": "mpnet", "layers": 4, "scenario": {"method": "trans_lora"}})
    assert tl.scenario["arm"] == "trans_lora" and tl.scenario["synthetic"] == 512 and tl.scenario["temperature"] == 1.0
    assert tl.variant == "lora" and tl.method() == "transfer:trans_lora from minilm"
    hotter = RunConfig.from_dict({**tl.to_dict(), "scenario": {**tl.scenario, "temperature": 2.0}})
    assert hotter.run_id({}) != tl.run_id({})  # another distillation is another run
    direct = RunConfig.from_dict({"kind": "transfer", "scenario": {"method": "trans_lora", "arm": "direct"}})
    assert direct.scenario == {"method": "trans_lora", "arm": "direct"}  # no generator, no teacher: nothing of theirs
    assert direct.method() == "transfer:trans_lora direct"
    seeds = RunConfig.from_dict({"kind": "transfer", "scenario": {"method": "trans_lora", "arm": "no_adapter"}})
    assert seeds.scenario == {"method": "trans_lora", "arm": "no_adapter", "seeds": 5, "head_lr": 0.01, "head_epochs": 50}
    organ = RunConfig.from_dict({"kind": "transfer", **ORGAN, "scenario": {"method": "organ", "position": 15}})
    assert organ.scenario == {"method": "organ", "arm": "organ", "organ_layers": None, "position": 15}
    assert organ.method() == "transfer:organ@15"
    again = RunConfig.from_dict(organ.to_dict())
    assert again.resolved() == organ.resolved() and again.run_id({}) == organ.run_id({})


@pytest.mark.parametrize("data, needle", [
    ({"scenario": {"method": "nope"}}, "needs scenario method"),
    ({"scenario": {"method": "organ", "arm": "trans_lora"}}, "not an arm of organ"),
    ({"scenario": {"method": "organ", "source": "mpnet"}}, "not a setting of organ"),
    ({"scenario": {"method": "trans_lora", "arm": "direct", "temperature": 2}}, "arm direct of trans_lora does not use"),
    ({"scenario": {"method": "trans_lora", "keep": 1.5}}, "keep must be a fraction"),
    ({"scenario": {"method": "trans_lora", "synthetic": "many"}}, "synthetic must be an integer"),
    ({"scenario": {"method": "trans_lora"}, "head": "lm"}, "use --head cls"),
    ({"scenario": {"method": "organ"}, "head": "lm", "r": 4}, "drop --r"),
    ({"scenario": {"method": "trans_lora", "arm": "direct"}, "save_adapter": True}, "saves nothing"),
    ({"scenario": {"method": "trans_lora"}, "epochs": 1.5}, "whole epochs"),
    ({"scenario": {"method": "trans_lora"}, "val_size": 100}, "--val-size"),
    ({"scenario": {"method": "trans_lora"}, "variant": "dora"}, "sets variant itself"),
])
def test_a_transfer_setting_it_cannot_honour_is_refused_before_compute(data, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_dict({"kind": "transfer", **data})


# ---- the arm is the method's own code ---------------------------------------------------------------
@needs_glue
def test_a_trans_lora_run_is_the_transfer_commands_arm_and_saves_its_adapter(tmp_path):
    from lorabench.pack.eval import evaluate_adapters

    cfg = RunConfig.from_dict({**TINY, "kind": "transfer", "scenario": DISTIL, "save_adapter": True, "lr": 2e-3,
                               "weight_decay": 0.5, "batch_size": 8, "out": str(tmp_path / "runs")})
    result = run.execute(cfg, progress=False)
    assert result["status"] == "ok" and result["kind"] == "transfer" and result["method"] == cfg.method()
    assert set(result["details"]["arms"]) == {"source", "trans_lora"}  # the teacher trains, the other arms do not
    assert result["time"]["train_s"] > 0 and result["time"]["eval_s"] > 0 and result["memory"]["peak_rss_bytes"] > 0
    assert result["params"]["trainable"] > 0 and result["metric"]["reported_on"] == "validation"
    # the same arm through `lorabench transfer`, flag for flag
    out = tmp_path / "cmd"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in DISTIL.items() if k != "method"]
    assert cli.main(["transfer", "trans_lora", "--target", "minilm", "--target-layers", "1", "--task", "sst2",
                     "--train-limit", "32", "--eval-limit", "32", "--max-length", "32", "--batch-size", "8",
                     "--epochs", "1", "--lr", "2e-3", "--r", "8", "--alpha", "16", "--weight-decay", "0.5",
                     "--precision", "auto", "--arms", "trans_lora", "--data-dir", str(GLUE), "--quiet", *flags,
                     "--out", str(out)]) == 0
    record = json.loads((out / "transfer.json").read_text())
    assert record["counts"] == result["details"]["counts"]
    for arm in ("source", "trans_lora"):
        assert record["arms"][arm]["dev"] == result["details"]["arms"][arm]["dev"]
        assert record["arms"][arm]["train"]["last_loss"] == result["details"]["arms"][arm]["last_loss"]
    assert result["best"]["metrics"] == record["arms"]["trans_lora"]["dev"]
    # --save-adapter: run-<id>-adapter is the target adapter, which lorabench eval scores the same
    folder = tmp_path / "runs" / f"run-{result['run_id']}-adapter"
    assert result["adapter_bytes"] > 0 and (folder / "synthetic.json").is_file()
    [row] = evaluate_adapters([folder], "sst2", data_dir=str(GLUE), eval_limit=32, max_length=32)
    assert row["metrics"]["validation"] == pytest.approx(result["final"]["metrics"]["validation"], abs=1e-6)


@needs_glue
def test_an_organ_run_autocasts_logs_and_saves_its_organ(tmp_path, monkeypatch):
    seen = []
    real = loop.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(loop, "autocast", spy)
    cfg = RunConfig.from_dict({**TINY, **ORGAN, "kind": "transfer", "precision": "bf16", "save_adapter": True,
                               "log_with": "tensorboard", "out": str(tmp_path),
                               "scenario": {"method": "organ", "organ_layers": "0:1", "position": 2}})
    result = run.execute(cfg, progress=False)
    assert result["status"] == "ok" and result["method"] == "transfer:organ@2 (0:1)"
    assert seen and all(str(d) == "torch.bfloat16" for d in seen) and result["env"]["precision"] == "bf16"
    arm = result["details"]["arms"]["organ@2"]
    assert arm["reload_max_abs_diff"] == 0.0 and result["params"]["trainable"] == result["details"]["counts"][
        "organ_parameters"]
    folder = tmp_path / f"run-{result['run_id']}-adapter"
    meta = json.loads((folder / "organ.json").read_text())
    assert meta["position"] == 2 and meta["layer_range"] == [0, 1]
    from lorabench import models
    from lorabench.data import get_task

    fresh, _ = models.load_model("smollm2-135m", get_task("sst2"), head="lm", layers=2)
    assert organs.load(folder, fresh).numel() == arm["trainable"]
    events = list((tmp_path / "tracking" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events


@needs_glue
@pytest.mark.parametrize("scenario", [DISTIL, {"method": "trans_lora", "arm": "direct"}])
def test_a_diverged_arm_or_teacher_is_a_diverged_run_never_picked(scenario, tmp_path):
    cfg = RunConfig.from_dict({**TINY, "kind": "transfer", "scenario": scenario, "lr": 1e4, "out": str(tmp_path)})
    with pytest.warns(UserWarning, match="diverged"):
        result = run.execute(cfg, progress=False)
    assert result["status"] == "diverged"
    assert ("teacher" in result["error"]) == (scenario is DISTIL)
    runs = selection.load_runs(tmp_path)
    assert [r.status for r in runs] == ["diverged"] and runs[0].metric is None
    assert not selection.select_best(selection.configurations(runs))


@needs_glue
def test_a_sweep_of_transfer_arms_reports_each_arm_beside_lora(tmp_path):
    sweep = {"name": "tk", "base": {k: v for k, v in TINY.items() if k != "quiet"}, "seeds": [0, 1], "variants": {
        "lora": {"lr": 2e-3},
        "direct": {"kind": "transfer", "lr": 2e-3, "scenario": {"method": "trans_lora", "arm": "direct"}},
        "seeds": {"kind": "transfer", "scenario": {"method": "trans_lora", "arm": "no_adapter", "seeds": 4,
                                                   "head_epochs": 3}}}}
    path = tmp_path / "tk.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    found = [r for _, r in results.load_results(out)]
    assert sorted(r["kind"] for r in found) == ["run"] * 2 + ["transfer"] * 4
    report = build_report(out)
    best = {k[2]: c for k, c in report.best.items()}
    assert set(best) == {"lora", "transfer:trans_lora direct", "transfer:trans_lora no_adapter"}
    assert all(c.n == 2 and c.std is not None for c in best.values())
    [table] = report.tables["compare"]
    rows = {rec["variant"]: rec for rec in table.records}
    assert all(rows[name]["p_holm"] is not None for name in best if name != "lora")
