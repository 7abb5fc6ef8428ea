"""LoRA-GA (gradient-approximation init, by ``lorabench.prepare`` on a few batches): the output
is unchanged and the first step follows the best rank-2r approximation of the full gradient;
the prepared adapter saves and loads, prepare leaves no trace (flags, gradients, train mode),
and training without prepare warns. (The generic checks run on it from tests/test_contract.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorabench
from lorabench.adapters import VariantError
from lorabench.inject import adapted_layers

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers

def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _full_gradient(batch) -> dict[str, torch.Tensor]:
    """dL/dW of every target weight of the plain base model."""
    model = build_model("bert").train()
    model(**batch).loss.backward()
    return {n: m.weight.grad for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS)) and isinstance(m, nn.Linear)}


def _first_step_update(model, batch) -> dict[str, torch.Tensor]:
    """s (B dA + dB A) with dA, dB = minus the gradients: LoRA's first-order SGD update of W."""
    model.train()
    model(**batch).loss.backward()
    out = {}
    for n, layer in adapted_layers(model):
        v = layer.adapter
        out[n] = -v.scale * (v.lora_B.detach() @ v.lora_A.grad + v.lora_B.grad @ v.lora_A.detach())
    return out


def test_lora_ga_keeps_the_output_and_starts_along_the_full_gradient():
    batch = make_batch()
    base = outputs(build_model("bert"), batch)
    model = lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4)
    lorabench.prepare(model, [batch])
    torch.testing.assert_close(outputs(model, batch), base, atol=1e-5, rtol=0)
    G = _full_gradient(batch)
    torch.manual_seed(0)
    lora = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, alpha=16)
    ga_step, lora_step = _first_step_update(model, batch), _first_step_update(lora, batch)
    for n, layer in layers(model).items():
        v = layer.adapter
        # Sec. 3.2: B0 B0^T G + G A0^T A0 is c^2 times the best rank-2r approximation of G
        U, S, Vh = torch.linalg.svd(G[n], full_matrices=False)
        G2r = U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]
        c2 = v.out_features**0.5 / 16.0
        first_step = v.lora_B0 @ v.lora_B0.T @ G[n] + G[n] @ v.lora_A0.T @ v.lora_A0
        torch.testing.assert_close(first_step, c2 * G2r, atol=1e-6, rtol=1e-4)
        assert cosine(ga_step[n], -G2r) > 0.999
        assert cosine(ga_step[n], -G[n]) > cosine(lora_step[n], -G[n]) + 0.2, n


def test_lora_ga_prepared_adapter_round_trips_and_prepare_leaves_no_trace(tmp_path):
    batches = [make_batch(2), make_batch(3)]
    model = lorabench.apply(build_model("gpt2"), "lora_ga", targets=["c_attn", "c_fc"], r=4)  # Conv1D (in, out)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lorabench.prepare(model, batches)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(layer.adapter.lora_B0.abs().sum() > 0 for layer in layers(model).values())
    train_steps(model, make_batch())
    out = outputs(model, make_batch())
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(build_model("gpt2"), tmp_path)
    torch.testing.assert_close(outputs(loaded, make_batch()), out, atol=1e-6, rtol=0)
    with pytest.raises(VariantError, match="at least one batch"):
        lorabench.prepare(model, [])


def test_lora_ga_warns_when_trained_without_prepare():
    model = lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4)
    with pytest.warns(UserWarning, match="before lorabench.prepare"):
        train_steps(model, make_batch(), steps=1)
    with pytest.raises(VariantError, match="2r = 34"):
        lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=17)
