"""Many saved adapters of one base model, evaluated in one pass over the dev set (``lorabench eval``).

Every adapter is checked against the base before any example is read: the same base model and
architecture for all (else refused, naming the two), then ``load_adapter``'s own checks (weights
fingerprint, layer names, tensor shapes). The base runs once per dev batch for all the adapters
that pack (``Variant.unpackable`` is None: the LoRA family), each on its own copy of the batch;
an adapter of another variant (DoRA, VeRA ...) is evaluated alone on its own model, in the same
call, and its row says so. A PEFT folder (``adapter_config.json``: one trained elsewhere, or written by
``export_peft``) is read by ``lorabench.load_peft`` onto the base it names (or ``model``, with ``layers``:
PEFT records no depth) with the model's own head, and is evaluated alone too (``"peft": true``).

An adapter whose run recorded another task (``adapter_files.recorded_task``: an SST-2 adapter asked
for RTE would score RTE with its SST-2 head) is refused, naming both tasks and ``--task``, unless
``cross_task`` is set (a transfer study: an MRPC adapter on QQP); its row then says so
(``"trained_task"`` differs from the task asked, ``"cross_task": true``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .. import models
from ..adapter_files import recorded_task
from ..adapters import registry
from ..checkpoint import CONFIG_NAME, load_adapter, read_adapter_config
from ..data import get_task
from ..data.batching import dev_loaders, pad_token_id
from ..data.glue import resolve_source
from ..errors import AdapterFileError, ConfigError
from ..peft_import import is_peft_folder, load_peft, read_peft_config, variant_for
from ..train import evaluate
from .model import PackedModel, evaluate_pack, share_frozen


def _base_of(config: dict) -> tuple[str, Any, str]:
    """(base model, layers, pooling) an adapter was trained on."""
    arch = config.get("architecture") or {}
    pooling = "mean" if config.get("pooling") == "mean" else "cls"
    return str(config.get("base_model")), arch.get("layers"), pooling


def _peft_config(directory: Path, layers: int | None) -> dict[str, Any]:
    """A PEFT folder described as ``read_adapter_config`` describes ours (variant, options, base)."""
    config = read_peft_config(directory)
    cls, options = variant_for(config)
    return {"variant": cls.name, "options": options, "base_model": config.get("base_model_name_or_path"),
            "pooling": "cls", "architecture": {"layers": layers}, "peft": True}


def _same_task(recorded: str, spec) -> bool:
    """A run records its task's name (``spec.name``: ``sst2``, a task file's ``name``); an older
    spelling of a GLUE task (``SST-2``) is the same task."""
    if recorded == spec.name:
        return True
    try:
        return get_task(recorded).name == spec.name
    except (ValueError, OSError):  # a name this lorabench does not know: not the task asked
        return False


def check_tasks(dirs: list[Path], spec, cross_task: bool) -> list[str | None]:
    """The task each adapter's run recorded (None: unknown); a ConfigError for one recorded for
    another task than ``spec`` unless ``cross_task``."""
    trained = [recorded_task(d) for d in dirs]
    for d, t in zip(dirs, trained):
        if t is not None and not cross_task and not _same_task(t, spec):
            raise ConfigError(f"{d} was trained on {t} (the task its run recorded) but --task asks for {spec.name}: "
                              f"its {t} head would score {spec.display} examples; pass --task {t} (one call per "
                              f"task), or --cross-task to evaluate it on {spec.name} anyway (its row is marked)")
    return trained


def evaluate_adapters(directories: list[str | os.PathLike], task: str, *, model: str | None = None,
                      layers: int | None = None, data_dir: str | None = None, eval_limit: int | None = None,
                      max_length: int = 128, batch_size: int = 32, cross_task: bool = False,
                      progress: bool = False) -> list[dict[str, Any]]:
    """One row per adapter: {"adapter", "variant", "options", "packed", "peft", "trained_task", "cross_task",
    "metrics": {split: {...}}}. ``progress``: a bar over the dev batches of the packed pass."""
    if not directories:
        raise AdapterFileError("no adapter folders given; pass one or more run-<id>-adapter folders")
    dirs = [Path(d) for d in directories]
    peft = [is_peft_folder(d) and not (d / CONFIG_NAME).is_file() for d in dirs]
    configs = [_peft_config(d, layers) if p else read_adapter_config(d) for d, p in zip(dirs, peft)]
    bases = [_base_of(c) for c in configs]
    digests = [(c.get("architecture") or {}).get("digest") for c in configs]
    for d, (base, _, _) in zip(dirs, bases):
        if model is None and base == "None":
            raise AdapterFileError(f"{d} names no base model (PEFT's base_model_name_or_path); pass --model")
    ours = [k for k in range(len(dirs)) if not peft[k]]  # PEFT records no architecture: load_peft checks it
    for k in ours[1:]:
        if (bases[k], digests[k]) != (bases[ours[0]], digests[ours[0]]):
            (name, n, pool), first = bases[k], bases[ours[0]]
            raise AdapterFileError(f"{dirs[k]} was trained on {name} ({n} layers, {pool} pooling) and {dirs[ours[0]]} "
                                   f"on {first[0]} ({first[1]} layers, {first[2]} pooling): one call "
                                   "evaluates adapters of one base; split them into one call per base")
    name, depth, pooling = bases[ours[0] if ours else 0]
    spec = get_task(task)
    trained = check_tasks(dirs, spec, cross_task)
    source = resolve_source(data_dir, task=spec)  # before loading anything
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shared, tokenizer = models.load_model(model or name, spec, layers=depth, pooling=pooling)
    own = []
    for d, c, p in zip(dirs, configs, peft):  # every check of every adapter before the first dev batch
        base, n, pool = _base_of(c)
        m, _ = models.load_model(model or base, spec, layers=n, pooling=pool)
        own.append(load_peft(m, d) if p else load_adapter(m, d))
    loaders = dev_loaders(source, spec, tokenizer, batch_size, eval_limit,
                          common={"max_length": max_length, "progress": False})
    packs = [k for k in ours if registry.get(configs[k]["variant"]).unpackable() is None]
    metrics: dict[int, dict] = {}
    if packs:
        for k in packs:
            share_frozen(own[k], shared)
        packed = PackedModel(shared, [own[k] for k in packs], [0] * len(packs), pad_token_id(tokenizer))
        packed.to(device)
        for k, got in zip(packs, evaluate_pack(packed, list(range(len(packs))), loaders, spec, device, None,
                                                    progress=progress)):
            metrics[k] = got
    for k in range(len(dirs)):
        if k not in metrics:
            metrics[k] = evaluate(own[k].to(device), loaders, spec, Accelerator(cpu=device.type == "cpu"))
    return [{"adapter": str(d), "variant": c["variant"], "options": c["options"], "packed": k in packs,
             "peft": peft[k], "trained_task": trained[k],
             "cross_task": trained[k] is not None and not _same_task(trained[k], spec), "metrics": metrics[k]}
            for k, (d, c) in enumerate(zip(dirs, configs))]
