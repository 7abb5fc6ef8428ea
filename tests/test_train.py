"""The training loop (``lorabench.train``): the learning-rate schedule (pure functions), then
``fit`` on a tiny BERT with a learnable synthetic task (seconds): it learns and records its
history, repeats bit for bit, gradient accumulation and micro-batches give the same update,
eval_every and fractional epochs, and a NaN loss stops the run as diverged. (End-to-end runs
through the CLI: tests/test_run.py.)"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import lorabench
from lorabench.config import RunConfig
from lorabench.data import get_task
from lorabench.train import TrainState, accumulate_gradients, fit, linear_warmup_decay

from helpers_train import LENGTH, loaders, run_fit, synthetic, tiny_bert

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


# ---- fit() on a tiny BERT with a learnable synthetic task (helpers_train.py) ------------
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
