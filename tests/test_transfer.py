"""Transfer across base models (``lorabench.transfer``, ``lorabench transfer``).

Organs (Neural Organ Transplantation) on the tiny Llama of conftest: a file round trip gives equal
tensors and equal outputs, an organ made an identity (o_proj, down_proj zeroed: each block adds 0
to the residual stream) leaves the recipient's logits and its cached greedy generation unchanged,
bad positions and other-width organs are refused before anything runs. Trans-LoRA's parts against
their formulas: the filter keeps exactly round(keep * N), cross-fitted scores rank near-real
points first, the distillation loss is 0 for student == teacher and T^2 KL by hand otherwise.
End to end: 2-layer real models on SST-2 slices through the CLI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_model, make_batch

from lorabench.commands import transfer as transfer_cmd
from lorabench.commands.args import Parser
from lorabench.data import Example, stratified_subset, subset
from lorabench.errors import ConfigError, ModelError
from lorabench.transfer import get
from lorabench.transfer import organ as organs
from lorabench.transfer.discriminator import (
    cross_fit_scores,
    keep_count,
    keep_top,
    keep_top_per_class,
)
from lorabench.transfer.distill import distillation_loss

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason="GLUE folder not present")


def cli(argv: list[str]) -> int:
    p = Parser(prog="lorabench")
    sub = p.add_subparsers(dest="command", required=True)
    transfer_cmd.add_parser(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


@torch.no_grad()
def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def tiny_causal(seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


# ---- organs ------------------------------------------------------------------------------------------


def test_organ_round_trips_through_its_file(tmp_path):
    batch = make_batch()
    model = build_model("llama")
    organ = organs.extract(model, 0, 2)
    with torch.no_grad():  # a "trained" organ: not the layers it was copied from
        for p in organ.parameters():
            p.add_(0.05 * torch.randn_like(p))
    organs.insert(model, organ, 1)
    want = logits(model, batch)
    folder = organs.save(organ, tmp_path / "organ")
    meta = json.loads((folder / "organ.json").read_text())
    assert meta["layer_range"] == [0, 2] and meta["position"] == 1 and meta["hidden_size"] == 32
    assert meta["parameters"] == sum(p.numel() for p in organ.parameters())

    recipient = build_model("llama")
    loaded = organs.load(folder, recipient)
    for (k, a), (_, b) in zip(organ.layers.state_dict().items(), loaded.layers.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    organs.insert(recipient, loaded, loaded.position)
    assert len(organs.decoder_layers(recipient)) == 4 and recipient.config.num_hidden_layers == 4
    torch.testing.assert_close(logits(recipient, batch), want, rtol=0, atol=0)


def test_an_organ_at_the_end_runs():
    """Llama runs layers[:num_hidden_layers]: the count must follow, or an organ at the end is skipped."""
    batch = make_batch()
    model = build_model("llama")
    before = logits(model, batch)
    organs.insert(model, organs.extract(model, 0, 1), 2)  # a copy of layer 0 after layer 1: a real change
    assert model.config.num_hidden_layers == 3
    assert (logits(model, batch) - before).abs().max() > 1e-3


def identity_organ(model, start, end):
    organ = organs.extract(model, start, end)
    with torch.no_grad():  # h + attn(...) W_o^T + mlp(...) W_down^T with both zero: h
        for layer in organ.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return organ


@pytest.mark.parametrize("position", [0, 1, 2])
def test_identity_organ_leaves_the_output_unchanged(position):
    batch = make_batch()
    model = build_model("llama")
    before = logits(model, batch)
    organs.insert(model, identity_organ(model, 0, 2), position)
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=1e-6)
    assert [layer.self_attn.layer_idx for layer in organs.decoder_layers(model)] == [0, 1, 2, 3]


def test_identity_organ_keeps_cached_generation():
    """layer_idx renumbered: each layer has its own KV-cache slot, so cached decoding is unchanged."""
    model = tiny_causal()
    prompt = torch.tensor([[5, 9, 13, 2, 7]])
    want = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    organs.insert(model, identity_organ(model, 1, 2), 1)
    got = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(got, want)


def test_bad_positions_and_ranges_are_refused_before_compute():
    model = build_model("llama")
    organ = organs.extract(model, 0, 1)
    for bad in (-1, 3, 1.5):
        with pytest.raises(ConfigError, match="position"):
            organs.insert(model, organ, bad)
    assert len(organs.decoder_layers(model)) == 2 and model.config.num_hidden_layers == 2
    for start, end in ((1, 1), (0, 3), (-1, 1)):
        with pytest.raises(ConfigError, match="out of range"):
            organs.extract(model, start, end)
    with pytest.raises(ModelError, match="encoder"):
        organs.extract(build_model("bert"), 0, 1)


def test_organ_of_another_width_is_refused(tmp_path):
    wide = organs.extract(tiny_causal(hidden=48), 0, 1)
    recipient = tiny_causal()
    with pytest.raises(ModelError, match="hidden size 48"):
        organs.insert(recipient, wide, 0)
    folder = organs.save(wide, tmp_path / "wide")
    with pytest.raises(ModelError, match="hidden size 48"):
        organs.load(folder, recipient)
    assert len(organs.decoder_layers(recipient)) == 2


# ---- Trans-LoRA parts ---------------------------------------------------------------------------------


def test_filter_keeps_exactly_the_requested_fraction():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.5, 0.2, 0.7, 0.4, 0.6, 0.0])
    assert keep_top(scores, 0.3) == [1, 3, 6]  # the 3 highest, in generation order
    assert keep_top(scores, 1.0) == list(range(10))
    assert keep_count(10, 0.01) == 1 and keep_count(7, 0.5) == round(3.5) == 4 and keep_count(10, 0.25) == 2
    for n in (1, 5, 64, 128):
        for keep in (0.1, 0.25, 0.5, 0.9):
            assert len(keep_top(torch.rand(n), keep)) == max(1, round(keep * n))
    assert keep_top(torch.zeros(4), 0.5) == [0, 1]  # ties: the first generated


def test_per_class_filter_keeps_the_fraction_within_each_class():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    classes = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])  # the best scores are all class 1
    assert keep_top(scores, 0.5) == [0, 1, 2, 3]  # one ranking drops class 0
    assert keep_top_per_class(scores, classes, 0.5) == [0, 1, 2, 6]  # 3 of 6 ones, 1 of 2 zeros
    kept = keep_top_per_class(scores, classes, 0.25)
    assert kept == [0, 1, 6] and set(classes[kept].tolist()) == {0, 1}  # every class keeps at least one
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        s, c = torch.rand(50, generator=g), torch.randint(0, 3, (50,), generator=g)
        kept = keep_top_per_class(s, c, 0.4)
        for k in torch.unique(c).tolist():
            rows = torch.nonzero(c == k).flatten().tolist()
            mine = [i for i in kept if i in rows]
            assert len(mine) == keep_count(len(rows), 0.4)
            assert min(s[mine]) >= max((s[i] for i in rows if i not in mine), default=-1.0)
    with pytest.raises(ValueError, match="one class per score"):
        keep_top_per_class(scores, classes[:4], 0.5)


def test_stratified_seeds_hold_every_class():
    rows = [Example(f"t{i}", None, 1 if i < 90 else 0) for i in range(100)]  # 90% one class
    for seed in range(10):
        drawn = stratified_subset(rows, 5, seed)
        assert len(drawn) == 5 and len({ex.text_a for ex in drawn}) == 5
        assert sorted(ex.label for ex in drawn).count(0) in (2, 3)  # the classes take turns: 3 and 2
        assert [ex.text_a for ex in drawn] == [ex.text_a for ex in rows if ex in drawn]  # file order
    three = [Example(f"t{i}", None, i % 3) for i in range(30)]
    assert sorted(ex.label for ex in stratified_subset(three, 6, 0)) == [0, 0, 1, 1, 2, 2]
    few = [Example("a", None, 0)] + [Example(f"b{i}", None, 1) for i in range(9)]
    assert sorted(ex.label for ex in stratified_subset(few, 4, 0)) == [0, 1, 1, 1]  # a class runs out: the rest fill
    scores = [Example(f"s{i}", None, i / 10) for i in range(20)]  # regression: no classes, a plain draw
    assert stratified_subset(scores, 5, 3) == subset(scores, 5, 3)
    assert stratified_subset(rows, None, 0) == rows and stratified_subset(rows, 500, 0) == rows


def test_every_arm_sees_the_same_order_in_each_epoch():
    from torch.utils.data import DataLoader

    from lorabench.data import ShuffledBatches
    from lorabench.transfer.loop import epochs_of

    loader = DataLoader(list(range(40)), batch_sampler=ShuffledBatches([5] * 40, 8, seed=3))
    first = epochs_of(loader)
    order = [[b.tolist() for b in first(e)] for e in (0, 1)]
    assert order[0] != order[1]  # epochs reshuffle
    for _ in range(3):  # later arms on the same loader, after other passes
        again = epochs_of(loader)
        assert [b.tolist() for b in again(1)] == order[1] and [b.tolist() for b in again(0)] == order[0]


def test_cross_fitted_discriminator_ranks_real_looking_inputs_first():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(5, 8, generator=g) + 2.0
    near = torch.randn(10, 8, generator=g) + 2.0  # look real
    far = torch.randn(10, 8, generator=g) - 2.0
    synthetic = torch.stack([x for pair in zip(near, far) for x in pair])  # near at even rows
    scores = cross_fit_scores(real, synthetic, folds=2)
    assert keep_top(scores, 0.5) == list(range(0, 20, 2))


def test_distillation_loss_is_zero_for_the_teacher_and_t2_kl_by_hand():
    z = torch.randn(6, 3)
    assert distillation_loss(z, z, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    teacher, student = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p_t = (1/2, 1/2), p_s = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # T = 2: p_s = softmax(ln 3 / 2, 0) = (sqrt3, 1) / (sqrt3 + 1); loss = 4 KL
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = 0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_options_are_checked_before_anything_loads():
    opts = get("trans_lora").Options
    with pytest.raises(ConfigError, match="--keep"):
        opts(keep=0.0)
    with pytest.raises(ConfigError, match="--keep-per must be 'class' or 'all'"):
        opts(keep_per="label")
    with pytest.raises(ConfigError, match="same model"):
        opts(source="minilm", target="minilm")
    with pytest.raises(ConfigError, match="--synthetic"):
        opts(synthetic=0)
    with pytest.raises(ConfigError, match="START:END"):
        get("organ").Options(organ_layers="3-5")


# ---- end to end on 2-layer real models ----------------------------------------------------------------

TINY = ["--train-limit", "32", "--eval-limit", "32", "--max-length", "32", "--data-dir", str(GLUE), "--quiet"]


class CharTokenizer:
    """Characters as ids (0 = padding): just what ``synthetic.generate`` asks of a tokenizer."""

    pad_token_id, padding_side = 0, "right"

    def __call__(self, texts, return_tensors="pt", padding=True):
        width = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        for i, t in enumerate(texts):  # left padding, as generate sets it
            ids[i, width - len(t):] = torch.tensor([ord(c) for c in t])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(i) for i in row.tolist() if i) for row in ids]


class CountingLM:
    """A generator whose every continuation is a new line ``sentence k``."""

    def __init__(self):
        self.k = 0

    def generate(self, input_ids, attention_mask=None, **kwargs):
        lines = []
        for _ in range(len(input_ids)):
            lines.append([ord(c) for c in f" sentence {self.k}\n"])
            self.k += 1
        width = max(map(len, lines))
        new = torch.tensor([row + [0] * (width - len(row)) for row in lines])
        return torch.cat([input_ids, new], dim=1)


def test_generation_collects_more_inputs_than_a_fixed_number_of_rounds_holds():
    from lorabench.data import Example, get_task
    from lorabench.transfer.synthetic import Generation, generate

    seeds = [Example(f"a seed review {i}", None, i % 2) for i in range(5)]
    out, sampled = generate(CountingLM(), CharTokenizer(), get_task("sst2"), seeds, 300,
                            gen=Generation(batch_size=32), progress=False)
    assert len(out) == 300 and sampled == 300  # 9 batches of 32 and one of 12: no longer capped at 8 x 32
    assert len({e.text_a for e in out}) == 300 and out[0].text_a == "sentence 0" and out[0].label == -1


@needs_glue
def test_trans_lora_end_to_end(tmp_path):
    out = tmp_path / "tl"
    assert cli(["transfer", "trans_lora", "--source", "minilm", "--source-layers", "2", "--target", "minilm",
                "--target-layers", "1", "--generator-layers", "2", "--seeds", "3", "--synthetic", "8",
                "--max-new-tokens", "6", "--keep", "0.5", "--epochs", "1", "--distill-epochs", "1",
                "--head-epochs", "2", "--batch-size", "16", "--out", str(out), *TINY]) == 0
    record = json.loads((out / "transfer.json").read_text())
    assert record["schema"] == "lorabench-transfer" and record["method"] == "trans_lora"
    counts = record["counts"]
    assert counts["generated"] == 8 and counts["seeds"] == 3
    assert sum(counts["teacher_classes_generated"]) == 8 and sum(counts["teacher_classes_kept"]) == counts["kept"]
    assert counts["teacher_classes_kept"] == [keep_count(n, 0.5) if n else 0 for n in counts["teacher_classes_generated"]]
    assert set(record["arms"]) == {"source", "trans_lora", "random_keep", "unfiltered", "direct", "no_adapter"}
    for arm in record["arms"].values():
        assert 0.0 <= arm["dev"]["validation"]["accuracy"] <= 1.0
    synthetic = json.loads((out / "synthetic.json").read_text())["synthetic"]
    assert len(synthetic) == 8 and sum(s["kept"] for s in synthetic) == counts["kept"]
    for c in range(2):  # --keep-per class (the default): the top half by p(real) within each teacher class
        mine = [s for s in synthetic if max(range(2), key=lambda k: s["teacher"][k]) == c]
        kept = [s["p_real"] for s in mine if s["kept"]]
        assert not mine or min(kept) >= max((s["p_real"] for s in mine if not s["kept"]), default=0.0)
    seeds = json.loads((out / "synthetic.json").read_text())["seeds"]
    assert {s["label"] for s in seeds} == {0, 1}  # stratified: both classes among 3 seeds
    assert (out / "target-adapter").is_dir() and "trans_lora" in (out / "transfer.md").read_text()


@needs_glue
def test_organ_end_to_end(tmp_path):
    out = tmp_path / "organ"
    assert cli(["transfer", "organ", "--model", "smollm2-135m", "--layers", "2", "--organ-layers", "0:1",
                "--positions", "0", "2", "--out", str(out), *TINY]) == 0
    record = json.loads((out / "transfer.json").read_text())
    assert record["schema"] == "lorabench-transfer" and record["method"] == "organ"
    counts = record["counts"]
    lora = record["arms"][f"lora_r{counts['lora_rank']}"]
    per_rank = lora["trainable"] / counts["lora_rank"]
    assert abs(lora["trainable"] - counts["organ_parameters"]) <= per_rank / 2  # the closest rank
    for p in (0, 2):
        arm = record["arms"][f"organ@{p}"]
        assert arm["reload_max_abs_diff"] == 0.0 and arm["trainable"] == counts["organ_parameters"]
        meta = json.loads((out / f"organ-at-{p}" / "organ.json").read_text())
        assert meta["source_model"] == "smollm2-135m" and meta["layer_range"] == [0, 1] and meta["position"] == p


@needs_glue
def test_organ_position_out_of_range_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="position 3 is out of range"):
        cli(["transfer", "organ", "--model", "smollm2-135m", "--layers", "2", "--positions", "3",
             "--out", str(tmp_path / "bad"), *TINY])
    assert not (tmp_path / "bad" / "transfer.json").exists()
