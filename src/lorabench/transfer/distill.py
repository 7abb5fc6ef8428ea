"""Knowledge distillation of a source model + adapter (teacher) into a target model + adapter
(student) on unlabelled inputs (Trans-LoRA, Wang et al. 2024, arXiv 2405.17258, Sec. 3.3: the
target LoRA is trained to reproduce the source LoRA's outputs on the filtered synthetic data).

    L = T^2 * KL( softmax(z_s / T) || softmax(z_t / T) )      (Hinton et al. 2015, arXiv 1503.02531)

with z_s the teacher's and z_t the student's class logits, batch mean; T^2 keeps the gradient
scale of T = 1. For classification the teacher's output is its class distribution, so we match
soft labels (the paper's generative tasks match the teacher's generated answers token by token).
Regression (STS-B): the squared error to the teacher's score. Teacher and student tokenize the
same texts each with their own tokenizer, so they may come from different model families.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..data import Collator, Example, TaskSpec, encode
from ..data.batching import pad_token_id

Batch = dict[str, torch.Tensor]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      regression: bool = False) -> torch.Tensor:
    """T^2 KL(p_teacher || p_student) at temperature T, mean over the batch (MSE for regression)."""
    if regression:
        return F.mse_loss(student_logits.float().squeeze(-1), teacher_logits.float().squeeze(-1))
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B,)
    return temperature ** 2 * kl.mean()


def text_batches(examples: list[Example], tokenizer, spec: TaskSpec, *, max_length: int, batch_size: int,
                 extra: torch.Tensor | None = None, seed: int = 0, format_fn=None) -> Callable[[int], Iterable[Batch]]:
    """``batches(epoch)``: the examples tokenized once, in fixed-size batches, in an order shuffled
    with ``seed + epoch`` (``epoch = -1``: in order, for scoring). ``extra`` (N, ...)
    rides along as ``batch["teacher"]`` (the teacher's logits, row for row)."""
    ds = encode(examples, tokenizer, spec, "train", max_length=max_length, progress=False, format_fn=format_fn,
                key_extra={"transfer": True})
    collate = Collator(pad_token_id(tokenizer), spec.is_regression)

    def batches(epoch: int):
        n = len(ds)
        order = torch.arange(n) if epoch < 0 else torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for chunk in order.split(batch_size):
            batch = collate([ds[i] for i in chunk.tolist()])
            if extra is not None:
                batch["teacher"] = extra[chunk]
            yield batch

    return batches


def distill_step(temperature: float, regression: bool):
    """``loss_fn(student, batch)`` for ``loop.train``: the distillation loss to ``batch["teacher"]``."""
    def loss_fn(student, batch: Batch) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher")}
        return distillation_loss(student(**inputs).logits, batch["teacher"], temperature, regression)

    return loss_fn
