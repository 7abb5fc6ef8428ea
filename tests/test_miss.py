"""MiSS (one shared shard D expanded over the weight; modes balance, bat, mini): parity with PEFT
(outputs, gradients and merged weights) for each mode, the update repeats one zero-padded shard,
bat is block-affine and unmerges exactly, and the export loads in PEFT."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import MissConfig  # noqa: E402

import lorabench  # noqa: E402
from lorabench import VariantError  # noqa: E402

from conftest import TARGETS, make_batch, train_steps  # noqa: E402
from conftest import layers as _layers  # noqa: E402
from helpers_peft import PEFT_WARNINGS, assert_parity, export_round_trip, peft_layer, perturb_and_copy, with_peft  # noqa: E402

R = 4
pytestmark = PEFT_WARNINGS


# PEFT's MiSS adapts nn.Linear only (no GPT-2 Conv1D).
MISS = [("balance", "bert", {"r": R}), ("balance", "llama", {"r": R}), ("pad", "bert", {"r": 5}),
        ("bat", "bert", {"r": R, "mode": "bat"}), ("bat", "llama", {"r": R, "mode": "bat"}),
        ("mini", "bert", {"r": R, "mode": "mini", "mini_r": 2})]


@pytest.mark.parametrize("case, arch, opts", MISS, ids=[f"{c}-{a}" for c, a, _ in MISS])
def test_miss_matches_peft(case, arch, opts, make_model):
    ours = lorabench.apply(make_model(arch), "miss", targets=TARGETS[arch], **opts)
    init = {"balance": True, "bat": "bat", "mini": "mini"}[opts.get("mode", "balance")]
    theirs = with_peft(make_model(arch), MissConfig, arch, r=opts["r"], init_weights=init, mini_r=opts.get("mini_r", 1))
    pairs = []
    for name, layer in _layers(ours).items():
        pl = peft_layer(theirs, name)
        assert layer.adapter.miss_block.shape == pl.miss_block["default"].shape
        assert not layer.adapter.miss_block.any() and not pl.miss_block["default"].any()  # D = 0: identity
        pairs.append((layer.adapter.miss_block, pl.miss_block["default"]))
    perturb_and_copy(pairs)
    assert_parity(ours, theirs, pairs, arch, make_model)
    # Merged weights agree with PEFT's merge.
    layer = next(iter(_layers(ours).values()))
    pl = peft_layer(theirs, next(iter(_layers(ours))))
    W = layer.weight.detach().clone()
    with torch.no_grad():
        theirs_merged = (W + pl.get_delta_weight("default", W.clone()) if init == "bat"
                         else pl.get_delta_weight_miss("default", W.clone()))
        torch.testing.assert_close(layer.adapter.merged_weight(W), theirs_merged, atol=1e-6, rtol=0)


def test_miss_update_shares_one_shard(bert):
    r = 5  # 32 and 64 are not multiples of 5: the last shard is zero-padded
    model = lorabench.apply(bert, "miss", targets=["intermediate.dense", "output.dense"], r=r)
    for layer in _layers(model).values():
        a = layer.adapter
        with torch.no_grad():
            a.miss_block.normal_()
        dW = a.delta_weight().detach()
        for j in range(a.in_features):  # dW[o, j] = D[j mod r, o]
            torch.testing.assert_close(dW[:, j], a.miss_block[j % r].detach(), atol=0, rtol=0)
        x = torch.randn(2, 3, a.in_features)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), x @ (layer.weight + dW).t() + layer.bias, atol=1e-5, rtol=1e-5)


def test_miss_bat_is_block_affine_and_unmerges_exactly(bert):
    r = R
    model = lorabench.apply(bert, "miss", targets=["intermediate.dense"], r=r, mode="bat")
    layer = next(iter(_layers(model).values()))
    a = layer.adapter
    with torch.no_grad():
        a.miss_block.normal_(std=0.1)
    W = layer.weight.detach().clone()
    W2 = a.merged_weight(W).detach()
    i, j = 3, 5  # output block 3, input block 5: W_ij -> W_ij (I + D_i) + D_i
    blk = W[i * r:(i + 1) * r, j * r:(j + 1) * r]
    D = a.miss_block[i].detach()
    torch.testing.assert_close(W2[i * r:(i + 1) * r, j * r:(j + 1) * r], blk + blk @ D + D, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.unmerged_weight(W2), W, atol=1e-5, rtol=0)
    with pytest.raises(VariantError, match="r=5 divides neither side"):
        lorabench.apply(lorabench.unload(model), "miss", targets=["query"], r=5, mode="bat")


def test_miss_export_loads_in_peft(make_model, tmp_path):
    model = lorabench.apply(make_model("llama"), "miss", targets=TARGETS["llama"], r=R)
    train_steps(model, make_batch())
    export_round_trip(model, "llama", make_model, tmp_path)
