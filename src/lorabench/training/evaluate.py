"""The one evaluation of every training loop: {split: {metric: value}} of a model on its dev loaders.

Each loop used to carry its own copy, and the copies drifted: one never switched dropout off, one
never moved the batches to the model's device, none but ``train.fit``'s autocast. Here the model is
put in eval mode (and given back in the mode it was in), each batch goes to ``device``, the forward
runs under the run's autocast and the logits are read in fp32 before the argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..metrics import compute
from ..precision import autocast
from .placement import to_device

Forward = Callable[[torch.nn.Module, dict[str, Any]], Any]
Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def plain_forward(model: torch.nn.Module, inputs: dict[str, Any]) -> Any:
    return model(**inputs)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loaders: dict, task, device: torch.device, amp: torch.dtype | None = None, *,
             forward: Forward | None = None, gather: Gather | None = None) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on each loader of ``loaders`` ({split: loader}): {split: {metric: value}}.

    ``forward(model, inputs)`` (the batch without its labels) returns an output with ``.logits``
    (default ``model(**inputs)``; a multi-task model is called ``model(task_name, **inputs)``);
    ``gather(logits, labels)`` combines them across data-parallel ranks before the metric
    (``accelerator.gather_for_metrics``). ``task``: a ``TaskSpec`` (``is_regression``, the metrics).
    """
    forward = forward or plain_forward
    was_training = model.training
    model.eval()
    results = {}
    try:
        for split, loader in loaders.items():
            preds, labels = [], []
            for batch in loader:
                batch = to_device(batch, device)
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with autocast(device, amp):
                    logits = forward(model, inputs).logits.float()  # (B, num_labels)
                gold = batch["labels"]
                if gather is not None:
                    logits, gold = gather(logits, gold)
                preds.append(logits.squeeze(-1) if task.is_regression else logits.argmax(-1))
                labels.append(gold)
            p, y = torch.cat(preds).cpu().tolist(), torch.cat(labels).cpu().tolist()
            results[split] = {k: float(v) for k, v in compute(task, p, y).items()}
    finally:
        model.train(was_training)
    return results
