"""Adapters on nn.Conv2d (``lorabench.adapters.conv``): LoRA-C and DoRA-C against PEFT's Conv2d LoRA /
DoRA on the same weights (outputs, loss, gradients of every factor and the magnitude, fp32), PEFT
export, merge / unmerge, save / load, parameter counts, targets and the refusals. CP-LoRA: test_cp_lora.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lorabench
from lorabench import adapters
from lorabench.adapters.conv import AdaptedConv2d, conv_support, num_trainable
from lorabench.contract import ConvNet, conv_batch, train_steps
from lorabench.errors import VariantError

CONVS = ["stem", "down", "mix", "body"]  # 3x3 (+bias), 3x3 stride 2, 1x1, 3x3 without bias
R = 4


def conv_outputs(model, batch) -> torch.Tensor:
    """Logits and the last feature map, flattened."""
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], output_hidden_states=True)
    return torch.cat([out.logits.reshape(-1), out.hidden_states[-1].reshape(-1)])


def peft_pair(variant: str, **opts):
    """(ours, PEFT's, [(our tensor, PEFT's tensor)]) on the same ConvNet, every factor moved off its
    init (B = 0) by the same random numbers."""
    pytest.importorskip("peft")
    from helpers_peft import perturb_and_copy
    from peft import LoraConfig, get_peft_model

    alpha = 8.0
    ours = lorabench.apply(ConvNet(), variant, targets=CONVS, r=R, alpha=alpha, **opts)
    config = LoraConfig(target_modules=CONVS, r=R, lora_alpha=alpha, use_dora=variant == "dora",
                        use_rslora=opts.get("rslora", False), lora_dropout=opts.get("dropout", 0.0))
    theirs = get_peft_model(ConvNet(), config)
    pairs = []
    for name in CONVS:
        a, p = ours.get_submodule(name).adapter, theirs.base_model.model.get_submodule(name)
        pairs += [(a.lora_A, p.lora_A["default"].weight), (a.lora_B, p.lora_B["default"].weight)]
        if variant == "dora":
            torch.testing.assert_close(a.magnitude, p.lora_magnitude_vector["default"].weight.reshape(-1))
            pairs.append((a.magnitude, p.lora_magnitude_vector["default"].weight))
    perturb_and_copy(pairs)
    return ours, theirs, pairs


@pytest.mark.parametrize("variant, opts", [("lora", {}), ("lora", {"rslora": True}), ("dora", {}),
                                           ("dora", {"rslora": True})])
def test_matches_peft_conv(variant, opts):
    from helpers_peft import assert_same_step

    ours, theirs, pairs = peft_pair(variant, **opts)
    assert_same_step(ours, theirs, pairs, conv_batch(), conv_outputs, ConvNet())


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_dropout_matches_peft_in_train_mode(variant):
    """Dropout on the adapter input (DoRA: PEFT's (m/n - 1) conv(x_d; W0) form); both draw one mask per
    layer in the same order, so the same seed gives the same masks."""
    ours, theirs, _ = peft_pair(variant, dropout=0.5)
    batch = conv_batch()
    ours.train(), theirs.train()
    torch.manual_seed(3)
    a = ours(**batch).logits
    torch.manual_seed(3)
    b = theirs(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.manual_seed(4)
    assert not torch.allclose(ours(**batch).logits, ours.eval()(**batch).logits, atol=1e-4), "dropout did nothing"


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_merge_equals_peft_merge(variant):
    ours, theirs, _ = peft_pair(variant)
    lorabench.merge(ours)
    merged = theirs.merge_and_unload()
    for name in CONVS:
        torch.testing.assert_close(ours.get_submodule(name).base_layer.weight, merged.get_submodule(name).weight,
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant, opts", [("lora", {}), ("dora", {}), ("lora", {"init": "pissa"}),
                                           ("dora", {"init": "olora"}), ("lora_plus", {}), ("lora_fa", {})])
def test_identity_merge_unmerge_save_load(variant, opts, tmp_path):
    batch = conv_batch()
    base = conv_outputs(ConvNet(), batch)
    model = lorabench.apply(ConvNet(), variant, targets="all-conv", r=R, **opts)
    assert all(isinstance(layer, AdaptedConv2d) for _, layer in lorabench.inject.adapted_layers(model))
    torch.testing.assert_close(conv_outputs(model, batch), base, atol=1e-5, rtol=0)
    train_steps(model, batch)
    out = conv_outputs(model, batch)
    assert not torch.allclose(out, base, atol=1e-4), "training did not change the model"
    weights = {n: layer.base_layer.weight.clone() for n, layer in lorabench.inject.adapted_layers(model)}
    lorabench.merge(model)
    torch.testing.assert_close(conv_outputs(model, batch), out, atol=1e-5, rtol=0)
    lorabench.unmerge(model)
    for n, layer in lorabench.inject.adapted_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[n], atol=1e-6, rtol=0)
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(ConvNet(seed=5), tmp_path)  # another head seed: the head comes from the file
    torch.testing.assert_close(conv_outputs(loaded.eval(), batch), out, atol=1e-6, rtol=0)
    assert lorabench.count_parameters(loaded) == lorabench.count_parameters(model)
    plain = lorabench.unload(model)
    assert all(type(plain.get_submodule(n)) is nn.Conv2d for n in CONVS)
    torch.testing.assert_close(conv_outputs(plain, batch), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1), (1, "same", 2)])
def test_lora_conv_is_conv_with_merged_kernel(stride, padding, dilation):
    """s B(A(x)) == conv(x; s dW) with dW = (B.view(out, r) @ A.view(r, -1)).view(out, in, kh, kw)."""
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=stride, padding=padding, dilation=dilation))
    model = lorabench.apply(net, "dora", targets=["0"], r=R)
    layer = model[0]
    with torch.no_grad():
        layer.adapter.lora_B.normal_()
    x = torch.randn(2, 3, 9, 9)
    out = model(x)
    dW = layer.adapter.delta_weight()
    assert dW.shape == (6, 3 * 9)
    kernel = layer.adapter.merged_weight(layer.weight.float()).reshape(6, 3, 3, 3)
    want = torch.nn.functional.conv2d(x, kernel, layer.base_layer.bias, stride, padding, dilation)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_export_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    for variant in ("lora", "dora"):
        model = lorabench.apply(ConvNet(), variant, targets=CONVS, r=R)
        batch = conv_batch()
        train_steps(model, batch)
        lorabench.export_peft(model, tmp_path / variant)
        loaded = peft.PeftModel.from_pretrained(ConvNet(seed=5), tmp_path / variant).eval()
        torch.testing.assert_close(conv_outputs(loaded, batch), conv_outputs(model, batch), atol=1e-5, rtol=0)


def test_export_refuses_dilated_conv_and_cp_lora(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2))
    with pytest.raises(VariantError, match="dilation"):
        lorabench.export_peft(lorabench.apply(net, "lora", targets=["0"], r=2), tmp_path)
    with pytest.raises(VariantError, match="cannot be exported to PEFT"):
        lorabench.export_peft(lorabench.apply(ConvNet(), "cp_lora", r=2), tmp_path)


@pytest.mark.parametrize("variant, formula", [
    ("lora", lambda i, o, kh, kw: R * i * kh * kw + o * R),
    ("dora", lambda i, o, kh, kw: R * i * kh * kw + o * R + o),
    ("cp_lora", lambda i, o, kh, kw: R * (o + i + kh + kw)),
])
def test_parameter_counts(variant, formula):
    model = lorabench.apply(ConvNet(), variant, r=R)
    head = sum(p.numel() for p in model.classifier.parameters())
    expected = head
    for name in CONVS:
        layer, base = model.get_submodule(name), ConvNet().get_submodule(name)
        n = formula(base.in_channels, base.out_channels, *base.kernel_size)
        assert num_trainable(layer) == n
        assert sum(p.numel() for p in layer.adapter.parameters() if p.requires_grad) == n
        expected += n
    assert lorabench.count_parameters(model)[0] == expected
    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.01)
    assert sum(p.numel() for g in groups for p in g["params"]) == expected
    assert len(lorabench.inject.adapter_tensors(model)) >= len(CONVS)


def test_targets_default_named_and_regex():
    state = lambda m: lorabench.inject.state_of(m).targets
    assert state(lorabench.apply(ConvNet(), "lora", r=2)) == CONVS  # no linear layer but the head: all convs
    assert state(lorabench.apply(ConvNet(), "lora", targets=["down", "mix"], r=2)) == ["down", "mix"]
    assert state(lorabench.apply(ConvNet(), "lora", targets=r"(stem|body)", r=2)) == ["stem", "body"]
    with pytest.raises(VariantError, match="match no linear layer"):
        lorabench.apply(ConvNet(), "lora", targets="all-linear", r=2)


def test_refusals():
    assert conv_support(adapters.get("vera")) is not None and conv_support(adapters.get("lora")) is None
    with pytest.raises(VariantError, match=r"cannot adapt the nn.Conv2d layer 'stem'.*cp_lora.*dora.*lora"):
        lorabench.apply(ConvNet(), "vera", targets=["stem"], r=2)
    mixed = lorabench.apply(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 4)), "vera", targets=".*", r=2)
    assert lorabench.inject.state_of(mixed).targets == ["2"]  # a pattern still selects only linear layers for it
    with pytest.raises(VariantError, match="changes delta"):
        lorabench.apply(ConvNet(), "dylora", targets=["stem"], r=2)
    with pytest.raises(VariantError, match="adapts only nn.Conv2d"):
        lorabench.apply(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)), "cp_lora", targets=["0", "2"])
    for bad, match in [(nn.Conv2d(4, 4, 3, groups=2), "groups=2"), (nn.Conv2d(4, 4, 3, padding_mode="reflect"),
                                                                      "padding_mode='reflect'")]:
        net = nn.Sequential(bad)
        with pytest.raises(VariantError, match=match):
            lorabench.apply(net, "lora", targets=["0"], r=2)
        assert type(net[0]) is nn.Conv2d and getattr(net, "lorabench_state", None) is None  # nothing changed
    with pytest.raises(VariantError, match="match no linear layer"):  # transposed convs are never targets
        lorabench.apply(nn.Sequential(nn.ConvTranspose2d(3, 3, 2)), "lora", targets=["0"], r=2)


def test_bf16_model_and_autocast():
    batch = conv_batch()
    model = lorabench.apply(ConvNet(), "dora", r=R)
    train_steps(model, batch)
    ref = model(**batch).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and (out.logits.float() - ref).abs().max() < 0.05
    half = copy.deepcopy(model).to(torch.bfloat16)
    x = {"pixel_values": batch["pixel_values"].bfloat16()}
    assert (half(**x).logits.float() - ref).abs().max() < 0.05


@pytest.mark.parametrize("use_dora", [False, True])
def test_load_peft_conv_folder(use_dora, tmp_path):
    """A PEFT Conv2d LoRA / DoRA folder reads back as lorabench's LoRA-C / DoRA-C with the same outputs."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    theirs = get_peft_model(ConvNet(), LoraConfig(target_modules=CONVS, r=R, lora_alpha=8, use_dora=use_dora,
                                                  modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path)
    ours = lorabench.load_peft(ConvNet(seed=5), tmp_path)
    assert lorabench.inject.state_of(ours).variant == ("dora" if use_dora else "lora")
    batch = conv_batch()
    torch.testing.assert_close(conv_outputs(ours, batch), conv_outputs(theirs.eval(), batch), atol=1e-5, rtol=0)
