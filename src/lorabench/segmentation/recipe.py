"""The ``segment`` kind as a run: one arm of the U-Net transfer study filled into the result envelope.

    lorabench train --kind segment --task membrane --data-dir membrane/ --scenario arm=lora --scenario r=4

Mirrors Minoccheri et al. 2025, "LoRA-based methods on Unet for transfer learning in Subarachnoid
Hematoma Segmentation", arXiv 2508.01772 (code not public; read from the paper): a U-Net pretrained
on a related segmentation source (``source``: synthetic membranes, ``synthetic``) is transferred to
a scarce target (the training block of an image/mask folder) by one arm: from scratch, full
fine-tuning, the decoder only, or conv adapters (LoRA-C, DoRA-C, CP-LoRA through ``inject.apply``
on the U-Net's ``nn.Conv2d`` layers). Dice (primary) and IoU per test image, averaged.

Envelope: ``history`` has one entry per epoch (mean training loss, Dice of the training patches);
``best`` and ``final`` hold the test block's Dice and IoU after the last epoch (nothing is selected
on the test images: ``metric.selected_on`` is "last"); ``params`` counts the trainable tensors of
the arm and the whole U-Net; ``time.train_s`` excludes evaluation; ``details`` records the source
model (cache key, checksum, pretraining loss), the zero-shot Dice of the source model on the test
block (the paper's "no fine-tuning" row), the split and the adapted convs.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import inject
from ..measure import peak_memory
from ..seeding import set_seed
from ..training.meter import Meter
from ..training.placement import placement
from .data import patches, read_folder, split
from .loop import Hooks, batches, evaluate, fit
from .settings import SegmentSettings
from .source import pretrained
from .source import zero_shot as source_zero_shot
from .unet import UNet, UNetShape, count

TEST = "test"


def load(s: SegmentSettings, device, amp, progress: bool) -> tuple[UNet, dict[str, Any] | None]:
    """A fresh U-Net (arm scratch) or the source-pretrained one, on ``device``; the source record."""
    model = UNet(UNetShape(s.base, s.depth, s.groups))
    if s.arm == "scratch":
        return model.to(device), None
    state, source = pretrained(s, device, amp, progress)
    model.load_state_dict(state)
    return model.to(device), source


def set_arm(model: UNet, s: SegmentSettings, cfg: Any) -> list[str]:
    """Make the arm's tensors trainable (an adapter arm: wrap its convs); the adapted convs."""
    if not s.is_adapter:
        for name, p in model.named_parameters():
            p.requires_grad_(s.arm != "decoder" or not name.startswith("down."))
        return []
    # The head (a 1x1 conv to one channel) has rank <= 1: no adapter fits it, so it trains whole
    # (16 weights and a bias at base 16), as a text task's head trains beside lorabench's adapters.
    targets = [n for n in model.conv_names(s.targets) if n != "head"]
    inject.apply(model, s.arm, targets, **cfg.variant_options())  # r, alpha folded in by the kind
    for p in model.head.parameters():
        p.requires_grad_(True)
    return targets


def param_groups(model: UNet, s: SegmentSettings, cfg: Any) -> list[dict]:
    if s.is_adapter:
        return inject.param_groups(model, cfg.lr, cfg.weight_decay)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]  # biases and norms
    return [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": rest, "lr": cfg.lr, "weight_decay": 0.0}]


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Train ``cfg`` (kind segment) and fill ``result`` in place."""
    s = SegmentSettings(**cfg.scenario)
    pairs = read_folder(cfg.data_dir, s.foreground)
    train, test = split(pairs, s.train_images, s.test_images)
    device, precision, amp = placement(cfg.precision)
    set_seed(cfg.seed)  # a fresh U-Net's init (arm scratch): the run's seed
    model, source = load(s, device, amp, progress and not cfg.quiet)
    size = count(model)
    zero_shot = None
    if source is not None:  # before any adapter: the source model itself
        zero_shot = source_zero_shot(source, result["data"], [p.stem for p in test],
                                     lambda: evaluate(model, test, 2 ** s.depth, device, amp))
    set_seed(cfg.seed)  # the adapter's init, the patches and their order: the run's seed (pretraining reseeded)
    targets = set_arm(model, s, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    epochs = int(cfg.epochs)  # whole epochs (the kind refuses fractions)
    per_epoch = -(-len(train) * s.patches_per_image // cfg.batch_size)

    def epoch():
        x, y = patches(train, s.patch, s.patches_per_image, generator)
        return batches(x, y, cfg.batch_size, generator)

    hooks = Hooks(lambda: inject.before_step(model), lambda step, total: inject.on_step(model, step, total)) \
        if s.is_adapter else Hooks()
    meter = Meter(device)
    say = (lambda m: print(f"{result['method']}: {m}", flush=True)) if progress and not cfg.quiet else None
    out = fit(model, [epoch] * epochs, param_groups(model, s, cfg), steps=epochs * per_epoch, device=device,
              amp=amp, meter=meter, loss=s.loss, warmup_ratio=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm,
              log_every=cfg.log_every, hooks=hooks, progress=say)
    metrics = {TEST: evaluate(model, test, 2 ** s.depth, device, amp, meter)} if out.status == "ok" else {}
    if out.status == "ok" and out.history:
        out.history[-1]["metrics"] = metrics
    trainable, total = inject.count_parameters(model)
    point = {"step": out.steps, "epoch": float(epochs), "metrics": metrics}
    time = meter.time()
    seen = out.steps and len(train) * s.patches_per_image * epochs
    result.update({
        "status": out.status, "error": out.error,
        "best": point, "final": dict(point), "history": out.history, "train_loss": out.train_loss,
        "params": {"trainable": trainable, "total": total},
        "time": {"train_s": time["train_s"], "eval_s": time["eval_s"],
                 "examples_per_s": seen / time["train_s"] if time["train_s"] > 0 else None, "tokens_per_s": None},
        "memory": {**result["memory"], **peak_memory(device), "micro_batch_size": cfg.batch_size,
                   "grad_accum_steps": 1, "oom_retries": 0},
        "details": {
            "arm": s.arm, "unet": {"base": s.base, "depth": s.depth, "groups": s.groups, "params": size},
            "split": {"train": [p.stem for p in train], TEST: [p.stem for p in test]},
            "patches_per_epoch": len(train) * s.patches_per_image, "steps_per_epoch": per_epoch,
            "zero_shot": zero_shot, "source": source, "adapted_convs": targets,
        },
    })
    result["env"] = {**result["env"], "precision": precision, "threads": torch.get_num_threads()}
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last", "reported_on": TEST}
