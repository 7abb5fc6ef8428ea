"""The run config, the training loop, the memory-budget planner and one end-to-end run.

Fast unit tests first (pure functions, config validation), then ``fit`` on a tiny BERT
with a learnable synthetic task (seconds), then real runs through the CLI on SST-2
(MiniLM truncated to 2 layers; SmolLM2 with both heads).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import lorabench
from lorabench import results
from lorabench.config import ConfigError, RunConfig, load_yaml
from lorabench.data import get_task
from lorabench.measure import (
    MemoryBudgetError,
    check_memory_budget,
    micro_batch_candidates,
    min_training_bytes,
    parse_bytes,
    plan_micro_batch,
)
from lorabench.train import TrainState, accumulate_gradients, fit, linear_warmup_decay

GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


# ---- micro-batch planner (pure: a fake "fits" predicate stands in for CUDA probes) ---------
def test_micro_batch_candidates_are_batch_then_powers_of_two():
    assert micro_batch_candidates(32) == [32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(24) == [24, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(1) == [1]


def test_plan_picks_largest_fitting_micro_batch_and_keeps_effective_batch():
    asked = []

    def fits(micro):
        asked.append(micro)
        return micro <= 5

    assert plan_micro_batch(32, 1, fits) == (4, 8)
    assert asked == [32, 16, 8, 4]  # largest first, stops at the first that fits
    assert plan_micro_batch(32, 3, lambda m: m <= 16) == (16, 6)  # 16 * 6 == 32 * 3
    assert plan_micro_batch(24, 1, lambda m: m <= 20) == (16, 2)  # 16 + 8 per loader batch
    assert plan_micro_batch(32, 2, lambda m: True) == (32, 2)


def test_plan_returns_none_when_batch_one_does_not_fit():
    assert plan_micro_batch(8, 1, lambda m: False) is None


def test_probe_finds_the_largest_micro_batch_that_does_not_oom():
    """``probe_fits`` with a model that runs out of memory above 4 rows (as CUDA would)."""
    from accelerate import Accelerator

    from lorabench.measure import probe_fits

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_bert(dropout=0.1)
            self.shapes = []

        def forward(self, **batch):
            self.shapes.append(tuple(batch["input_ids"].shape))
            if batch["input_ids"].shape[0] > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(**batch)

    model = Picky()
    sample = torch.utils.data.default_collate(synthetic(3, 0))
    sample["input_ids"] = sample["input_ids"][:, :5]
    sample["attention_mask"] = sample["attention_mask"][:, :5]
    rng = torch.get_rng_state()
    plan = plan_micro_batch(16, 1, lambda m: probe_fits(model, sample, m, 12, Accelerator(cpu=True)))
    assert plan == (4, 4)
    assert model.shapes == [(16, 12), (8, 12), (4, 12), (4, 12)]  # worst case: max_length tokens, 2 probe steps
    assert all(p.grad is None for p in model.parameters())  # probing leaves no gradients behind
    assert torch.equal(torch.get_rng_state(), rng)  # nor a changed RNG (dropout ran)


def test_budget_below_weights_grads_and_optimizer_is_rejected_on_cpu():
    model = tiny_bert()
    lorabench.apply(model, "lora", ["query", "value"])
    need = min_training_bytes(model)
    params = sum(p.numel() * 4 for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert need == params + 3 * trainable
    with pytest.raises(MemoryBudgetError, match=r"too small for batch size 1 with model tiny.*--memory-budget"):
        check_memory_budget(model, need - 1, "tiny")
    check_memory_budget(model, need, "tiny")
    check_memory_budget(model, None, "tiny")


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes("2g") == 2 * 2**30
    assert parse_bytes(1000) == 1000
    for bad in ("8 bananas", "", "GiB", "-1GiB", True):
        with pytest.raises(ValueError):
            parse_bytes(bad)


# ---- learning-rate schedule --------------------------------------------------------------
def test_linear_warmup_then_linear_decay():
    f = linear_warmup_decay(warmup_steps=2, total_steps=10)
    assert [f(s) for s in range(3)] == [0.0, 0.5, 1.0]
    assert f(6) == pytest.approx(0.5)
    assert f(10) == 0.0 and f(12) == 0.0
    g = linear_warmup_decay(0, 4)
    assert [g(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_schedule_keeps_per_group_lr_ratios():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1.6e-2}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(2, 4))
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == [0.0, 0.0]
    assert seen[2] == pytest.approx([1e-3, 1.6e-2])
    assert seen[3] == pytest.approx([5e-4, 8e-3])


# ---- config validation: one test per error ------------------------------------------------
def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'; valid keys: model, .*\blr\b"):
        RunConfig.from_dict({"learning_rate": 1e-3})


def test_config_lr_must_be_positive():
    with pytest.raises(ConfigError, match=r"lr must be > 0.*--lr"):
        RunConfig.from_dict({"lr": 0})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        RunConfig.from_dict({"lr": -1e-4})


def test_config_max_length_zero():
    with pytest.raises(ConfigError, match=r"max_length must be > 0.*--max-length"):
        RunConfig.from_dict({"max_length": 0})


def test_config_bad_memory_budget():
    with pytest.raises(ConfigError, match=r"memory_budget '8 bananas' is not a size; write e.g. 8GiB"):
        RunConfig.from_dict({"memory_budget": "8 bananas"})


def test_config_unknown_variant_option_names_valid_options():
    with pytest.raises(ConfigError, match=r"has no option 'rank'.*options are: r, alpha"):
        RunConfig.from_dict({"variant": "lora", "options": {"rank": 8}})
    with pytest.raises(ConfigError, match="r must be a positive integer"):
        RunConfig.from_dict({"variant": "lora", "r": 0})


def test_config_unknown_task_lists_tasks():
    with pytest.raises(ConfigError, match=r"unknown GLUE task 'imdb'.*SST-2"):
        RunConfig.from_dict({"task": "imdb"})


def test_config_other_errors():
    cases = {
        "unknown variant 'nope'": {"variant": "nope"},
        "epochs must be > 0": {"epochs": 0},
        "batch_size must be >= 1": {"batch_size": 0},
        "batch_size must be an integer": {"batch_size": 1.5},
        "head must be one of cls, lm": {"head": "mlm"},
        "quiet must be true or false": {"quiet": "yes"},
        "r is given twice": {"r": 4, "options": {"r": 8}},
        "precision must be one of": {"precision": "fp8"},
    }
    for message, data in cases.items():
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_dict(data)


def test_config_resolved_is_stable_and_normalised(tmp_path):
    a = RunConfig.from_dict({"r": 16, "alpha": 32, "lr": "5e-4", "targets": "query,value",
                             "memory_budget": "1GiB", "out": "x", "quiet": True, "variant": "LoRA", "task": "SST-2"})
    b = RunConfig.from_dict({"options": {"r": 16.0, "alpha": 32.0}, "lr": 0.0005, "targets": ["query", "value"],
                             "memory_budget": 2**30, "out": "y", "data_dir": "/elsewhere"})
    assert a.resolved() == b.resolved()
    assert a.run_id() == b.run_id() == results.run_id(a.resolved())
    r = a.resolved()
    assert r["variant"] == "lora" and r["task"] == "sst2"
    assert r["options"] == {"r": 16, "alpha": 32.0, "dropout": 0.0, "init": "kaiming", "rslora": False, "svd_niter": 0,
                            "optimizer": "adamw", "lr_ratio": 16.0, "eta": 2.0, "shrink_ratio": 5e-4, "alt_beta": 0.9,
                            "alt_schedule": "both", "alt_update": "momentum", "pro_moments": "full"}
    assert "out" not in r and "quiet" not in r and "r" not in r
    assert RunConfig.from_dict({"seed": 1}).run_id() != RunConfig.from_dict({"seed": 2}).run_id()
    # a config round-trips through YAML (what `lorabench sweep` hands each run)
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(a.to_dict()))
    assert RunConfig.from_dict(load_yaml(path)).run_id() == a.run_id()
    assert RunConfig.from_dict({"targets": "all-linear"}).targets == "all-linear"
    assert RunConfig.from_dict({"targets": r".*\.(query|value)"}).targets == r".*\.(query|value)"


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)


# ---- fit() on a tiny BERT with a learnable synthetic task ------------------------------
VOCAB, LENGTH = 64, 8


def tiny_bert(seed: int = 0, dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=0,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def synthetic(n: int, seed: int) -> list[dict]:
    """label = 1 when the first token is in the upper half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = (ids[:, 0] >= VOCAB // 2).long()
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


def loaders(batch_size: int = 16, n_train: int = 128):
    collate = torch.utils.data.default_collate
    train = DataLoader(synthetic(n_train, 0), batch_size=batch_size, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(0))
    dev = DataLoader(synthetic(64, 1), batch_size=32, collate_fn=collate)
    return train, {"validation": dev}


def run_fit(tmp_path=None, model_seed: int = 0, targets="all-linear", **overrides):
    cfg = RunConfig.from_dict({"lr": 2e-2, "epochs": 4, "batch_size": 16, "warmup_ratio": 0.1, "log_every": 2,
                               "quiet": True, "targets": targets} | overrides)
    model = tiny_bert(model_seed)
    lorabench.apply(model, cfg.variant, cfg.targets, **cfg.variant_options())
    train, dev = loaders(cfg.batch_size)
    return fit(model, train, dev, get_task("sst2"), cfg, progress=False), model


def test_fit_learns_and_records_history():
    out, _ = run_fit()
    assert out["status"] == "ok" and out["error"] is None
    assert out["steps_per_epoch"] == 8 and out["total_steps"] == 32 and out["step"] == 32
    assert [h["step"] for h in out["history"]] == [8, 16, 24, 32]  # after every epoch
    assert [h["epoch"] for h in out["history"]] == [1.0, 2.0, 3.0, 4.0]
    losses = [h["train_loss"] for h in out["history"]]
    assert losses[-1] < 0.8 * losses[0], losses  # it learns the synthetic rule
    acc = [h["metrics"]["validation"]["accuracy"] for h in out["history"]]
    assert max(acc) >= 0.75, acc
    assert out["best"]["metrics"]["validation"]["accuracy"] == max(acc)
    assert out["final"]["step"] == 32
    assert [s for s, _ in out["train_loss"]] == list(range(2, 33, 2))  # every log_every steps
    t = out["time"]
    assert t["train_s"] > 0 and t["eval_s"] > 0 and t["examples"] == 4 * 128
    assert t["examples_per_s"] > 0 and 0 < t["tokens"] < 4 * 128 * LENGTH  # padding not counted
    assert out["memory"]["device"] == "cpu" and out["memory"]["peak_rss_bytes"] > 0


def test_fit_is_bit_for_bit_repeatable_on_cpu():
    a, _ = run_fit(epochs=1)
    b, _ = run_fit(epochs=1)
    assert a["train_loss"] == b["train_loss"]
    assert a["history"][0]["metrics"] == b["history"][0]["metrics"]
    c, _ = run_fit(epochs=1, seed=1)  # the seed changes dropout and so the losses
    assert c["train_loss"] != a["train_loss"]


def test_gradient_accumulation_matches_a_larger_batch():
    """16 x 1 and 8 x 2 see the same examples per step and must make the same update."""
    collate = torch.utils.data.default_collate
    data, dev = synthetic(64, 0), {"validation": DataLoader(synthetic(32, 1), batch_size=32, collate_fn=collate)}
    trained = []
    for batch_size, grad_accum in ((16, 1), (8, 2)):
        cfg = RunConfig.from_dict({"lr": 1e-3, "epochs": 1, "batch_size": batch_size, "grad_accum": grad_accum,
                                   "weight_decay": 0.0, "quiet": True, "targets": "all-linear", "warmup_ratio": 0.1})
        model = tiny_bert(3, dropout=0.0)
        lorabench.apply(model, "lora", "all-linear")
        loader = DataLoader(data, batch_size=batch_size, collate_fn=collate)  # the same order both times
        out = fit(model, loader, dev, get_task("sst2"), cfg, progress=False)
        assert out["step"] == 4 and out["memory"]["grad_accum_steps"] == grad_accum
        trained.append(model)
    for (name, p), q in zip(trained[0].named_parameters(), trained[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(trained[0].classifier.weight, tiny_bert(3).classifier.weight)  # it did train


def test_micro_batches_give_the_same_gradient_as_the_whole_batch():
    from accelerate import Accelerator

    batch = torch.utils.data.default_collate(synthetic(13, 5))
    grads = []
    for micro in (13, 4):  # 4 + 4 + 4 + 1: unequal pieces, weighted by their size
        model = tiny_bert(2, dropout=0.0)
        lorabench.apply(model, "lora", ["query", "value"], init="gaussian")
        loss = accumulate_gradients(model, [batch], micro, Accelerator(cpu=True))
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    for g1, g2 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_eval_every_and_fractional_epochs():
    out, _ = run_fit(epochs=1.5, eval_every=5)
    assert out["total_steps"] == 12
    assert [h["step"] for h in out["history"]] == [5, 10, 12]  # every 5 steps and at the end
    assert out["history"][-1]["epoch"] == 1.5


def test_nan_loss_stops_with_status_diverged():
    state = TrainState()
    cfg = RunConfig.from_dict({"epochs": 2, "batch_size": 16, "quiet": True, "targets": ["query", "value"]})
    model = tiny_bert()
    lorabench.apply(model, "lora", cfg.targets)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5:] = float("nan")
    train, dev = loaders(16)
    out = fit(model, train, dev, get_task("sst2"), cfg, progress=False, state=state)
    assert out["status"] == "diverged" and "lower the learning rate" in out["error"]
    assert out["step"] == 0 and out["history"] == []
    assert all(torch.isfinite(p).all() for p in model.classifier.parameters())  # the NaN step was not applied


def test_grad_checkpointing_gives_the_same_losses():
    plain, plain_model = run_fit(epochs=1)
    ckpt, model = run_fit(epochs=1, grad_checkpointing=True)
    flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    assert getattr(model, flag) and not getattr(plain_model, flag)
    assert [s for s, _ in ckpt["train_loss"]] == [s for s, _ in plain["train_loss"]]
    assert [x for _, x in ckpt["train_loss"]] == pytest.approx([x for _, x in plain["train_loss"]], rel=1e-5)


def test_fp16_autocast_and_loss_scaling(monkeypatch):
    """fp16 runs on CUDA only; CPU autocast stands in here to exercise the same code path
    (autocast forward, GradScaler: scale, unscale before clipping, step). bf16 needs no
    stand-in: it runs on CPU as it is (the next tests)."""
    import lorabench.train as train

    full, _ = run_fit(epochs=1)
    monkeypatch.setattr(train, "resolve_precision", lambda precision, device: precision)
    half, _ = run_fit(epochs=1, precision="fp16")
    assert half["status"] == "ok" and half["precision"] == "fp16"
    a, b = [x for _, x in full["train_loss"]], [x for _, x in half["train_loss"]]
    assert a != b  # autocast really ran in half precision
    assert b == pytest.approx(a, rel=0.05, abs=0.02)  # and still trains the same model


def test_cpu_precision_bf16_is_honoured_fp16_falls_back_auto_is_fp32():
    from lorabench.train import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cpu) == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("fp16", cpu) == "fp32"
    assert any("fp16 needs CUDA" in str(w.message) and "--precision bf16" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU without native bf16 warns that it is slow
        assert resolve_precision("bf16", cpu) == "bf16"


def test_bf16_on_cpu_trains_in_bf16_without_patching():
    full, _ = run_fit(epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half, _ = run_fit(epochs=1, precision="bf16")
    assert half["status"] == "ok" and half["precision"] == "bf16"
    a, b = [x for _, x in full["train_loss"]], [x for _, x in half["train_loss"]]
    assert a != b and b == pytest.approx(a, rel=0.05, abs=0.02)


# ---- end to end: `lorabench train` on real SST-2 ------------------------------------------
SMALL = ["--task", "sst2", "--train-limit", "256", "--eval-limit", "64", "--max-length", "32",
         "--epochs", "2", "--lr", "5e-3", "--log-every", "2", "--quiet"]


def cli_train(tmp_path, *flags) -> dict:
    from lorabench.cli import main

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
    assert a["run_id"] == results.run_id(a["config"])
    assert a["primary_metric"] == "accuracy"
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
    from lorabench.cli import main

    def crashing_fit(model, train_loader, dev_loaders, task, cfg, *, progress=True, state=None):
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
