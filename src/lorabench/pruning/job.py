"""One pruning job's inputs and the steps every method shares: load, adapt, train, evaluate.

``prepare_job`` checks everything (config, model architecture, sparsity) and builds the loaders
before any training; each method then asks ``Job.fresh_model`` for its own copy of the base. The
methods get the ``Job`` handed in and never import this module (it imports ``train``, and the
methods stay below it in the import floors).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch import nn

from .. import inject, models, train
from ..config import RunConfig
from ..data import build_loaders, get_task
from ..errors import ConfigError
from .sizes import block_params
from .structure import (
    TARGETS,
    Block,
    blocks,
    check_sparsity,
    check_supported,
    prunable,
)


@dataclass
class Job:
    cfg: RunConfig
    task: Any  # TaskSpec
    train_loader: Any
    dev_loaders: dict
    blocks: list[Block]  # every encoder layer of the full model
    block_params: int  # parameters of their prunable linear layers (full model)
    keep_first: int | None = None  # blocks kept whole at the start (None: int(0.1 L), official LoRAPrune)
    keep_last: int = 1  # ... and at the end (official LoRAPrune: the last layer)
    trainable: int | None = None  # parameters the last ``fit`` trained (the adapter and head)

    @property
    def targets(self) -> Any:
        return self.cfg.targets if self.cfg.targets is not None else TARGETS

    def fresh_model(self) -> nn.Module:
        """The base model with the task head, seeded as ``lorabench train`` seeds it."""
        train.set_seed(self.cfg.seed)
        model, _ = models.load_model(self.cfg.model, self.task, head=self.cfg.head, layers=self.cfg.layers,
                                     pooling=self.cfg.pooling, dropout=self.cfg.model_dropout)
        return model

    def pruned_blocks(self, model: nn.Module) -> tuple[list[Block], list[Block]]:
        """(every block, the blocks that are pruned)."""
        found = blocks(model)
        return found, prunable(found, self.keep_first, self.keep_last)

    def adapt(self, model: nn.Module, *, initialize: bool = True) -> nn.Module:
        """LoRA (the run's rank, alpha, ...) on the job's targets."""
        return inject.apply(model, "lora", self.targets, initialize=initialize, **self.cfg.variant_options())

    def fit(self, model: nn.Module, before_step: Callable[[nn.Module, int, int], None] | None = None) -> dict:
        """``train.fit`` of the adapted ``model`` on the job's data (with LoRAPrune's per-step hook)."""
        self.trainable = inject.count_parameters(model)[0]
        return train.fit(model, self.train_loader, self.dev_loaders, self.task, self.cfg, progress=not self.cfg.quiet,
                         before_step=before_step)

    def evaluate(self, model: nn.Module) -> tuple[dict, float]:
        """(metrics {split: {metric: value}}, seconds of one pass over the dev sets), fp32."""
        cuda = torch.cuda.is_available()
        accelerator = Accelerator(cpu=not cuda)
        model.to(accelerator.device)
        loaders = {split: [send_to_device(b, accelerator.device) for b in loader]
                   for split, loader in self.dev_loaders.items()}
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = train.evaluate(model, loaders, self.task, accelerator)
        if cuda:
            torch.cuda.synchronize()
        return metrics, time.perf_counter() - start


def check_config(cfg: RunConfig) -> None:
    """What the pruning methods need of the run settings (ConfigError naming the fix otherwise)."""
    if cfg.variant != "lora":
        raise ConfigError(f"lorabench prune trains plain LoRA factors (LoRAPrune scores them, LoRAM recovers them); "
                          f"got --variant {cfg.variant}; drop --variant or use --variant lora")
    if cfg.head != "cls":
        raise ConfigError("lorabench prune prunes encoders with a classification head; use --head cls")
    for name, bad in (("num_processes", cfg.num_processes != 1), ("quantize", cfg.quantize is not None)):
        if bad:
            raise ConfigError(f"lorabench prune runs in one process on full-precision weights; drop --{name.replace('_', '-')}")


def prepare_job(cfg: RunConfig, sparsities: list[float], *, keep_first: int | None = None,
                keep_last: int = 1) -> Job:
    """Check ``cfg``, the sparsities and the model's architecture, then build the loaders."""
    for s in sparsities:
        check_sparsity(s)
    check_config(cfg)
    if keep_last < 0 or (keep_first is not None and keep_first < 0):
        raise ConfigError("--keep-first and --keep-last must be >= 0 (encoder layers left unpruned)")
    task = get_task(cfg.task)
    train.set_seed(cfg.seed)
    model, tokenizer = models.load_model(cfg.model, task, head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                                         dropout=cfg.model_dropout)
    found = check_supported(model, cfg.model)
    if not prunable(found, keep_first, keep_last) and any(s > 0 for s in sparsities):
        raise ConfigError(f"{cfg.model} has {len(found)} encoder layer(s) and --keep-first/--keep-last leave none to "
                          "prune; lower them or use more --layers")
    inject.find_targets(model, cfg.targets if cfg.targets is not None else TARGETS)  # a bad target names the fix
    train_loader, dev_loaders = build_loaders(
        task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length, batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size, train_limit=cfg.train_limit, eval_limit=cfg.eval_limit,
        data_revision=cfg.data_revision, val_size=cfg.val_size, seed=cfg.seed, group_by_length=cfg.group_by_length,
        progress=not cfg.quiet)
    return Job(cfg, task, train_loader, dev_loaders, found, block_params(model, found), keep_first, keep_last)
