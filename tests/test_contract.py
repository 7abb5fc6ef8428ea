"""The contract every variant keeps, checked from one table (a new variant = one new row).

Per case (variant + options) and architecture:
  * identity at init: output == base model's when ``cls.identity_at_init``
  * training moves only the variant's trainable tensors and the head; frozen weights and
    buffers stay bit-identical; the optimizer groups hold each trainable tensor exactly once
  * merge keeps the outputs, unmerge restores the base weights
  * save / load onto a fresh identical base reproduces the outputs
  * trainable parameter count == the paper's formula summed over layers + head

Conv rows run on ``cnn`` (``lorabench.contract.ConvNet``: 3x3 convs, one strided, a 1x1 conv); their
``per_layer`` takes ``(in, out, kh, kw)`` of each nn.Conv2d.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

import lorabench
from lorabench import adapters
from lorabench.adapters.conv import AdaptedConv2d, num_trainable
from lorabench.contract import ConvNet, conv_batch
from lorabench.inject import adapted_layers, head_modules

from conftest import ARCHS, TARGETS, build_model, make_batch, outputs, train_steps

R = 4
ALL = ARCHS
BERT = ("bert",)
CNN = ("cnn",)
CONV_TARGETS = ["stem", "down", "mix", "body"]  # ConvNet: 3x3, 3x3 stride 2, 1x1, 3x3 without bias

# id ("variant" or "variant:tag" for an extra combination) ->
#   opts:      options passed to lorabench.apply
#   per_layer: the paper's trainable parameters of one adapted layer, (in, out) -> int
#   shared:    trainable parameters stored once on the model, not per layer (Uni-LoRA's vector)
#   all:       True when every parameter of the model trains (full fine-tuning)
#   archs:     architectures to run on
#   identity:  whether these options keep the output at init (default: ``cls.identity_at_init``)
#   lr:        of the test's 3 AdamW steps (default 1e-2); SGD-scale rules (AltLoRA's plain momentum
#              step, Algorithm 1) need more to move every factor above fp32 resolution on these tiny models
CASES: dict[str, dict] = {
    "lora": dict(opts={"r": R, "alpha": 8}, per_layer=lambda i, o: R * (i + o), archs=ALL),
    "lora:rslora": dict(opts={"r": R, "alpha": 8, "rslora": True}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "swapped": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "pissa": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=ALL),
    "pissa:alpha": dict(opts={"r": R, "alpha": 16}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "olora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=ALL),
    "lora_plus": dict(opts={"r": R, "lr_ratio": 16}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora_fa": dict(opts={"r": R}, per_layer=lambda i, o: R * o, archs=BERT),
    "dylora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "dora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o) + o, archs=ALL),
    "dora:pissa": dict(opts={"r": R, "init": "pissa"}, per_layer=lambda i, o: R * (i + o) + o, archs=BERT),
    # optimisation rules (adapters/rules) composed with structures and inits
    "dora:lora_plus": dict(opts={"r": R, "optimizer": "lora_plus"}, per_layer=lambda i, o: R * (i + o) + o, archs=BERT),
    "dora:lora_fa": dict(opts={"r": R, "optimizer": "lora_fa"}, per_layer=lambda i, o: R * o + o, archs=BERT),
    "lora:lora_pro": dict(opts={"r": R, "optimizer": "lora_pro"}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora:stable": dict(opts={"r": R, "optimizer": "stable"}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora:altlora": dict(opts={"r": R, "optimizer": "altlora"}, per_layer=lambda i, o: R * (i + o), archs=BERT, lr=0.1),
    "lora:altlora_adamw": dict(opts={"r": R, "optimizer": "altlora", "alt_schedule": "alternate", "alt_update": "adamw"},
                               per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora:lora_pro_factors": dict(opts={"r": R, "optimizer": "lora_pro", "pro_moments": "factors"},
                                  per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora:allora": dict(opts={"r": R, "optimizer": "allora"}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "pissa:lora_fa": dict(opts={"r": R, "optimizer": "lora_fa"}, per_layer=lambda i, o: R * o, archs=BERT),
    "vera": dict(opts={"r": R}, per_layer=lambda i, o: R + o, archs=ALL),
    "lora_xs": dict(opts={"r": R}, per_layer=lambda i, o: R * R, archs=ALL),
    "qlora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=ALL if find_spec("bitsandbytes") else ()),
    "ffa_lora": dict(opts={"r": R}, per_layer=lambda i, o: R * o, archs=BERT),
    "allora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora_ga": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=ALL),
    "loldu": dict(opts={"r": R}, per_layer=lambda i, o: R + 1, archs=ALL),
    "lora_sb": dict(opts={"r": R}, per_layer=lambda i, o: R * R, archs=ALL),
    "nlora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o) + R * R, archs=ALL),  # official init: W + s B N A
    "nlora:sketch": dict(opts={"r": R, "init": "sketch"}, per_layer=lambda i, o: R * (i + o) + R * R, archs=ALL,
                         identity=True),
    "nlora:inttune": dict(opts={"r": R, "inttune": True}, per_layer=lambda i, o: R * R, archs=BERT),
    "nlora:inttune_sketch": dict(opts={"r": R, "inttune": True, "init": "sketch"}, per_layer=lambda i, o: R * R,
                                 archs=BERT, identity=True),
    "lora:nystrom": dict(opts={"r": R, "init": "nystrom"}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "salt": dict(opts={"r": R, "r_lora": 2}, per_layer=lambda i, o: 2 * R + 2 * 2 * (min(i, o) - R), archs=ALL),
    "paca": dict(opts={"r": R}, per_layer=lambda i, o: R * o, archs=ALL),
    "randlora": dict(opts={"r": R, "alpha": 20 * R}, per_layer=lambda i, o: -(-min(i, o) // R) * (R + min(i, o)), archs=ALL),
    "randlora:sparse": dict(opts={"r": R, "alpha": 20 * R, "basis": "sparse"}, per_layer=lambda i, o: -(-min(i, o) // R) * (R + min(i, o)), archs=BERT),
    "uni_lora": dict(opts={"r": R, "theta_d_length": 64}, per_layer=lambda i, o: 0, shared=64, archs=ALL),
    "miss": dict(opts={"r": R}, per_layer=lambda i, o: R * o, archs=ALL),
    "miss:bat": dict(opts={"r": R, "mode": "bat"}, per_layer=lambda i, o: R * o, archs=BERT),
    "miss:mini": dict(opts={"r": R, "mode": "mini", "mini_r": 2}, per_layer=lambda i, o: R * 2, archs=BERT),
    # target_r = init_r: the test's loop calls before_step, so AdaLoRA's importance updates run; pruning a
    # layer's last components in 3 steps would freeze its A (a real effect, but not this contract's)
    "adalora": dict(opts={"init_r": R, "target_r": R}, per_layer=lambda i, o: R * (i + o + 1), archs=ALL),
    "matryoshka_lora": dict(opts={"r": R}, per_layer=lambda i, o: R * (i + o), archs=ALL),
    "lora_squeeze": dict(opts={"r": R, "target_rank": 2}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "lora_squeeze:anneal": dict(opts={"r": R, "target_rank": 2, "anneal": True}, per_layer=lambda i, o: R * (i + o), archs=BERT),
    "flylora": dict(opts={"r": R, "k": 2}, per_layer=lambda i, o: R * o, archs=ALL),
    # BD-LoRA: column-parallel layers store B's blocks (out, r/N), row-parallel ones A's (r, in/N). "auto" picks by
    # name; on BERT its column layers (query, value, intermediate) have in <= out and its row layers in >= out
    "bd_lora": dict(opts={"r": R, "blocks": 2, "parallel": "column"}, per_layer=lambda i, o: R * i + R * o // 2, archs=ALL),
    "bd_lora:row": dict(opts={"r": R, "blocks": 2, "parallel": "row"}, per_layer=lambda i, o: R * i // 2 + R * o, archs=ALL),
    "bd_lora:auto": dict(opts={"r": R, "blocks": 2}, per_layer=lambda i, o: R * i + R * o // 2 if i <= o else R * i // 2 + R * o,
                         archs=BERT),
    # convolutions (adapters/conv.py): LoRA-C, DoRA-C, CP-LoRA; per_layer(in, out, kh, kw)
    "lora:conv": dict(opts={"r": R, "alpha": 8}, per_layer=lambda i, o, kh, kw: R * i * kh * kw + o * R, archs=CNN),
    "dora:conv": dict(opts={"r": R}, per_layer=lambda i, o, kh, kw: R * i * kh * kw + o * R + o, archs=CNN),
    "cp_lora": dict(opts={"r": R}, per_layer=lambda i, o, kh, kw: R * (o + i + kh + kw), archs=CNN),
    "full": dict(opts={}, all=True, archs=BERT),
    "head": dict(opts={}, per_layer=None, archs=BERT),
}


@pytest.fixture
def make_model():
    """``conftest.build_model``, plus ``cnn``: the ConvNet (same convs for every seed, head by seed)."""
    return lambda arch="bert", seed=0: ConvNet(seed).eval() if arch == "cnn" else build_model(arch, seed)


def _batch(arch: str) -> dict[str, torch.Tensor]:
    return conv_batch() if arch == "cnn" else make_batch()


def _outputs(model, batch) -> torch.Tensor:
    """conftest's ``outputs``; for the ConvNet its logits and last feature map."""
    if "pixel_values" not in batch:
        return outputs(model, batch)
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], output_hidden_states=True)
    return torch.cat([out.logits.reshape(-1), out.hidden_states[-1].reshape(-1)])


