"""Build a multi-task run: the shared encoder with one head per task, its adapter (one shared LoRA
or routed LoRA experts, fresh or frozen pre-trained), and the interleaved task batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import inject, models
from ..data import build_loaders, get_task
from ..errors import AdapterFileError
from . import registry
from .config import MixtureConfig
from .experts import ExpertOptions, apply_experts, attention_targets
from .frozen import check_architecture
from .interleave import Interleaved
from .multitask import MultiTaskModel


@dataclass
class Built:
    model: MultiTaskModel
    tokenizer: object
    train: Interleaved
    dev: dict[str, dict]  # task -> {split: loader}
    targets: list[str]  # adapted layers (full names)


def build_model(cfg: MixtureConfig, experts: tuple | None = None) -> tuple[MultiTaskModel, object, list[str]]:
    """``experts``: ``frozen.read_experts(cfg.experts_from)`` when the run has frozen experts."""
    clf, tokenizer = models.load_model(cfg.model, get_task(cfg.tasks[0]), layers=cfg.layers, pooling="mean")
    if cfg.routed and cfg.experts_from:
        if experts is None:
            raise ValueError("experts_from is set: pass experts=frozen.read_experts(cfg.experts_from)")
        check_architecture(clf, cfg.experts_from, experts[2])  # before anything is wrapped or trained
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
    full, rank, factors = experts
    inner = [n.removeprefix(f"{clf.prefix}.") for n in full]
    opts = ExpertOptions(len(factors), rank, float(rank))  # scale 1: each adapter's own is folded into B
    names = apply_experts(model, backbone, inner, opts, router_cls, router_opts)
    load_experts(model, cfg.experts_from, names, factors)
    return model, tokenizer, names


def build(cfg: MixtureConfig, experts: tuple | None = None, progress: bool = True) -> Built:
    model, tokenizer, names = build_model(cfg, experts)
    train, dev = {}, {}
    for task in cfg.tasks:
        train[task], dev[task] = build_loaders(task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length,
                                               batch_size=cfg.batch_size, train_limit=cfg.train_limit,
                                               eval_limit=cfg.eval_limit, seed=cfg.seed, progress=progress)
    return Built(model, tokenizer, Interleaved(train, cfg.sampling, cfg.temperature, cfg.seed), dev, names)


@torch.no_grad()
def load_experts(model: nn.Module, directories: list[str], names: list[str],
                 experts: list[dict]) -> None:
    """Copy the adapters' factors into the (already wrapped) ``names`` of ``model`` and freeze them."""
    modules = dict(model.named_modules())
    fp = inject.fingerprint(model, names)  # AdaptedLinear.weight is the base weight: the fingerprint before wrapping
    for d, ex in zip(directories, experts):
        if ex["__fingerprint__"] != fp:
            raise AdapterFileError(f"the adapter in {Path(d)} was trained on other base weights; load its base "
                                   "model with the same --layers")
    for name in names:
        adapter = modules[name].adapter
        for e, ex in enumerate(experts):
            A, B = ex[name]
            adapter.lora_A[e].copy_(A)
            adapter.lora_B[e].copy_(B / adapter.scale)  # delta multiplies by the mixture's own scale
        adapter.lora_A.requires_grad_(False)
        adapter.lora_B.requires_grad_(False)
