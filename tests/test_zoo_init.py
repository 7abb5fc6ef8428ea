"""Focused tests of each variant's defining property: LoRA-SB (update-approximation init), NLoRA
(Nyström init, IntTune) and the LoRA init "nystrom", SALT (singular-value scale/shift + LoRA),
PaCA (partial connections). The generic checks run on them from tests/test_contract.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorabench
from lorabench.adapters import VariantError
from lorabench.adapters.nlora import nystrom_factors
from lorabench.adapters.salt import canonical_svd
from lorabench.inject import adapted_layers

from conftest import build_model, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers
R = 4
# transformers' own deprecation, triggered inside PEFT's from_pretrained.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def layers(model) -> dict:
    return dict(adapted_layers(model))


def truncated(M: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


def eye_close(M: torch.Tensor) -> None:
    torch.testing.assert_close(M, torch.eye(M.shape[0]), atol=1e-5, rtol=0)


def full_gradients(batches) -> dict[str, torch.Tensor]:
    """dL/dW of every target weight of the plain base model, averaged over ``batches``."""
    model = build_model("bert").train()
    for batch in batches:
        model(**batch).loss.backward()
    return {n: m.weight.grad / len(batches) for n, m in model.named_modules()
            if n.endswith(tuple(TARGETS)) and isinstance(m, nn.Linear)}


# ---- LoRA-SB ----------------------------------------------------------------------------
@pytest.mark.parametrize("update", ["adam", "sgd"])
def test_lora_sb_init_is_the_best_rank_r_approximation_of_the_first_update(update):
    batches = [make_batch(1), make_batch(2)]
    lr = 1e-3
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R, alpha=8.0, update=update, init_lr=lr)
    lorabench.prepare(model, batches)
    G = full_gradients(batches)
    simulated = build_model("bert")  # the base model after the rank-r part of one full-FT step
    for n, layer in layers(model).items():
        v = layer.adapter
        dW = -lr * (torch.sign(G[n]) if update == "adam" else G[n])
        torch.testing.assert_close(v.delta_weight(), truncated(dW, R), atol=1e-6 * dW.abs().max().item(), rtol=1e-4)
        eye_close(v.lora_B.T @ v.lora_B)  # orthonormal columns (U_r)
        eye_close(v.lora_A @ v.lora_A.T)  # orthonormal rows (V_r^T)
        S = torch.linalg.svdvals(dW)[:R]
        torch.testing.assert_close(v.R, torch.diag(S) / v.scale, atol=1e-6 * S[0].item(), rtol=1e-4)  # s = 2
        with torch.no_grad():
            simulated.get_submodule(n).weight += truncated(dW, R)
    # W is not compensated: the model starts where the (projected) first step takes it.
    torch.testing.assert_close(outputs(model, batches[0]), outputs(simulated, batches[0]), atol=1e-5, rtol=0)
    assert not torch.allclose(outputs(model, batches[0]), outputs(build_model("bert"), batches[0]), atol=1e-5)


def test_lora_sb_R_gets_the_full_gradient_projected_onto_B_and_A():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R)
    lorabench.prepare(model, [batch])
    weights = [layer.base_layer.weight for layer in layers(model).values()]
    for w in weights:
        w.requires_grad_(True)
    model.train()
    model(**batch).loss.backward()
    for layer in layers(model).values():
        v, G = layer.adapter, layer.base_layer.weight.grad
        # dL/dR = s B^T G A^T: the equivalent full update s B dR A stays in the subspace (Sec. 4)
        torch.testing.assert_close(v.R.grad, v.scale * v.lora_B.T @ G @ v.lora_A.T, atol=1e-7, rtol=1e-4)


def test_lora_sb_prepare_is_repeatable_and_warns_when_skipped():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=R)
    with pytest.warns(UserWarning, match="before lorabench.prepare"):
        train_steps(model, batch, steps=1)
    lorabench.prepare(model, [batch])
    first = {n: layer.adapter.delta_weight().clone() for n, layer in layers(model).items()}
    model.classifier.requires_grad_(False)  # only R trains ...
    train_steps(model, batch)
    lorabench.prepare(model, [batch])  # ... and R is reset first: the gradient is the base model's again
    for n, layer in layers(model).items():
        torch.testing.assert_close(layer.adapter.delta_weight(), first[n], atol=1e-9, rtol=1e-5)
    with pytest.raises(VariantError, match="at least one batch"):
        lorabench.prepare(model, [])
    with pytest.raises(VariantError, match="choose r <= 32"):
        lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, r=33)
    with pytest.raises(VariantError, match="update must be one of adam, sgd"):
        lorabench.apply(build_model("bert"), "lora_sb", targets=TARGETS, update="lion")


# ---- NLoRA and the "nystrom" init ----------------------------------------------------------
@pytest.mark.parametrize("sketch", ["gaussian", "columns"])
def test_nystrom_factors_are_the_nystrom_approximation(sketch):
    torch.manual_seed(0)
    W = torch.randn(48, 5) @ torch.randn(5, 40)  # (out, in) of rank 5
    Q, Rm, A = nystrom_factors(W, 5, sketch=sketch, seed=3)
    eye_close(Q.T @ Q)
    torch.testing.assert_close(Q @ Rm @ A, W, atol=1e-4, rtol=0)  # Nyström is exact on rank-r matrices
    W = torch.randn(48, 40)
    Q, Rm, A = nystrom_factors(W, 4, sketch=sketch, seed=3, oversample=1.0)
    if sketch == "gaussian":  # W Omega (Psi^T W Omega)^+ Psi^T W with the same seeded test matrices
        g = torch.Generator().manual_seed(3)
        omega, psi = torch.randn(40, 4, generator=g), torch.randn(48, 8, generator=g)
        expected = W @ omega @ torch.linalg.pinv(psi.T @ W @ omega) @ psi.T @ W
    else:  # Fig. 3: [A_W; B_W] A_W^+ [A_W F_W]
        expected = W[:, :4] @ torch.linalg.pinv(W[:4, :4]) @ W[:4]
    torch.testing.assert_close(Q @ Rm @ A, expected, atol=1e-4, rtol=1e-4)
    Q2, R2, A2 = nystrom_factors(W, 4, sketch=sketch, seed=3)
    assert torch.equal(Q, Q2) and torch.equal(A, A2)  # seeded: the same factors every time


@pytest.mark.parametrize("sketch", ["gaussian", "columns"])
def test_nlora_keeps_the_output_and_moves_the_sketch_into_the_adapter(sketch):
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=R, alpha=8.0, init="sketch",
                            sketch=sketch)
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        Q, Rm, A = nystrom_factors(W, R, sketch=sketch)
        torch.testing.assert_close(v.delta_weight(), Q @ Rm @ A, atol=1e-6, rtol=1e-5)  # s B N A = sketch
        torch.testing.assert_close(layer.weight + v.delta_weight(), W, atol=1e-6, rtol=0)  # residual + sketch
        eye_close(v.lora_B.T @ v.lora_B)


def test_nlora_inttune_trains_only_the_intermediate_matrix():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "nlora", targets=TARGETS, r=R, inttune=True)
    before = {n: (layer.adapter.lora_A.clone(), layer.adapter.lora_B.clone(), layer.adapter.lora_N.clone())
              for n, layer in layers(model).items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".adapter." in n]
    assert trainable and all(n.endswith(".adapter.lora_N") for n in trainable)
    train_steps(model, batch)
    for n, layer in layers(model).items():
        A, B, N = before[n]
        v = layer.adapter
        assert torch.equal(v.lora_A, A) and torch.equal(v.lora_B, B)
        assert not torch.equal(v.lora_N, N)
        # the update since init stays inside span(B) x rowspace(A): s B (N - N0) A
        torch.testing.assert_close(v.delta_weight() - v.scale * B @ N @ A, v.scale * B @ (v.lora_N - N) @ A,
                                   atol=1e-6, rtol=0)
    n_layers = len(layers(model))
    assert lorabench.count_parameters(model)[0] == n_layers * R * R + sum(
        p.numel() for p in model.classifier.parameters())


def test_lora_nystrom_init_is_a_balanced_residual_init():
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=R, alpha=16, init="nystrom")
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        Q, Rm, A = nystrom_factors(W, R)
        torch.testing.assert_close(v.delta_weight(), Q @ Rm @ A, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(v.lora_B.norm(dim=0), v.lora_A.norm(dim=1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer.weight + v.delta_weight(), W, atol=1e-6, rtol=0)


# ---- SALT -------------------------------------------------------------------------------
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


# ---- PaCA -------------------------------------------------------------------------------
def test_paca_changes_only_the_selected_columns_in_one_matmul():
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "paca", targets=TARGETS, r=R)
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    train_steps(model, batch)
    out = outputs(model, batch)
    x = torch.randn(2, 5, 32)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        idx = v.paca_indices
        assert v.paca_indices.dtype == torch.long and len(set(idx.tolist())) == R
        effective = W.clone()
        effective[:, idx] = v.scale * v.paca_w.detach()
        if layer.adapter.in_features == 32:  # the forward is one plain matmul with the effective weight
            torch.testing.assert_close(layer(x), nn.functional.linear(x, effective, layer.bias), atol=1e-6, rtol=0)
        merged = v.merged_weight(W)
        torch.testing.assert_close(merged, effective, atol=0, rtol=0)
        others = torch.ones(W.shape[1], dtype=torch.bool)
        others[idx] = False
        assert torch.equal(merged[:, others], W[:, others])  # every other connection is untouched
        assert not torch.equal(merged[:, idx], W[:, idx])
    lorabench.merge(model)
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=0)
    lorabench.unmerge(model)
    for n, layer in layers(model).items():
        assert torch.equal(layer.weight, base_model.get_submodule(n).weight)  # unmerge restores the columns


def test_paca_gradient_is_the_weight_gradient_of_the_selected_columns_and_keeps_partial_activations():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "paca", targets=TARGETS, r=R)
    train_steps(model, batch)  # columns away from W, so the effective weight matters
    reference = build_model("bert")  # full fine-tuning of the effective weights
    reference.classifier.load_state_dict(model.classifier.state_dict())  # the head trained too
    for n, layer in layers(model).items():
        with torch.no_grad():
            reference.get_submodule(n).weight.copy_(layer.adapter.merged_weight(layer.weight))
    model.train(), reference.train()
    model(**batch).loss.backward()
    reference(**batch).loss.backward()
    for n, layer in layers(model).items():
        v, G = layer.adapter, reference.get_submodule(n).weight.grad
        torch.testing.assert_close(v.paca_w.grad, v.scale * G[:, v.paca_indices], atol=1e-7, rtol=1e-4)
    # Only x[..., idx] is kept for backward, never the full activation (Sec. 3).
    layer = layers(model)["bert.encoder.layer.0.attention.self.query"]
    x = torch.randn(2, 5, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        layer(x)
    assert (2, 5, R) in saved and (2, 5, 32) not in saved


# ---- PEFT export ------------------------------------------------------------------------
@pytest.mark.parametrize("variant, opts", [
    ("lora_sb", {"r": R}), ("nlora", {"r": R}), ("nlora", {"r": R, "inttune": True}),
    ("nlora", {"r": R, "init": "sketch"}),
    ("lora", {"r": R, "init": "nystrom"}), ("paca", {"r": R}),
])
def test_export_loads_in_peft(variant, opts, tmp_path):
    peft = pytest.importorskip("peft")
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), variant, targets=TARGETS, **opts)
    lorabench.prepare(model, [batch])
    train_steps(model, batch)
    lorabench.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(build_model("bert"), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), atol=1e-5, rtol=0)


def test_salt_export_says_it_cannot_and_what_to_use(tmp_path):
    model = lorabench.apply(build_model("bert"), "salt", targets=TARGETS, r=R, r_lora=2)
    with pytest.raises(VariantError, match="cannot be exported to PEFT.*full rank.*save_adapter"):
        lorabench.export_peft(model, tmp_path)