def _dims(layer) -> tuple[int, ...]:
    """What ``per_layer`` takes: (in, out) of a linear layer, (in, out, kh, kw) of a conv."""
    if isinstance(layer, AdaptedConv2d):
        b = layer.base_layer
        return (b.in_channels, b.out_channels, *b.kernel_size)
    return layer.adapter.in_features, layer.adapter.out_features


def _params():
    registered = set(lorabench.variants())
    rows = {case.split(":")[0] for case in CASES}
    params = [pytest.param(case, arch, id=f"{case}-{arch}") for case, row in CASES.items() for arch in row["archs"]]
    # A registered variant without a row still gets a test, which fails and says so.
    params += [pytest.param(name, "bert", id=f"{name}-NO-ROW") for name in sorted(registered - rows)]
    return params


def test_every_registered_variant_has_a_row():
    missing = sorted(set(lorabench.variants()) - {case.split(":")[0] for case in CASES})
    assert not missing, f"variants without a row in CASES of tests/test_contract.py: {missing}; add one row each"


def _setup(case_id: str, arch: str, make_model):
    if case_id not in CASES:
        pytest.fail(f"registered variant {case_id!r} has no row in CASES (tests/test_contract.py); add one")
    variant = case_id.split(":")[0]
    if variant not in lorabench.variants():
        pytest.skip(f"variant {variant!r} is not registered (its file has not landed)")
    row = CASES[case_id]
    cls = adapters.get(variant)
    model = make_model(arch)
    return row, cls, model, variant


