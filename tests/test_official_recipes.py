"""Issue 14: results labelled with a paper's name follow that paper's official recipe.

Each test rebuilds the official quantity from a few lines of the official formula (cited per
test) on small tensors, independently of lorabench's code, and compares: LoRA-Pro's Adam on the
full equivalent gradient, AltLoRA's A-then-B momentum step, MatryoshkaLoRA's A init, FlyLoRA's
routing and per-forward load balancing, NLoRA's init, DoRA's magnitude decay option."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lorabench
from lorabench.adapters import VariantError, get
from lorabench.inject import adapted_layers

from helpers_rules import first_adapter, single_layer
from conftest import build_model, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]


def step(model, opt, x, C):
    opt.zero_grad(set_to_none=True)
    (model(x) * C).sum().backward()
    lorabench.before_step(model)
    opt.step()


# ---- LoRA-Pro: mrflogs/LoRA-Pro, DeepSpeed-0.15.1/deepspeed/runtime/zero/stage_1_and_2.py ----------
def test_lora_pro_default_is_adam_on_the_full_equivalent_gradient_reprojected_each_step():
    model, v, x, C, G = single_layer("lora_pro")
    s, lrs = v.scale, [1e-2, 2e-2, 5e-3]  # a schedule: the rule must step with the group's current lr
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1.0))  # any optimizer: the rule moves A, B
    eye = torch.eye(6, dtype=G.dtype)
    M, V = torch.zeros_like(G), torch.zeros_like(G)
    for t, lr in enumerate(lrs, start=1):
        A, B = v.lora_A.detach().clone(), v.lora_B.detach().clone()
        PB, PA = B @ torch.linalg.pinv(B), torch.linalg.pinv(A) @ A  # projectors onto col(B), row(A)
        equiv = PB @ G + (eye - PB) @ G @ PA  # the paper's equivalent gradient (Theorem 2)
        M, V = 0.9 * M + 0.1 * equiv, 0.999 * V + 0.001 * equiv**2
        adam = (M / (1 - 0.9**t)) / ((V / (1 - 0.999**t)).sqrt() + 1e-8)  # (out, in): full-FT Adam
        # (d_A, d_B): the solution of s (B d_A + d_B A) = projection of adam closest to adam's LoRA
        # gradients (Theorem 3), by least squares over vec(d_A), vec(d_B) (row-major)
        K = s * torch.cat([torch.kron(B, torch.eye(5, dtype=G.dtype)), torch.kron(eye, A.T.contiguous())], dim=1)
        z0 = torch.cat([(s * B.T @ adam).reshape(-1), (s * adam @ A.T).reshape(-1)])
        target = (PB @ adam + (eye - PB) @ adam @ PA).reshape(-1)
        z = z0 + torch.linalg.pinv(K) @ (target - K @ z0)
        d_A, d_B = z[:10].reshape(2, 5), z[10:].reshape(6, 2)
        for g in opt.param_groups:
            g["lr"] = lr
        step(model, opt, x, C)
        torch.testing.assert_close(v.rule.exp_avg, M, atol=1e-9, rtol=1e-6)  # out x in state, per layer
        torch.testing.assert_close(v.lora_A.detach(), A - lr * d_A, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(v.lora_B.detach(), B - lr * d_B, atol=1e-7, rtol=1e-6)
    assert v.rule.exp_avg_sq.shape == (6, 5) and not opt.state  # AdamW never stepped A or B itself


def test_lora_pro_factors_option_is_adamw_on_the_adjusted_gradients():
    model, v, x, C, G = single_layer("lora_pro", pro_moments="factors")
    groups = lorabench.param_groups(model, lr=1e-2)
    assert not any(g.get("lorabench_rule_step") for g in groups)
    opt = torch.optim.AdamW(groups)
    step(model, opt, x, C)
    assert v.rule.exp_avg is None and len(opt.state) == 2  # AdamW's moments of A and B (r (in + out))


def test_rules_that_step_themselves_refuse_an_optimizer_step_without_before_step():
    model, v, x, C, G = single_layer("lora_pro")
    opt = torch.optim.SGD(lorabench.param_groups(model, lr=1e-2))
    (model(x) * C).sum().backward()
    with pytest.raises(VariantError, match="before_step"):
        opt.step()


def test_lora_pro_trains_from_the_zero_init_of_b_in_the_training_loop():
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="lora_pro")
    before = outputs(model, make_batch())
    train_steps(model, make_batch())
    for _, layer in adapted_layers(model):
        v = layer.adapter
        assert v.rule.t == 3 and v.rule.exp_avg.shape == (v.out_features, v.in_features)
        assert torch.isfinite(v.lora_A).all() and v.lora_B.abs().max() > 0
    assert not torch.allclose(outputs(model, make_batch()), before)


# ---- AltLoRA: LucasXinYu/AltLoRA, optimizer_new.py (class altlora), logtrainer.py, main_lora.py -----
def test_altlora_default_updates_a_then_b_every_step_with_plain_momentum_steps():
    beta, reg, lr = 0.9, 1e-5, 0.05
    model, v, x, C, G = single_layer("altlora")
    s = v.scale
    opt = torch.optim.SGD(lorabench.param_groups(model, lr=lr))
    I2 = torch.eye(2, dtype=G.dtype)
    A, B = v.lora_A.detach().clone(), v.lora_B.detach().clone()
    m_A, m_B = torch.zeros_like(A), torch.zeros_like(B)
    A_old, B_old = torch.zeros_like(A), torch.zeros_like(B)  # the official state starts at zeros
    for t in range(1, 4):
        g_A, g_B = s * B.T @ G, s * G @ A.T  # LoRA's gradients at (A, B), before the step
        b_pre = torch.linalg.inv(B.T @ B + reg * I2)
        m_A = beta * (b_pre @ B.T @ B_old) @ m_A + (1 - beta) * b_pre @ g_A / s**2
        B_old, A = B, A - lr / (1 - beta**t) * m_A  # A first
        a_pre = torch.linalg.inv(A @ A.T + reg * I2)  # B's projection uses the new A
        m_B = beta * m_B @ (A_old @ A.T @ a_pre) + (1 - beta) * g_B @ a_pre / s**2
        A_old, B = A, B - lr / (1 - beta**t) * m_B
        step(model, opt, x, C)
        torch.testing.assert_close(v.lora_A.detach(), A, atol=1e-9, rtol=1e-7)
        torch.testing.assert_close(v.lora_B.detach(), B, atol=1e-9, rtol=1e-7)
    assert not opt.state  # no AdamW second moment anywhere


@pytest.mark.parametrize("update", ["momentum", "adamw"])
def test_altlora_alternate_option_moves_one_factor_per_step_b_first(update):
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="altlora",
                            alt_schedule="alternate", alt_update=update)
    groups = lorabench.param_groups(model, lr=1e-2, weight_decay=0.1)  # decay would move an idle factor
    v = first_adapter(model)
    (g,) = [g for g in groups if any(p is v.lora_A for p in g["params"])]
    assert g.get("betas") == ((0.0, 0.999) if update == "adamw" else None)
    opt = torch.optim.AdamW(groups)
    model.train()
    for n_step, moving in enumerate(["B", "A", "B", "A"], start=1):
        before = {n: (l.adapter.lora_A.detach().clone(), l.adapter.lora_B.detach().clone()) for n, l in adapted_layers(model)}
        model(**make_batch()).loss.backward()
        lorabench.before_step(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, layer in adapted_layers(model):
            A0, B0 = before[n]
            moved = (not torch.equal(layer.adapter.lora_A, A0), not torch.equal(layer.adapter.lora_B, B0))
            assert moved == (moving == "A", moving == "B"), (n_step, n)


def test_altlora_adamw_update_needs_the_alternate_schedule():
    with pytest.raises(VariantError, match="alt_schedule='alternate'"):
        lorabench.apply(build_model("bert"), "lora", targets=TARGETS, optimizer="altlora", alt_update="adamw")


# ---- MatryoshkaLoRA: IST-DASLab/MatryoshkaLoRA, adapters/lora.py (A stored (in, r)) --------------
def test_matryoshka_a_starts_with_the_official_kaiming_bound_of_fan_in_r():
    r, n_in = 32, 768
    # kaiming_uniform_(a=sqrt(5)) bounds a tensor by sqrt(3) gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)),
    # fan_in = size(1): r for the official (in, r) A, in for LoRA's (r, in) one
    gain = math.sqrt(2 / (1 + 5))
    official, lora = math.sqrt(3) * gain / math.sqrt(r), math.sqrt(3) * gain / math.sqrt(n_in)
    assert (round(official, 3), round(lora, 3)) == (0.177, 0.036)  # the audit's figures
    for a_init, bound in (("official", official), ("lora", lora)):
        torch.manual_seed(0)
        model = lorabench.apply(nn.Sequential(nn.Linear(n_in, 64)), "matryoshka_lora", targets=["0"], r=r,
                                **({} if a_init == "official" else {"a_init": a_init}))
        v = first_adapter(model)
        A = v.lora_A.detach()
        assert A.shape == (r, n_in) and not v.lora_B.any()
        assert 0.99 * bound < A.abs().max() <= bound, a_init  # U(-bound, bound)
        assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    with pytest.raises(VariantError, match="a_init"):
        get("matryoshka_lora").make_options(a_init="kaiming")


# ---- FlyLoRA: gfyddha/FlyLoRA, peft/src/peft/tuners/lora/layer.py:758-770 (the fork of finetune.py) ---
def test_flylora_routes_by_top_k_of_y_plus_d_and_balances_after_every_training_forward():
    cls = get("flylora")
    torch.manual_seed(0)
    adapter = cls(16, 6, cls.make_options(r=8, k=3, bias_u=0.01))
    nn.init.normal_(adapter.lora_B)
    adapter.d.copy_(torch.linspace(-0.3, 0.3, 8))
    xs = torch.randn(3, 20, 16)
    A, B, d = adapter.lora_A, adapter.lora_B.detach(), adapter.d.clone()
    flips = 0
    for x in xs:  # the fork's forward, written out
        y = x @ A.T
        selected = torch.topk(y + d, 3, dim=-1).indices
        mask = torch.zeros_like(y).scatter_(-1, selected, 1.0)
        expected = (y * mask) @ B.T * adapter.scale
        ci = torch.bincount(selected.flatten(), minlength=8).float()
        flips += (selected.sort().values != torch.topk(y.abs() + d, 3, dim=-1).indices.sort().values).any().item()
        torch.testing.assert_close(adapter.delta(x), expected)
        d = d + 0.01 * (ci.mean() - ci).sign()
        torch.testing.assert_close(adapter.d, d)  # moved by this pass, before the next
    assert flips  # the old |y| + d score would have routed these tokens elsewhere
    adapter.eval()
    adapter.delta(xs[0])
    torch.testing.assert_close(adapter.d, d)  # evaluation leaves d alone


@pytest.mark.parametrize("routing, score", [("abs", lambda y, d: (y + d).abs()),  # the minimal flylora.py
                                            ("abs_bias", lambda y, d: y.abs() + d)])  # lorabench before issue 14
def test_flylora_routing_options(routing, score):
    cls = get("flylora")
    torch.manual_seed(1)
    adapter = cls(16, 6, cls.make_options(r=8, k=2, routing=routing, bias_update="step"))
    nn.init.normal_(adapter.lora_B)
    adapter.d.copy_(torch.linspace(-0.2, 0.2, 8))
    x = torch.randn(10, 16)
    y = x @ adapter.lora_A.T
    top = score(y, adapter.d).topk(2, dim=-1).indices
    gated = torch.zeros_like(y).scatter(-1, top, y.gather(-1, top))
    torch.testing.assert_close(adapter.delta(x), adapter.scale * gated @ adapter.lora_B.T)
    torch.testing.assert_close(adapter.d, torch.linspace(-0.2, 0.2, 8))  # "step": d waits for on_step


def test_flylora_checkpointed_forward_recomputes_the_same_routing_and_balances_once():
    from torch.utils.checkpoint import checkpoint

    cls = get("flylora")
    torch.manual_seed(2)
    plain, ckpt = (cls(16, 6, cls.make_options(r=8, k=2, bias_u=0.05)) for _ in range(2))
    ckpt.load_state_dict(plain.state_dict())
    for v in (plain, ckpt):
        nn.init.constant_(v.lora_B, 0.1)
    x = torch.randn(12, 16)
    plain.delta(x).square().sum().backward()
    checkpoint(ckpt.delta, x, use_reentrant=False).square().sum().backward()
    torch.testing.assert_close(ckpt.lora_B.grad, plain.lora_B.grad)
    torch.testing.assert_close(ckpt.d, plain.d)


# ---- NLoRA: TracyGuo2001/NLoRA, peft/src/peft/tuners/lora/layer.py (nlora_init) ---------------------
def test_nlora_default_is_the_official_nlora_init_on_top_of_w():
    r = 4
    base = build_model("bert")
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=r)
    assert not get("nlora").identity_at_init
    for name, layer in adapted_layers(model):
        W, bias = base.get_submodule(name).weight.detach(), base.get_submodule(name).bias
        assert torch.equal(layer.weight, W)  # no residual: W stays as it is
        # the official layers: nn.Linear(in, r), (r, r), (r, out) loaded with blocks of W
        lora_A, lora_N, lora_B = nn.Linear(W.shape[1], r, bias=False), nn.Linear(r, r, bias=False), nn.Linear(r, W.shape[0], bias=False)
        with torch.no_grad():
            lora_A.weight.copy_(W[:r, :]), lora_N.weight.copy_(W[:r, :r]), lora_B.weight.copy_(W[:, :r])
        x = torch.randn(3, W.shape[1])
        with torch.no_grad():
            expected = nn.functional.linear(x, W, bias) + lora_B(lora_N(lora_A(x))) * (8.0 / r)
            torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(outputs(model, make_batch()), outputs(base, make_batch()), atol=1e-6)


def test_nlora_sketch_option_keeps_the_output_at_init():
    base = build_model("bert")
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=4, init="sketch")
    torch.testing.assert_close(outputs(model, make_batch()), outputs(base, make_batch()), atol=1e-5, rtol=0)
    with pytest.raises(VariantError, match="init='sketch'"):
        get("nlora").make_options(sketch="columns")  # a sketch option without the sketch


# ---- DoRA: the magnitude's weight decay ---------------------------------------------------------------
@pytest.mark.parametrize("decay", [False, True])
def test_dora_magnitude_weight_decay_option(decay):
    model = lorabench.apply(build_model("bert"), "dora", targets=TARGETS, r=4,
                            **({"magnitude_weight_decay": True} if decay else {}))
    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.1)
    v = first_adapter(model)
    (g,) = [g for g in groups if any(p is v.magnitude for p in g["params"])]
    assert g["weight_decay"] == (0.1 if decay else 0.0)
    # with zero gradients, AdamW moves m only through decay: m <- (1 - lr wd) m
    m0 = v.magnitude.detach().clone()
    opt = torch.optim.AdamW(groups)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    torch.testing.assert_close(v.magnitude.detach(), m0 * (1 - 1e-3 * 0.1) if decay else m0)
