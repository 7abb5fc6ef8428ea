"""The optimisation-rule axis (``optimizer=``): composition with any LoRA-family structure,
the errors for combinations that make no sense, and each rule's defining property:
LoRA-Pro's projected gradient, Stable-LoRA's shrinkage, AltLoRA's projected steps (its official update: test_official_recipes),
ALLoRA's row scaling, LoRA+ learning rates, LoRA-FA's frozen A. (Generic checks: test_contract;
rules in the training loop, the CLI, save/load and PEFT export: test_rules_training.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.adapters import VariantError, get
from lorabench.adapters.rules.projected import lora_pro_gradients
from lorabench.inject import adapted_layers

from helpers_rules import first_adapter, single_layer
from conftest import build_model, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]


def group_of(groups, p) -> dict:
    (g,) = [g for g in groups if any(q is p for q in g["params"])]
    return g


def lowrank_projection(G, A=None, B=None, s: float = 1.0) -> torch.Tensor:
    """Brute force: the point of {s (B X + Y A)} (or of {s B X}, {s Y A} when one factor is
    None) nearest G, by least squares over the free factors (row-major vec)."""
    out, n = G.shape
    blocks = []
    if B is not None:
        blocks.append(torch.kron(B, torch.eye(n, dtype=G.dtype)))  # vec(B X) = (B (x) I) vec(X)
    if A is not None:
        blocks.append(torch.kron(torch.eye(out, dtype=G.dtype), A.T.contiguous()))  # vec(Y A) = (I (x) A^T) vec(Y)
    M = s * torch.cat(blocks, dim=1)
    sol = torch.linalg.lstsq(M, G.contiguous().reshape(-1), driver="gelsd").solution
    return (M @ sol).reshape(out, n)


def backward(model, x, C):
    model.zero_grad(set_to_none=True)
    (model(x) * C).sum().backward()


# ---- LoRA-Pro --------------------------------------------------------------------------------
def test_lora_pro_equivalent_gradient_is_the_least_squares_projection_of_G():
    model, v, x, C, G = single_layer("lora_pro", pro_moments="factors")  # the adjusted gradients themselves
    A, B, s = v.lora_A.detach(), v.lora_B.detach(), v.scale
    backward(model, x, C)
    g_A, g_B = v.lora_A.grad.clone(), v.lora_B.grad.clone()
    torch.testing.assert_close(g_A, s * B.T @ G)  # what LoRA's gradients are
    lorabench.before_step(model)
    equivalent = s * (B @ v.lora_A.grad + v.lora_B.grad @ A)
    best = lowrank_projection(G, A, B, s)
    torch.testing.assert_close(equivalent, best, atol=1e-7, rtol=1e-6)
    plain = s * (B @ g_A + g_B @ A)  # plain LoRA's equivalent gradient
    assert (equivalent - G).norm() < 0.99 * (plain - G).norm()


def test_lora_pro_sylvester_choice_keeps_the_gradients_closest_to_lora_s():
    """Theorem 3: any X gives the same equivalent gradient; the Sylvester solution minimises
    ||g_A' - g_A||^2 + ||g_B' - g_B||^2."""
    torch.manual_seed(1)
    A, B = torch.randn(3, 8, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    G, s = torch.randn(9, 8, dtype=torch.float64), 0.5
    g_A, g_B = s * B.T @ G, s * G @ A.T
    new_A, new_B = lora_pro_gradients(A, B, g_A, g_B, s)
    distance = lambda gA, gB: (gA - g_A).square().sum() + (gB - g_B).square().sum()  # noqa: E731
    best = distance(new_A, new_B)
    for _ in range(5):
        D = 1e-2 * torch.randn(3, 3, dtype=torch.float64)
        torch.testing.assert_close(s * (B @ (new_A + D @ A) + (new_B - B @ D) @ A), s * (B @ new_A + new_B @ A))
        assert distance(new_A + D @ A, new_B - B @ D) > best


def test_lora_pro_is_finite_at_the_zero_init_of_B():
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="lora_pro",
                            pro_moments="factors")
    model.train()
    model(**make_batch()).loss.backward()
    lorabench.before_step(model)
    for _, layer in adapted_layers(model):
        v = layer.adapter
        assert torch.isfinite(v.lora_A.grad).all() and torch.isfinite(v.lora_B.grad).all()
        assert v.lora_A.grad.abs().max() == 0 and v.lora_B.grad.abs().max() > 0  # B = 0: g_A = s B^T G = 0


# ---- Stable-LoRA ------------------------------------------------------------------------------
def test_stable_shrinks_A_by_the_factor_until_the_condition_holds_then_never_again():
    model = lorabench.apply(build_model("bert"), "lora", targets=["query"], r=4, optimizer="stable", shrink_ratio=0.1)
    v = first_adapter(model)  # query: 32 -> 32, so the condition is ||A|| < ||B||
    A0 = v.lora_A.detach().clone()
    for k in range(1, 4):  # B = 0: ||A|| < (in/out) ||B|| is false, so A shrinks
        lorabench.before_step(model)
        torch.testing.assert_close(v.lora_A.detach(), 0.9**k * A0)
    assert v.lora_A.norm().item() == pytest.approx(0.9**3 * A0.norm().item(), rel=1e-6)
    with torch.no_grad():
        v.lora_B.fill_(1.0)  # now ||A|| < ||B||: shrinking stops
    frozen = v.lora_A.detach().clone()
    lorabench.before_step(model)
    assert torch.equal(v.lora_A, frozen) and not v.rule.shrinking
    with torch.no_grad():
        v.lora_B.zero_()  # even if the condition fails again, A is never shrunk again
    lorabench.before_step(model)
    assert torch.equal(v.lora_A, frozen)


def test_stable_stopping_condition_uses_the_numel_ratio_on_non_square_layers():
    model = lorabench.apply(build_model("bert"), "lora", targets=["intermediate.dense"], r=4, optimizer="stable")
    v = first_adapter(model)  # 32 -> 64: condition ||A|| < (32 / 64) ||B||
    with torch.no_grad():
        v.lora_B.copy_(torch.ones_like(v.lora_B) * 1.5 * v.lora_A.norm() / v.lora_B.numel() ** 0.5)  # ||B|| = 1.5 ||A||
    before = v.lora_A.detach().clone()
    lorabench.before_step(model)  # 1.5 * 0.5 < 1: still shrinking
    torch.testing.assert_close(v.lora_A.detach(), (1 - 5e-4) * before)
    with torch.no_grad():
        v.lora_B.mul_(2)  # ||B|| = 3 ||A||: 3 * 0.5 > 1
    before = v.lora_A.detach().clone()
    lorabench.before_step(model)
    assert torch.equal(v.lora_A, before)


# ---- ALLoRA, LoRA+, LoRA-FA as rules on other structures ----------------------------------------
def test_allora_rule_scales_each_row_of_dora_gradients():
    eta = 3.0
    ruled = lorabench.apply(build_model("bert"), "dora", targets=TARGETS, r=4, optimizer="allora", eta=eta)
    plain = lorabench.apply(build_model("bert"), "dora", targets=TARGETS, r=4)
    for (_, a), (_, b) in zip(adapted_layers(ruled), adapted_layers(plain)):
        with torch.no_grad():
            b.adapter.load_state_dict(a.adapter.state_dict())
            for m in (a, b):
                m.adapter.lora_B.copy_(0.1 * torch.ones_like(m.adapter.lora_B))
    for m in (ruled, plain):
        m.train()
        m(**make_batch()).loss.backward()
    lorabench.before_step(ruled)
    for (_, a), (_, b) in zip(adapted_layers(ruled), adapted_layers(plain)):
        for p, q in ((a.adapter.lora_A, b.adapter.lora_A), (a.adapter.lora_B, b.adapter.lora_B)):
            coef = 1 / torch.sqrt(p.detach().square().sum(1, keepdim=True) + 1 / eta**2)
            torch.testing.assert_close(p.grad, q.grad * coef)
        torch.testing.assert_close(a.adapter.magnitude.grad, b.adapter.magnitude.grad)  # not a factor


def test_dora_with_lora_plus_gives_B_ratio_times_lr_and_A_magnitude_lr():
    model = lorabench.apply(build_model("bert"), "dora", targets=TARGETS, r=4, optimizer="lora_plus", lr_ratio=8)
    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.01)
    for _, layer in adapted_layers(model):
        v = layer.adapter
        assert group_of(groups, v.lora_B)["lr"] == pytest.approx(8e-3)
        assert group_of(groups, v.lora_A)["lr"] == 1e-3 and group_of(groups, v.magnitude)["lr"] == 1e-3
        assert group_of(groups, v.lora_B)["weight_decay"] == group_of(groups, v.lora_A)["weight_decay"] == 0.01
        assert group_of(groups, v.magnitude)["weight_decay"] == 0.0  # DoRA's own rule still holds
    assert group_of(groups, model.classifier.weight)["lr"] == 1e-3


def test_lora_fa_rule_freezes_A_of_pissa_and_dora():
    for variant in ("pissa", "dora"):
        model = lorabench.apply(build_model("bert"), variant, targets=TARGETS, r=4, optimizer="lora_fa")
        groups = lorabench.param_groups(model, lr=1e-2, weight_decay=0.5)
        A0 = {n: l.adapter.lora_A.detach().clone() for n, l in adapted_layers(model)}
        train_steps(model, make_batch())
        for n, layer in adapted_layers(model):
            v = layer.adapter
            assert not v.lora_A.requires_grad and all(p is not v.lora_A for g in groups for p in g["params"])
            assert torch.equal(v.lora_A, A0[n])
        per_layer = sum(4 * l.adapter.out_features + (l.adapter.out_features if variant == "dora" else 0)
                        for _, l in adapted_layers(model))
        head = sum(p.numel() for p in model.classifier.parameters())
        assert lorabench.count_parameters(model)[0] == per_layer + head  # B (+ DoRA's magnitude) only
    pissa = get("pissa")
    assert pissa.num_trainable_formula(32, 64, pissa.make_options(r=4, optimizer="lora_fa")) == 4 * 64


def test_variants_lora_plus_and_lora_fa_are_the_lora_structure_with_a_default_rule():
    for variant, opts in (("lora_plus", {"lr_ratio": 4}), ("lora_fa", {})):
        alias = lorabench.apply(build_model("bert"), variant, targets=TARGETS, r=4, **opts)
        composed = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer=variant, **opts)
        train_steps(alias, make_batch())
        train_steps(composed, make_batch())
        torch.testing.assert_close(outputs(alias, make_batch()), outputs(composed, make_batch()), atol=0, rtol=0)
        assert get(variant).make_options().optimizer == variant


# ---- combinations that make no sense ---------------------------------------------------------
@pytest.mark.parametrize("variant, opts, message", [
    ("vera", {"optimizer": "lora_fa"}, r"variant 'vera' keeps no plain dense factors A, B for a rule to act on\. Use one of: .*lora.*pissa"),
    ("lora_xs", {"optimizer": "lora_pro"}, r"variant 'lora_xs' keeps no plain dense factors.*variant='lora', optimizer='lora_pro'"),
    ("lora", {"optimizer": "lora_fa", "init": "swapped"}, r"init='swapped' sets A = 0.*use init='kaiming'"),
    ("lora", {"optimizer": "sgd"}, r"unknown optimizer 'sgd'; choose one of: adamw, lora_plus"),
    ("lora", {"lr_ratio": 4}, r"'lora' has no option 'lr_ratio' with optimizer='adamw' \(lr_ratio belongs to "
                              r"optimizer='lora_plus': add optimizer='lora_plus' or drop lr_ratio\); its options are: "
                              r"r, alpha, dropout, init, rslora, svd_niter, optimizer$"),
    ("dora", {"optimizer": "lora_plus", "eta": 3}, r"no option 'eta' with optimizer='lora_plus'.*svd_niter, magnitude_weight_decay, optimizer, lr_ratio$"),
    ("dylora", {"optimizer": "altlora"}, r"'dylora' trains a different rank each step; use optimizer='adamw'"),
    ("allora", {"optimizer": "lora_plus"}, r"variant 'allora' has its optimisation rule built in.*variant='lora'"),
    ("lora", {"optimizer": "stable", "shrink_ratio": 1.0}, r"shrink_ratio must be in \[0, 1\)"),
    ("lora", {"optimizer": "altlora", "alt_beta": -0.1}, r"alt_beta must be in \[0, 1\)"),
])
def test_bad_combinations_raise_before_the_model_changes(variant, opts, message):
    model = build_model("bert")
    with pytest.raises(VariantError, match=message):
        lorabench.apply(model, variant, targets=TARGETS, **opts)
    assert getattr(model, "lorabench_state", None) is None and not list(adapted_layers(model))


def test_adamw_is_accepted_by_every_variant():
    model = lorabench.apply(build_model("bert"), "vera", targets=TARGETS, r=4, optimizer="adamw")
    assert "optimizer" not in model.lorabench_state.options  # vera has no rules: nothing to record
    assert first_adapter(model).rule.name == "adamw"
