"""ALLoRA as a variant (LoRA without dropout and alpha, gradients scaled per row): each row's
gradient is divided by sqrt(||row||^2 + 1 / eta^2), so rows at zero get eta times the gradient,
and the variant has no alpha. (ALLoRA as a rule on other structures: tests/test_rules.py; the
generic checks run on it from tests/test_contract.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.adapters import VariantError
from lorabench.inject import adapted_layers

from conftest import build_model, make_batch, outputs

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers

def test_allora_gradient_is_row_scaled_by_the_paper_coefficient():
    eta = 2.0
    torch.manual_seed(0)
    model = lorabench.apply(build_model("bert"), "allora", targets=TARGETS, r=4, eta=eta)
    plain = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, alpha=4)  # scale 1
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # identical, non-zero factors in both models
        for (_, ours), (_, ref) in zip(adapted_layers(model), adapted_layers(plain)):
            ours.adapter.lora_B.copy_(0.2 * torch.randn(ours.adapter.lora_B.shape, generator=g))
            ref.adapter.lora_A.copy_(ours.adapter.lora_A)
            ref.adapter.lora_B.copy_(ours.adapter.lora_B)
    torch.testing.assert_close(outputs(model, make_batch()), outputs(plain, make_batch()))  # no scale, no dropout
    for m in (model, plain):
        m.train()
        m(**make_batch()).loss.backward()
    for (name, ours), (_, ref) in zip(adapted_layers(model), adapted_layers(plain)):
        for p, raw in ((ours.adapter.lora_A, ref.adapter.lora_A), (ours.adapter.lora_B, ref.adapter.lora_B)):
            coef = 1.0 / torch.sqrt((p.detach() ** 2).sum(dim=1, keepdim=True) + 1.0 / eta**2)  # (rows, 1)
            torch.testing.assert_close(p.grad, raw.grad * coef, msg=f"{name}: grad is not g / sqrt(|row|^2 + 1/eta^2)")


def test_allora_rows_at_zero_get_eta_times_the_gradient_and_it_has_no_alpha():
    eta = 3.0
    torch.manual_seed(0)
    model = lorabench.apply(build_model("bert"), "allora", targets=["query"], r=4, eta=eta)
    torch.manual_seed(0)
    plain = lorabench.apply(build_model("bert"), "lora", targets=["query"], r=4, alpha=4)
    for m in (model, plain):
        m.train()
        m(**make_batch()).loss.backward()
    for (_, ours), (_, ref) in zip(adapted_layers(model), adapted_layers(plain)):
        torch.testing.assert_close(ours.adapter.lora_B.grad, eta * ref.adapter.lora_B.grad)
        assert ours.adapter.scale == 1.0
    with pytest.raises(VariantError, match="no option 'alpha'"):
        lorabench.apply(build_model("bert"), "allora", alpha=16)
