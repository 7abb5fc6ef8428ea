"""Pruning with adapters (``lorabench.pruning``, ``lorabench prune``): LoRAPrune and LoRAM.

Hand-checkable cases on the tiny BERT of conftest (hidden D = 32, 4 heads of d = 8, 64 FFN
channels, 2 layers): the LoRA-guided importance against its formula written out here, masks
that hit the target count, removal == masking, the parameter count after removal, LoRAM's
recovered adapter; one end-to-end CLI run on 2-layer MiniLM with SST-2 slices; bad input refused
before compute.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import build_model, layers, make_batch, outputs
from torch import nn

import lorabench
from lorabench import inject
from lorabench.commands import prune
from lorabench.commands.args import Parser
from lorabench.errors import ConfigError
from lorabench.pruning.importance import (
    Importance,
    group_scores,
    layer_importance,
    lora_importance,
)
from lorabench.pruning.loram import choose
from lorabench.pruning.loraprune import LoRAPruneOptions, Pruner, prune_to
from lorabench.pruning.masks import Masks
from lorabench.pruning.recover import recover_factor, recover_tensors
from lorabench.pruning.remove import kept_indices, remove_groups
from lorabench.pruning.schedule import sparsity_at
from lorabench.pruning.sizes import n_params
from lorabench.pruning.structure import TARGETS, blocks, check_supported, prunable

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def cli(argv):
    p = Parser(prog="lorabench")
    sub = p.add_subparsers(dest="command", required=True)
    prune.add_parser(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


def adapted_bert(seed: int = 0):
    """Tiny BERT with LoRA (r = 2, alpha = 4: s = 2) on every block linear layer, B random (so BA != 0)."""
    model = build_model("bert")
    lorabench.apply(model, "lora", targets=TARGETS, r=2, alpha=4.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers(model).values():
            layer.adapter.lora_B.copy_(torch.randn(layer.adapter.lora_B.shape, generator=g) * 0.3)
    return model


def backward(model) -> None:
    model.train()
    model.zero_grad()
    model(**make_batch()).loss.backward()
    model.eval()


# ---- importance -------------------------------------------------------------------------------
def test_importance_is_the_lora_guided_formula_on_a_tiny_linear():
    torch.manual_seed(0)
    W, A, B = torch.randn(3, 2), torch.randn(1, 2), torch.randn(3, 1)
    gA, gB = torch.randn(1, 2), torch.randn(3, 1)
    s = 2.0
    # by hand, element by element: G_ij = sum_k gB_ik A_kj + B_ik gA_kj - gB_ik gA_kj (rank 1: one k)
    expected = torch.empty(3, 2)
    for i in range(3):
        for j in range(2):
            G = gB[i, 0] * A[0, j] + B[i, 0] * gA[0, j] - gB[i, 0] * gA[0, j]
            expected[i, j] = abs(G * (W[i, j] + s * B[i, 0] * A[0, j]))
    torch.testing.assert_close(lora_importance(W, A, B, gA, gB, s), expected)
    # groups: rows 0-1 / 2-3 (dim 0, size 2) and columns (dim 1), each L2-normalised
    I = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0], [2.0, 0.0]])
    torch.testing.assert_close(group_scores(I, 0, 2, normalize=False), torch.tensor([10.0, 3.0]))
    torch.testing.assert_close(group_scores(I, 0, 2), torch.tensor([10.0, 3.0]) / (109**0.5 + 1e-8))
    torch.testing.assert_close(group_scores(I, 1, 1, normalize=False), torch.tensor([6.0, 7.0]))


def test_layer_importance_reads_the_lora_gradients_not_the_frozen_weights():
    model = adapted_bert()
    backward(model)
    layer = layers(model)["bert.encoder.layer.0.attention.self.value"]
    a = layer.adapter
    assert layer.base_layer.weight.grad is None  # the frozen weight has no gradient at all
    W = layer.base_layer.weight
    G = a.lora_B.grad @ a.lora_A + a.lora_B @ a.lora_A.grad - a.lora_B.grad @ a.lora_A.grad
    torch.testing.assert_close(layer_importance(layer), (G * (W + 2.0 * a.lora_B @ a.lora_A)).abs().detach())

    imp = Importance(prunable(blocks(model), 0, 0), ema=0.9)
    assert imp.update(model)
    heads = imp.scores["bert.encoder.layer.0"]["heads"]
    # one update from 0: 0.1 * (the sum over q, k, v, o of each layer's L2-normalised head scores)
    by_hand = torch.zeros(4)
    for name, dim in (("attention.self.query", 0), ("attention.self.key", 0), ("attention.self.value", 0),
                      ("attention.output.dense", 1)):
        I = layer_importance(layers(model)[f"bert.encoder.layer.0.{name}"])
        per_head = (I if dim == 0 else I.t()).reshape(4, -1).sum(1)
        by_hand += per_head / per_head.norm()
    torch.testing.assert_close(heads, (1 - 0.9) * by_hand)


# ---- schedule and masks ---------------------------------------------------------------------------
def test_cubic_schedule_matches_the_official_formula():
    assert sparsity_at(10, 100, 0.5) == 0.0 and sparsity_at(91, 100, 0.5) == 0.5
    # t = 50: 1 - (50 - 10) / 80 = 0.5, so s = 0.5 (1 - 0.5^3) = 0.4375
    assert sparsity_at(50, 100, 0.5) == pytest.approx(0.4375)


@pytest.mark.parametrize("sparsity, heads, channels", [(0.5, 2, 32), (0.3, 1, 19), (0.25, 1, 16)])
def test_masks_hit_exactly_the_target_count(sparsity, heads, channels):
    model = adapted_bert()
    pruned = prunable(blocks(model), 0, 0)
    masks = Masks(model, pruned)
    pruner = Pruner(masks, Importance(pruned), sparsity, LoRAPruneOptions(prune_every=3))
    total = 20
    for step in range(total):  # the hook as train.fit calls it (fresh gradients each step)
        backward(model)
        pruner(model, step, total)
    assert pruner.reached and pruner.rounds[-1]["sparsity"] == sparsity
    for name, plan in masks.plan().items():
        assert (len(plan["heads"]), len(plan["channels"])) == (heads, channels), name
    # the rounds before the end prune less, on the official steps (every 3rd, after the warm-up)
    assert all(r["step"] % 3 == 0 and r["sparsity"] < sparsity for r in pruner.rounds[:-1])


def test_prune_keeps_the_groups_of_highest_importance():
    model = adapted_bert()
    pruned = prunable(blocks(model), 0, 0)
    masks, imp = Masks(model, pruned), Importance(pruned)
    for b in pruned:
        imp.scores[b.name]["heads"] = torch.tensor([0.4, 0.1, 0.3, 0.2])
    prune_to(masks, imp, 0.5)
    assert all(p["heads"] == [1, 3] for p in masks.plan().values())


# ---- removal == masking; parameter count ------------------------------------------------------------
def test_removed_model_equals_masked_model_and_has_the_formula_parameter_count():
    model = adapted_bert()
    found = blocks(model)
    pruned = prunable(found, 0, 1)  # the official default on 2 layers: the last one stays whole
    assert [b.index for b in pruned] == [0]
    masks = Masks(model, pruned)
    masks.set("bert.encoder.layer.0", "heads", [0, 2])
    masks.set("bert.encoder.layer.0", "channels", list(range(0, 64, 3)))  # 22 channels
    batch = make_batch()
    masked = outputs(model, batch)
    before = n_params(build_model("bert"))
    plan = masks.plan()
    masks.remove_hooks()
    plain = lorabench.unload(model)
    remove_groups(plain, found, plan)
    torch.testing.assert_close(outputs(plain, batch), masked, atol=1e-5, rtol=1e-5)
    attn = plain.bert.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 2 and attn.query.weight.shape == (16, 32)
    assert plain.bert.encoder.layer[0].output.dense.weight.shape == (32, 64 - 22)
    # by hand, D = 32, d = 8: q, k, v lose 2 heads x 8 rows x (32 weights + 1 bias); attention.output
    # loses 16 columns of 32; intermediate loses 22 rows x 33; output.dense loses 22 columns of 32
    removed = 3 * 16 * 33 + 16 * 32 + 22 * 33 + 22 * 32
    assert n_params(plain) == before - removed


# ---- LoRAM: recovery -----------------------------------------------------------------------------
def test_recovered_factor_gives_the_pruned_output_on_kept_rows_and_the_base_on_pruned_rows():
    torch.manual_seed(0)
    full = nn.Linear(4, 6)
    kept = torch.tensor([0, 2, 3, 5])  # rows 1 and 4 pruned
    small = nn.Linear(4, 4)
    with torch.no_grad():
        small.weight.copy_(full.weight[kept])
        small.bias.copy_(full.bias[kept])
    A, B = torch.randn(2, 4), torch.randn(4, 2)  # trained on the small layer
    B_full = recover_factor(B, kept, 6, 0)
    assert B_full.shape == (6, 2) and torch.equal(B_full[[1, 4]], torch.zeros(2, 2))
    x = torch.randn(3, 4)
    y_small = small(x) + x @ A.t() @ B.t()
    y_full = full(x) + x @ A.t() @ B_full.t()
    torch.testing.assert_close(y_full[:, kept], y_small)
    torch.testing.assert_close(y_full[:, [1, 4]], full(x)[:, [1, 4]])
    # columns: A of a layer whose input lost channels 1 and 4; the pruned inputs add nothing
    A_full = recover_factor(torch.randn(2, 4), kept, 6, 1)
    assert A_full.shape == (2, 6) and torch.equal(A_full[:, [1, 4]], torch.zeros(2, 2))


def test_loram_adapter_recovered_onto_the_full_model_has_its_shapes_and_the_kept_rows_outputs():
    full = build_model("bert")
    found = blocks(full)
    plan = choose(full, prunable(found, 0, 1), 0.5, "magnitude", seed=0)
    assert [len(p["heads"]) for p in plan.values()] == [2] and [len(p["channels"]) for p in plan.values()] == [32]
    small = remove_groups(copy.deepcopy(full), found, plan)
    lorabench.apply(small, "lora", targets=TARGETS, r=2, alpha=4.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers(small).values():
            layer.adapter.lora_B.copy_(torch.randn(layer.adapter.lora_B.shape, generator=g))
    recovered = recover_tensors(inject.adapter_tensors(small), found, plan)
    lorabench.apply(full, "lora", targets=TARGETS, r=2, alpha=4.0, initialize=False)
    _, unexpected = full.load_state_dict(recovered, strict=False)
    assert not unexpected
    shapes = {k: v.shape for k, v in inject.adapter_tensors(full).items()}
    assert shapes == {k: v.shape for k, v in recovered.items()}
    x = torch.randn(2, 5, 32)  # the hidden states entering layer 0
    for linear in ("attention.self.value", "intermediate.dense"):
        name = f"bert.encoder.layer.0.{linear}"
        group = "heads" if "attention" in linear else "channels"
        block = found[0]
        kept = kept_indices(block, linear, plan[block.name][group])
        with torch.no_grad():
            torch.testing.assert_close(layers(full)[name](x)[..., kept], layers(small)[name](x))
            pruned_rows = torch.tensor(sorted(set(range(layers(full)[name].base_layer.out_features))
                                              - set(kept.tolist())))
            torch.testing.assert_close(layers(full)[name](x)[..., pruned_rows],
                                       layers(full)[name].base_layer(x)[..., pruned_rows])
    # attention.output.dense: its input columns of pruned heads carry no update
    name = "bert.encoder.layer.0.attention.output.dense"
    A = layers(full)[name].adapter.lora_A
    dropped = [c for h in plan["bert.encoder.layer.0"]["heads"] for c in range(8 * h, 8 * h + 8)]
    assert torch.equal(A[:, dropped], torch.zeros(2, len(dropped)))


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", ["1.0", "-0.1", "1.5"])
def test_sparsity_outside_zero_one_is_refused_before_compute(sparsity, tmp_path):
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        cli(["prune", "--method", "loraprune", "--sparsity", sparsity, "--out", str(tmp_path)])
    assert not list(tmp_path.glob("prune-*.json"))


def test_unsupported_architecture_and_bad_options_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="BERT-family"):
        check_supported(build_model("llama"), "tiny-llama")
    with pytest.raises(ConfigError, match="no option of loraprune"):
        cli(["prune", "--method", "loraprune", "--prune-opt", "criterion=random", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="criterion must be one of"):
        cli(["prune", "--method", "loram", "--prune-opt", "criterion=taylor", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="--head cls"):
        cli(["prune", "--method", "loram", "--head", "lm", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="BERT-family.*'llama'"):  # a decoder: refused once loaded, before data
        cli(["prune", "--method", "loraprune", "--model", "smollm2-135m", "--layers", "1", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("prune-*.json"))


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
def test_the_command_prunes_minilm_and_writes_valid_results(tmp_path, capsys):
    out = tmp_path / "prune"
    assert cli(["prune", "--method", "lora", "loraprune", "loram", "--sparsity", "0.5", "--model", "minilm",
                "--layers", "2", "--task", "sst2", "--train-limit", "32", "--eval-limit", "32", "--max-length", "32",
                "--batch-size", "8", "--epochs", "1", "--r", "4", "--data-dir", str(GLUE), "--quiet",
                "--out", str(out)]) == 0
    envelopes = [json.loads(p.read_text()) for p in out.glob("run-*.json")]  # one kind prune run each
    assert all(e["kind"] == "prune" and e["status"] == "ok" and e["metric"]["selected_on"] == "last" for e in envelopes)
    assert sorted(e["method"] for e in envelopes) == ["prune:lora", "prune:loram@0.5", "prune:loraprune@0.5"]
    assert all(e["time"]["train_s"] > 0 and e["memory"]["peak_rss_bytes"] > 0 for e in envelopes)
    records = {f"prune-{e['details']['method']}-s{e['details']['target_sparsity']:g}.json": e["details"]
               for e in envelopes}
    assert set(records) == {"prune-lora-s0.json", "prune-loraprune-s0.5.json", "prune-loram-s0.5.json"}
    for e in envelopes:
        r = e["details"]
        assert r["schema"] == "lorabench-prune" and r["schema_version"] == 1
        assert e["final"]["metrics"] == r["dev"] and e["params"]["total"] == r["params"]["inference"]
        assert 0.0 <= r["metric"]["value"] <= 1.0 and r["time"]["train_s"] > 0 and r["time"]["eval_s_full"] > 0
    lp, lm, base = (records[f"prune-{n}.json"] for n in ("loraprune-s0.5", "loram-s0.5", "lora-s0"))
    # MiniLM: 12 heads, 1536 channels; 2 layers, the last kept whole: layer 0 loses 6 heads, 768 channels
    assert lp["sparsity"]["groups"] == {"bert.encoder.layer.0": {"heads": [6, 12], "channels": [768, 1536]}}
    assert lp["params"]["inference"] == lp["sparsity"]["params_after"] < lp["params"]["full"]
    assert lp["sparsity"]["block_achieved"] == pytest.approx(0.25, abs=1e-3)  # half of one layer of two
    assert lp["dev"] == lp["extra"]["masked_dev"]  # the removed model scores as the masked one did
    # train.fit's before_step ran at each of the 4 steps; the schedule reaches 0.5 on the last one only
    assert lp["extra"]["importance_updates"] == 4 and lp["extra"]["rounds"] == [{"step": 3, "sparsity": 0.5}]
    assert lm["params"]["train_base"] == lp["params"]["inference"] and lm["params"]["inference"] == lm["params"]["full"]
    assert lm["memory"]["train_weights_bytes"] < lm["memory"]["inference_weights_bytes"]
    assert base["target_sparsity"] == 0 and base["sparsity"]["achieved"] == 0
    table = (out / "prune.md").read_text()
    assert "| loraprune | ok | 0 | 0.5 |" in table and "| lora | ok | 0 | 0 |" in table and "| loram | ok | 0 | 0.5 |" in table
