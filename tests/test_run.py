"""End to end: ``lorabench train`` on real SST-2, through the CLI and ``lorabench.run`` (MiniLM
truncated to 2 layers; SmolLM2 with both heads): the result file and its schema, repeatability,
a saved adapter and its recorded size, and a crash during training that still writes an error
result. Skipped where the GLUE data is not found."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import lorabench
from lorabench import results
from lorabench.data import get_task
from lorabench.data.fingerprint import file_sha256

GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


# ---- end to end: `lorabench train` on real SST-2 ------------------------------------------
SMALL = ["--task", "sst2", "--train-limit", "256", "--eval-limit", "64", "--max-length", "32",
         "--epochs", "2", "--lr", "5e-3", "--log-every", "2", "--quiet"]


def cli_train(tmp_path, *flags) -> dict:
    from lorabench.commands import main

    rc = main(["train", "--data-dir", str(GLUE), "--out", str(tmp_path), *SMALL, *flags])
    assert rc == 0
    files = sorted(tmp_path.glob("run-*.json"), key=os.path.getmtime)
    return json.loads(files[-1].read_text())


def schema_keys() -> list[str]:
    """The keys marked * (always present) in lorabench.results' schema docstring."""
    return [line.split()[0].rstrip("*") for line in results.__doc__.splitlines()
            if line.strip() and line.split()[0].endswith("*")]


@needs_glue
def test_train_minilm_end_to_end(tmp_path, capsys):
    a = cli_train(tmp_path / "a", "--model", "minilm", "--layers", "2")
    printed = capsys.readouterr().out
    assert "best dev" in printed and "result: " in printed and a["run_id"] in printed
    assert results.validate(a) is None
    for key in schema_keys() + ["error", "adapter_bytes"]:
        assert key in a, key
    assert set(a["time"]) >= {"train_s", "eval_s", "examples_per_s", "tokens_per_s"}
    assert set(a["memory"]) >= {"device", "peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes",
                                "budget_bytes", "micro_batch_size", "grad_accum_steps"}
    assert set(a["env"]) >= {"device_name", "python", "torch", "transformers", "lorabench", "git_rev"}
    assert a["status"] == "ok" and a["task"] == "sst2" and a["variant"] == "lora" and a["model"] == "minilm"
    assert a["run_id"] == results.expected_id(a) == results.run_id(a["config"], results.planned_data(a))
    assert a["primary_metric"] == "accuracy"
    assert a["data"]["source"] == "folder" and a["data"]["files"]["train"] == file_sha256(GLUE / "SST-2/train.tsv")
    assert {s: e["count"] for s, e in a["data"]["examples"].items()} == {"train": 256, "validation": 64}
    assert set(a["best"]["metrics"]["validation"]) == {"accuracy", "f1_macro"}
    assert len(a["history"]) == 2 and a["history"][-1]["step"] == 16
    assert 0 < a["params"]["trainable"] < a["params"]["total"]
    assert a["time"]["train_s"] > 0 and a["time"]["tokens_per_s"] > 0
    epoch_loss = [h["train_loss"] for h in a["history"]]
    assert epoch_loss[-1] < epoch_loss[0], epoch_loss  # training loss goes down
    assert all(math.isfinite(loss) for _, loss in a["train_loss"])

    b = cli_train(tmp_path / "b", "--model", "minilm", "--layers", "2")
    assert b["run_id"] == a["run_id"]  # the output folder is not part of the run id
    assert b["train_loss"] == a["train_loss"]  # same seed: bit-for-bit the same run
    assert [h["metrics"] for h in b["history"]] == [h["metrics"] for h in a["history"]]


@needs_glue
def test_train_saves_adapter_and_records_its_size(tmp_path):
    from lorabench.models import load_model

    r = cli_train(tmp_path, "--model", "minilm", "--layers", "2", "--epochs", "0.25", "--save-adapter",
                  "--variant", "lora_plus", "--opt", "lr_ratio=4", "--r", "4")
    assert r["config"]["options"]["lr_ratio"] == 4.0 and r["config"]["options"]["r"] == 4
    folder = tmp_path / f"run-{r['run_id']}-adapter"
    assert r["adapter_bytes"] == sum(f.stat().st_size for f in folder.iterdir()) > 0
    model, _ = load_model("minilm", get_task("sst2"), layers=2)
    lorabench.load_adapter(model, folder)  # a real, loadable adapter
    assert model.lorabench_state.variant == "lora_plus"


@needs_glue
def test_crash_during_training_writes_an_error_result_then_exits_1(tmp_path, monkeypatch, capsys):
    import lorabench.run as run
    from lorabench.commands import main

    def crashing_fit(model, train_loader, dev_loaders, task, cfg, *, progress=True, state=None, tracker=None):
        state.step, state.history = 3, [{"step": 3, "epoch": 0.5, "train_loss": 0.7, "metrics": {}}]
        raise RuntimeError("kaboom at step 4")

    monkeypatch.setattr(run, "fit", crashing_fit)
    rc = main(["train", "--data-dir", str(GLUE), "--out", str(tmp_path), *SMALL, "--model", "minilm", "--layers", "2"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: run ") and "RuntimeError: kaboom at step 4" in err[-1]
    (path,) = tmp_path.glob("run-*.json")
    r = json.loads(path.read_text())
    assert results.validate(r) is None
    assert r["status"] == "error" and r["error"] == "RuntimeError: kaboom at step 4"
    assert r["steps"]["done"] == 3 and r["history"][0]["step"] == 3  # what was recorded before the crash
    assert r["best"] is None and set(r["time"]) >= {"train_s", "eval_s", "examples_per_s", "tokens_per_s"}


SMOLLM = ["--model", "smollm2-135m", "--layers", "2", "--train-limit", "64", "--eval-limit", "32",
          "--max-length", "64", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "32"]


@needs_glue
@pytest.mark.parametrize("head", ["cls", "lm"])
def test_train_smollm2_both_heads(tmp_path, head):
    # The GGUF file is converted once into lorabench's model cache ($LORABENCH_CACHE or
    # ~/.cache/lorabench) and read from there afterwards.
    pytest.importorskip("gguf")
    r = cli_train(tmp_path, *SMOLLM, "--head", head)
    assert r["status"] == "ok" and r["config"]["head"] == head
    assert r["steps"]["done"] == 4
    acc = r["best"]["metrics"]["validation"]["accuracy"]
    assert 0.0 <= acc <= 1.0
    assert all(math.isfinite(loss) for _, loss in r["train_loss"])
    assert any("q_proj" in t for t in r["targets"])
