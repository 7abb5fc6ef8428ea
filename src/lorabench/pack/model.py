"""K runs over one frozen base: built as K single runs would be, then joined (``PackedModel``).

Each run is loaded exactly as ``lorabench.run.load`` loads it alone (its seed, so the same head
and adapter initialisation and the same data order), then its frozen tensors are swapped for the
shared base's, so one copy of the base stays in memory. Its model object keeps its own adapters
and head; the shared model holds those same modules in ``PackedLinear`` / ``PackedHead``, so a
run's optimizer, rules (LoRA+, LoRA-FA ...) and saved adapter are exactly its own.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn

from .. import inject
from ..metrics import compute
from ..precision import autocast
from ..adapters.base import AdaptedLinear
from ..targets import set_module
from .layers import Pack, PackedHead, PackedLinear, Segments


def share_frozen(own: nn.Module, shared: nn.Module) -> None:
    """Point every frozen tensor of ``own`` (an adapted model) at ``shared``'s (the plain base model,
    frozen here)."""
    shared.requires_grad_(False)
    mine = dict(own.named_modules())
    for name, module in shared.named_modules():
        target = mine.get(name)
        if isinstance(target, AdaptedLinear):
            target = target.base_layer
        if target is None or target is module:
            continue
        for pname, param in module.named_parameters(recurse=False):
            theirs = target._parameters.get(pname)
            if theirs is not None and not theirs.requires_grad and theirs.shape == param.shape:
                target._parameters[pname] = param


class PackedModel(nn.Module):
    """The shared base with every run's adapters and head: ``forward(runs, batches)`` -> logits.

    ``shared`` is the plain base model, each of ``runs`` an adapted model whose frozen tensors
    already point at it (``share_frozen``)."""

    def __init__(self, shared: nn.Module, runs: list[nn.Module], seeds: list[int], pad_id: int):
        super().__init__()
        self.pack = Pack(seeds)
        self.pad_id = pad_id
        self.regression = getattr(shared.config, "problem_type", None) == "regression"
        states = [inject.state_of(m) for m in runs]
        for name in states[0].targets:
            adapters = [m.get_submodule(name).adapter for m in runs]
            set_module(shared, name, PackedLinear(shared.get_submodule(name), adapters, self.pack))
        for head in states[0].head:
            setattr(shared, head, PackedHead([getattr(m, head) for m in runs], self.pack))
        self.shared = shared

    def batch(self, batches: list[dict]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The runs' micro-batches as one: right-padded to the longest, stacked run after run."""
        longest = max(b["input_ids"].shape[1] for b in batches)
        out: dict[str, list[torch.Tensor]] = {}
        for b in batches:
            for key, value in b.items():
                if torch.is_tensor(value) and value.dim() == 2:  # (B, T): ids, mask, token types
                    fill = self.pad_id if key == "input_ids" else 0
                    value = F.pad(value, (0, longest - value.shape[1]), value=fill)
                out.setdefault(key, []).append(value)
        return {k: torch.cat(v) for k, v in out.items()}, [len(b["input_ids"]) for b in batches]

    def forward(self, runs: list[int], batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor | None, Segments]:
        """(logits (N, C), per-row loss (N,) or None without labels, the segments)."""
        inputs, rows = self.batch(batches)
        labels = inputs.pop("labels", None)
        segments = Segments(runs, rows)
        with self.pack.rows(segments):
            logits = self.shared(**inputs).logits
        loss = None
        if labels is not None:
            if self.regression:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="none")
            else:
                loss = F.cross_entropy(logits.float(), labels.long(), reduction="none")
        return logits, loss, segments

    @staticmethod
    def run_means(loss: torch.Tensor, segments: Segments) -> torch.Tensor:
        """(K,) each run's mean loss over its own rows."""
        owner = segments.owner(loss.device)
        sums = torch.zeros(len(segments), dtype=loss.dtype, device=loss.device).index_add_(0, owner, loss)
        return sums / torch.tensor(segments.rows, dtype=loss.dtype, device=loss.device)


class RunView(nn.Module):
    """One run of a pack seen as a model of its own (``model(**batch).loss``), for the checks that
    take a model (``divergence.check_after_training``)."""

    def __init__(self, packed: PackedModel, index: int):
        super().__init__()
        object.__setattr__(self, "packed", packed)
        self.index = index

    def train(self, mode: bool = True) -> "RunView":
        self.packed.train(mode)
        return super().train(mode)

    def forward(self, **batch: Any) -> SimpleNamespace:
        logits, loss, segments = self.packed([self.index], [batch])
        return SimpleNamespace(logits=logits, loss=None if loss is None else loss.mean())


@torch.no_grad()
def evaluate_pack(packed: PackedModel, runs: list[int], loaders: dict, task, device, amp) -> list[dict]:
    """Dev metrics of each of ``runs`` ({split: {metric: value}}), one forward per dev batch for all."""
    training = packed.training
    packed.eval()
    out: list[dict] = [{} for _ in runs]
    for split, loader in loaders.items():
        preds: list[list] = [[] for _ in runs]
        labels = []
        for batch in loader:
            inputs = {k: v for k, v in send_to_device(batch, device).items() if k != "labels"}
            with autocast(device, amp):
                logits, _, seg = packed(runs, [inputs] * len(runs))
            for j, part in enumerate(logits.float().split(seg.rows)):
                preds[j].append(part.squeeze(-1) if task.is_regression else part.argmax(-1))
            labels.append(batch["labels"])
        y = torch.cat(labels).cpu().tolist()
        for j in range(len(runs)):
            out[j][split] = {k: float(v) for k, v in compute(task, torch.cat(preds[j]).cpu().tolist(), y).items()}
    packed.train(training)
    return out
