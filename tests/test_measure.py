"""The memory-budget planner of ``lorabench.measure``: the micro-batch candidates and the plan
(pure: a fake "fits" predicate stands in for CUDA probes), the probe that finds the largest
micro-batch that does not run out of memory, the minimum training bytes a budget must hold,
and ``parse_bytes``."""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench.measure import (
    MemoryBudgetError,
    check_memory_budget,
    micro_batch_candidates,
    min_training_bytes,
    parse_bytes,
    plan_micro_batch,
)

from helpers_train import synthetic, tiny_bert

# ---- micro-batch planner (pure: a fake "fits" predicate stands in for CUDA probes) ---------
def test_micro_batch_candidates_are_batch_then_powers_of_two():
    assert micro_batch_candidates(32) == [32, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(24) == [24, 16, 8, 4, 2, 1]
    assert micro_batch_candidates(1) == [1]


def test_plan_picks_largest_fitting_micro_batch_and_keeps_effective_batch():
    asked = []

    def fits(micro):
        asked.append(micro)
        return micro <= 5

    assert plan_micro_batch(32, 1, fits) == (4, 8)
    assert asked == [32, 16, 8, 4]  # largest first, stops at the first that fits
    assert plan_micro_batch(32, 3, lambda m: m <= 16) == (16, 6)  # 16 * 6 == 32 * 3
    assert plan_micro_batch(24, 1, lambda m: m <= 20) == (16, 2)  # 16 + 8 per loader batch
    assert plan_micro_batch(32, 2, lambda m: True) == (32, 2)


def test_plan_returns_none_when_batch_one_does_not_fit():
    assert plan_micro_batch(8, 1, lambda m: False) is None


def test_probe_finds_the_largest_micro_batch_that_does_not_oom():
    """``probe_fits`` with a model that runs out of memory above 4 rows (as CUDA would)."""
    from accelerate import Accelerator

    from lorabench.measure import probe_fits

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_bert(dropout=0.1)
            self.shapes = []

        def forward(self, **batch):
            self.shapes.append(tuple(batch["input_ids"].shape))
            if batch["input_ids"].shape[0] > 4:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(**batch)

    model = Picky()
    sample = torch.utils.data.default_collate(synthetic(3, 0))
    sample["input_ids"] = sample["input_ids"][:, :5]
    sample["attention_mask"] = sample["attention_mask"][:, :5]
    rng = torch.get_rng_state()
    plan = plan_micro_batch(16, 1, lambda m: probe_fits(model, sample, m, 12, Accelerator(cpu=True)))
    assert plan == (4, 4)
    assert model.shapes == [(16, 12), (8, 12), (4, 12), (4, 12)]  # worst case: max_length tokens, 2 probe steps
    assert all(p.grad is None for p in model.parameters())  # probing leaves no gradients behind
    assert torch.equal(torch.get_rng_state(), rng)  # nor a changed RNG (dropout ran)


def test_budget_below_weights_grads_and_optimizer_is_rejected_on_cpu():
    model = tiny_bert()
    lorabench.apply(model, "lora", ["query", "value"])
    need = min_training_bytes(model)
    params = sum(p.numel() * 4 for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert need == params + 3 * trainable
    with pytest.raises(MemoryBudgetError, match=r"too small for batch size 1 with model tiny.*--memory-budget"):
        check_memory_budget(model, need - 1, "tiny")
    check_memory_budget(model, need, "tiny")
    check_memory_budget(model, None, "tiny")


def test_parse_bytes():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5 GB") == 1_500_000_000
    assert parse_bytes("2g") == 2 * 2**30
    assert parse_bytes(1000) == 1000
    for bad in ("8 bananas", "", "GiB", "-1GiB", True):
        with pytest.raises(ValueError):
            parse_bytes(bad)
