"""FlyLoRA (a frozen sparse random A, top-k routing of the r components to B): A is frozen,
sparse at density k / r and seeded, only k of r components reach B, the adapter is the identity
at init and balances its experts by a bias, and it can neither merge nor export to PEFT.
(The generic contract is in tests/test_contract.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench import VariantError
from lorabench.adapters import get
from lorabench.inject import adapted_layers

from conftest import TARGETS, make_batch, train_steps

BERT = TARGETS["bert"]

def _layers(model):
    return [layer for _, layer in adapted_layers(model)]


def test_flylora_a_is_frozen_sparse_and_seeded(make_model):
    torch.manual_seed(0)
    model = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=8, k=2)
    layers = _layers(model)
    before = [layer.adapter.lora_A.clone() for layer in layers]
    for layer in layers:
        A = layer.adapter.lora_A  # (r, in)
        assert not isinstance(A, torch.nn.Parameter)
        assert ((A != 0).sum(dim=1) == round(layer.adapter.in_features * 2 / 8)).all()  # density k / r
        assert A[A != 0].std().item() == pytest.approx(1 / 8, rel=0.35)  # N(0, 1/r^2)
    assert not torch.equal(before[0], before[1])  # each layer its own projection
    assert lorabench.count_parameters(model)[0] == sum(8 * l.adapter.out_features for l in layers) + sum(
        p.numel() for p in model.classifier.parameters())
    train_steps(model, make_batch())
    assert all(torch.equal(layer.adapter.lora_A, a) for layer, a in zip(layers, before))
    torch.manual_seed(0)
    again = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=8, k=2)
    assert torch.equal(_layers(again)[0].adapter.lora_A, before[0])  # same seed, same A
    p4 = get("flylora")(64, 8, get("flylora").make_options(r=8, k=2, density=0.5)).lora_A
    assert ((p4 != 0).sum(dim=1) == 32).all()


def test_flylora_routes_only_k_of_r_components_to_b():
    cls = get("flylora")
    torch.manual_seed(0)
    adapter = cls(16, 6, cls.make_options(r=8, k=3))
    torch.nn.init.normal_(adapter.lora_B)
    adapter.d.copy_(torch.linspace(-0.05, 0.05, 8))
    x = torch.randn(4, 5, 16)
    y = x @ adapter.lora_A.T  # (4, 5, 8)
    top = (y + adapter.d).topk(3, dim=-1).indices  # the official fork's routing score
    gated = torch.zeros_like(y).scatter(-1, top, y.gather(-1, top))  # only the k winners pass
    torch.testing.assert_close(adapter.delta(x), adapter.scale * gated @ adapter.lora_B.T)
    assert ((gated != 0).sum(-1) == 3).all()
    adapter.delta(x[0, 0]).sum().backward()  # one token: exactly k columns of B learn
    assert (adapter.lora_B.grad.abs().sum(0) > 0).sum().item() == 3


def test_flylora_is_identity_at_init_and_balances_its_experts():
    cls = get("flylora")
    torch.manual_seed(0)
    adapter = cls(16, 6, cls.make_options(r=8, k=2, bias_u=0.01, bias_update="step")).eval()
    x = torch.randn(64, 16)
    assert not adapter.delta(x).any()  # B = 0
    assert not adapter.counts.any()  # eval forwards do not count
    adapter.train()
    adapter.delta(x)
    counts = adapter.counts.clone()
    assert counts.sum() == 64 * 2
    adapter.on_step(1, 10)
    torch.testing.assert_close(adapter.d, 0.01 * torch.sign(counts.mean() - counts))  # busy experts lose bias
    assert not adapter.counts.any() and "d" in adapter.state_dict() and "counts" not in adapter.state_dict()
    with pytest.raises(VariantError, match="k"):
        cls.make_options(r=4, k=8)


def test_flylora_cannot_merge_or_export_to_peft(make_model, tmp_path):
    model = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=4, k=2)
    with pytest.raises(VariantError, match="cannot be merged"):
        lorabench.merge(model)
    assert not any(layer.merged for layer in _layers(model))
    with pytest.raises(VariantError, match="flylora"):
        lorabench.export_peft(model, tmp_path)
