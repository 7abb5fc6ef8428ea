"""LoRAM: train LoRA on a structurally pruned base, infer with the recovered adapter on the full one.

Zhang et al. (ICLR 2025), "Train Small, Infer Large: Memory-Efficient LoRA
Training for Large Language Models", arXiv 2502.13533; official code junzhang-zj/LoRAM, read:
loram/0_pruned_full_rank_weight_generation.py (layers pruned: range(4, 78) of LLaMA-3.1-70B's 80),
loram/3_recovered_low_rank_matrix_generation.py (the recovery, ``pruning.recover``).

    1. prune a copy of the base: in each pruned layer the int(n s) heads and FFN channels of lowest
       score are removed (``criterion``: ``magnitude``, the group's sum of |W| over its rows/columns,
       each layer's scores L2-normalised: LoRAPrune's own prune_metric='magnitude' aggregation; or
       ``random``: LoRAM-Rand);
    2. train LoRA (and the task head) on the pruned copy: the training memory is that of the pruned base;
    3. recover: B rows / A columns of the pruned groups are zeros (official ``zeroA``), the head is copied;
    4. evaluate on the FULL, unpruned base with the recovered adapter (the inference model).

Deviations: no continued pre-training "alignment" of the pruned base (the paper's step 1,
1_pruned_full_rank_weight_alignment.py) is done here; the structured criterion is weight
magnitude or random instead of LLM-Pruner's gradient-based LoRAM-Stru (no calibration pass). The
layers pruned are the LoRAPrune ones (all but the first int(0.1 L) and the last), close to LoRAM's
range(4, 78) of 80, so both methods prune the same layers. The classification head trained on the pruned
model is used unchanged on the full one (the paper's LLMs have no new head).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import inject
from ..errors import ConfigError
from . import sizes
from .importance import group_scores
from .masks import Plan
from .recover import recover_tensors
from .registry import Method, Outcome, register
from .remove import remove_groups
from .structure import LINEARS, Block, count

CRITERIA = ("magnitude", "random")


@dataclass
class LoRAMOptions:
    criterion: str = "magnitude"  # magnitude | random (LoRAM-Rand)

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")


@torch.no_grad()
def magnitude_scores(model: nn.Module, b: Block) -> dict[str, torch.Tensor]:
    """Each head's and channel's sum of |W| over its rows / columns, per layer L2-normalised, summed."""
    scores = {"heads": torch.zeros(b.heads), "channels": torch.zeros(b.channels)}
    for linear, (group, dim) in LINEARS.items():
        W = model.get_submodule(b.path(linear)).weight.detach().float()
        scores[group] += group_scores(W.abs(), dim, b.group_size(linear)).cpu()
    return scores


def choose(model: nn.Module, pruned_blocks: list[Block], sparsity: float, criterion: str, seed: int) -> Plan:
    """The heads and channels to prune in each block: the int(n s) of lowest score."""
    g = torch.Generator().manual_seed(seed)
    plan: Plan = {}
    for b in pruned_blocks:
        if criterion == "random":
            scores = {"heads": torch.rand(b.heads, generator=g), "channels": torch.rand(b.channels, generator=g)}
        else:
            scores = magnitude_scores(model, b)
        plan[b.name] = {grp: sorted(torch.argsort(s, stable=True)[:count(s.numel(), sparsity)].tolist())
                        for grp, s in scores.items()}
    return plan


@register("loram")
class LoRAM(Method):
    description = ("LoRAM: LoRA trained on a pruned copy of the base (magnitude|random), recovered with zeros and "
                   "evaluated on the full model (Zhang et al. ICLR 2025, arXiv 2502.13533)")
    Options = LoRAMOptions

    def run(self, job: Any, opts: LoRAMOptions, sparsity: float = 0.0) -> Outcome:
        full = job.fresh_model()
        found, pruned_blocks = job.pruned_blocks(full)
        plan = choose(full, pruned_blocks, sparsity, opts.criterion, job.cfg.seed)
        small = remove_groups(copy.deepcopy(full), found, plan)
        n_full, n_small = sizes.n_params(full), sizes.n_params(small)
        job.adapt(small)
        train_bytes = sizes.param_bytes(small)  # the pruned base and the adapter
        summary = job.fit(small)
        pruned_dev, pruned_s = job.evaluate(small)
        recovered = recover_tensors(inject.adapter_tensors(small), found, plan)
        job.adapt(full, initialize=False)
        _missing, unexpected = full.load_state_dict(recovered, strict=False)
        if unexpected or set(recovered) - {k for k, _ in full.state_dict().items()}:
            raise RuntimeError(f"recovered tensors without a place in the full model: {unexpected}")
        dev, full_s = job.evaluate(full)
        return Outcome(dev=dev, plan=plan, params={"full": n_full, "train_base": n_small, "inference": n_full},
                       train=summary, eval_s={"pruned": pruned_s, "full": full_s},
                       extra={"pruned_dev": pruned_dev, "criterion": opts.criterion,
                              "pruned_layers": [b.index for b in pruned_blocks],
                              "weights_bytes": {"train": train_bytes, "inference": sizes.param_bytes(full)}})
