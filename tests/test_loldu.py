"""LoLDU (an LDU decomposition of W; only the diagonal z and the scale sigma train): the factors
are the (partially pivoted) LDU decomposition and the output is unchanged at init, training moves
z and sigma only, and the update relative to the original W exports to PEFT as a rank-r LoRA.
(The generic checks run on it from tests/test_contract.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers

def test_loldu_factors_are_the_ldu_decomposition_and_output_is_unchanged():
    batch = make_batch()
    base_model = build_model("bert")
    W = base_model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    base = outputs(base_model, batch)
    model = lorabench.apply(build_model("bert"), "loldu", targets=TARGETS, r=4)
    torch.testing.assert_close(outputs(model, batch), base, atol=1e-5, rtol=0)
    full_L, d, full_U = lorabench.adapters.loldu.ldu(W)
    torch.testing.assert_close(full_L @ torch.diag(d) @ full_U, W, atol=1e-6, rtol=0)
    for n, layer in layers(model).items():
        v = layer.adapter
        assert torch.allclose(torch.diagonal(v.lora_U), torch.ones(4))  # unit upper rows
        assert torch.equal(v.lora_U.tril(-1), torch.zeros_like(v.lora_U))
        assert v.lora_L.abs().max() <= 1 + 1e-6  # partial pivoting: |L| <= 1
        assert v.sigma.item() == pytest.approx(1 / 4)  # alpha / r
    v = layers(model)["bert.encoder.layer.0.attention.self.query"].adapter
    torch.testing.assert_close(v.lora_L, full_L[:, :4])
    torch.testing.assert_close(v.z, d[:4])


def test_loldu_trains_only_the_diagonal_and_scale(tmp_path):
    model, batch = build_model("bert"), make_batch()
    lorabench.apply(model, "loldu", targets=TARGETS, r=4)
    n_layers = len(layers(model))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert lorabench.count_parameters(model)[0] == head + n_layers * (4 + 1)
    frozen = {n: (l.adapter.lora_L.clone(), l.adapter.lora_U.clone(), l.weight.clone())
              for n, l in layers(model).items()}
    start = {n: (l.adapter.z.detach().clone(), l.adapter.sigma.item()) for n, l in layers(model).items()}
    train_steps(model, batch)
    for n, layer in layers(model).items():
        v = layer.adapter
        assert all(torch.equal(a, b) for a, b in zip((v.lora_L, v.lora_U, layer.weight), frozen[n]))
        assert not torch.equal(v.z, start[n][0]) and v.sigma.item() != start[n][1]
        # the update relative to the original W is the rank-r LoRA it exports to PEFT
        B, A = v.lowrank_factors()
        torch.testing.assert_close(B @ A, v.delta_weight() - v.base_offset(), atol=1e-6, rtol=0)
    out = outputs(model, batch)
    lorabench.export_peft(model, tmp_path)
    peft = pytest.importorskip("peft")
    theirs = peft.PeftModel.from_pretrained(build_model("bert"), tmp_path).eval()  # onto the ORIGINAL W
    torch.testing.assert_close(outputs(theirs, batch), out, atol=1e-5, rtol=0)
