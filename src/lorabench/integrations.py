"""lorabench under the Hugging Face ``transformers.Trainer``: the optimizer and one callback.

    lorabench.apply(model, "lora_plus", targets=["query", "value"], r=8)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      optimizers=(integrations.optimizer(model, args), None),   # lorabench's parameter groups
                      callbacks=[integrations.LorabenchCallback()])             # the variant's per-step hooks
    trainer.train()      # each checkpoint-N/ also holds lorabench-adapter/ (lorabench.load_adapter reads it)

``optimizer`` is AdamW over ``lorabench.param_groups``: only the adapter and head tensors, with
the variant's groups (LoRA+'s B at lambda x lr, LoRA-FA's frozen A, DoRA's undecayed magnitude);
Trainer's own learning-rate schedule then scales every group alike. ``LorabenchCallback`` calls
what ``lorabench.train.fit`` calls, at the same points of the step (Trainer's events, after its
gradient clipping): ``before_step`` right before ``optimizer.step()`` (LoRA-Pro, AltLoRA,
ALLoRA, Stable-LoRA, AdaLoRA's sensitivity), ``on_step`` after it (DyLoRA's rank sampling,
AdaLoRA's budget, the rules' schedules), the variant's extra loss term (AdaLoRA's orthogonality
regulariser) added to the model's loss in training, and ``save_adapter`` at every checkpoint.
Needs transformers (a core dependency); nothing here is imported by ``import lorabench``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from .checkpoint import save_adapter
from .inject import before_step, extra_loss, on_step, param_groups

#: The folder inside each ``checkpoint-<step>/`` that holds the lorabench adapter.
ADAPTER_DIR = "lorabench-adapter"


def optimizer(model: torch.nn.Module, args: Any) -> torch.optim.AdamW:
    """AdamW over ``lorabench.param_groups(model)`` with the learning rate, weight decay, betas and
    epsilon of ``args`` (``transformers.TrainingArguments``): pass ``optimizers=(this, None)``."""
    groups = param_groups(model, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay,
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def _add_extra_loss(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook: the variant's loss term added to ``output.loss`` while training (as ``fit`` does)."""
    if module.training and getattr(output, "loss", None) is not None:
        extra = extra_loss(module)
        if torch.is_tensor(extra):
            output.loss = output.loss + extra
    return output


class LorabenchCallback(transformers.TrainerCallback):
    """Runs a lorabench variant's hooks inside ``transformers.Trainer`` (see the module docstring)."""

    def __init__(self, adapter_dir: str = ADAPTER_DIR):
        self.adapter_dir = adapter_dir
        self._hooked: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if id(model) not in self._hooked:  # once per model, even when train() is called again
            model.register_forward_hook(_add_extra_loss)
            self._hooked.add(id(model))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        before_step(model)  # gradients complete and clipped, optimizer.step() next

    def on_step_end(self, args, state, control, model=None, **kwargs):
        on_step(model, state.global_step, state.max_steps)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            save_adapter(model, Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.adapter_dir)


#: The name issue 18 asks for; ``LorabenchCallback`` does not shadow transformers' own class.
TrainerCallback = LorabenchCallback

__all__ = ["ADAPTER_DIR", "LorabenchCallback", "TrainerCallback", "optimizer"]
