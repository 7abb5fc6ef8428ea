"""Focused tests of each variant's defining property: QLoRA (NF4 base), FFA-LoRA, ALLoRA,
LoRA-GA, LoLDU. (The generic checks run on them from tests/test_contract.py.)"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import lorabench
from lorabench import quant
from lorabench.adapters import VariantError
from lorabench.inject import adapted_layers

from conftest import build_model, make_batch, outputs, train_steps

needs_bnb = pytest.mark.skipif(not quant.available(), reason="needs bitsandbytes: pip install 'lorabench[quant]'")
TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers


def layers(model) -> dict:
    return dict(adapted_layers(model))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def linear(out_f: int, in_f: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f)
    nn.init.normal_(layer.weight, std=0.02)  # a pretrained-like, roughly Gaussian weight
    return layer


# ---- QLoRA ----------------------------------------------------------------------------
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


# ---- FFA-LoRA ---------------------------------------------------------------------------
def _sgd(model, batch, lr: float, steps: int = 3) -> None:
    opt = torch.optim.SGD(lorabench.param_groups(model, lr=lr))
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _adapter_outputs(variant: str, alpha: float, lr: float) -> torch.Tensor:
    model = build_model("bert")
    torch.manual_seed(7)  # the same random A in both runs
    lorabench.apply(model, variant, targets=TARGETS, r=4, alpha=alpha)
    model.classifier.requires_grad_(False)  # compare the adapters only
    _sgd(model, make_batch(), lr)
    return outputs(model, make_batch())


def test_ffa_lora_scaling_factor_is_a_learning_rate():
    """Sec. 4: with A fixed and B0 = 0, SGD with (alpha, lr) equals (k alpha, lr / k^2); not so for LoRA."""
    k = 2.0
    a, b = _adapter_outputs("ffa_lora", 8, 0.5), _adapter_outputs("ffa_lora", 8 * k, 0.5 / k**2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, outputs(build_model("bert"), make_batch()), atol=1e-3)  # it trained
    c, d = _adapter_outputs("lora", 8, 0.5), _adapter_outputs("lora", 8 * k, 0.5 / k**2)
    assert not torch.allclose(c, d, atol=1e-4)


def test_ffa_lora_federated_average_of_B_is_the_average_update():
    """Two clients from the same init: averaging B gives exactly the mean of their updates,
    while averaging LoRA's A and B separately does not."""

    def clients(variant):
        deltas, factors = [], []
        for seed in (11, 12):
            model = build_model("bert")
            torch.manual_seed(3)
            lorabench.apply(model, variant, targets=["query"], r=4)
            train_steps(model, make_batch(seed), steps=4, lr=0.05)  # AdamW
            layer = layers(model)["bert.encoder.layer.0.attention.self.query"].adapter
            deltas.append(layer.delta_weight().detach())
            factors.append((layer.lora_A.detach(), layer.lora_B.detach(), layer.scale))
        (A1, B1, s), (A2, B2, _) = factors
        return (deltas[0] + deltas[1]) / 2, s * ((B1 + B2) / 2) @ ((A1 + A2) / 2)

    mean_update, fedavg = clients("ffa_lora")
    torch.testing.assert_close(fedavg, mean_update, atol=1e-7, rtol=0)
    mean_update, fedavg = clients("lora")
    assert (fedavg - mean_update).abs().max() > 0.05 * mean_update.abs().max()


# ---- ALLoRA -----------------------------------------------------------------------------
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


# ---- LoRA-GA ----------------------------------------------------------------------------
def _full_gradient(batch) -> dict[str, torch.Tensor]:
    """dL/dW of every target weight of the plain base model."""
    model = build_model("bert").train()
    model(**batch).loss.backward()
    return {n: m.weight.grad for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS)) and isinstance(m, nn.Linear)}


def _first_step_update(model, batch) -> dict[str, torch.Tensor]:
    """s (B dA + dB A) with dA, dB = minus the gradients: LoRA's first-order SGD update of W."""
    model.train()
    model(**batch).loss.backward()
    out = {}
    for n, layer in adapted_layers(model):
        v = layer.adapter
        out[n] = -v.scale * (v.lora_B.detach() @ v.lora_A.grad + v.lora_B.grad @ v.lora_A.detach())
    return out


