"""Build a multi-task run: the shared encoder with one head per task, its adapter (one shared LoRA
or routed LoRA experts, fresh or frozen pre-trained), and the interleaved task batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import inject, models
from ..data import build_loaders, get_task
from . import registry
from .config import MixtureConfig
from .experts import ExpertOptions, apply_experts, attention_targets
from .frozen import load_experts, read_experts
from .interleave import Interleaved
from .multitask import MultiTaskModel


@dataclass
class Built:
    model: MultiTaskModel
    tokenizer: object
    train: Interleaved
    dev: dict[str, dict]  # task -> {split: loader}
    targets: list[str]  # adapted layers (full names)


def build_model(cfg: MixtureConfig) -> tuple[MultiTaskModel, object, list[str]]:
    clf, tokenizer = models.load_model(cfg.model, get_task(cfg.tasks[0]), layers=cfg.layers, pooling="mean")
    backbone = getattr(clf, clf.prefix)
    torch.manual_seed(cfg.seed)  # heads, experts and routers start the same for a seed
    model = MultiTaskModel(clf.prefix, backbone, {t: get_task(t) for t in cfg.tasks}, clf.dropout.p)
    targets = cfg.targets
    if not cfg.routed:  # one LoRA shared by every task: lorabench's own variant
        inject.apply(backbone, "lora", targets=targets or attention_targets(backbone), r=cfg.r, alpha=cfg.alpha)
        names = [f"{clf.prefix}.{n}" for n in inject.state_of(backbone).targets]
        return model, tokenizer, names
    router_cls = registry.get(cfg.method)
    router_opts = router_cls.make_options(cfg.experts, **cfg.router_options())
    if not cfg.experts_from:
        opts = ExpertOptions(cfg.experts, cfg.r, cfg.alpha)
        return model, tokenizer, apply_experts(model, backbone, targets, opts, router_cls, router_opts)
    full, rank, experts = read_experts(cfg.experts_from)
    inner = [n.removeprefix(f"{clf.prefix}.") for n in full]
    opts = ExpertOptions(len(experts), rank, float(rank))  # scale 1: each adapter's own is folded into B
    names = apply_experts(model, backbone, inner, opts, router_cls, router_opts)
    load_experts(model, cfg.experts_from, names, experts)
    return model, tokenizer, names


def build(cfg: MixtureConfig, progress: bool = True) -> Built:
    model, tokenizer, names = build_model(cfg)
    train, dev = {}, {}
    for task in cfg.tasks:
        train[task], dev[task] = build_loaders(task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length,
                                               batch_size=cfg.batch_size, train_limit=cfg.train_limit,
                                               eval_limit=cfg.eval_limit, seed=cfg.seed, progress=progress)
    return Built(model, tokenizer, Interleaved(train, cfg.sampling, cfg.temperature, cfg.seed), dev, names)