def _apply(model, variant, row, arch):
    """apply + the variant's data-driven init (LoRA-GA; a no-op for most), as a training run does."""
    targets = (CONV_TARGETS if arch == "cnn" else TARGETS[arch]) if adapters.get(variant).wraps_layers else None
    lorabench.apply(model, variant, targets=targets, **row["opts"])
    lorabench.prepare(model, [_batch(arch)])
    return model


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


@pytest.mark.parametrize("case_id, arch", _params())
def test_identity_at_init(case_id, arch, make_model):
    row, cls, model, variant = _setup(case_id, arch, make_model)
    batch = _batch(arch)
    before = _outputs(model, batch)
    _apply(model, variant, row, arch)
    if not row.get("identity", cls.identity_at_init):
        pytest.skip(f"{case_id} is not identity at init (cls.identity_at_init = False)")
    torch.testing.assert_close(_outputs(model, batch), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case_id, arch", _params())
def test_only_trainable_tensors_move(case_id, arch, make_model):
    row, cls, model, variant = _setup(case_id, arch, make_model)
    _apply(model, variant, row, arch)

    # Ask the modules which tensors should train: adapter + shared + head (everything for full).
    expected: dict[int, str] = {}
    for _, layer in adapted_layers(model):
        expected.update({id(p): "adapter" for p in layer.adapter.parameters() if p.requires_grad})
    shared = getattr(model, "lorabench_shared", None)
    if shared is not None:
        expected.update({id(p): "shared" for p in shared.parameters() if p.requires_grad})
    for h in head_modules(model):
        expected.update({id(p): "head" for p in model.get_submodule(h).parameters()})
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    if cls.trains_base:
        assert trainable == set(named)
    else:
        assert trainable == {n for n, p in named.items() if id(p) in expected}, "only adapter and head tensors may train"
        assert any(v == "adapter" or v == "shared" for v in expected.values()) == cls.wraps_layers

    groups = lorabench.param_groups(model, lr=1e-3, weight_decay=0.01)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)), "a tensor appears in two optimizer groups"
    assert set(in_groups) == {id(p) for n, p in named.items() if p.requires_grad}, "optimizer groups != trainable tensors"

    # Buffers a variant declares as running state (FlyLoRA's routing bias) may move too.
    running = {f"{n}.adapter.{b}" for n, layer in adapted_layers(model) for b in layer.adapter.running_buffers}
    before = _snapshot(model)
    train_steps(model, _batch(arch), lr=row.get("lr", 1e-2))
    after = model.state_dict()
    for key, old in before.items():
        new = after[key]
        if key in trainable:
            assert not torch.equal(new, old), f"trainable tensor {key} did not change in 3 AdamW steps"
        elif key not in running:
            assert torch.equal(new, old), f"frozen tensor {key} changed during training"


