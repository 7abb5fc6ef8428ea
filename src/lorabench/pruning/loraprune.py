"""LoRAPrune: structured pruning guided by the LoRA factors' gradients while LoRA trains.

Zhang et al. 2023, "LoRAPrune: Structured Pruning Meets Low-Rank Parameter-Efficient
Fine-Tuning", arXiv 2305.18403; official code aim-uofa/LoRAPrune,
loraprune/utils.py (``compute_sensitivity``, ``update_sensitivity_dict``, ``local_prune``,
``schedule_sparsity_ratio``, ``freeze``) and loraprune/trainer.py (where they run), read for
the defaults below.

At every optimizer step (``train.fit``'s ``before_step``: clipped gradients, before the update):
    1. Ī <- 0.9 Ī + 0.1 I, I the LoRA-guided importance of each head and channel (``importance``);
    2. s_t from the cubic schedule (``schedule``; warm-up 0.1, cool-down 0.1 of the steps);
    3. every ``prune_every`` = 10 steps with 0 < s_t < s: in each pruned layer the int(n s_t) heads
       (channels) of lowest Ī (already-masked groups count 0) are masked (``masks``).
Masks act during training (the evaluation sees them). At the end the LoRA update is merged and
the masked heads and channels are physically removed (``remove``): fewer parameters, faster
evaluation, the same outputs as the masked model.

Deviation: the official loop prunes only while s_t < s, so it stops one pruning round short of the
target; here the first step of the cool-down (at the latest the last step) prunes to exactly
int(n s), so every run reaches the target sparsity it names. Layers: all but the first int(0.1 L)
and the last (official ``freeze``). LoRA targets: every linear layer of a block (official
script/prune.sh: q, k, v, o, gate, up, down); rank/alpha/lr are the run's (``RunConfig``), the same for
every method compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import inject
from ..errors import ConfigError
from . import sizes
from .importance import Importance
from .masks import Masks
from .registry import Method, Outcome, register
from .remove import remove_groups
from .schedule import sparsity_at
from .structure import count


@dataclass
class LoRAPruneOptions:
    ema: float = 0.9  # λ of the moving average (update_sensitivity_dict: imp * 0.9 + new * 0.1)
    prune_every: int = 10  # prune_freq in prune.py
    warmup: float = 0.1  # warmup_iters: fraction of steps before pruning starts
    cooldown: float = 0.1  # cooldown_iters: fraction of steps at the final sparsity
    initial: float = 0.0  # init_ratio

    def __post_init__(self):
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema!r}; the official code uses 0.9")
        if not (isinstance(self.prune_every, int) and self.prune_every > 0):
            raise ConfigError(f"prune_every must be a positive integer, got {self.prune_every!r}; official: 10")
        if not (0 <= self.warmup and 0 <= self.cooldown and self.warmup + self.cooldown < 1):
            raise ConfigError(f"warmup ({self.warmup}) and cooldown ({self.cooldown}) must be >= 0 with a sum < 1; "
                              "official: 0.1 and 0.1")
        if not 0.0 <= self.initial < 1.0:
            raise ConfigError(f"initial must be in [0, 1), got {self.initial!r}; official: 0")


def prune_to(masks: Masks, importance: Importance, ratio: float) -> None:
    """In every pruned block, mask the int(n * ratio) heads and channels of lowest Ī (masked ones at 0)."""
    for b in masks.blocks:
        for group in ("heads", "channels"):
            score = importance.scores[b.name][group] * masks.keep[b.name][group]
            n = count(score.numel(), ratio)
            masks.set(b.name, group, torch.argsort(score, stable=True)[:n].tolist())


class Pruner:
    """The per-step hook: importance update, schedule, masks (see the module docstring)."""

    def __init__(self, masks: Masks, importance: Importance, target: float, opts: LoRAPruneOptions):
        self.masks, self.importance, self.target, self.opts = masks, importance, target, opts
        self.reached = target == 0.0
        self.rounds: list[dict] = []  # (step, sparsity) of every pruning round

    def __call__(self, model, step: int, total: int) -> None:
        self.importance.update(model)
        if self.reached:
            return
        o = self.opts
        ratio = sparsity_at(step, total, self.target, o.initial, o.warmup, o.cooldown)
        if ratio >= self.target or step >= total - 1:
            ratio, self.reached = self.target, True
        elif not (step % o.prune_every == 0 and ratio > o.initial):
            return
        prune_to(self.masks, self.importance, ratio)
        self.rounds.append({"step": step, "sparsity": round(ratio, 6)})


@register("loraprune")
class LoRAPrune(Method):
    description = ("LoRAPrune: heads/channels pruned while LoRA trains, by LoRA-gradient importance, cubic schedule, "
                   "then removed (Zhang et al. 2023, arXiv 2305.18403)")
    Options = LoRAPruneOptions

    def run(self, job: Any, opts: LoRAPruneOptions, sparsity: float = 0.0) -> Outcome:
        model = job.fresh_model()
        found, pruned_blocks = job.pruned_blocks(model)
        full = sizes.n_params(model)
        job.adapt(model)
        masks = Masks(model, pruned_blocks)
        pruner = Pruner(masks, Importance(pruned_blocks, opts.ema), sparsity, opts)
        summary = job.fit(model, before_step=pruner)
        masked_dev, masked_s = job.evaluate(model)  # full size, masked
        plan = masks.plan()
        masks.remove_hooks()
        train_bytes = sizes.param_bytes(model)  # the full base and the adapter
        inject.unload(model)  # W + s B A merged: a plain model
        remove_groups(model, found, plan)
        dev, pruned_s = job.evaluate(model)
        after = sizes.n_params(model)
        return Outcome(dev=dev, plan=plan, params={"full": full, "train_base": full, "inference": after}, train=summary,
                       eval_s={"pruned": pruned_s, "full": masked_s},
                       extra={"masked_dev": masked_dev, "rounds": pruner.rounds, "importance_updates":
                              pruner.importance.updates, "pruned_layers": [b.index for b in pruned_blocks],
                              "weights_bytes": {"train": train_bytes, "inference": sizes.param_bytes(model)}})
