"""``lorabench.training``: the parts every training loop shares (evaluate, DivergenceGuard, Meter,
placement), and the two scenario loops built from them (``mixtures.loop.fit``, ``transfer.loop.train``):
on a real 2-layer MiniLM they stop a run at lr 1e4 as "diverged", record time and memory, and run
every forward in the precision they were asked for."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_model, make_batch

from lorabench.data import get_task
from lorabench.errors import ConfigError
from lorabench.training.evaluate import evaluate
from lorabench.training.guard import DivergenceGuard
from lorabench.training.meter import Meter
from lorabench.training.placement import amp_dtype, grad_scaler, placement

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
SST2 = get_task("sst2")
CPU = torch.device("cpu")


class Seen:
    """A forward hook on one module: (module in training mode?, output dtype) of every call."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[tuple[bool, torch.dtype]] = []
        self.handle = module.register_forward_hook(lambda m, args, out: self.calls.append((m.training, out.dtype)))

    def remove(self) -> set[tuple[bool, torch.dtype]]:
        self.handle.remove()
        return set(self.calls)


# ---- evaluate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(mode):
    model = build_model("bert").train(mode)
    seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
    out = evaluate(model, {"validation": [make_batch(1), make_batch(2)]}, SST2, CPU)
    assert seen.remove() == {(False, torch.float32)}  # dropout off while evaluating
    assert model.training is mode  # and the caller's mode back afterwards
    assert set(out) == {"validation"} and 0.0 <= out["validation"]["accuracy"] <= 1.0


def test_evaluate_autocasts_bf16_on_cpu():
    model = build_model("bert")
    seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
    evaluate(model, {"validation": [make_batch()]}, SST2, CPU, torch.bfloat16)
    assert seen.remove() == {(False, torch.bfloat16)}  # the matmul ran in bf16
    seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
    evaluate(model, {"validation": [make_batch()]}, SST2, CPU)
    assert seen.remove() == {(False, torch.float32)}


def test_evaluate_routes_through_forward_and_gather():
    model = build_model("bert")
    calls, gathered = [], []

    def forward(m, inputs):
        calls.append(sorted(inputs))
        return m(**inputs)

    def gather(logits, labels):  # a "second rank" doubling every prediction and label
        gathered.append(logits.dtype)
        return torch.cat([logits, logits]), torch.cat([labels, labels])

    batch = make_batch()
    preds = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    acc = (preds == batch["labels"]).float().mean().item()
    out = evaluate(model, {"dev": [batch]}, SST2, CPU, forward=forward, gather=gather)
    assert calls == [["attention_mask", "input_ids"]]  # labels never reach the forward
    assert gathered == [torch.float32] and out["dev"]["accuracy"] == pytest.approx(acc)


# ---- DivergenceGuard ---------------------------------------------------------------------------------


def test_guard_names_the_step_a_loss_went_nan_or_exploded():
    guard = DivergenceGuard()
    assert guard.check(0.7) is None and guard.check(5.0) is None
    assert guard.check(float("nan")) == "training loss became nan at step 3; lower the learning rate"
    guard = DivergenceGuard()
    assert guard.check(0.5) is None and guard.check(9.9) is None  # below max(10, 100 x first)
    assert "exploded to 80 (first step: 0.5) at step 3" in guard.check(80.0)
    assert guard.check_final_loss(0.6) is None
    assert guard.check_final_loss(math.inf).startswith("training loss after the last update became inf")


def test_guard_checks_trainable_tensors_and_dev_metrics():
    guard = DivergenceGuard()
    good, bad = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor([1.0, math.nan]))
    frozen = torch.tensor([math.inf])  # not trainable: not checked
    assert guard.check_params([good, frozen]) is None
    assert guard.check_params([("a.weight", good), ("b.lora_B", bad)]) == (
        "trainable tensors became non-finite (b.lora_B) at step 0; lower the learning rate")
    assert guard.check_metrics({"validation": {"accuracy": 0.8}}, "accuracy") is None
    assert "dev accuracy is nan" in guard.check_metrics({"validation": {"accuracy": math.nan}}, "accuracy")
    assert "dev mcc is None" in guard.check_metrics({"validation": {"accuracy": 0.8}}, "mcc")
    assert guard.check_metrics({}, "accuracy") is None  # no dev sets: nothing to check


