"""AdaLoRA (SVD-form adapter P Lambda Q with budgeted rank allocation): parity with PEFT including
the orthogonal regulariser, rank allocation step by step against PEFT's, the cubic budget schedule
and the final masks, the warnings and schedule checks, the training loop adding the variant's
loss, ``train.fit`` allocating ranks to the final budget, and the export loading in PEFT."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import AdaLoraConfig  # noqa: E402

import lorabench  # noqa: E402
from lorabench import VariantError, inject  # noqa: E402
from lorabench.adapters.adalora import RankAllocator  # noqa: E402

from conftest import TARGETS, make_batch, outputs  # noqa: E402
from conftest import layers as _layers  # noqa: E402
from helpers_peft import PEFT_WARNINGS, assert_parity, export_round_trip, peft_layer, perturb_and_copy, with_peft  # noqa: E402

R = 4
pytestmark = PEFT_WARNINGS


def _adalora_pair(arch, make_model, total=10, **kw):
    opts = dict(init_r=R, target_r=2, alpha=8.0, **kw)
    ours = lorabench.apply(make_model(arch), "adalora", targets=TARGETS[arch], **opts)
    theirs = with_peft(make_model(arch), AdaLoraConfig, arch, init_r=R, target_r=2, lora_alpha=8, total_step=total,
                       fan_in_fan_out=arch == "gpt2", **kw)
    pairs = []
    for name, layer in _layers(ours).items():
        pl, a = peft_layer(theirs, name), layer.adapter
        assert not a.lora_E.any() and not pl.lora_E["default"].any()  # Lambda = 0: identity at init
        pairs += [(a.lora_A, pl.lora_A["default"]), (a.lora_E, pl.lora_E["default"]), (a.lora_B, pl.lora_B["default"])]
    return ours, theirs, pairs


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_adalora_matches_peft_with_orthogonal_regulariser(arch, make_model):
    ours, theirs, pairs = _adalora_pair(arch, make_model)
    perturb_and_copy(pairs)
    reg = inject.extra_loss(ours)
    assert reg > 0.1  # perturbed P, Q are far from orthogonal
    assert_parity(ours, theirs, pairs, arch, make_model, ours_loss=lambda m, b: m(**b).loss + inject.extra_loss(m))


def _masks(model):
    return {n: l.adapter.rank_mask.clone() for n, l in _layers(model).items()}


def test_adalora_rank_allocation_matches_peft(make_model):
    total, tinit, tfinal = 8, 1, 2
    ours, theirs, pairs = _adalora_pair("bert", make_model, total=total, tinit=tinit, tfinal=tfinal)
    perturb_and_copy(pairs, std=0.05)
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
            E_theirs = peft_layer(theirs, name).lora_E["default"].detach().flatten()
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
    perturb_and_copy([(l.adapter.lora_E, l.adapter.lora_E.clone()) for l in _layers(model).values()])
    export_round_trip(model, "bert", make_model, tmp_path)


def test_fit_allocates_adalora_ranks_to_the_final_budget():
    from helpers_train import run_fit

    opts = {"init_r": R, "target_r": 2, "tinit": 2, "tfinal": 4}
    out, model = run_fit(variant="adalora", options=opts, epochs=2)  # 16 steps: before_step + on_step each
    assert out["status"] == "ok" and out["total_steps"] == 16
    ranks = [int(l.adapter.lora_E.count_nonzero()) for l in _layers(model).values()]
    assert sum(ranks) == 2 * len(ranks) and len(set(ranks)) > 1  # the final budget, unevenly allocated
