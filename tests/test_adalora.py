"""RandLoRA, Uni-LoRA, MiSS and AdaLoRA: each one's defining property, and parity with PEFT
(the test oracle): the same adapter tensors copied into both give the same outputs and the same
gradients of every trainable tensor (fp32, 1e-5), on the tiny BERT, Llama (GQA) and GPT-2.

PEFT draws its random tensors (bases, projection indices, initial weights) from its own RNG
streams, so ours are copied into PEFT (or PEFT's projection into ours) before comparing.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import (  # noqa: E402
    AdaLoraConfig,
    MissConfig,
    PeftModel,
    RandLoraConfig,
    UniLoraConfig,
    get_peft_model,
)

import lorabench  # noqa: E402
from lorabench import VariantError, inject  # noqa: E402
from lorabench.adapters.adalora import RankAllocator  # noqa: E402
from lorabench.adapters.uni_lora import UniLoRA  # noqa: E402
from lorabench.inject import adapted_layers  # noqa: E402

from conftest import TARGETS, make_batch, outputs, train_steps  # noqa: E402

R = 4
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to:UserWarning"),
]


def _layers(model) -> dict:
    return dict(adapted_layers(model))


def _peft_layer(peft_model, name):
    return peft_model.base_model.model.get_submodule(name)


def _peft(model, config_cls, arch, **kw):
    return get_peft_model(model, config_cls(target_modules=TARGETS[arch], task_type="SEQ_CLS", **kw))


@torch.no_grad()
def _perturb_and_copy(pairs, std=0.1, seed=7):
    """Move each of our tensors off its init, then copy it into PEFT's (reshaped to PEFT's shape)."""
    g = torch.Generator().manual_seed(seed)
    for ours, theirs in pairs:
        ours.add_(std * torch.randn(ours.shape, generator=g))
        theirs.copy_(ours.reshape(theirs.shape))


def _assert_parity(ours, theirs, pairs, arch, make_model, ours_loss=lambda m, b: m(**b).loss):
    """Outputs, the loss, and the gradients of every paired tensor and of the head agree."""
    batch = make_batch()
    out = outputs(ours, batch)
    assert not torch.allclose(out, outputs(make_model(arch), batch), atol=1e-3), "the adapter changes nothing"
    torch.testing.assert_close(out, outputs(theirs.eval(), batch), atol=1e-5, rtol=0)
    loss_ours, loss_theirs = ours_loss(ours, batch), theirs(**batch).loss
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-6, rtol=0)
    loss_ours.backward()
    loss_theirs.backward()
    for i, (a, b) in enumerate(pairs):
        assert a.grad is not None and a.grad.abs().sum() > 0, f"tensor {i} got no gradient"
        torch.testing.assert_close(a.grad, b.grad.reshape(a.shape), atol=1e-5, rtol=0, msg=f"gradient {i}")
    head = ours.lorabench_state.head[0]
    peft_head = _peft_layer(theirs, head).modules_to_save["default"]
    for p, q in zip(ours.get_submodule(head).parameters(), peft_head.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0)


def _export_round_trip(model, arch, make_model, tmp_path):
    batch = make_batch()
    out = outputs(model, batch)
    lorabench.export_peft(model, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(make_model(arch), tmp_path).eval()
    for w in caught:
        text = str(w.message)
        # PEFT's own RandLoRA save repeats the shared bases under every layer; ours writes them once
        # (base_model.randlora_A / _B), which PEFT loads, and it reports the per-layer copies missing.
        if "missing adapter keys" in text:
            keys = re.findall(r"'([^']+)'", text)
            assert keys and all(re.search(r"\.randlora_[AB]\.default$", k) for k in keys), text
    torch.testing.assert_close(outputs(loaded, batch), out, atol=1e-5, rtol=0)


# ---- RandLoRA -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_randlora_matches_peft(arch, make_model):
    alpha = 20 * R
    ours = lorabench.apply(make_model(arch), "randlora", targets=TARGETS[arch], r=R, alpha=alpha)
    theirs = _peft(make_model(arch), RandLoraConfig, arch, r=R, randlora_alpha=alpha, fan_in_fan_out=arch == "gpt2")
    shared, tuner = ours.lorabench_shared, theirs.base_model
    assert tuner.randlora_A["default"].shape == (R, 1, shared.randlora_A.shape[1])  # same shared sizes
    assert tuner.randlora_B["default"].shape == shared.randlora_B.shape
    with torch.no_grad():
        tuner.randlora_A["default"].copy_(shared.randlora_A[:, None, :])
        tuner.randlora_B["default"].copy_(shared.randlora_B)
    pairs = []
    for name, layer in _layers(ours).items():
        pl, a = _peft_layer(theirs, name), layer.adapter
        assert pl.num_bases == a.randlora_lambda.shape[1] == math.ceil(min(a.in_features, a.out_features) / R)
        torch.testing.assert_close(a.randlora_lambda, pl.randlora_lambda["default"], atol=0, rtol=0)  # zeros
        torch.testing.assert_close(a.randlora_gamma, pl.randlora_gamma["default"], atol=0, rtol=0)  # 1 / d
        pairs += [(a.randlora_lambda, pl.randlora_lambda["default"]), (a.randlora_gamma, pl.randlora_gamma["default"])]
    _perturb_and_copy(pairs)
    _assert_parity(ours, theirs, pairs, arch, make_model)


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
    _export_round_trip(model, "bert", make_model, tmp_path)


# ---- Uni-LoRA -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_uni_lora_matches_peft(arch, make_model):
    d = 64
    ours = lorabench.apply(make_model(arch), "uni_lora", targets=TARGETS[arch], r=R, theta_d_length=d)
    theirs = _peft(make_model(arch), UniLoraConfig, arch, r=R, theta_d_length=d, fan_in_fan_out=arch == "gpt2")
    layers = _layers(ours)
    # PEFT's projection (its own seeded balanced assignment) into ours, in theta_D's layout.
    peft_index = torch.cat([
        torch.cat([_peft_layer(theirs, n).unilora_indices_A["default"].flatten(),
                   _peft_layer(theirs, n).unilora_indices_B["default"].flatten()]) for n in layers
    ])
    UniLoRA.set_projection(ours.lorabench_shared, peft_index.to(torch.int32))
    shared = ours.lorabench_shared
    for name, layer in layers.items():  # the column normalisation agrees
        pl = _peft_layer(theirs, name)
        idx = pl.unilora_indices_A["default"]
        torch.testing.assert_close(shared.proj_scale[idx], pl.unilora_scales_A["default"], atol=0, rtol=0)
    pairs = [(shared.theta_d, theirs.base_model.unilora_theta_d["default"])]
    _perturb_and_copy(pairs, std=1.0)
    _assert_parity(ours, theirs, pairs, arch, make_model)


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
    _export_round_trip(model, arch, make_model, tmp_path)


def test_uni_lora_needs_the_shared_vector():
    with pytest.raises(VariantError, match="shared vector.*lorabench.apply"):
        UniLoRA(32, 32, UniLoRA.make_options(), None)


# ---- MiSS -----------------------------------------------------------------------------------
# PEFT's MiSS adapts nn.Linear only (no GPT-2 Conv1D).
MISS = [("balance", "bert", {"r": R}), ("balance", "llama", {"r": R}), ("pad", "bert", {"r": 5}),
        ("bat", "bert", {"r": R, "mode": "bat"}), ("bat", "llama", {"r": R, "mode": "bat"}),
        ("mini", "bert", {"r": R, "mode": "mini", "mini_r": 2})]


@pytest.mark.parametrize("case, arch, opts", MISS, ids=[f"{c}-{a}" for c, a, _ in MISS])
def test_miss_matches_peft(case, arch, opts, make_model):
    ours = lorabench.apply(make_model(arch), "miss", targets=TARGETS[arch], **opts)
    init = {"balance": True, "bat": "bat", "mini": "mini"}[opts.get("mode", "balance")]
    theirs = _peft(make_model(arch), MissConfig, arch, r=opts["r"], init_weights=init, mini_r=opts.get("mini_r", 1))
    pairs = []
    for name, layer in _layers(ours).items():
        pl = _peft_layer(theirs, name)
        assert layer.adapter.miss_block.shape == pl.miss_block["default"].shape
        assert not layer.adapter.miss_block.any() and not pl.miss_block["default"].any()  # D = 0: identity
        pairs.append((layer.adapter.miss_block, pl.miss_block["default"]))
    _perturb_and_copy(pairs)
    _assert_parity(ours, theirs, pairs, arch, make_model)
    # Merged weights agree with PEFT's merge.
    layer = next(iter(_layers(ours).values()))
    pl = _peft_layer(theirs, next(iter(_layers(ours))))
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
    _export_round_trip(model, "llama", make_model, tmp_path)


# ---- AdaLoRA --------------------------------------------------------------------------------
def _adalora_pair(arch, make_model, total=10, **kw):
    opts = dict(init_r=R, target_r=2, alpha=8.0, **kw)
    ours = lorabench.apply(make_model(arch), "adalora", targets=TARGETS[arch], **opts)
    theirs = _peft(make_model(arch), AdaLoraConfig, arch, init_r=R, target_r=2, lora_alpha=8, total_step=total,
                   fan_in_fan_out=arch == "gpt2", **kw)
    pairs = []
    for name, layer in _layers(ours).items():
        pl, a = _peft_layer(theirs, name), layer.adapter
        assert not a.lora_E.any() and not pl.lora_E["default"].any()  # Lambda = 0: identity at init
        pairs += [(a.lora_A, pl.lora_A["default"]), (a.lora_E, pl.lora_E["default"]), (a.lora_B, pl.lora_B["default"])]
    return ours, theirs, pairs


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_adalora_matches_peft_with_orthogonal_regulariser(arch, make_model):
    ours, theirs, pairs = _adalora_pair(arch, make_model)
    _perturb_and_copy(pairs)
    reg = inject.extra_loss(ours)
    assert reg > 0.1  # perturbed P, Q are far from orthogonal
    _assert_parity(ours, theirs, pairs, arch, make_model, ours_loss=lambda m, b: m(**b).loss + inject.extra_loss(m))


def _masks(model):
    return {n: l.adapter.rank_mask.clone() for n, l in _layers(model).items()}


def test_adalora_rank_allocation_matches_peft(make_model):
    total, tinit, tfinal = 8, 1, 2
    ours, theirs, pairs = _adalora_pair("bert", make_model, total=total, tinit=tinit, tfinal=tfinal)
    _perturb_and_copy(pairs, std=0.05)
    batches = [make_batch(seed) for seed in range(total + 2)]
    opt_ours = torch.optim.SGD([a for a, _ in pairs], lr=0.05)
    opt_theirs = torch.optim.SGD([b for _, b in pairs], lr=0.05)
    layers = _layers(ours)
    for step in range(1, total + 2):
        batch = batches[step]
        (ours(**batch).loss + inject.extra_loss(ours)).backward()
        inject.before_step(ours)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        lorabench.on_step(ours, step, total)

        theirs(**batch).loss.backward()
        opt_theirs.step()
        theirs.base_model.update_and_allocate(step)
        opt_theirs.zero_grad(set_to_none=True)
        for name, layer in layers.items():
            E_theirs = _peft_layer(theirs, name).lora_E["default"].detach().flatten()
            torch.testing.assert_close(layer.adapter.lora_E.detach(), E_theirs, atol=1e-5, rtol=0,
                                       msg=f"step {step}: {name}.lora_E differs from PEFT's")
            assert torch.equal(layer.adapter.lora_E == 0, E_theirs == 0), f"step {step}: {name} masks differ"
    kept = sum(int(m.sum()) for m in _masks(ours).values())
    assert kept == 2 * len(layers)  # the final budget, target_r per layer on average


def test_adalora_budget_schedule_and_final_masks(make_model):
    total, tinit, tfinal = 12, 2, 3
    model = lorabench.apply(make_model("bert"), "adalora", targets=TARGETS["bert"], init_r=6, target_r=2,
                            tinit=tinit, tfinal=tfinal)
    layers = _layers(model)
    n = len(layers)
    alloc = RankAllocator.of(model.lorabench_shared)
    assert alloc.init_bgt == 6 * n and alloc.target_bgt == 2 * n
    # Cubic schedule (paper Sec. 3.3).
    for t in range(1, total + 1):
        b, now = alloc.schedule(t, total)
        if t <= tinit:
            assert b == 6 * n and not now
        elif t > total - tfinal:
            assert b == 2 * n
        else:
            assert b == int(4 * n * (1 - (t - tinit) / (total - tfinal - tinit)) ** 3 + 2 * n)
    budgets = [alloc.schedule(t, total)[0] for t in range(1, total + 1)]
    assert budgets == sorted(budgets, reverse=True) and budgets[0] == 6 * n and budgets[-1] == 2 * n

    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2))
    model.train()
    kept = []
    for step in range(1, total + 1):
        (model(**make_batch(step)).loss + inject.extra_loss(model)).backward()
        inject.before_step(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lorabench.on_step(model, step, total)
        masks = _masks(model)
        kept.append(sum(int(m.sum()) for m in masks.values()))
        for name, layer in layers.items():  # pruned singular values are exactly zero
            assert not layer.adapter.lora_E[~masks[name]].any(), f"step {step}: {name} keeps a pruned lambda"
        if tinit < step < total - tfinal:
            assert kept[-1] <= alloc.schedule(step, total)[0]
    assert kept[: tinit] == [6 * n] * tinit  # nothing pruned while warming up
    assert kept[total - tfinal - 1:] == [2 * n] * (tfinal + 1)  # the final budget, then kept fixed
    ranks = [int(m.sum()) for m in _masks(model).values()]
    assert sum(ranks) == 2 * n and max(ranks) <= 6
    # Merge / unmerge and save / load keep the pruned adapter.
    batch = make_batch()
    model.eval()
    out = outputs(model, batch)
    lorabench.merge(model)
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=0)
    lorabench.unmerge(model)


def test_adalora_warns_without_gradients_and_checks_its_schedule(make_model):
    model = lorabench.apply(make_model("bert"), "adalora", targets=["query"], init_r=R, target_r=2)
    with pytest.warns(UserWarning, match="before_step"):
        lorabench.on_step(model, 1, 4)  # no before_step: nothing to rank by
    model = lorabench.apply(make_model("bert"), "adalora", targets=["query"], init_r=R, target_r=2, tinit=5, tfinal=5)
    with pytest.raises(VariantError, match="no budget phase.*lower tinit / tfinal or train longer"):
        lorabench.on_step(model, 1, 8)
    with pytest.raises(VariantError, match="target_r must be an integer in 1..init_r=4"):
        lorabench.apply(make_model("bert"), "adalora", init_r=4, target_r=6)


def test_train_loop_adds_the_variant_loss(make_model):
    from accelerate import Accelerator

    from lorabench.train import accumulate_gradients

    model = lorabench.apply(make_model("bert"), "adalora", targets=TARGETS["bert"], init_r=R, target_r=2)
    with torch.no_grad():
        for layer in _layers(model).values():
            layer.adapter.lora_A.mul_(10.0)  # far from orthogonal: a large regulariser
    batch = make_batch()
    with torch.no_grad():
        want = (model(**batch).loss + inject.extra_loss(model)).item()
    got = accumulate_gradients(model, [batch], micro=1, accelerator=Accelerator(cpu=True))  # 2 micro-batches
    assert got == pytest.approx(want, abs=1e-5)
    plain = lorabench.apply(make_model("bert"), "lora", r=R)
    assert inject.extra_loss(plain) == 0.0


def test_adalora_export_loads_in_peft(make_model, tmp_path):
    model = lorabench.apply(make_model("bert"), "adalora", targets=TARGETS["bert"], init_r=R, target_r=2)
    _perturb_and_copy([(l.adapter.lora_E, l.adapter.lora_E.clone()) for l in _layers(model).values()])
    _export_round_trip(model, "bert", make_model, tmp_path)


def test_fit_allocates_adalora_ranks_to_the_final_budget():
    from test_train import run_fit

    opts = {"init_r": R, "target_r": 2, "tinit": 2, "tfinal": 4}
    out, model = run_fit(variant="adalora", options=opts, epochs=2)  # 16 steps: before_step + on_step each
    assert out["status"] == "ok" and out["total_steps"] == 16
    ranks = [int(l.adapter.lora_E.count_nonzero()) for l in _layers(model).values()]
    assert sum(ranks) == 2 * len(ranks) and len(set(ranks)) > 1  # the final budget, unevenly allocated
