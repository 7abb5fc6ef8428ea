"""Forgetting (``lorabench.forgetting``), the mask_target regularizer (``lorabench.regularizers``)
and the report's forgetting table, on a tiny random Llama prompt classifier and, end to end, a
tiny GPT-2 folder trained for 2 steps on SST-2 (skipped where the GLUE data is not found)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lorabench
from lorabench import forgetting, regularizers
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.heads import PromptClassifier
from lorabench.pack.plan import unpackable

GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
LABELS = [5, 7]  # the label words' token ids


def tiny_lm(seed: int = 0) -> PromptClassifier:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, attention_dropout=0.0)
    return PromptClassifier(LlamaForCausalLM(config).float(), LABELS)


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0  # right padding
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def perturb(model) -> None:
    with torch.no_grad():
        for p in lorabench.inject.param_groups(model, lr=1.0, weight_decay=0.0)[0]["params"]:
            p.add_(0.2 * torch.randn_like(p))


def regularized(weight: float = 1.0) -> tuple[PromptClassifier, PromptClassifier]:
    """(the adapted model with mask_target attached, an untouched copy of its base)."""
    model = tiny_lm()
    regularizers.attach(model, f"mask_target:weight={weight}")
    lorabench.apply(model, "lora", ["q_proj", "v_proj", "down_proj"], r=4)
    return model, tiny_lm()


def formula(base_logits, logits, target) -> torch.Tensor:
    """mean over rows of sum_{v != y} pb(v) log(pb(v) / pt(v)), pb, pt renormalised without y."""
    out = []
    for b, t, y in zip(base_logits, logits, target):
        keep = torch.arange(b.shape[0]) != y
        pb, pt = b[keep].softmax(-1), t[keep].softmax(-1)
        out.append((pb * (pb.log() - pt.log())).sum())
    return torch.stack(out).mean()


def test_mask_target_is_zero_at_init_then_matches_its_formula():
    from lorabench.heads import label_position_logits

    model, base = regularized(weight=0.5)
    b = batch()
    target = torch.tensor(LABELS)[b["labels"]]

    def term():  # the regularizer's share of the head's loss
        reg = model.regularizer
        model.regularizer = None
        ce = model(**b).loss
        model.regularizer = reg
        return model(**b).loss - ce

    inputs = (b["input_ids"], b["attention_mask"])
    assert model.regularizer(label_position_logits(model.causal_lm, *inputs), target, *inputs).item() == 0.0
    assert term().item() == 0.0  # the adapter is the identity: exactly the base's distribution
    perturb(model)
    expected = 0.5 * formula(last_logits(base, b), last_logits(model, b), target)
    got = term()
    assert got.item() > 1e-6
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), (got, expected)
    model(**b).loss.backward()
    grads = [p.grad for p in lorabench.inject.param_groups(model, lr=1.0, weight_decay=0.0)[0]["params"]]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.regularizer.base.parameters())  # the base stays frozen
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in base.parameters()) + lorabench.inject.count_parameters(model)[0]


def last_logits(model, b) -> torch.Tensor:
    """(B, V) next-token logits at the last real position, from the full (B, T, V) LM output."""
    with torch.no_grad():
        full = model.causal_lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    last = b["attention_mask"].sum(1) - 1
    return full[torch.arange(full.shape[0]), last].float()


def test_regularizer_spelling_head_check_and_run_ids():
    assert "regularizer" not in RunConfig().resolved()  # unset: existing run ids unchanged
    lm = dict(model="smollm2-135m", head="lm")
    a, b = RunConfig(**lm, regularizer="mask_target"), RunConfig(**lm, regularizer="Mask-Target:weight=1")
    assert a.regularizer == b.regularizer == "mask_target:weight=1" and a.resolved() == b.resolved()
    assert RunConfig(**lm, regularizer="mask_target:weight=0.1").resolved() != a.resolved()
    with pytest.raises(ConfigError, match="needs head lm.*--head lm"):
        RunConfig(regularizer="mask_target")
    with pytest.raises(ConfigError, match="unknown regularizer 'nope'.*mask_target"):
        RunConfig(**lm, regularizer="nope")
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        RunConfig(**lm, regularizer="mask_target:weight=-1")
    with pytest.raises(ConfigError, match="KEY one of weight"):
        RunConfig(**lm, regularizer="mask_target:lambda=1")
    assert "regularizer" in unpackable(a)


def test_cli_refuses_mask_target_with_head_cls_before_any_compute(monkeypatch, capsys):
    import lorabench.run as run
    from lorabench.commands import main

    monkeypatch.setattr(run, "load", lambda cfg: pytest.fail("loaded a model"))
    assert main(["train", "--regularizer", "mask_target", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "regularizer 'mask_target' needs head lm" in err and "--head lm" in err


def test_forgetting_is_zero_at_init_and_grows_when_the_adapter_moves():
    model = tiny_lm()
    lorabench.apply(model, "lora", ["q_proj", "v_proj"], r=4)
    ids = torch.randint(3, 100, (5, 16), generator=torch.Generator().manual_seed(0))
    base = forgetting.Baseline(ids, forgetting.next_token_log_probs(model, ids))
    at_init = forgetting.measure_after(model, base)
    assert at_init["kl"] == 0.0 and at_init["ppl"] == at_init["base_ppl"] and at_init["tokens"] == 5 * 15
    assert at_init["text"] == "general_text.txt" and len(at_init["sha256"]) == 16
    perturb(model)
    moved = forgetting.measure_after(model, base)
    assert moved["kl"] > 0 and moved["ppl"] != moved["base_ppl"] and moved["base_ppl"] == at_init["base_ppl"]
    logp = F.log_softmax(model.causal_lm(input_ids=ids).logits[:, :-1].float(), -1)
    expected = (base.log_probs.exp() * (base.log_probs - logp)).sum(-1).mean()
    assert math.isclose(moved["kl"], expected.item(), rel_tol=1e-4)
    assert math.isclose(moved["ppl"], math.exp(-logp.gather(-1, ids[:, 1:, None]).mean().item()), rel_tol=1e-5)


def test_the_general_text_ships_and_is_long_enough(tmp_path):
    text = forgetting.sample_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert 30 <= len(paragraphs) <= 50 and len(text.split()) >= forgetting.TOKENS * 0.9
    ids = forgetting.text_ids(tiny_gpt2_dir(tmp_path / "gpt2")[1], positions=64)
    assert ids.shape == (forgetting.TOKENS // 64, 64)


def tiny_gpt2_dir(path: Path):
    """(folder, tokenizer): a 2-layer random GPT-2 and a byte-level BPE trained on the forgetting
    text and the SST-2 prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([forgetting.sample_text(), "Sentiment (positive or negative): positive negative"] * 2,
                            trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(path)
    return str(path), tokenizer


@needs_glue
def test_two_step_lm_runs_record_forgetting_and_the_report_tables_it(tmp_path):
    from lorabench.commands import main
    from lorabench.report import build_report, markdown

    folder, _ = tiny_gpt2_dir(tmp_path / "gpt2")
    out = tmp_path / "runs"
    flags = ["train", "--data-dir", str(GLUE), "--out", str(out), "--model", folder, "--head", "lm",
             "--task", "sst2", "--train-limit", "16", "--batch-size", "8", "--epochs", "1", "--eval-limit", "16",
             "--max-length", "64", "--lr", "5e-2", "--quiet"]
    assert main(flags) == 0
    assert main(flags + ["--regularizer", "mask_target"]) == 0
    found = [json.loads(p.read_text()) for p in out.glob("run-*.json")]
    assert len(found) == 2
    for r in found:
        f = r["forgetting"]
        assert r["steps"]["done"] == 2 and set(f) == {"text", "sha256", "tokens", "base_ppl", "ppl", "kl"}
        assert f["tokens"] == (forgetting.TOKENS // 64) * 63
        assert all(math.isfinite(f[k]) for k in ("base_ppl", "ppl", "kl")) and f["kl"] > 0
    assert found[0]["forgetting"]["base_ppl"] == found[1]["forgetting"]["base_ppl"]
    report = build_report(out)
    (table,) = report.tables["forgetting"]
    assert sorted(row[3] for row in table.rows) == ["mask_target:weight=1", "none"]
    assert "Task metric vs forgetting" in markdown(report, out)
