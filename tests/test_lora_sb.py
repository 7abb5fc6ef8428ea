"""LoRA-SB (update-approximation init, by ``lorabench.prepare``): B R A starts as the best rank-r
approximation of the first full fine-tuning update (Adam or SGD), with orthonormal B and A; R's
gradient is the full gradient projected onto B and A; prepare is repeatable, training without
it warns, and bad ranks and update rules are refused. (The generic checks run on it from
tests/test_contract.py; its PEFT export: tests/test_peft_export.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorabench
from lorabench.adapters import VariantError

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers
R = 4


def truncated(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


def eye_close(M: torch.Tensor) -> None:
    torch.testing.assert_close(M, torch.eye(M.shape[0]), atol=1e-5, rtol=0)


def full_gradients(batches) -> dict[str, torch.Tensor]:
    """dL/dW of every target weight of the plain base model, averaged over ``batches``."""
    model = build_model("bert").train()
    for batch in batches:
        model(**batch).loss.backward()
    return {n: m.weight.grad / len(batches) for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS)) and isinstance(m, nn.Linear)}


@pytest.mark.parametrize("update", ["adam", "sgd"])
def test_lora_sb_init_is_the_best_rank_r_approximation_of_the_first_update(update):
    batches = [make_batch(1), make_batch(2)]
    lr = 1e-3
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R, alpha=8.0, update=update, init_lr=lr)
    lorabench.prepare(model, batches)
    G = full_gradients(batches)
    simulated = build_model("bert")  # the base model after the rank-r part of one full-FT step
    for n, layer in layers(model).items():
        v = layer.adapter
        dW = -lr * (torch.sign(G[n]) if update == "adam" else G[n])
        torch.testing.assert_close(v.delta_weight(), truncated(dW, R), atol=1e-6 * dW.abs().max().item(), rtol=1e-4)
        eye_close(v.lora_B.T @ v.lora_B)  # orthonormal columns (U_r)
        eye_close(v.lora_A @ v.lora_A.T)  # orthonormal rows (V_r^T)
        S = torch.linalg.svdvals(dW)[:R]
        torch.testing.assert_close(v.R, torch.diag(S) / v.scale, atol=1e-6 * S[0].item(), rtol=1e-4)  # s = 2
        with torch.no_grad():
            simulated.get_submodule(n).weight += truncated(dW, R)
    # W is not compensated: the model starts where the (projected) first step takes it.
    torch.testing.assert_close(outputs(model, batches[0]), outputs(simulated, batches[0]), atol=1e-5, rtol=0)
    assert not torch.allclose(outputs(model, batches[0]), outputs(build_model("bert"), batches[0]), atol=1e-5)


def test_lora_sb_R_gets_the_full_gradient_projected_onto_B_and_A():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R)
    lorabench.prepare(model, [batch])
    weights = [layer.base_layer.weight for layer in layers(model).values()]
    for w in weights:
        w.requires_grad_(True)
    model.train()
    model(**batch).loss.backward()
    for layer in layers(model).values():
        v, G = layer.adapter, layer.base_layer.weight.grad
        # dL/dR = s B^T G A^T: the equivalent full update s B dR A stays in the subspace (Sec. 4)
        torch.testing.assert_close(v.R.grad, v.scale * v.lora_B.T @ G @ v.lora_A.T, atol=1e-7, rtol=1e-4)


def test_lora_sb_prepare_is_repeatable_and_warns_when_skipped():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R)
    with pytest.warns(UserWarning, match="before lorabench.prepare"):
        train_steps(model, batch, steps=1)
    lorabench.prepare(model, [batch])
    first = {n: layer.adapter.delta_weight().clone() for n, layer in layers(model).items()}
    model.classifier.requires_grad_(False)  # only R trains ...
    train_steps(model, batch)
    lorabench.prepare(model, [batch])  # ... and R is reset first: the gradient is the base model's again
    for n, layer in layers(model).items():
        torch.testing.assert_close(layer.adapter.delta_weight(), first[n], atol=1e-9, rtol=1e-5)
    with pytest.raises(VariantError, match="at least one batch"):
        lorabench.prepare(model, [])
    with pytest.raises(VariantError, match="choose r <= 32"):
        lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=33)
    with pytest.raises(VariantError, match="update must be one of adam, sgd"):
        lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, update="lion")
