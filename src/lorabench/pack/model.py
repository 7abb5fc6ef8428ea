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
from tqdm.auto import tqdm
from torch import nn

from .. import inject
from ..metrics import compute
from ..precision import autocast
from ..adapters.base import AdaptedLinear
from ..heads import task_loss
from ..targets import set_module
from .layers import Pack, PackedHead, PackedLinear, Segments
from .noise import swap_dropout, use_packed_attention


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


#: Padded tokens per chunk of a packed micro-batch (``chunks``): 16 rows of 64 tokens, 64 rows of
#: 16. It bounds a pack's activation memory (one chunk's, whatever K) and keeps on a CPU the larger
#: products that make short rows cheaper per example. (K = 8 MiniLM runs on 2 CPU cores, max length
#: 64: 1,024 trained faster than 2,048 and peaked 300 MiB lower.)
TOKEN_BUDGET = 1024
#: Padded tokens per forward of an evaluation pass (no activations are kept for a backward).
EVAL_TOKEN_BUDGET = 4096


Chunk = tuple[list[int], list[dict], list[tuple[torch.Tensor, tuple[int, int]]]]


def rows_by_length(batches: list[dict]) -> list[tuple[int, int, int]]:
    """Every row of ``batches`` as (-its real length, batch, row), sorted: longest first, then in
    batch and row order (a batch without an attention mask: every row as wide as the batch)."""
    rows = []
    for j, b in enumerate(batches):
        ids = b["input_ids"]
        lengths = b["attention_mask"].sum(1).tolist() if "attention_mask" in b else [ids.shape[1]] * len(ids)
        rows += [(-int(n), j, i) for i, n in enumerate(lengths)]
    return sorted(rows)