def test_lora_ga_keeps_the_output_and_starts_along_the_full_gradient():
    batch = make_batch()
    base = outputs(build_model("bert"), batch)
    model = lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4)
    lorabench.prepare(model, [batch])
    torch.testing.assert_close(outputs(model, batch), base, atol=1e-5, rtol=0)
    G = _full_gradient(batch)
    torch.manual_seed(0)
    lora = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, alpha=16)
    ga_step, lora_step = _first_step_update(model, batch), _first_step_update(lora, batch)
    for n, layer in layers(model).items():
        v = layer.adapter
        # Sec. 3.2: B0 B0^T G + G A0^T A0 is c^2 times the best rank-2r approximation of G
        U, S, Vh = torch.linalg.svd(G[n], full_matrices=False)
        G2r = U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]
        c2 = v.out_features**0.5 / 16.0
        first_step = v.lora_B0 @ v.lora_B0.T @ G[n] + G[n] @ v.lora_A0.T @ v.lora_A0
        torch.testing.assert_close(first_step, c2 * G2r, atol=1e-6, rtol=1e-4)
        assert cosine(ga_step[n], -G2r) > 0.999
        assert cosine(ga_step[n], -G[n]) > cosine(lora_step[n], -G[n]) + 0.2, n


def test_lora_ga_prepared_adapter_round_trips_and_prepare_leaves_no_trace(tmp_path):
    batches = [make_batch(2), make_batch(3)]
    model = lorabench.apply(build_model("gpt2"), "lora_ga", targets=["c_attn", "c_fc"], r=4)  # Conv1D (in, out)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lorabench.prepare(model, batches)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(layer.adapter.lora_B0.abs().sum() > 0 for layer in layers(model).values())
    train_steps(model, make_batch())
    out = outputs(model, make_batch())
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(build_model("gpt2"), tmp_path)
    torch.testing.assert_close(outputs(loaded, make_batch()), out, atol=1e-6, rtol=0)
    with pytest.raises(VariantError, match="at least one batch"):
        lorabench.prepare(model, [])


def test_lora_ga_warns_when_trained_without_prepare():
    model = lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=4)
    with pytest.warns(UserWarning, match="before lorabench.prepare"):
        train_steps(model, make_batch(), steps=1)
    with pytest.raises(VariantError, match="2r = 34"):
        lorabench.apply(build_model("bert"), "lora_ga", targets=TARGETS, r=17)


# ---- LoLDU ------------------------------------------------------------------------------
def test_loldu_factors_are_the_ldu_decomposition_and_output_is_unchanged():
    batch = make_batch()
    base_model = build_model("bert")
    W = base_model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    base = outputs(base_model, batch)
    model = lorabench.apply(build_model("bert"), "loldu", targets=TARGETS, r=4)
    torch.testing.assert_close(outputs(model, batch), base, atol=1e-5, rtol=0)
    full_L, d, full_U = lorabench.adapters.loldu.ldu(W)
    torch.testing.assert_close(full_L @ torch.diag(d) @ full_U, W, atol=1e-6, rtol=0)
    for n, layer in layers(model).items():
        v = layer.adapter
        assert torch.allclose(torch.diagonal(v.lora_U), torch.ones(4))  # unit upper rows
        assert torch.equal(v.lora_U.tril(-1), torch.zeros_like(v.lora_U))
        assert v.lora_L.abs().max() <= 1 + 1e-6  # partial pivoting: |L| <= 1
        assert v.sigma.item() == pytest.approx(1 / 4)  # alpha / r
    v = layers(model)["bert.encoder.layer.0.attention.self.query"].adapter
    torch.testing.assert_close(v.lora_L, full_L[:, :4])
    torch.testing.assert_close(v.z, d[:4])


def test_loldu_trains_only_the_diagonal_and_scale(tmp_path):
    model, batch = build_model("bert"), make_batch()
    lorabench.apply(model, "loldu", targets=TARGETS, r=4)
    n_layers = len(layers(model))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert lorabench.count_parameters(model)[0] == head + n_layers * (4 + 1)
    frozen = {n: (l.adapter.lora_L.clone(), l.adapter.lora_U.clone(), l.weight.clone())
              for n, l in layers(model).items()}
    start = {n: (l.adapter.z.detach().clone(), l.adapter.sigma.item()) for n, l in layers(model).items()}
    train_steps(model, batch)
    for n, layer in layers(model).items():
        v = layer.adapter
        assert all(torch.equal(a, b) for a, b in zip((v.lora_L, v.lora_U, layer.weight), frozen[n]))
        assert not torch.equal(v.z, start[n][0]) and v.sigma.item() != start[n][1]
        # the update relative to the original W is the rank-r LoRA it exports to PEFT
        B, A = v.lowrank_factors()
        torch.testing.assert_close(B @ A, v.delta_weight() - v.base_offset(), atol=1e-6, rtol=0)
    out = outputs(model, batch)
    lorabench.export_peft(model, tmp_path)
    peft = pytest.importorskip("peft")
    theirs = peft.PeftModel.from_pretrained(build_model("bert"), tmp_path).eval()  # onto the ORIGINAL W
    torch.testing.assert_close(outputs(theirs, batch), out, atol=1e-5, rtol=0)
