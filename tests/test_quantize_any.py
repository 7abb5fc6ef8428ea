"""``--quantize nf4`` with any adapter variant: the adapter is applied to the full-precision
model, then every frozen linear layer (the bases under the adapters included) is stored in 4
bits, as ``lorabench.run`` does. PiSSA's residual is thus quantized once, exactly (QPiSSA)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import lorabench
from lorabench import quant
from lorabench.adapters import VariantError
from lorabench.inject import adapted_layers, head_modules, is_linear

from conftest import build_model, make_batch, outputs

pytestmark = pytest.mark.skipif(not quant.available(), reason="needs bitsandbytes: pip install 'lorabench[quant]'")
TARGETS = ["query", "value", "dense"]
VARIANTS = {"lora": {"r": 4}, "dora": {"r": 4}, "vera": {"r": 16}, "pissa": {"r": 4}, "lora_xs": {"r": 4}}


def adapted_then_quantized(variant: str):
    model = lorabench.apply(build_model("bert"), variant, targets=TARGETS, **VARIANTS[variant])
    return quant.quantize_model(model)  # what `lorabench train --quantize nf4` does, in this order


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_any_variant_trains_on_a_4bit_base(variant):
    model = adapted_then_quantized(variant)
    heads = head_modules(model)
    # every linear layer outside the head is 4-bit, adapted or not
    linear = [(n, m) for n, m in model.named_modules() if is_linear(m) and not n.startswith(tuple(heads))]
    assert linear and all(quant.is_quantized(m) for _, m in linear)
    assert all(layer.quantized for _, layer in adapted_layers(model))
    # only the adapters and the head train
    expected = {id(p) for _, layer in adapted_layers(model) for p in layer.adapter.parameters() if p.requires_grad}
    expected |= {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    shared = getattr(model, "lorabench_shared", None)
    expected |= {id(p) for p in shared.parameters() if p.requires_grad} if shared is not None else set()
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items() if n not in trained}
    assert any(n.endswith(".base_layer.weight.absmax") for n in frozen)  # the 4-bit state is checked too

    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2))
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**make_batch()).loss
        loss.backward()
        lorabench.before_step(model)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    after = model.state_dict()
    changed = [n for n, t in frozen.items() if not torch.equal(after[n], t)]
    assert not changed, f"frozen tensors changed: {changed[:3]}"


def test_pissa_residual_is_quantized_once_from_the_exact_weight():
    W0 = {n: m.weight.detach().clone() for n, m in build_model("bert").named_modules() if n.endswith("query")}
    model = adapted_then_quantized("pissa")
    for name, layer in adapted_layers(model):
        if name not in W0:
            continue
        v = layer.adapter
        residual = W0[name] - v.scale * v.lora_B0 @ v.lora_A0  # QPiSSA: W - s B0 A0 of the fp32 W
        once = quant.dequantize(quant.quantize_linear(_linear(residual)))
        torch.testing.assert_close(layer.weight, once, atol=0, rtol=0)
    # the principal part trains in full precision, so the model stays closer to fp32 than NF4(W) alone
    fp32, batch = build_model("bert"), make_batch()
    nf4 = quant.quantize_model(lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4))
    error = lambda m: (outputs(m, batch) - outputs(fp32, batch)).norm().item()  # noqa: E731
    assert error(model) < error(nf4)


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_quantized_pissa_round_trips_through_save_and_load(tmp_path):
    model = adapted_then_quantized("pissa")
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2))
    model.train()
    for _ in range(2):
        model(**make_batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    lorabench.save_adapter(model, tmp_path)
    loaded = quant.quantize_model(lorabench.load_adapter(build_model("bert"), tmp_path))  # the same order
    torch.testing.assert_close(outputs(loaded.eval(), make_batch()), outputs(model, make_batch()), atol=1e-6, rtol=0)


def test_quantizing_never_touches_trained_layers_and_refuses_full():
    with pytest.raises(VariantError, match="trains every targeted linear layer.*drop the quantization"):
        quant.quantize_model(lorabench.apply(build_model("bert"), "full"))
    with pytest.raises(VariantError, match="stored in 4 bits.*quantize afterwards"):  # the other order
        lorabench.apply(quant.quantize_model(build_model("bert"), targets=TARGETS), "pissa", targets=TARGETS, r=4)


GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
def test_cli_train_quantize_nf4_with_pissa_end_to_end(tmp_path):
    from lorabench.commands import main

    rc = main(["train", "--model", "minilm", "--layers", "2", "--task", "sst2", "--train-limit", "64",
               "--eval-limit", "32", "--max-length", "32", "--epochs", "2", "--batch-size", "16", "--lr", "5e-3",
               "--log-every", "1", "--quantize", "nf4", "--variant", "pissa", "--opt", "optimizer=lora_plus",
               "--data-dir", str(GLUE), "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    (path,) = tmp_path.glob("run-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["config"]["quantize"] == "nf4"
    assert result["config"]["options"]["optimizer"] == "lora_plus"
    losses = [x for _, x in result["train_loss"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)


def test_lora_ga_prepares_on_the_full_precision_weight_then_quantizes_its_residual():
    W0 = {n: m.weight.detach().clone() for n, m in build_model("bert").named_modules() if n.endswith("query")}
    model = lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4)
    assert lorabench.inject.needs_data(model) and not lorabench.inject.is_prepared(model)
    lorabench.prepare(model, [make_batch(1), make_batch(2)])  # full precision: dL/dW0 exists
    quant.quantize_model(model)  # the order `lorabench train --quantize nf4` uses for lora_ga
    assert lorabench.inject.is_prepared(model)
    for name, layer in adapted_layers(model):
        if name not in W0:
            continue
        v = layer.adapter
        assert v.lora_A0.abs().sum() > 0  # the gradient's singular directions, not LoRA's zero B
        residual = W0[name] - v.scale * v.lora_B0 @ v.lora_A0
        torch.testing.assert_close(layer.weight, quant.dequantize(quant.quantize_linear(_linear(residual))),
                                   atol=0, rtol=0)


def test_a_gradient_init_on_an_already_quantized_model_names_the_order():
    model = quant.quantize_model(lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4))
    with pytest.raises(VariantError, match=r"4 bits; call lorabench.prepare\(model, batches\) before"):
        lorabench.prepare(model, [make_batch()])
    model = quant.quantize_model(lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=4))
    with pytest.raises(VariantError, match="LoRA-SB estimates the gradient"):
        lorabench.prepare(model, [make_batch()])


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
@pytest.mark.parametrize("variant", ["lora_ga", "lora_sb"])
def test_cli_train_quantize_nf4_with_a_gradient_init(tmp_path, variant):
    from lorabench.commands import main

    rc = main(["train", "--model", "minilm", "--layers", "1", "--task", "sst2", "--train-limit", "32",
               "--eval-limit", "16", "--max-length", "32", "--epochs", "1", "--batch-size", "16",
               "--quantize", "nf4", "--variant", variant, "--data-dir", str(GLUE), "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    (path,) = tmp_path.glob("run-*.json")
    result = json.loads(path.read_text())
    assert result["status"] == "ok" and result["config"]["quantize"] == "nf4"
    assert result["time"]["prepare_s"] > 0  # the gradient estimate, done before quantizing, is counted


def test_parameter_count_is_the_same_after_quantizing():
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4)
    before = lorabench.inject.count_parameters(model)
    assert lorabench.inject.count_parameters(quant.quantize_model(model)) == before  # 4-bit packs 2 per byte
