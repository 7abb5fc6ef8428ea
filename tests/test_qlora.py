"""QLoRA: the NF4 storage of ``lorabench.quant`` (block-wise absmax-scaled code-book values,
about 4.127 bits a parameter with double quantisation) and the ``qlora`` variant built on it:
only the adapter trains on a frozen 4-bit base, merge works in full precision and unmerge
restores the 4-bit layer, the export matches PEFT's LoRA on bitsandbytes' Linear4bit, and the
errors for rewrites of a 4-bit weight or a missing bitsandbytes. (The generic checks run on it
from tests/test_contract.py; ``--quantize nf4`` with other variants: tests/test_quantize_any.py.)"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import lorabench
from lorabench import quant
from lorabench.adapters import VariantError
from lorabench.inject import adapted_layers

from conftest import build_model, layers, make_batch, outputs, train_steps

needs_bnb = pytest.mark.skipif(not quant.available(), reason="needs bitsandbytes: pip install 'lorabench[quant]'")
TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers


def linear(out_f: int, in_f: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    nn.init.normal_(layer.weight, std=0.02)  # a pretrained-like, roughly Gaussian weight
    return layer


@needs_bnb
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_stores_blockwise_absmax_scaled_codebook_values(double_quant):
    layer = linear(64, 256)
    q = quant.quantize_linear(layer, "nf4", double_quant)
    state = q.weight.quant_state
    assert state.blocksize == 64 and state.nested == double_quant
    torch.testing.assert_close(state.code.cpu(), torch.tensor(quant.NF4_CODE))  # Appendix E
    W = quant.dequantize(q).reshape(-1, 64)  # (blocks, 64), blocks of the row-major weight
    absmax = W.abs().amax(dim=1, keepdim=True)  # the (dequantized) block constant: code +-1 is used
    levels = W / absmax  # every value is a code-book level times its block's absmax
    nearest = (levels[..., None] - torch.tensor(quant.NF4_CODE)).abs().amin(dim=-1)
    assert nearest.max() < 1e-5
    err = (quant.dequantize(q) - layer.weight).norm() / layer.weight.norm()
    assert 0.02 < err < 0.12, f"NF4 relative weight error {err:.3f} (QLoRA: ~0.1 for Gaussian weights)"
    x = torch.randn(16, 256)
    y, y_fp = q(x), layer(x)
    assert (y - y_fp).norm() / y_fp.norm() < 0.12
    torch.testing.assert_close(y, nn.functional.linear(x, quant.dequantize(q), layer.bias))


@needs_bnb
def test_nf4_weight_memory_is_about_8x_below_fp32():
    """Bytes of the stored 4-bit weight (codes + constants) against the same weight in fp32 and
    bf16: 4.127 bits/param with double quantisation (paper Sec. 3), 4.5 without."""
    layer = linear(1024, 1024)
    fp32_bytes = layer.weight.numel() * 4
    dq = quant.stored_bytes(quant.quantize_linear(layer, double_quant=True))
    plain = quant.stored_bytes(quant.quantize_linear(layer, double_quant=False))
    bits_per_param = 8 * dq / layer.weight.numel()
    assert 4.12 < bits_per_param < 4.15
    assert fp32_bytes / dq > 7.7 and (fp32_bytes / 2) / dq > 3.85  # ~7.7x vs fp32, ~3.9x vs bf16
    assert 7.0 < fp32_bytes / plain < fp32_bytes / dq  # fp32 absmax per 64 values: 4.5 bits


@needs_bnb
def test_qlora_trains_only_the_adapter_on_a_frozen_4bit_base():
    fp32, batch = build_model("bert"), make_batch()
    model = lorabench.apply(build_model("bert"), "qlora", targets=TARGETS, r=4, dropout=0.0)
    reference = quant.quantize_model(build_model("bert"), targets=TARGETS)
    torch.testing.assert_close(outputs(model, batch), outputs(reference, batch), atol=0, rtol=0)  # B = 0
    before = outputs(fp32, batch)
    assert (outputs(model, batch) - before).norm() / before.norm() < 0.1  # close to the fp32 model

    for layer in layers(model).values():
        assert quant.is_quantized(layer.base_layer) and layer.quantized
        assert not any(p.requires_grad for p in layer.base_layer.parameters())
    packed = {n: (l.base_layer.weight.data.clone(), l.weight.clone()) for n, l in layers(model).items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter.lora_" in n or n.startswith("classifier.") for n in trainable)

    train_steps(model, batch)
    for n, layer in layers(model).items():
        assert torch.equal(layer.base_layer.weight.data, packed[n][0]), f"4-bit weight of {n} moved"
        assert torch.equal(layer.weight, packed[n][1])
        assert layer.adapter.lora_B.abs().sum() > 0, f"{n}: no gradient reached this adapter"


@needs_bnb
def test_qlora_merge_uses_full_precision_and_unmerge_restores_the_4bit_layer():
    model, batch = build_model("bert"), make_batch()
    lorabench.apply(model, "qlora", targets=TARGETS, r=4, dropout=0.0)
    train_steps(model, batch)
    out = outputs(model, batch)
    four_bit = {n: l.base_layer for n, l in layers(model).items()}
    lorabench.merge(model)
    for n, layer in layers(model).items():
        assert type(layer.base_layer) is nn.Linear  # dequant(W) + s B A in fp32, not re-quantized
        torch.testing.assert_close(layer.weight, quant.dequantize(four_bit[n]) + layer.adapter.delta_weight())
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=0)
    lorabench.unmerge(model)
    assert all(l.base_layer is four_bit[n] for n, l in layers(model).items())
    plain = lorabench.unload(model)
    assert not any(quant.is_quantized(m) for m in plain.modules())
    torch.testing.assert_close(outputs(plain, batch), out, atol=1e-5, rtol=0)


@needs_bnb
def test_qlora_matches_peft_lora_on_bitsandbytes_linear4bit(tmp_path):
    peft = pytest.importorskip("peft")
    model, batch = build_model("bert"), make_batch()
    lorabench.apply(model, "qlora", targets=TARGETS, r=4, alpha=8, dropout=0.0)
    train_steps(model, batch)
    lorabench.export_peft(model, tmp_path)
    base = quant.quantize_model(build_model("bert"), targets=TARGETS)
    base.is_loaded_in_4bit = True  # what PEFT reads to dispatch its bnb 4-bit LoRA layer
    theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    query = theirs.base_model.model.bert.encoder.layer[0].attention.self.query
    assert type(query).__module__ == "peft.tuners.lora.bnb"
    torch.testing.assert_close(outputs(theirs, batch), outputs(model, batch), atol=1e-6, rtol=0)


@needs_bnb
def test_4bit_base_refuses_rewrites_of_the_base_weight():
    with pytest.raises(VariantError, match="init='kaiming'"):
        lorabench.apply(build_model("bert"), "qlora", init="pissa")
    model = quant.quantize_model(build_model("bert"), targets=TARGETS)
    with pytest.raises(VariantError, match="stored in 4 bits"):
        lorabench.apply(model, "pissa", targets=TARGETS, r=4)


def test_qlora_without_bitsandbytes_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    model = build_model("bert")
    with pytest.raises(VariantError, match=r"pip install 'lorabench\[quant\]'"):
        lorabench.apply(model, "qlora", targets=TARGETS, r=4)
    assert getattr(model, "lorabench_state", None) is None and not list(adapted_layers(model))
