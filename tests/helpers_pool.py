"""A pool of saved LoRAs for the recycling and merge-kind tests (test_recycle.py,
test_merge_kind.py): random LoRA factors (r 4, alpha 8, query + value) on 1-layer MiniLM, saved with
``lorabench.save_adapter`` beside a minimal run JSON naming their task (and seed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lorabench
from lorabench import models
from lorabench.adapters.base import adapted_layers
from lorabench.data import get_task


def save_random_lora(root: Path, name: str, task: str, *, model_seed: int, factor_seed: int, result: dict) -> Path:
    """``root/run-<name>-adapter`` (a task head drawn with ``model_seed``, factors N(0, 0.15^2) drawn
    with ``factor_seed``) and ``root/run-<name>.json`` holding ``result``."""
    torch.manual_seed(model_seed)
    model = models.load_model("minilm", get_task(task), layers=1)[0]
    lorabench.apply(model, "lora", targets=["query", "value"], r=4, alpha=8.0)
    g = torch.Generator().manual_seed(factor_seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for p in layer.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    folder = lorabench.save_adapter(model, root / f"run-{name}-adapter")
    (root / f"run-{name}.json").write_text(json.dumps(result))
    return folder