# ---- Meter ---------------------------------------------------------------------------------------------


def test_meter_training_time_excludes_evaluation():
    meter = Meter(CPU)
    with meter:
        meter.count(make_batch())  # 2 examples, 8 + 5 real tokens
        time.sleep(0.05)
        with meter.evaluating():
            time.sleep(0.3)
        time.sleep(0.05)
    t = meter.time()
    assert 0.1 <= t["train_s"] < 0.3 <= t["eval_s"]
    assert (t["examples"], t["tokens"]) == (2, 13)
    assert t["examples_per_s"] == pytest.approx(2 / t["train_s"])
    with meter.evaluating():  # outside training: only the evaluation clock moves
        pass
    assert meter.time()["train_s"] == t["train_s"]
    mem = meter.memory()
    assert mem["device"] == "cpu" and mem["peak_rss_bytes"] > 0 and mem["peak_allocated_bytes"] is None


# ---- placement -----------------------------------------------------------------------------------------


def test_placement_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement("auto") == (CPU, "fp32", None)
    assert placement("fp32") == (CPU, "fp32", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU without native bf16 warns that it is emulated
        assert placement("bf16") == (CPU, "bf16", torch.bfloat16)
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        assert placement("fp16") == (CPU, "fp32", None)
    assert amp_dtype("fp16", CPU) is None and not grad_scaler(CPU, "fp16").is_enabled()


def test_placement_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert placement("auto") == (cuda, "bf16", torch.bfloat16)
    assert placement("fp16") == (cuda, "fp16", torch.float16)
    assert placement("fp32") == (cuda, "fp32", None)


# ---- the mixture loop on a real 2-layer MiniLM -------------------------------------------------------


def mixture_run(tmp_path, *extra: str) -> tuple[dict, str]:
    from lorabench.commands import mixture
    from lorabench.commands.args import Parser

    p = Parser(prog="lorabench")
    mixture.add_parser(p.add_subparsers(dest="command", required=True))
    out = tmp_path / "mix"
    args = p.parse_args(["mixture", "--tasks", "sst2", "--method", "lora", "--layers", "2", "--train-limit", "32",
                         "--eval-limit", "16", "--max-length", "16", "--batch-size", "16", "--data-dir", str(GLUE),
                         "--out", str(out), "--quiet", *extra])
    assert args.func(args) == (1 if "1e4" in extra else 0)  # a diverged run is written, and exits 1
    [path] = out.glob("mixture-*.json")  # one file per run id
    return json.loads(path.read_text()), (out / "mixture.md").read_text()


@needs_glue
def test_mixture_at_lr_1e4_is_diverged_and_reports_no_metric(tmp_path):
    record, md = mixture_run(tmp_path, "--lr", "1e4")
    assert record["status"] == "diverged" and "lower the learning rate" in record["error"]
    assert record["steps"] < 2  # stopped before the bad update
    assert record["tasks"]["sst2"]["dev"] == {"validation": {"accuracy": None}}  # NaN, never a number
    assert "(diverged)" in md and "| diverged |" in md


@needs_glue
def test_mixture_records_time_and_memory(tmp_path):
    record, _ = mixture_run(tmp_path)
    assert record["status"] == "ok" and record["error"] is None and record["steps"] == 2
    assert record["time"]["train_s"] > 0 and record["time"]["examples"] == 32
    assert record["time"]["train_s"] == record["train_s"] and record["time"]["eval_s"] > 0
    assert record["memory"]["peak_rss_bytes"] > 0
    assert 0 <= record["tasks"]["sst2"]["dev"]["validation"]["accuracy"] <= 1


@needs_glue
def test_mixture_trains_and_evaluates_in_bf16():
    from lorabench.mixtures.build import build
    from lorabench.mixtures.config import MixtureConfig
    from lorabench.mixtures.loop import fit

    cfg = MixtureConfig(tasks=["sst2"], method="lora_mixer", experts=2, k=1, layers=2, train_limit=8, eval_limit=8,
                        max_length=16, batch_size=8, precision="bf16", data_dir=str(GLUE)).check()
    built = build(cfg, progress=False)
    seen = Seen(built.model.bert.encoder.layer[0].intermediate.dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = fit(built.model, built.train, built.dev, cfg, progress=False)
    assert seen.remove() == {(True, torch.bfloat16), (False, torch.bfloat16)}  # training and evaluation
    assert summary["status"] == "ok" and summary["precision"] == "bf16" and summary["steps"] == 1


# ---- the transfer loop on a real 2-layer MiniLM ------------------------------------------------------


def lora_minilm(lr: float, train_limit: int = 32):
    """A LoRA'd 2-layer MiniLM, its sst2 loaders and its parameter groups (each group carries ``lr``)."""
    from lorabench import inject, models
    from lorabench.data import build_loaders

    torch.manual_seed(0)
    model, tok = models.load_model("minilm", SST2, layers=2)
    inject.apply(model, "lora", None, r=4, alpha=8.0)
    train, dev = build_loaders(SST2, tok, data_dir=str(GLUE), train_limit=train_limit, eval_limit=8, max_length=16,
                               batch_size=8, seed=0, progress=False)
    return model, train, dev, inject.param_groups(model, lr)


@needs_glue
def test_transfer_train_at_lr_1e4_stops_diverged():
    from lorabench.transfer import loop

    model, train, _, groups = lora_minilm(1e4)
    stats = loop.train(model, loop.epochs_of(train), groups, lr=1e4, epochs=2, progress=False)
    assert stats["status"] == "diverged" and "lower the learning rate" in stats["error"]
    assert stats["steps"] < 8  # 4 batches x 2 epochs: stopped early
    assert stats["time"]["train_s"] > 0 and stats["memory"]["peak_rss_bytes"] > 0


@needs_glue
def test_transfer_train_and_evaluate_honour_bf16():
    from lorabench.transfer import loop

    model, train, dev, groups = lora_minilm(1e-3, train_limit=8)
    seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = loop.train(model, loop.epochs_of(train), groups, lr=1e-3, epochs=1, progress=False, precision="bf16")
        assert seen.remove() == {(True, torch.bfloat16), (False, torch.bfloat16)}  # the steps, the final-loss check
        seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
        loop.evaluate(model, dev, SST2, "bf16")
    assert seen.remove() == {(False, torch.bfloat16)}
    assert stats["status"] == "ok" and stats["precision"] == "bf16" and stats["steps"] == 1


def test_transfer_evaluate_and_logits_of_switch_dropout_off():
    from lorabench.transfer import loop

    model = build_model("bert").train()
    seen = Seen(model.bert.encoder.layer[0].intermediate.dense)
    loop.evaluate(model, {"validation": [make_batch()]}, SST2)
    assert seen.remove() == {(False, torch.float32)} and model.training  # mode given back
    loop.logits_of(model, [make_batch()])
    assert not model.training


# ---- transfer arms: lr refused up front, a diverged arm never shown as a number ---------------------


@pytest.mark.parametrize("flag, value", [("--lr", "0"), ("--lr", "-1e-4"), ("--lora-lr", "0")])
def test_organ_refuses_a_learning_rate_that_is_not_positive(monkeypatch, tmp_path, flag, value):
    from lorabench import models
    from lorabench.commands import transfer
    from lorabench.commands.args import Parser

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model for a bad lr"))
    p = Parser(prog="lorabench")
    transfer.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["transfer", "organ", flag, value, "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match=f"{flag} must be a learning rate > 0"):
        args.func(args)


def test_transfer_table_shows_a_diverged_arm_as_its_status():
    from lorabench.transfer.record import table

    error = "training loss became nan at step 2; lower the learning rate"
    record = {"method": "organ", "task": "sst2", "primary_metric": "accuracy", "counts": {"lora_rank": 4},
              "source": {"model": "m"}, "target": {"model": "m"},
              "arms": {"no_adapter": {"status": "ok", "dev": {"validation": {"accuracy": 0.5}}, "trainable": 0},
                       "organ@1": {"status": "diverged", "error": error, "dev": None, "trainable": 10,
                                   "train": {"train_s": 1.0}}}}
    t = table(record)
    rows = {r[0]: r for r in t.rows}
    assert rows["no_adapter"][1:4] == ["ok", "validation accuracy", "50.00"]
    assert rows["organ@1"][1] == "diverged" and rows["organ@1"][3] == "DIVERGED"
    assert f"organ@1 diverged: {error}" in t.note


def transfer_cli(argv: list[str]) -> int:
    from lorabench.commands import transfer
    from lorabench.commands.args import Parser

    p = Parser(prog="lorabench")
    transfer.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["transfer", *argv, "--train-limit", "32", "--eval-limit", "16", "--max-length", "16",
                         "--data-dir", str(GLUE), "--quiet"])
    return args.func(args)


# lr 1e30: two steps, the first at lr 0 (warmup), so the one real update must blow the weights up for the
# loss after it to be NaN (at 1e4 a pre-norm decoder's loss stays finite: a destroyed model, not a diverged run)


@needs_glue
def test_a_diverged_organ_arm_is_its_status_not_a_number_and_writes_no_organ(tmp_path, capsys):
    out = tmp_path / "organ"
    assert transfer_cli(["organ", "--model", "smollm2-135m", "--layers", "2", "--organ-layers", "0:1", "--positions",
                         "1", "--lr", "1e30", "--lora-lr", "1e30", "--batch-size", "16", "--out", str(out)]) == 1
    record = json.loads((out / "transfer.json").read_text())
    arms = record["arms"]
    assert arms["no_adapter"]["status"] == "ok" and arms["no_adapter"]["dev"]["validation"]["accuracy"] >= 0
    for name in ("organ@1", f"lora_r{record['counts']['lora_rank']}"):
        assert arms[name]["status"] == "diverged" and arms[name]["dev"] is None
        assert "lower the learning rate" in arms[name]["error"] and arms[name]["error"] == arms[name]["train"]["error"]
    assert not (out / "organ-at-1").exists()  # a diverged organ is not saved for transplanting
    md = (out / "transfer.md").read_text()
    assert "| organ@1 | diverged | validation accuracy | DIVERGED |" in md
    assert "error: arm organ@1 diverged" in capsys.readouterr().err


@needs_glue
def test_a_diverged_teacher_skips_its_students(tmp_path):
    out = tmp_path / "tl"
    assert transfer_cli(["trans_lora", "--source", "minilm", "--source-layers", "2", "--target", "minilm",
                         "--target-layers", "1", "--generator-layers", "2", "--seeds", "3", "--synthetic", "8",
                         "--max-new-tokens", "6", "--epochs", "1", "--distill-epochs", "1", "--head-epochs", "2",
                         "--batch-size", "16", "--lr", "1e30", "--out", str(out)]) == 1
    arms = json.loads((out / "transfer.json").read_text())["arms"]
    assert {n: a["status"] for n, a in arms.items()} == {
        "source": "diverged", "trans_lora": "skipped", "random_keep": "skipped", "unfiltered": "skipped",
        "direct": "diverged", "no_adapter": "ok"}  # no_adapter trains the head at --head-lr
    assert all(a["dev"] is None for n, a in arms.items() if n != "no_adapter")
    assert not (out / "target-adapter").exists()
    assert "| trans_lora | skipped | validation accuracy | SKIPPED |" in (out / "transfer.md").read_text()