def chunks(runs: list[int], batches: list[dict], budget: int = TOKEN_BUDGET) -> list[Chunk]:
    """The rows of the runs' batches regrouped by length: [(runs in the chunk, their sub-batches,
    where those rows come from: (indices into the run's batch, (its rows, its width)))].
    Rows are sorted by real length, longest first, and cut into chunks of at most ``budget`` padded
    tokens (a chunk holds at least one row); within a chunk each run's rows keep their order and
    are cut to the chunk's longest row (right padding: the columns cut are padding for all)."""
    rows = rows_by_length(batches)
    out, start = [], 0
    while start < len(rows):
        longest = -rows[start][0]
        end = start + max(1, min(len(rows) - start, budget // max(longest, 1)))
        members = sorted(rows[start:end], key=lambda r: (r[1], r[2]))
        chunk_runs, chunk_batches, origins = [], [], []
        for j in sorted({r[1] for r in members}):
            idx = torch.tensor([r[2] for r in members if r[1] == j])
            chunk_runs.append(runs[j])
            chunk_batches.append({k: (v[idx][:, :longest] if v.dim() == 2 else v[idx]) if torch.is_tensor(v) else v
                                  for k, v in batches[j].items()})
            origins.append((idx, tuple(batches[j]["input_ids"].shape)))
        out.append((chunk_runs, chunk_batches, origins))
        start = end
    return out


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
        for name in dict.fromkeys(t for state in states for t in state.targets):  # a head run adapts none
            adapters = [m.get_submodule(name).adapter if name in state.targets else None
                        for m, state in zip(runs, states)]
            set_module(shared, name, PackedLinear(shared.get_submodule(name), adapters, self.pack))
        for head in states[0].head:
            setattr(shared, head, PackedHead([getattr(m, head) for m in runs], self.pack))
        swap_dropout(shared, self.pack)
        use_packed_attention(shared, self.pack)
        self.shared = shared
        first = next((m for m in shared.modules() if isinstance(m, PackedLinear)), None)
        #: each run's rank in the adapted layers (0: none): a chunk lists its runs by rank (``low_rank``)
        self.rank = [0 if first is None else first.factors([k])[0][0].shape[0] for k in range(len(runs))]

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

    def forward(self, runs: list[int], batches: list[dict], origins: list | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, Segments]:
        """(logits (N, C), per-row loss (N,) or None without labels, the segments). ``origins``:
        where the rows come from (``chunks``); by default each batch is a whole micro-batch."""
        inputs, rows = self.batch(batches)
        labels = inputs.pop("labels", None)
        if origins is None:  # whole micro-batches: their dropout masks are drawn anew
            self.pack.noise.new_micro_batch()
        segments = Segments(runs, rows, inputs["input_ids"].shape[1], origins)
        with self.pack.rows(segments):
            logits = self.shared(**inputs).logits
        loss = None if labels is None else task_loss(logits, labels, self.regression, reduction="none")
        return logits, loss, segments

    def backward(self, runs: list[int], batches: list[dict], weights: list[float], amp=None) -> list[float]:
        """Backward of sum_j weights[j] * (mean training loss of run ``runs[j]`` on ``batches[j]``);
        returns those mean losses. Computed chunk by chunk (``chunks``: rows of similar length,
        a backward per chunk), so a pack pads less than any one run's own batch and holds the
        activations of one chunk, not of the K runs' whole micro-batches."""
        device = batches[0]["input_ids"].device
        counts = torch.tensor([float(len(b["input_ids"])) for b in batches], device=device)
        row_weight = torch.tensor(weights, device=device) / counts
        sums = torch.zeros(len(runs), device=device)
        self.pack.noise.new_micro_batch()
        by_rank = sorted(range(len(runs)), key=lambda j: self.rank[runs[j]])
        for chunk_runs, chunk_batches, origins in chunks([runs[j] for j in by_rank], [batches[j] for j in by_rank]):
            with autocast(device, amp):
                _, loss, seg = self(chunk_runs, chunk_batches, origins)
            where = torch.tensor([runs.index(k) for k in chunk_runs], device=device)[seg.owner(device)]
            (loss * row_weight[where]).sum().backward()
            sums.index_add_(0, where, loss.detach().float())
        return (sums / counts).tolist()


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


def by_length(batches: list[dict], rows_per_group: int, pad_id: int = 0) -> list[tuple[dict, list[tuple[int, int]]]]:
    """The rows of right-padded ``batches`` regrouped by real length, longest first: [(inputs of
    ``rows_per_group`` rows padded or cut to their longest, [(batch, row) of each])]. A row's outputs
    do not depend on the padding after it (masked keys get weight 0), so each is computed as in its
    own batch, on fewer padded tokens. ``pad_id`` pads ``input_ids`` (every other 2-D input: 0)."""
    rows = rows_by_length(batches)
    out = []
    for first in range(0, len(rows), rows_per_group):
        members = rows[first:first + rows_per_group]
        longest = max(1, -members[0][0])
        inputs = {}
        for key, value in batches[0].items():
            if not torch.is_tensor(value):
                continue
            if value.dim() != 2:
                inputs[key] = torch.stack([batches[i][key][r] for _, i, r in members])
                continue
            rows_ = value.new_full((len(members), longest), pad_id if key == "input_ids" else 0)
            for j, (_, i, r) in enumerate(members):  # a row's own batch may be narrower than the group
                row = batches[i][key][r][:longest]
                rows_[j, :len(row)] = row
            inputs[key] = rows_
        out.append((inputs, [(i, r) for _, i, r in members]))
    return out


def right_padded(batch: dict) -> bool:
    """Every row's real tokens come first (what ``by_length`` cuts after)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return True
    n = mask.sum(1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[1], device=mask.device) < n).to(mask.dtype)).all())


@torch.no_grad()
def evaluate_pack(packed: PackedModel, runs: list[int], loaders: dict | list[dict], task, device, amp,
                  progress: bool = False) -> list[dict]:
    """Dev metrics of each of ``runs`` ({split: {metric: value}}): every run reads the same dev rows,
    regrouped by length (``by_length``, groups of the loader's batch size; predictions are put back
    in the split's order), the base run on as many copies of a group at a time as
    ``EVAL_TOKEN_BUDGET`` padded tokens allow. ``loaders``: {split: loader} for all, or one per run
    (``loaders[j]``: run ``runs[j]``'s, each iterated as the run iterates it alone, so the random
    draws of a training run stay its own). ``progress``: a bar over the groups (``lorabench eval``)."""
    loaders = [loaders] if isinstance(loaders, dict) else loaders
    training = packed.training
    packed.eval()
    out: list[dict] = [{} for _ in runs]
    for split in loaders[0]:
        batches = [batch for batch, *_ in zip(*(own[split] for own in loaders), strict=True)]
        labels = torch.cat([b["labels"] for b in batches]).cpu().tolist()
        inputs = [{k: v for k, v in send_to_device(b, device).items() if k != "labels"} for b in batches]
        size = max(len(b["input_ids"]) for b in inputs)
        groups = (by_length(inputs, size, packed.pad_id) if all(right_padded(b) for b in inputs)
                  else [(b, [(i, r) for r in range(len(b["input_ids"]))]) for i, b in enumerate(inputs)])
        preds: list[dict] = [{} for _ in runs]  # (batch, row) -> prediction
        for group, where in tqdm(groups, disable=not progress, unit="batch", desc=f"{len(runs)} adapters on {split}",
                                 dynamic_ncols=True):
            at_once = max(1, EVAL_TOKEN_BUDGET // group["input_ids"].numel())
            for first in range(0, len(runs), at_once):
                chosen = runs[first:first + at_once]
                with autocast(device, amp):
                    logits, _, seg = packed(chosen, [group] * len(chosen))
                for j, part in enumerate(logits.float().split(seg.rows), start=first):
                    got = part.squeeze(-1) if task.is_regression else part.argmax(-1)
                    preds[j].update(zip(where, got.cpu().tolist()))
        order = [(i, r) for i, b in enumerate(batches) for r in range(len(b["labels"]))]
        for j in range(len(runs)):
            out[j][split] = {k: float(v) for k, v in compute(task, [preds[j][key] for key in order], labels).items()}
    packed.train(training)
    return out
