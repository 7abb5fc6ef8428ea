"""Helpers for the training-loop tests (test_train.py, test_measure.py, test_precision.py,
test_adalora.py): a tiny BERT built from its config (dropout on by default), a learnable
synthetic task, its loaders, and ``run_fit``, one ``train.fit`` run of an adapter on it."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import lorabench
from lorabench.config import RunConfig
from lorabench.data import get_task
from lorabench.train import fit

VOCAB, LENGTH = 64, 8


def tiny_bert(seed: int = 0, dropout: float = 0.1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=0,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def synthetic(n: int, seed: int) -> list[dict]:
    """label = 1 when the first token is in the upper half of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = (ids[:, 0] >= VOCAB // 2).long()
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]


def loaders(batch_size: int = 16, n_train: int = 128):
    collate = torch.utils.data.default_collate
    train = DataLoader(synthetic(n_train, 0), batch_size=batch_size, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(0))
    dev = DataLoader(synthetic(64, 1), batch_size=32, collate_fn=collate)
    return train, {"validation": dev}


def run_fit(tmp_path=None, model_seed: int = 0, targets="all-linear", **overrides):
    cfg = RunConfig.from_dict({"lr": 2e-2, "epochs": 4, "batch_size": 16, "warmup_ratio": 0.1, "log_every": 2,
                               "quiet": True, "targets": targets} | overrides)
    model = tiny_bert(model_seed)
    lorabench.apply(model, cfg.variant, cfg.targets, **cfg.variant_options())
    train, dev = loaders(cfg.batch_size)
    return fit(model, train, dev, get_task("sst2"), cfg, progress=False), model
