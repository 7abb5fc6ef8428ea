"""Which runs of a sweep can share one frozen base, and the packs they form (``--pack K``).

Runs pack together when they share everything the frozen base computes and every input it sees:
the model, its depth and dropout, the task and its data (with its held-out ``val`` split), the
maximum length, the precision, the targets, the head and its pooling, and the dev set
(``eval_limit``, ``eval_batch_size``). Everything
else may differ within a pack: variant (among those that pack), lr, seed, rank, alpha, init, the
optimisation rule, epochs, batch size, accumulation, warmup, weight decay, clipping, evaluation.

A run trains alone, with the reason in the plan, when its variant's change is not a low-rank
product on the layer input (``Variant.unpackable``), or when it needs what only a process of its
own gives: several processes, a memory budget (micro-batch planning and the out-of-memory retry),
fp16 loss scaling, gradient checkpointing, a 4-bit base, a loss regularizer (``--regularizer``), the
prompt head (its loss is over the vocabulary).
"""

from __future__ import annotations

from typing import Any

from ..adapters import registry
from ..ids import canonical

#: RunConfig fields every run of a pack has in common.
SHARED = ("model", "layers", "model_dropout", "task", "data_dir", "data_revision", "val_size", "max_length",
          "precision", "targets", "head", "pooling", "eval_limit", "eval_batch_size", "trust_remote_code")


def unpackable(cfg: Any) -> str | None:
    """Why ``cfg`` (a RunConfig) must train alone, or None when it can join a pack."""
    reasons = [
        (cfg.num_processes > 1, "it runs on several processes"),
        (cfg.memory_budget is not None, "a memory budget plans its micro-batches in a process of its own"),
        (cfg.precision == "fp16", "fp16 needs its own loss scaling"),
        (cfg.grad_checkpointing, "gradient checkpointing is not packed"),
        (cfg.quantize is not None, "its base is stored in 4 bits"),
        (getattr(cfg, "regularizer", None) is not None, "its loss has a regularizer toward a frozen copy of the base"),
        (cfg.head != "cls", "the prompt head's loss is over the whole vocabulary"),
    ]
    for bad, why in reasons:
        if bad:
            return why
    if cfg.kind != "run":
        return f"kind {cfg.kind} runs its own loop"
    why = registry.get(cfg.variant).unpackable()
    return f"variant {cfg.variant}: {why}" if why else None


def key(cfg: Any) -> str:
    return canonical([getattr(cfg, f) for f in SHARED])


def group(runs: list, size: int) -> tuple[list[list], list[str]]:
    """``runs`` (PlannedRun, in plan order) as packs of at most ``size`` that share a key, and
    singletons for the runs that train alone; plus one note per run that cannot pack."""
    if size < 1:
        raise ValueError(f"pack size must be >= 1, got {size}")
    units: list[list] = []
    open_packs: dict[str, list] = {}
    notes = []
    for run in runs:
        why = unpackable(run.config) if size > 1 else "--pack 1"
        if why is not None:
            units.append([run])
            if size > 1:
                notes.append(f"unpacked: {run.describe()}: {why}")
            continue
        k = key(run.config)
        pack = open_packs.get(k)
        if pack is None or len(pack) == size:
            pack = open_packs[k] = []
            units.append(pack)
        pack.append(run)
    return units, notes


def notes(runs: list, size: int, jobs: int = 1) -> list[str]:
    """How ``runs`` pack (one line for the packs, one per reason some runs train alone) and, with
    ``jobs`` > 1, whether there are processes enough to run ``jobs`` at a time."""
    units, _ = group(runs, size)
    lines = []
    if size > 1:
        packs = [u for u in units if len(u) > 1]
        alone: dict[str, int] = {}
        for unit in units:
            if len(unit) == 1:
                why = unpackable(unit[0].config) or "no other run shares its base"
                alone[why] = alone.get(why, 0) + 1
        lines.append(f"--pack {size}: {sum(map(len, packs))} runs in {len(packs)} pack{'s' * (len(packs) != 1)} "
                     "over a shared base")
        lines += [f"{n} run{'s train' if n != 1 else ' trains'} alone: {why}" for why, n in alone.items()]
    if jobs > len(units):
        lines.append(f"jobs {jobs}: the sweep has {len(units)} process{'es' * (len(units) != 1)} to run (runs, or "
                     f"packs of {size}), so at most {len(units)} at a time; lower pack to fill {jobs}")
    return lines
