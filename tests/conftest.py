"""Shared fixtures: tiny seeded models built from configs (no downloads) and an input batch.

Three architectures cover the layer kinds lorabench must handle:

* ``bert``  — BertForSequenceClassification, nn.Linear, head ``classifier`` (weight + bias)
* ``llama`` — LlamaForSequenceClassification with grouped-query attention (4 heads, 2 kv
  heads, so k_proj / v_proj are 32 -> 16), head ``score``
* ``gpt2``  — GPT2ForSequenceClassification, GPT-2 ``Conv1D`` layers stored (in, out)

``make_model(arch, seed)`` returns a FRESH model each call; the same seed gives bit-identical
weights, so an adapter trained on one can be loaded (or exported to PEFT) onto another.
Dropout is 0 so train-mode and eval-mode outputs agree and gradients are deterministic.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

VOCAB = 100
ARCHS = ("bert", "llama", "gpt2")
#: Per-architecture targets that mix square and non-square layers (in != out), so
#: parameter-count formulas that confuse in and out fail.
TARGETS = {
    "bert": ["query", "value", "dense"],  # dense: attention.output 32->32, intermediate 32->64, output 64->32, pooler
    "llama": ["q_proj", "k_proj", "v_proj", "down_proj"],  # k/v: 32->16 (GQA), down: 64->32
    "gpt2": ["c_attn", "c_fc"],  # Conv1D 32->96, 32->128
}


def _config(arch: str):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if arch == "bert":
        return BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, num_labels=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=2,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, attention_dropout=0.0,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=2,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        )
    raise ValueError(f"unknown test architecture {arch!r}; choose one of {ARCHS}")


def build_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A fresh tiny ``*ForSequenceClassification`` model, fp32, eval mode, seeded."""
    from transformers import BertForSequenceClassification, GPT2ForSequenceClassification, LlamaForSequenceClassification

    cls = {
        "bert": BertForSequenceClassification,
        "llama": LlamaForSequenceClassification,
        "gpt2": GPT2ForSequenceClassification,
    }[arch]
    torch.manual_seed(seed)
    model = cls(_config(arch))
    return model.float().eval()


def make_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two sequences of 8 tokens; the second is right-padded (pad id 0) by 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 8), generator=g)  # (B, T), never the pad / bos / eos ids
    mask = torch.ones_like(ids)
    ids[1, 5:] = 0
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}


def outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits and last hidden state, flattened into one vector (more sensitive than logits alone)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states[-1] * batch["attention_mask"][..., None]  # (B, T, H), padding zeroed
    return torch.cat([out.logits.reshape(-1), hidden.reshape(-1)])


def layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The adapted layers of ``model`` by module name (``lorabench.inject.adapted_layers`` as a dict)."""
    from lorabench.inject import adapted_layers

    return dict(adapted_layers(model))


@pytest.fixture
def make_model():
    """Factory: ``make_model(arch="bert", seed=0)`` -> a fresh, identical-per-seed model."""
    return build_model


@pytest.fixture
def bert(make_model):
    return make_model("bert")


@pytest.fixture
def llama(make_model):
    return make_model("llama")


@pytest.fixture
def gpt2(make_model):
    return make_model("gpt2")


@pytest.fixture
def batch():
    return make_batch()


def train_steps(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on the batch: the contract's own loop (``lorabench.contract.train_steps``), so
    the built-ins' contract tests and ``lorabench check-variant`` train the same way."""
    from lorabench.contract import train_steps as contract_steps

    contract_steps(model, batch, steps=steps, lr=lr)
