"""The unpruned baseline: LoRA on the full model (Hu et al. 2021, arXiv 2106.09685), sparsity 0.

Same targets (every linear layer of each block, ``structure.TARGETS``), settings and evaluation
as the pruning methods, so its row is what they lose against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import sizes
from .registry import Method, Outcome, register


@register("lora")
class LoRABaseline(Method):
    description = "LoRA on the full, unpruned model (the sparsity-0 baseline; Hu et al. 2021, arXiv 2106.09685)"
    prunes = False

    @dataclass
    class Options:
        pass

    def run(self, job: Any, opts: Options, sparsity: float = 0.0) -> Outcome:
        model = job.fresh_model()
        n = sizes.n_params(model)
        job.adapt(model)
        summary = job.fit(model)
        dev, eval_s = job.evaluate(model)
        return Outcome(dev=dev, plan={}, params={"full": n, "train_base": n, "inference": n}, train=summary,
                       eval_s={"pruned": None, "full": eval_s},
                       extra={"weights_bytes": {"train": sizes.param_bytes(model), "inference": sizes.param_bytes(model)}})
