"""RandLoRA (full-rank updates from shared random bases, only the diagonal scalings train): parity
with PEFT on BERT, Llama (GQA) and GPT-2 (our shared bases copied into PEFT), the update is the
paper's sum over bases and full rank, sparse bases are ternary, and the export loads in PEFT
(which reports its per-layer copies of the bases missing: ours are written once)."""

from __future__ import annotations

import math

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import RandLoraConfig  # noqa: E402

import lorabench  # noqa: E402

from conftest import TARGETS, make_batch, train_steps  # noqa: E402
from conftest import layers as _layers  # noqa: E402
from helpers_peft import PEFT_WARNINGS, assert_parity, export_round_trip, peft_layer, perturb_and_copy, with_peft  # noqa: E402

R = 4
pytestmark = PEFT_WARNINGS


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_randlora_matches_peft(arch, make_model):
    alpha = 20 * R
    ours = lorabench.apply(make_model(arch), "randlora", targets=TARGETS[arch], r=R, alpha=alpha)
    theirs = with_peft(make_model(arch), RandLoraConfig, arch, r=R, randlora_alpha=alpha, fan_in_fan_out=arch == "gpt2")
    shared, tuner = ours.lorabench_shared, theirs.base_model
    assert tuner.randlora_A["default"].shape == (R, 1, shared.randlora_A.shape[1])  # same shared sizes
    assert tuner.randlora_B["default"].shape == shared.randlora_B.shape
    with torch.no_grad():
        tuner.randlora_A["default"].copy_(shared.randlora_A[:, None, :])
        tuner.randlora_B["default"].copy_(shared.randlora_B)
    pairs = []
    for name, layer in _layers(ours).items():
        pl, a = peft_layer(theirs, name), layer.adapter
        assert pl.num_bases == a.randlora_lambda.shape[1] == math.ceil(min(a.in_features, a.out_features) / R)
        torch.testing.assert_close(a.randlora_lambda, pl.randlora_lambda["default"], atol=0, rtol=0)  # zeros
        torch.testing.assert_close(a.randlora_gamma, pl.randlora_gamma["default"], atol=0, rtol=0)  # 1 / d
        pairs += [(a.randlora_lambda, pl.randlora_lambda["default"]), (a.randlora_gamma, pl.randlora_gamma["default"])]
    perturb_and_copy(pairs)
    assert_parity(ours, theirs, pairs, arch, make_model)


def test_randlora_is_the_paper_sum_and_full_rank(make_model):
    model = lorabench.apply(make_model("bert"), "randlora", targets=["intermediate.dense", "output.dense"], r=R, alpha=80)
    A_shared, B_shared = model.lorabench_shared.randlora_A, model.lorabench_shared.randlora_B
    assert abs(A_shared.std().item() - 1) < 1e-5 and abs(B_shared.std().item() - 1) < 1e-5  # unit-std bases
    g = torch.Generator().manual_seed(0)
    for name, layer in _layers(model).items():
        a = layer.adapter
        with torch.no_grad():
            a.randlora_lambda.copy_(torch.randn(a.randlora_lambda.shape, generator=g))
            a.randlora_gamma.copy_(torch.randn(a.randlora_gamma.shape, generator=g))
        r, (N, d), D = R, a.randlora_gamma.shape, max(a.in_features, a.out_features)
        A = A_shared[:, :d]
        B_flat = B_shared[:D, :N, :].reshape(D, N * r)
        # dW = s sum_n B_n Lambda_n A Gamma_n, with B_n the columns that PEFT's flattening pairs with base n
        M = torch.zeros(D, d)
        for n in range(N):
            cols = [k * N + n for k in range(r)]  # row k*N + n of the scaled A belongs to base n, row k of A
            B_n = B_flat[:, cols]  # (D, r)
            M += B_n @ torch.diag(a.randlora_lambda[:, n]) @ A @ torch.diag(a.randlora_gamma[n])
        expected = a.scale * (M if a.in_features <= a.out_features else M.t())
        torch.testing.assert_close(a.delta_weight().detach(), expected, atol=1e-4, rtol=1e-5)
        x = torch.randn(3, a.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ (layer.weight + expected).t() + layer.bias, atol=1e-4, rtol=1e-4)
        assert torch.linalg.matrix_rank(a.delta_weight().detach()) == d, f"{name}: the update is not full rank"


def test_randlora_sparse_bases_are_ternary(bert):
    model = lorabench.apply(bert, "randlora", targets=["query"], r=R, basis="sparse")
    A = model.lorabench_shared.randlora_A
    values = torch.unique(torch.round(A / A.abs().max(), decimals=4))
    assert values.tolist() == [-1.0, 0.0, 1.0]
    assert 0.55 < (A == 0).float().mean() < 0.8  # P(0) = 2/3


def test_randlora_export_loads_in_peft(make_model, tmp_path):
    model = lorabench.apply(make_model("bert"), "randlora", targets=TARGETS["bert"], r=R, alpha=80)
    train_steps(model, make_batch())
    export_round_trip(model, "bert", make_model, tmp_path)
