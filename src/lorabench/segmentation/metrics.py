"""Dice and IoU of binary masks, per image, then the mean over the test images.

    dice(P, G) = 2 |P n G| / (|P| + |G|)        IoU(P, G) = |P n G| / |P u G|

(Dice 1945; Jaccard 1912; as segmentation benchmarks define them, e.g. Taha & Hanbury 2015, BMC
Medical Imaging 15:29.) A prediction P is the logit > 0 (probability > 0.5). Each image is scored
on its own and the scores are averaged, so every test image weighs the same whatever its
foreground area (the paper's per-patient Dice, not one Dice over all pixels pooled).

Empty masks: when neither the prediction nor the truth has a foreground pixel, both scores are 1
(a correct "nothing here"); when exactly one of them is empty, both are 0, as the formulas give.
"""

from __future__ import annotations

import torch


def scores(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(dice, iou) of one image's boolean masks ``pred`` and ``truth`` (same shape)."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(truth.shape)} differ in shape")
    pred, truth = pred.bool(), truth.bool()
    inter = (pred & truth).sum().item()
    total = pred.sum().item() + truth.sum().item()
    if total == 0:  # both empty
        return 1.0, 1.0
    union = total - inter
    return 2.0 * inter / total, inter / union


def mean_scores(preds: list[torch.Tensor], truths: list[torch.Tensor]) -> dict[str, float]:
    """{"dice", "iou"}: the means over images of the per-image scores."""
    if not preds or len(preds) != len(truths):
        raise ValueError(f"need one prediction per mask, got {len(preds)} predictions and {len(truths)} masks")
    pairs = [scores(p, t) for p, t in zip(preds, truths)]
    return {"dice": sum(d for d, _ in pairs) / len(pairs), "iou": sum(i for _, i in pairs) / len(pairs)}


def soft_dice_loss(logits: torch.Tensor, truth: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the sigmoid probabilities, per image, averaged (Milletari et al. 2016,
    V-Net, arXiv 1606.04797, Eq. 1 with |.| sums; ``eps`` smooths empty patches)."""
    p = torch.sigmoid(logits.float()).flatten(1)  # (B, H*W)
    t = truth.float().flatten(1)
    dice = (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
    return 1 - dice.mean()
