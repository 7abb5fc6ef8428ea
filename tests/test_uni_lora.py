"""Uni-LoRA (every layer's LoRA factors projected from one trainable vector theta_d): parity with
PEFT on BERT, Llama (GQA) and GPT-2 (PEFT's projection copied into ours), the projection is an
isometry, balanced and seeded, the one vector trains once and is saved once, the export loads
in PEFT, and an adapter without the shared vector is refused."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import UniLoraConfig  # noqa: E402

import lorabench  # noqa: E402
from lorabench import VariantError  # noqa: E402
from lorabench.adapters.uni_lora import UniLoRA  # noqa: E402

from conftest import TARGETS, make_batch, train_steps  # noqa: E402
from conftest import layers as _layers  # noqa: E402
from helpers_peft import PEFT_WARNINGS, assert_parity, export_round_trip, peft_layer, perturb_and_copy, with_peft  # noqa: E402

R = 4
pytestmark = PEFT_WARNINGS


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_uni_lora_matches_peft(arch, make_model):
    d = 64
    ours = lorabench.apply(make_model(arch), "uni_lora", targets=TARGETS[arch], r=R, theta_d_length=d)
    theirs = with_peft(make_model(arch), UniLoraConfig, arch, r=R, theta_d_length=d, fan_in_fan_out=arch == "gpt2")
    layers = _layers(ours)
    # PEFT's projection (its own seeded balanced assignment) into ours, in theta_D's layout.
    peft_index = torch.cat([
        torch.cat([peft_layer(theirs, n).unilora_indices_A["default"].flatten(),
                   peft_layer(theirs, n).unilora_indices_B["default"].flatten()]) for n in layers
    ])
    UniLoRA.set_projection(ours.lorabench_shared, peft_index.to(torch.int32))
    shared = ours.lorabench_shared
    for name, layer in layers.items():  # the column normalisation agrees
        pl = peft_layer(theirs, name)
        idx = pl.unilora_indices_A["default"]
        torch.testing.assert_close(shared.proj_scale[idx], pl.unilora_scales_A["default"], atol=0, rtol=0)
    pairs = [(shared.theta_d, theirs.base_model.unilora_theta_d["default"])]
    perturb_and_copy(pairs, std=1.0)
    assert_parity(ours, theirs, pairs, arch, make_model)


def test_uni_lora_projection_is_isometric_and_balanced(make_model):
    d = 50
    model = lorabench.apply(make_model("llama"), "uni_lora", targets=TARGETS["llama"], r=R, theta_d_length=d)
    shared, layers = model.lorabench_shared, _layers(model)
    D = sum(R * (l.adapter.in_features + l.adapter.out_features) for l in layers.values())
    index = shared.proj_index.long()
    assert index.shape == (D,)
    hits = torch.bincount(index, minlength=d)
    assert hits.max() - hits.min() <= 1  # balanced: floor(D/d) or ceil(D/d) rows per column
    P = torch.zeros(D, d)
    P[torch.arange(D), index] = shared.proj_scale[index]  # one non-zero per row
    torch.testing.assert_close(P.t() @ P, torch.eye(d), atol=1e-6, rtol=0)  # isometry
    theta_D = P @ shared.theta_d.detach()
    flat = torch.cat([torch.cat([a.flatten(), b.flatten()])
                      for a, b in (l.adapter.factors_from_theta() for l in layers.values())]).detach()
    torch.testing.assert_close(flat, theta_D, atol=0, rtol=0)
    assert abs(theta_D.norm() - shared.theta_d.norm()) < 1e-5
    # Seeded: the same seed gives the same P, another seed another one.
    again = lorabench.apply(make_model("llama"), "uni_lora", targets=TARGETS["llama"], r=R, theta_d_length=d)
    other = lorabench.apply(make_model("llama"), "uni_lora", targets=TARGETS["llama"], r=R, theta_d_length=d,
                            projection_seed=1)
    assert torch.equal(again.lorabench_shared.proj_index, shared.proj_index)
    assert not torch.equal(other.lorabench_shared.proj_index, shared.proj_index)


def test_uni_lora_trains_one_vector_once(make_model, tmp_path):
    d = 64
    model = lorabench.apply(make_model("bert"), "uni_lora", targets=TARGETS["bert"], r=R, theta_d_length=d)
    groups = lorabench.param_groups(model, lr=1e-3)
    theta = model.lorabench_shared.theta_d
    assert sum(p is theta for g in groups for p in g["params"]) == 1
    head = sum(p.numel() for p in model.classifier.parameters())
    assert lorabench.count_parameters(model)[0] == head + d
    assert all(not list(l.adapter.parameters()) for l in _layers(model).values())  # nothing per layer
    lorabench.save_adapter(model, tmp_path)
    from lorabench.checkpoint import read_adapter_tensors

    saved = read_adapter_tensors(tmp_path)
    assert [k for k in saved if k.endswith("theta_d")] == ["lorabench_shared.theta_d"]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_uni_lora_export_loads_in_peft(arch, make_model, tmp_path):
    model = lorabench.apply(make_model(arch), "uni_lora", targets=TARGETS[arch], r=R, theta_d_length=64)
    train_steps(model, make_batch())
    export_round_trip(model, arch, make_model, tmp_path)


def test_uni_lora_needs_the_shared_vector():
    with pytest.raises(VariantError, match="shared vector.*lorabench.apply"):
        UniLoRA(32, 32, UniLoRA.make_options(), None)
