"""NLoRA (Nyström init) and the LoRA init "nystrom": ``nystrom_factors`` is the Nyström
approximation (exact on rank-r matrices, seeded), NLoRA keeps the output by moving the sketch
into the adapter, IntTune trains only the intermediate r x r matrix, and LoRA's nystrom init is
a balanced residual init. (The generic checks run on them from tests/test_contract.py; their
PEFT export: tests/test_peft_export.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.adapters.nlora import nystrom_factors

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers
R = 4


def eye_close(M: torch.Tensor) -> None:
    torch.testing.assert_close(M, torch.eye(M.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sketch", ["gaussian", "columns"])
def test_nystrom_factors_are_the_nystrom_approximation(sketch):
    torch.manual_seed(0)
    W = torch.randn(48, 5) @ torch.randn(5, 40)  # (out, in) of rank 5
    Q, Rm, A = nystrom_factors(W, 5, sketch=sketch, seed=3)
    eye_close(Q.T @ Q)
    torch.testing.assert_close(Q @ Rm @ A, W, atol=1e-4, rtol=0)  # Nyström is exact on rank-r matrices
    W = torch.randn(48, 40)
    Q, Rm, A = nystrom_factors(W, 4, sketch=sketch, seed=3, oversample=1.0)
    if sketch == "gaussian":  # W Omega (Psi^T W Omega)^+ Psi^T W with the same seeded test matrices
        g = torch.Generator().manual_seed(3)
        omega, psi = torch.randn(40, 4, generator=g), torch.randn(48, 8, generator=g)
        expected = W @ omega @ torch.linalg.pinv(psi.T @ W @ omega) @ psi.T @ W
    else:  # Fig. 3: [A_W; B_W] A_W^+ [A_W F_W]
        expected = W[:, :4] @ torch.linalg.pinv(W[:4, :4]) @ W[:4]
    torch.testing.assert_close(Q @ Rm @ A, expected, atol=1e-4, rtol=1e-4)
    Q2, R2, A2 = nystrom_factors(W, 4, sketch=sketch, seed=3)
    assert torch.equal(Q, Q2) and torch.equal(A, A2)  # seeded: the same factors every time


@pytest.mark.parametrize("sketch", ["gaussian", "columns"])
def test_nlora_keeps_the_output_and_moves_the_sketch_into_the_adapter(sketch):
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=R, alpha=8.0, init="sketch",
                            sketch=sketch)
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        Q, Rm, A = nystrom_factors(W, R, sketch=sketch)
        torch.testing.assert_close(v.delta_weight(), Q @ Rm @ A, atol=1e-6, rtol=1e-5)  # s B N A = sketch
        torch.testing.assert_close(layer.weight + v.delta_weight(), W, atol=1e-6, rtol=0)  # residual + sketch
        eye_close(v.lora_B.T @ v.lora_B)


def test_nlora_inttune_trains_only_the_intermediate_matrix():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=R, inttune=True)
    before = {n: (layer.adapter.lora_A.clone(), layer.adapter.lora_B.clone(), layer.adapter.lora_N.clone())
              for n, layer in layers(model).items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".adapter." in n]
    assert trainable and all(n.endswith(".adapter.lora_N") for n in trainable)
    train_steps(model, batch)
    for n, layer in layers(model).items():
        A, B, N = before[n]
        v = layer.adapter
        assert torch.equal(v.lora_A, A) and torch.equal(v.lora_B, B)
        assert not torch.equal(v.lora_N, N)
        # the update since init stays inside span(B) x rowspace(A): s B (N - N0) A
        torch.testing.assert_close(v.delta_weight() - v.scale * B @ N @ A, v.scale * B @ (v.lora_N - N) @ A,
                                   atol=1e-6, rtol=0)
    n_layers = len(layers(model))
    assert lorabench.count_parameters(model)[0] == n_layers * R * R + sum(
        p.numel() for p in model.classifier.parameters())


def test_lora_nystrom_init_is_a_balanced_residual_init():
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=R, alpha=16, init="nystrom")
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        Q, Rm, A = nystrom_factors(W, R)
        torch.testing.assert_close(v.delta_weight(), Q @ Rm @ A, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(v.lora_B.norm(dim=0), v.lora_A.norm(dim=1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.weight + v.delta_weight(), W, atol=1e-6, rtol=0)
