"""The ``mixture`` kind (``mixtures.recipe``): multi-task training as a run. One training writes every
task's envelope under the run id a run of that task has (so a sweep over the mixture's tasks trains
once), its numbers are those of ``lorabench mixture`` on the same settings, it honours the run's
precision, and a setting it cannot honour is refused before compute. 2-layer MiniLM, 32 examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import results, run, train
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.report import build_report

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = {"model": "minilm", "layers": 2, "train_limit": 32, "eval_limit": 32, "max_length": 32, "batch_size": 8,
        "epochs": 1, "weight_decay": 0.0, "data_dir": str(GLUE), "quiet": True}


def cfg_of(tmp: Path, task: str = "sst2", **scenario) -> RunConfig:
    return RunConfig.from_dict({**TINY, "kind": "mixture", "task": task, "out": str(tmp),
                                "scenario": {"tasks": ["sst2", "mrpc"], **scenario}})


def test_a_mixture_config_resolves_and_refuses_what_it_cannot_honour(tmp_path):
    cfg = cfg_of(tmp_path)
    assert cfg.method() == "mixture:lora_mixer E4 k2 with mrpc" and cfg.variant == "lora"
    assert cfg_of(tmp_path, task="mrpc").method() == "mixture:lora_mixer E4 k2 with sst2"
    assert cfg_of(tmp_path, method="lora").method() == "mixture:lora with mrpc"
    assert set(cfg.data_fingerprint()["with"]) == {"mrpc"}  # the other task's data is in the run id
    for over, needle in (({"pooling": "cls"}, "--pooling"), ({"grad_accum": 2}, "--grad-accum"),
                         ({"epochs": 1.5}, "whole epochs"), ({"task": "rte"}, "not among scenario tasks"),
                         ({"save_adapter": True}, "--save-adapter")):
        with pytest.raises(ConfigError, match=needle):
            RunConfig.from_dict({**cfg.to_dict(), **over})
    for scenario, needle in (({"method": "lora", "samples": 2}, "need a router"), ({"k": 9}, "scenario: k=9"),
                             ({"method": "moe"}, "method must be one of"), ({"tasks": ["sst2", "sst2"]}, "twice")):
        with pytest.raises(ConfigError, match=needle):
            cfg_of(tmp_path, **scenario)


@needs_glue
def test_one_training_writes_every_tasks_run_with_the_mixture_commands_numbers(tmp_path):
    result = run.execute(cfg_of(tmp_path / "runs"), progress=False)
    twin_cfg = cfg_of(tmp_path / "runs", task="mrpc")
    twin = json.loads(results.result_path(tmp_path / "runs", twin_cfg.run_id()).read_text())
    assert result["status"] == twin["status"] == "ok" and results.validate(twin) is None
    assert twin["method"] == "mixture:lora_mixer E4 k2 with sst2" and twin["task"] == "mrpc"
    assert result["details"]["trained_with"] == twin["details"]["trained_with"] == \
        {"sst2": result["run_id"], "mrpc": twin["run_id"]}
    assert result["time"]["train_s"] == twin["time"]["train_s"] > 0 and result["memory"]["peak_rss_bytes"] > 0
    # the same run through lorabench mixture's own path
    out = tmp_path / "command"
    assert cli.main(["mixture", "--tasks", "sst2,mrpc", "--method", "lora_mixer", "--model", "minilm", "--layers",
                     "2", "--train-limit", "32", "--eval-limit", "32", "--max-length", "32", "--batch-size", "8",
                     "--epochs", "1", "--r", "8", "--alpha", "16", "--data-dir", str(GLUE), "--out", str(out),
                     "--quiet"]) == 0
    record = json.loads(next(out.glob("mixture-*.json")).read_text())
    for envelope in (result, twin):
        assert envelope["final"]["metrics"] == record["tasks"][envelope["task"]]["dev"]
        assert envelope["params"]["trainable"] == record["trainable_params"]
    assert result["details"]["usage"]["overall"] == record["usage"]["overall"]


@needs_glue
def test_a_mixture_trains_under_the_runs_precision(tmp_path, monkeypatch):
    from lorabench.mixtures import loop

    seen, real = [], loop.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(loop, "autocast", spy)
    cfg = RunConfig.from_dict({**cfg_of(tmp_path).to_dict(), "precision": "bf16", "scenario": {"method": "lora"}})
    with pytest.warns(UserWarning, match="bf16"):
        result = run.execute(cfg, progress=False)
    assert result["status"] == "ok" and result["env"]["precision"] == "bf16"
    assert seen and all(str(d) == "torch.bfloat16" for d in seen)


@needs_glue
def test_a_sweep_over_the_mixtures_tasks_trains_it_once_and_reports_each_task(tmp_path):
    sweep = {"name": "mix", "base": {k: v for k, v in TINY.items() if k != "model"}, "models": ["minilm"],
             "tasks": ["sst2", "mrpc"], "seeds": [0, 1], "variants": {
                 "lora": {"lr": 2e-3},
                 "mix": {"kind": "mixture", "lr": 2e-3, "scenario": {"tasks": [["sst2", "mrpc"]], "method": "lora"}}}}
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    found = [r for _, r in results.load_results(out)]
    assert sorted(r["kind"] for r in found) == ["mixture"] * 4 + ["run"] * 4
    logs = sorted(p.name for p in (out / "logs").glob("run-*.log"))
    assert len(logs) == 4 + 2  # the plain runs, and one training per mixture seed
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["ok"] * 8
    report = build_report(out)
    best = {(k[1], k[2]): c for k, c in report.best.items()}  # (task, method): mean over the seeds
    assert set(best) == {("sst2", "lora"), ("mrpc", "lora"), ("sst2", "mixture:lora with mrpc"),
                         ("mrpc", "mixture:lora with sst2")}
    assert all(c.n == 2 and c.std is not None for c in best.values())
