"""Many saved adapters of one base model, evaluated in one pass over the dev set (``lorabench eval``).

Every adapter is checked against the base before any example is read: the same base model and
architecture for all (else refused, naming the two), then ``load_adapter``'s own checks (weights
fingerprint, layer names, tensor shapes). The base runs once per dev batch for all the adapters
that pack (``Variant.unpackable`` is None: the LoRA family), each on its own copy of the batch;
an adapter of another variant (DoRA, VeRA ...) is evaluated alone on its own model, in the same
call, and its row says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .. import models
from ..adapters import registry
from ..checkpoint import load_adapter, read_adapter_config
from ..data import get_task
from ..data.batching import dev_loaders, pad_token_id
from ..data.glue import resolve_source
from ..errors import AdapterFileError
from ..train import evaluate
from .model import PackedModel, evaluate_pack, share_frozen


def _base_of(config: dict) -> tuple[str, Any, str]:
    """(base model, layers, pooling) an adapter was trained on."""
    arch = config.get("architecture") or {}
    pooling = "mean" if config.get("pooling") == "mean" else "cls"
    return str(config.get("base_model")), arch.get("layers"), pooling


def evaluate_adapters(directories: list[str | os.PathLike], task: str, *, model: str | None = None,
                      data_dir: str | None = None, eval_limit: int | None = None, max_length: int = 128,
                      batch_size: int = 32) -> list[dict[str, Any]]:
    """One row per adapter: {"adapter", "variant", "options", "packed", "metrics": {split: {...}}}."""
    if not directories:
        raise AdapterFileError("no adapter folders given; pass one or more run-<id>-adapter folders")
    dirs = [Path(d) for d in directories]
    configs = [read_adapter_config(d) for d in dirs]
    bases = [_base_of(c) for c in configs]
    digests = [(c.get("architecture") or {}).get("digest") for c in configs]
    for d, base, digest in zip(dirs[1:], bases[1:], digests[1:]):
        if (base, digest) != (bases[0], digests[0]):
            raise AdapterFileError(f"{d} was trained on {base[0]} ({base[1]} layers, {base[2]} pooling) and {dirs[0]} "
                                   f"on {bases[0][0]} ({bases[0][1]} layers, {bases[0][2]} pooling): one call "
                                   "evaluates adapters of one base; split them into one call per base")
    name, layers, pooling = bases[0]
    name = model or name
    spec = get_task(task)
    source = resolve_source(data_dir, task=spec)  # before loading anything
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shared, tokenizer = models.load_model(name, spec, layers=layers, pooling=pooling)
    own = []
    for d in dirs:  # every check of every adapter before the first dev batch
        m, _ = models.load_model(name, spec, layers=layers, pooling=pooling)
        own.append(load_adapter(m, d))
    loaders = dev_loaders(source, spec, tokenizer, batch_size, eval_limit,
                          common={"max_length": max_length, "progress": False})
    packs = [k for k, c in enumerate(configs) if registry.get(c["variant"]).unpackable() is None]
    metrics: dict[int, dict] = {}
    if packs:
        for k in packs:
            share_frozen(own[k], shared)
        packed = PackedModel(shared, [own[k] for k in packs], [0] * len(packs), pad_token_id(tokenizer))
        packed.to(device)
        for k, got in zip(packs, evaluate_pack(packed, list(range(len(packs))), loaders, spec, device, None)):
            metrics[k] = got
    for k in range(len(dirs)):
        if k not in metrics:
            metrics[k] = evaluate(own[k].to(device), loaders, spec, Accelerator(cpu=device.type == "cpu"))
    return [{"adapter": str(d), "variant": c["variant"], "options": c["options"], "packed": k in packs,
             "metrics": metrics[k]} for k, (d, c) in enumerate(zip(dirs, configs))]
