"""Structural variants: DoRA, VeRA, LoRA-XS, and the full / head baselines.

Each method's math is checked against a direct (slow, obvious) formula or against PEFT as
an oracle, on tiny models built from configs (see conftest.py).
"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.adapters.base import VariantError
from lorabench.adapters.vera import _VeraDelta
from lorabench.checkpoint import adapter_tensors
from lorabench.inject import adapted_layers

from conftest import outputs, train_steps


def _layers(model):
    return dict(adapted_layers(model))


@torch.no_grad()
def _perturb(model, std=0.1, seed=0):
    """Move every trainable adapter tensor away from its init, so the adapters do something."""
    g = torch.Generator().manual_seed(seed)
    for _, layer in adapted_layers(model):
        for p in layer.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ---- DoRA ------------------------------------------------------------------------------
def _dora_reference(layer, x, detach_norm=True):
    """The paper's formula, written directly: W' = m (W + sBA) / ||W + sBA||_row."""
    a = layer.adapter
    V = layer.weight + a.scale * (a.lora_B @ a.lora_A)  # (out, in)
    n = torch.linalg.vector_norm(V, dim=1)
    if detach_norm:
        n = n.detach()
    W_new = (a.magnitude / n)[:, None] * V
    return torch.nn.functional.linear(x, W_new, layer.bias)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_dora_forward_equals_direct_formula(make_model, arch):
    targets = {"bert": ["query", "dense"], "gpt2": ["c_attn", "c_fc"]}[arch]  # incl. non-square, Conv1D
    model = lorabench.apply(make_model(arch), "dora", targets=targets, r=4, alpha=8)
    _perturb(model)
    for name, layer in _layers(model).items():
        x_in = torch.randn(3, 5, layer.adapter.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(x_in), _dora_reference(layer, x_in), atol=1e-5, rtol=1e-5, msg=name)


def test_dora_dropout_drops_only_the_adapter_input(bert):
    # Official DoRA with dropout: y = W x + b + (m/n - 1) W x_d + (m/n) s B A x_d
    model = lorabench.apply(bert, "dora", targets=["query"], r=4, dropout=0.5)
    _perturb(model)
    layer = next(iter(_layers(model).values())).train()
    a = layer.adapter
    x = torch.randn(2, 5, 32)
    torch.manual_seed(7)
    ours = layer(x)
    torch.manual_seed(7)
    x_d = torch.nn.functional.dropout(x, 0.5)
    scale = a.magnitude / torch.linalg.vector_norm(layer.weight + a.scale * a.lora_B @ a.lora_A, dim=1)
    W, b = layer.weight, layer.bias
    ref = x @ W.T + b + (scale - 1) * (x_d @ W.T) + scale * a.scale * (x_d @ a.lora_A.T @ a.lora_B.T)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _dora_reference(layer, x), atol=1e-5, rtol=1e-5)


def test_dora_norm_matches_direct_and_follows_base_weight_changes(bert):
    model = lorabench.apply(bert, "dora", targets=["query", "dense"], r=4)
    _perturb(model)
    for layer in _layers(model).values():
        a = layer.adapter
        direct = torch.linalg.vector_norm(layer.weight + a.scale * a.lora_B @ a.lora_A, dim=1)
        torch.testing.assert_close(a.weight_norm(layer.weight), direct, atol=0, rtol=1e-5)
        # A cached ||W||^2 must follow in-place writes to the frozen weight ...
        layer.set_weight(layer.weight * 2.0)
        direct = torch.linalg.vector_norm(layer.weight + a.scale * a.lora_B @ a.lora_A, dim=1)
        torch.testing.assert_close(a.weight_norm(layer.weight), direct, atol=0, rtol=1e-5)
        # ... and replacing the weight tensor.
        layer.base_layer.weight = torch.nn.Parameter(layer.weight.detach() * 0.5, requires_grad=False)
        direct = torch.linalg.vector_norm(layer.weight + a.scale * a.lora_B @ a.lora_A, dim=1)
        torch.testing.assert_close(a.weight_norm(layer.weight), direct, atol=0, rtol=1e-5)


def test_dora_norm_is_detached_from_the_graph(bert):
    model = lorabench.apply(bert, "dora", targets=["query"], r=4, alpha=8)
    _perturb(model)
    layer = next(iter(_layers(model).values()))
    a = layer.adapter
    x = torch.randn(4, 6, 32, requires_grad=True)
    g = torch.randn(4, 6, 32)
    params = [a.magnitude, a.lora_A, a.lora_B, x]

    ours = torch.autograd.grad((layer(x) * g).sum(), params)
    detached = torch.autograd.grad((_dora_reference(layer, x, True) * g).sum(), params)
    attached = torch.autograd.grad((_dora_reference(layer, x, False) * g).sum(), params)
    for o, d in zip(ours, detached):
        torch.testing.assert_close(o, d, atol=1e-5, rtol=1e-4)
    # The check can fail: differentiating through the norm gives other gradients for A and B.
    assert not torch.allclose(ours[2], attached[2], atol=1e-5, rtol=1e-4)


def test_dora_linear_backward_is_correct():
    from lorabench.adapters.dora import _DoRALinear

    def fn(x, W, bias, A, B, scale, s=0.7):
        V = W.detach() + s * B.detach() @ A.detach()  # formed without grad, as forward does
        return _DoRALinear.apply(x, V, bias, A, B, scale, s)

    def reference(x, W, bias, A, B, scale, s=0.7):
        u = x @ W.detach().T + s * (x @ A.T) @ B.T
        return scale * u + (0 if bias is None else bias)

    g = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (4, 5), (4,), (3, 5), (4, 3), (4,)]  # x, W, bias, A, B, scale
    args = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    args[1].requires_grad_(False)
    assert torch.autograd.gradcheck(fn, args)
    for bias in (args[2], None):
        a = [*args[:2], bias, *args[3:]]
        grads = torch.autograd.grad(fn(*a).square().sum(), [t for t in a if t is not None and t.requires_grad])
        refs = torch.autograd.grad(reference(*a).square().sum(), [t for t in a if t is not None and t.requires_grad])
        for ours, ref in zip(grads, refs):
            torch.testing.assert_close(ours, ref)
    # a retained graph can be differentiated twice (the saved output is consumed by the first)
    y = fn(*args).square().sum()
    first = torch.autograd.grad(y, args[5], retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(y, args[5])[0], first)


def test_dora_low_precision_path_matches_fp32(make_model, batch):
    ours = lorabench.apply(make_model("bert"), "dora", targets=["query", "value"], r=4)
    _perturb(ours)
    low = lorabench.apply(make_model("bert"), "dora", targets=["query", "value"], r=4)
    low.load_state_dict(ours.state_dict())
    low.double()  # not fp32: the path that keeps the LoRA term apart and uses weight_norm()
    torch.testing.assert_close(outputs(low, batch).float(), outputs(ours, batch), atol=1e-5, rtol=1e-5)


def test_dora_merge_unmerge_round_trip(bert, batch):
    model = lorabench.apply(bert, "dora", targets=["query", "value", "dense"], r=4)
    _perturb(model)
    before = {n: layer.weight.detach().clone() for n, layer in _layers(model).items()}
    out = outputs(model, batch)
    lorabench.merge(model)
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=1e-5)
    lorabench.unmerge(model)
    for n, layer in _layers(model).items():
        assert (layer.weight - before[n]).abs().max() <= 1e-6, n
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=1e-5)


def test_dora_magnitude_is_the_norm_the_forward_sees_with_residual_init(make_model, batch):
    original = make_model("bert")
    W0 = {n: m.weight.detach().clone() for n, m in original.named_modules() if n.endswith("query")}
    model = lorabench.apply(make_model("bert"), "dora", targets=["query"], r=4, init="pissa")
    for name, layer in _layers(model).items():
        a = layer.adapter
        # the frozen base is now the residual W - s B0 A0, but W' = W at init, so m = ||W||_row
        assert not torch.allclose(layer.weight, W0[name])
        torch.testing.assert_close(a.magnitude.detach(), torch.linalg.vector_norm(W0[name], dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs(model, batch), outputs(original, batch), atol=1e-5, rtol=1e-5)


def test_dora_magnitude_has_no_weight_decay(bert):
    model = lorabench.apply(bert, "dora", targets=["query"], r=4)
    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.1)
    mags = {id(layer.adapter.magnitude) for layer in _layers(model).values()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        if ids & mags:
            assert g["weight_decay"] == 0.0 and mags <= ids
    lora_ids = {id(layer.adapter.lora_B) for layer in _layers(model).values()}
    assert any(lora_ids <= {id(p) for p in g["params"]} and g["weight_decay"] == 0.1 for g in groups)


def _peft_load(model, config, tensors):
    from peft import get_peft_model, set_peft_model_state_dict

    peft_model = get_peft_model(model, config)
    result = set_peft_model_state_dict(peft_model, tensors)
    assert not result.unexpected_keys, result.unexpected_keys  # the head is the same seeded one
    return peft_model.eval()


def test_dora_matches_peft(make_model, batch):
    from peft import LoraConfig

    ours = lorabench.apply(make_model("bert"), "dora", targets=["query", "value"], r=4, alpha=8)
    _perturb(ours)
    tensors = {}
    for name, layer in _layers(ours).items():
        for k, t in layer.adapter.peft_tensors().items():
            tensors[f"base_model.model.{name}.{k}"] = t
    cfg = layer.adapter.peft_config()
    assert "lora_magnitude_vector" in layer.adapter.peft_tensors() and cfg["use_dora"]
    config = LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], use_dora=True, target_modules=["query", "value"])
    theirs = _peft_load(make_model("bert"), config, tensors)
    torch.testing.assert_close(outputs(ours, batch), outputs(theirs, batch), atol=1e-5, rtol=1e-5)


# ---- VeRA ------------------------------------------------------------------------------
def test_vera_shares_one_copy_of_the_projections(bert):
    r = 8
    model = lorabench.apply(bert, "vera", targets="all-linear", r=r)
    shared = model.lorabench_shared
    assert shared.vera_A.shape == (r, 64) and shared.vera_B.shape == (64, r)  # widest in / out (MLP 32->64->32)
    shapes = set()
    for name, layer in _layers(model).items():
        a = layer.adapter
        assert a.vera_A.shape == (r, a.in_features) and a.vera_B.shape == (a.out_features, r), name
        assert a.vera_A.untyped_storage().data_ptr() == shared.vera_A.untyped_storage().data_ptr()
        assert a.vera_B.untyped_storage().data_ptr() == shared.vera_B.untyped_storage().data_ptr()
        torch.testing.assert_close(a.vera_A, shared.vera_A[:, : a.in_features], atol=0, rtol=0)
        shapes.add((a.in_features, a.out_features))
        assert not a.vera_A.requires_grad and not a.vera_B.requires_grad
    assert {(32, 64), (64, 32), (32, 32)} <= shapes
    saved = adapter_tensors(model)
    assert [k for k in saved if k.endswith("vera_A")] == ["lorabench_shared.vera_A"]
    assert [k for k in saved if k.endswith("vera_B")] == ["lorabench_shared.vera_B"]


def test_vera_identity_at_init_and_parameter_count(bert, make_model, batch):
    r = 8
    model = lorabench.apply(bert, "vera", targets="all-linear", r=r)
    torch.testing.assert_close(outputs(model, batch), outputs(make_model("bert"), batch), atol=0, rtol=0)
    head = sum(p.numel() for p in model.classifier.parameters())
    trainable, _ = lorabench.count_parameters(model)
    layers = _layers(model)
    assert trainable - head == sum(r + layer.adapter.out_features for layer in layers.values())
    for layer in layers.values():
        assert {n for n, p in layer.adapter.named_parameters()} == {"lambda_d", "lambda_b"}
        assert torch.all(layer.adapter.lambda_b == 0) and torch.all(layer.adapter.lambda_d == 0.1)


def test_vera_projection_seed_decides_the_projections(make_model):
    def shared(seed):
        return lorabench.apply(make_model("bert"), "vera", targets="all-linear", r=8, projection_seed=seed).lorabench_shared

    a, b, c = shared(0), shared(0), shared(1)
    torch.manual_seed(123)  # the global RNG must not matter
    d = shared(0)
    for x in (b, d):
        assert torch.equal(a.vera_A, x.vera_A) and torch.equal(a.vera_B, x.vera_B)
    assert not torch.equal(a.vera_A, c.vera_A)


def test_vera_projections_equal_peft_for_the_same_seed(make_model):
    from peft import VeraConfig, get_peft_model

    ours = lorabench.apply(make_model("bert"), "vera", targets="all-linear", r=8, projection_seed=3).lorabench_shared
    theirs = get_peft_model(make_model("bert"), VeraConfig(r=8, target_modules="all-linear", projection_prng_key=3))
    torch.testing.assert_close(ours.vera_A, theirs.base_model.vera_A["default"], atol=0, rtol=0)
    torch.testing.assert_close(ours.vera_B, theirs.base_model.vera_B["default"], atol=0, rtol=0)


def test_vera_merged_and_per_token_paths_agree(make_model, batch):
    results = {}
    for compute in ("per_token", "merged"):
        model = lorabench.apply(make_model("bert"), "vera", targets="all-linear", r=8, compute=compute)
        _perturb(model)
        loss = model(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for _, layer in adapted_layers(model) for p in (layer.adapter.lambda_b, layer.adapter.lambda_d)]
        results[compute] = (loss.detach(), grads)
    torch.testing.assert_close(results["per_token"][0], results["merged"][0], atol=1e-6, rtol=1e-5)
    for g1, g2 in zip(results["per_token"][1], results["merged"][1]):
        assert g1.abs().max() > 0
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


def test_vera_delta_backward_is_correct():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(5, 4), (5,), (3,), (3, 4), (5, 3)]]
    for i in (1, 2):
        args[i].requires_grad_(True)
    assert torch.autograd.gradcheck(_VeraDelta.apply, args)  # W + dW, W frozen
    args[0].requires_grad_(True)
    assert torch.autograd.gradcheck(_VeraDelta.apply, args)  # W trained too
    assert torch.autograd.gradcheck(_VeraDelta.apply, [None, *args[1:]])  # dW alone


def test_vera_low_precision_stays_per_token(make_model):
    # bf16 W + dW would round a small dW away, so "auto" keeps the update apart there.
    ids = torch.randint(3, 100, (4, 16), generator=torch.Generator().manual_seed(0))  # 64 tokens
    outs = {}
    for compute in ("auto", "per_token", "merged"):
        model = lorabench.apply(make_model("bert").to(torch.bfloat16), "vera", targets=["query"], r=256, compute=compute)
        _perturb(model, std=0.05)
        adapter = next(iter(_layers(model).values())).adapter
        assert adapter.merged_is_cheaper(torch.zeros(64, 32))  # fp32 would take the merged path
        with torch.no_grad():
            outs[compute] = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # (4, 16, 32)
    assert torch.equal(outs["auto"], outs["per_token"]) and not torch.equal(outs["auto"], outs["merged"])


def test_vera_auto_picks_the_cheaper_path(bert):
    model = lorabench.apply(bert, "vera", targets=["query"], r=256)
    a = next(iter(_layers(model).values())).adapter
    assert a.merged_is_cheaper(torch.zeros(32, 64, 32))  # many tokens: one (out, in) matmul wins
    assert not a.merged_is_cheaper(torch.zeros(1, 2, 32))  # a couple of tokens: per token wins
    with pytest.raises(VariantError, match="d_initial"):
        lorabench.apply(lorabench.unload(model), "vera", d_initial=0.0)


def test_vera_matches_peft(make_model, batch):
    from peft import VeraConfig

    ours = lorabench.apply(make_model("bert"), "vera", targets=["query", "value", "dense"], r=8)
    _perturb(ours)
    cls = type(next(iter(_layers(ours).values())).adapter)
    tensors = dict(cls.peft_shared_tensors(ours.lorabench_shared))
    for name, layer in _layers(ours).items():
        for k, t in layer.adapter.peft_tensors().items():
            tensors[f"base_model.model.{name}.{k}"] = t
    cfg = layer.adapter.peft_config()
    assert cfg["peft_type"] == "VERA" and cfg["save_projection"]
    config = VeraConfig(r=cfg["r"], projection_prng_key=cfg["projection_prng_key"], d_initial=cfg["d_initial"],
                        target_modules=["query", "value", "dense"])
    theirs = _peft_load(make_model("bert"), config, tensors)
    torch.testing.assert_close(outputs(ours, batch), outputs(theirs, batch), atol=1e-5, rtol=1e-5)


# ---- LoRA-XS ---------------------------------------------------------------------------
def test_lora_xs_trains_only_R(bert, batch):
    r = 4
    model = lorabench.apply(bert, "lora_xs", targets=["query", "dense"], r=r)
    layers = _layers(model)
    frozen = {n: (l.adapter.lora_A.clone(), l.adapter.lora_B.clone(), l.adapter.R.detach().clone()) for n, l in layers.items()}
    head = sum(p.numel() for p in model.classifier.parameters())
    assert lorabench.count_parameters(model)[0] - head == r * r * len(layers)
    train_steps(model, batch, steps=2, lr=1e-2)
    for n, l in layers.items():
        a = l.adapter
        assert [k for k, p in a.named_parameters() if p.requires_grad] == ["R"]
        assert torch.equal(a.lora_A, frozen[n][0]) and torch.equal(a.lora_B, frozen[n][1])
        assert not torch.equal(a.R, frozen[n][2]), n


def test_lora_xs_factors_are_the_truncated_svd(make_model):
    r = 4
    W0 = {n: m.weight.detach().clone() for n, m in make_model("bert").named_modules() if n.endswith("intermediate.dense")}
    model = lorabench.apply(make_model("bert"), "lora_xs", targets=["intermediate.dense"], r=r)
    for name, layer in _layers(model).items():
        a = layer.adapter
        U, S, Vh = torch.linalg.svd(W0[name], full_matrices=False)
        best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        torch.testing.assert_close(a.lora_B @ a.lora_A, best, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.lora_B.T @ a.lora_B, torch.eye(r), atol=1e-5, rtol=0)  # B = U_r
        assert 0 < a.R.abs().max() < 1e-3  # R ~ N(0, 1e-5^2), not zero (official init)
        B, A = a.peft_tensors()["lora_B.weight"], a.peft_tensors()["lora_A.weight"]
        torch.testing.assert_close(B @ A, a.delta_weight().detach(), atol=1e-7, rtol=1e-5)


def test_lora_xs_rank_above_layer_size_is_a_clear_error(bert):
    with pytest.raises(VariantError, match=r"r=40 .*min\(in, out\) = 32.*choose r <= 32"):
        lorabench.apply(bert, "lora_xs", targets=["query"], r=40)
    assert getattr(bert, "lorabench_state", None) is None  # nothing was changed


# ---- full / head -----------------------------------------------------------------------
def test_full_trains_every_parameter_and_round_trips(make_model, batch, tmp_path):
    model = lorabench.apply(make_model("bert"), "full")
    assert all(p.requires_grad for p in model.parameters())
    trainable, total = lorabench.count_parameters(model)
    assert trainable == total
    train_steps(model, batch, steps=2, lr=1e-2)
    base = make_model("bert")
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert any(".encoder." in n for n in changed) and any(n.startswith("classifier") for n in changed)
    lorabench.merge(model)  # no layers to merge: a no-op
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(make_model("bert"), tmp_path)
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), atol=0, rtol=0)


def test_head_trains_exactly_the_head(make_model, batch, tmp_path):
    model = lorabench.apply(make_model("bert"), "head")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert sorted(p.numel() for g in groups for p in g["params"]) == sorted(
        p.numel() for p in model.classifier.parameters()
    )
    train_steps(model, batch, steps=2, lr=1e-2)
    base = make_model("bert")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))}
    assert changed == {"classifier.weight", "classifier.bias"}
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(make_model("bert"), tmp_path)
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), atol=0, rtol=0)
