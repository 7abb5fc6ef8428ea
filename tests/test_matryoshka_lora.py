"""MatryoshkaLoRA (every nested prefix rank trained at once) and how nested-rank adapters are
scored: AURAC, the normalised trapezoid over the evaluated ranks; the diagonal P as the sum of
the nested scales; the training forward; ``set_rank`` equal to a plain LoRA built from the prefix;
eval_p; ``evaluate_ranks`` sweeping powers of two and restoring the model. (The generic contract
is in tests/test_contract.py; its PEFT export: tests/test_peft_export.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import lorabench
from lorabench import VariantError
from lorabench.adapters import get
from lorabench.inject import adapted_layers, head_modules
from lorabench.metrics import aurac

from conftest import TARGETS, make_batch, outputs, train_steps

BERT = TARGETS["bert"]

def _layers(model):
    return [layer for _, layer in adapted_layers(model)]


def _copy_head(src, dst):
    for h in head_modules(src):
        dst.get_submodule(h).load_state_dict(src.get_submodule(h).state_dict())


# ---- AURAC ------------------------------------------------------------------------------------
def test_matryoshka_aurac_is_the_normalised_trapezoid_over_the_evaluated_ranks():
    ranks, acc = [1, 2, 4, 8], [0.5, 0.6, 0.7, 0.8]
    # linear: (1 * 1.1/2 + 2 * 1.3/2 + 4 * 1.5/2) / (8 - 1) = 4.85 / 7
    assert aurac(ranks, acc) == pytest.approx(4.85 / 7)
    # log2: each doubling weighs 1: (0.55 + 0.65 + 0.75) / 3
    assert aurac(ranks, acc, scale="log2") == pytest.approx(0.65)
    assert aurac([1, 4, 32], [0.7, 0.7, 0.7]) == pytest.approx(0.7)  # a flat curve gives its value
    assert aurac([16], [0.42]) == 0.42
    assert lorabench.aurac is aurac
    with pytest.raises(ValueError, match="increasing"):
        aurac([4, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one score per rank"):
        aurac([1, 2], [0.1])


# ---- MatryoshkaLoRA ---------------------------------------------------------------------------
def test_matryoshka_p_is_the_sum_of_the_nested_scales():
    cls = get("matryoshka_lora")
    s = {b: 1 / math.sqrt(b) for b in (1, 2, 4, 8)}  # defaults: alpha = 1, rsLoRA scaling
    P = cls.p_diagonal(cls.make_options(r=8))
    expected = [s[1] + s[2] + s[4] + s[8], s[2] + s[4] + s[8]] + [s[4] + s[8]] * 2 + [s[8]] * 4
    torch.testing.assert_close(P, torch.tensor(expected))
    P = cls.p_diagonal(cls.make_options(r=8, train_ranks=[2, 8], alpha=2.0, rslora=False))  # s_b = 2 / b
    torch.testing.assert_close(P, torch.tensor([1.0 + 0.25] * 2 + [0.25] * 6))
    with pytest.raises(VariantError, match="add 8"):
        cls.make_options(r=8, train_ranks=[1, 2, 4])
    with pytest.raises(VariantError, match="outside"):
        cls.make_options(r=8, train_ranks="1,9,8")


def test_matryoshka_training_forward_trains_every_nested_lora_at_once():
    torch.manual_seed(0)
    adapter = get("matryoshka_lora")(12, 10, get("matryoshka_lora").make_options(r=4))
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(3, 5, 12)
    s = lambda b: 1 / math.sqrt(b)  # noqa: E731
    nested = sum(s(b) * x @ adapter.lora_A[:b].T @ adapter.lora_B[:, :b].T for b in (1, 2, 4))
    adapter.train()
    torch.testing.assert_close(adapter.delta(x), nested, rtol=1e-5, atol=1e-6)
    adapter.eval()  # default eval rank r: the plain rank-4 LoRA, P not applied
    torch.testing.assert_close(adapter.delta(x), s(4) * x @ adapter.lora_A.T @ adapter.lora_B.T, rtol=1e-5, atol=1e-6)


def test_matryoshka_set_rank_equals_a_plain_lora_built_from_the_prefix(make_model):
    model = lorabench.apply(make_model("bert"), "matryoshka_lora", targets=BERT, r=4)
    batch = make_batch()
    train_steps(model, batch)
    for b in (1, 2, 3, 4):
        lorabench.set_rank(model, b)
        plain = lorabench.apply(make_model("bert"), "lora", targets=BERT, r=b, alpha=1.0, rslora=True)
        for src, dst in zip(_layers(model), _layers(plain)):
            dst.adapter.lora_A.data.copy_(src.adapter.lora_A[:b])
            dst.adapter.lora_B.data.copy_(src.adapter.lora_B[:, :b])
        _copy_head(model, plain)
        torch.testing.assert_close(outputs(model, batch), outputs(plain, batch), atol=1e-5, rtol=0)
    assert len({outputs(lorabench.set_rank(model, b), batch).sum().item() for b in (1, 2, 4)}) == 3


def test_matryoshka_eval_p_keeps_p_at_every_rank():
    cls = get("matryoshka_lora")
    torch.manual_seed(1)
    adapter = cls(12, 10, cls.make_options(r=4, eval_p=True))
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(7, 12)
    adapter.train()
    trained = adapter.delta(x)
    adapter.eval()
    torch.testing.assert_close(adapter.delta(x), trained)  # rank r in eval == the trained function
    adapter.set_rank(2)
    P = adapter.P[:2]
    torch.testing.assert_close(adapter.delta(x), x @ adapter.lora_A[:2].T @ (adapter.lora_B[:, :2] * P).T)
    torch.testing.assert_close(adapter.delta_weight(), (adapter.lora_B[:, :2] * P) @ adapter.lora_A[:2])


def test_matryoshka_evaluate_ranks_sweeps_powers_of_two_and_restores_the_model(make_model):
    model = lorabench.apply(make_model("bert"), "matryoshka_lora", targets=BERT, r=8)
    lorabench.set_rank(model, 3)
    model.train()
    seen = []

    def evaluate(m):
        assert not m.training
        seen.append({int(layer.adapter.eval_rank) for layer in _layers(m)})
        return 0.1 * int(_layers(m)[0].adapter.eval_rank)

    scores = lorabench.evaluate_ranks(model, evaluate)
    assert list(scores) == [1, 2, 4, 8] and seen == [{1}, {2}, {4}, {8}]
    assert scores[4] == pytest.approx(0.4)
    assert all(int(layer.adapter.eval_rank) == 3 for layer in _layers(model)) and model.training
    assert aurac(list(scores), list(scores.values())) == pytest.approx((0.15 + 0.6 + 2.4) / 7)
    assert list(lorabench.evaluate_ranks(model, evaluate, ranks=[2, 6])) == [2, 6]
    dylora = lorabench.apply(make_model("bert"), "dylora", targets=BERT, r=4)
    assert list(lorabench.evaluate_ranks(dylora, lambda m: 0.0)) == [1, 2, 4]
    with pytest.raises(VariantError, match="fixed rank"):
        lorabench.evaluate_ranks(lorabench.apply(make_model("bert"), "lora", targets=BERT, r=4), evaluate)
