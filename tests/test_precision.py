"""Precision and activation checkpointing in training (``lorabench.precision``): gradient
checkpointing gives the same losses; fp16 autocast with loss scaling (CPU autocast stands in
for CUDA); on CPU bf16 is honoured, fp16 falls back with a warning and auto is fp32; bf16 trains
on CPU without patching."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers_train import run_fit

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