@pytest.mark.parametrize("case_id, arch", _params())
def test_merge_unmerge(case_id, arch, make_model):
    row, cls, model, variant = _setup(case_id, arch, make_model)
    if not cls.wraps_layers:
        pytest.skip(f"{variant} adapts no layers: nothing to merge")
    _apply(model, variant, row, arch)
    batch = _batch(arch)
    train_steps(model, batch, lr=row.get("lr", 1e-2))
    if not cls.mergeable:  # e.g. input-dependent routing: merge must refuse, leaving nothing merged
        with pytest.raises(adapters.VariantError):
            lorabench.merge(model)
        assert not any(layer.merged for _, layer in adapted_layers(model))
        pytest.skip(f"{variant} cannot be folded into one weight (cls.mergeable = False); merge refused")
    out = _outputs(model, batch)
    weights = {n: layer.weight.detach().clone() for n, layer in adapted_layers(model)}

    lorabench.merge(model)
    assert all(layer.merged for _, layer in adapted_layers(model))
    torch.testing.assert_close(_outputs(model, batch), out, atol=1e-5, rtol=0)
    moved = sum(not torch.equal(layer.weight, weights[n]) for n, layer in adapted_layers(model))
    assert moved > 0, "merge changed no base weight, so the adapter did nothing"

    lorabench.unmerge(model)
    for n, layer in adapted_layers(model):
        torch.testing.assert_close(layer.weight, weights[n], atol=1e-6, rtol=0, msg=f"unmerge did not restore {n}")
    torch.testing.assert_close(_outputs(model, batch), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case_id, arch", _params())
def test_save_load_round_trip(case_id, arch, make_model, tmp_path):
    row, cls, model, variant = _setup(case_id, arch, make_model)
    _apply(model, variant, row, arch)
    batch = _batch(arch)
    train_steps(model, batch, lr=row.get("lr", 1e-2))
    out = _outputs(model, batch)
    assert not torch.allclose(out, _outputs(make_model(arch), batch), atol=1e-4), "training did not change the model"

    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(make_model(arch), tmp_path)
    torch.testing.assert_close(_outputs(loaded.eval(), batch), out, atol=1e-6, rtol=0)
    assert lorabench.count_parameters(loaded) == lorabench.count_parameters(model)


@pytest.mark.parametrize("case_id, arch", _params())
def test_trainable_count_matches_paper(case_id, arch, make_model):
    row, cls, model, variant = _setup(case_id, arch, make_model)
    _apply(model, variant, row, arch)
    trainable, total = lorabench.count_parameters(model)
    if row.get("all"):
        assert trainable == total
        return
    head = sum(p.numel() for h in head_modules(model) for p in model.get_submodule(h).parameters())
    layers = list(adapted_layers(model))
    per_layer = row["per_layer"]
    expected = head + row.get("shared", 0)
    expected += sum(per_layer(*_dims(layer)) for _, layer in layers)
    assert trainable == expected
    for name, layer in layers:
        try:
            formula = num_trainable(layer)  # per layer (Variant.layer_options); a conv by its kernel
        except NotImplementedError:
            continue
        assert formula == per_layer(*_dims(layer)), f"{cls.__name__}'s trainable formula disagrees with the paper on {name}"
    assert len({(layer.adapter.in_features, layer.adapter.out_features) for _, layer in layers}) > 1 or not layers, (
        "targets should mix layer shapes so that formulas confusing in and out fail"
    )
