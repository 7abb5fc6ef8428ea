"""SALT (scale and shift of the top singular values, plus a LoRA on the rest): merging moves the
top-r singular values (ReLU-clipped) and nothing else, only the spectrum parameters and the LoRA
train, the SVD is recomputed rather than saved, ``canonical_svd`` fixes the signs, and the
PEFT export says it cannot and what to use instead. (The generic checks run on it from
tests/test_contract.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.adapters import VariantError
from lorabench.adapters.salt import canonical_svd

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers
R = 4


def test_salt_scale_and_shift_move_the_top_singular_values():
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "salt", targets=TARGETS, r=R, r_lora=2)
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    train_steps(model, batch)
    out = outputs(model, batch)
    with torch.no_grad():
        for layer in layers(model).values():
            layer.adapter.sigma_scale[0] = 2.0  # the top singular value doubles ...
            layer.adapter.sigma_shift[0] = 0.0
            layer.adapter.sigma_scale[1] = -1.0  # ... and the second goes negative: the ReLU clips it to 0
    expected = {}
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        U, S, Vh = canonical_svd(W)
        torch.testing.assert_close(U @ torch.diag(S) @ Vh, W, atol=1e-6, rtol=0)
        expected[n] = (U, Vh, torch.relu(v.sigma_scale * S[:R] + v.sigma_shift).detach())
        assert expected[n][2][0] == 2 * S[0] and expected[n][2][1] == 0
    lorabench.merge(model)
    for n, layer in layers(model).items():
        U, Vh, top = expected[n]
        # W' v_i = sigma'_i u_i for the top-r singular pairs: block-diagonal S', ReLU(S') on the top block
        torch.testing.assert_close(layer.weight @ Vh[:R].T, U[:, :R] * top, atol=1e-5, rtol=1e-5)
        svdvals = torch.linalg.svdvals(layer.weight)  # top' is part of the spectrum of W'
        assert all((svdvals - t).abs().min() < 1e-5 for t in top)
    lorabench.unmerge(model)
    assert not torch.allclose(outputs(model, batch), out, atol=1e-4)


def test_salt_trains_the_spectrum_only_and_saves_no_svd(tmp_path):
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "salt", targets=TARGETS, r=R, r_lora=2)
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad and ".adapter." in n}
    assert trainable == {"sigma_scale", "sigma_shift", "lora_X", "lora_Y"}
    X0 = {n: layer.adapter.lora_X.clone() for n, layer in layers(model).items()}
    train_steps(model, batch)
    for n, layer in layers(model).items():
        assert not torch.equal(layer.adapter.lora_X, X0[n])  # Y = 0 at init, X gets its gradient from step 2
        assert not layer.adapter.lora_Y.eq(0).all()
    lorabench.save_adapter(model, tmp_path)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "lorabench_adapter.safetensors"))
    assert not any(k.endswith((".U", ".S", ".Vh")) for k in keys), "the SVD is derived data: recomputed, not saved"
    loaded = lorabench.load_adapter(build_model("bert"), tmp_path)
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), atol=1e-6, rtol=0)
    with pytest.raises(VariantError, match="choose r < 32"):
        lorabench.apply(build_model("bert"), "salt", targets=TARGETS, r=32)


def test_canonical_svd_fixes_the_signs():
    torch.manual_seed(0)
    W = torch.randn(12, 8)
    U, S, Vh = canonical_svd(W)
    rows = U.abs().argmax(dim=0)
    assert (U[rows, torch.arange(8)] > 0).all()
    U2, _, Vh2 = canonical_svd(W.double())  # another backend's raw signs: the same factors
    torch.testing.assert_close(U2.float(), U, atol=1e-5, rtol=0)
    torch.testing.assert_close(Vh2.float(), Vh, atol=1e-5, rtol=0)


def test_salt_export_says_it_cannot_and_what_to_use(tmp_path):
    model = lorabench.apply(build_model("bert"), "salt", targets=TARGETS, r=R, r_lora=2)
    with pytest.raises(VariantError, match="cannot be exported to PEFT.*full rank.*save_adapter"):
        lorabench.export_peft(model, tmp_path)
