"""What a run is: ``RunConfig.kind`` and the kind's own settings, ``RunConfig.scenario``.

``run`` is one adapter trained on one task (``train.fit``). A scenario kind is a run too: one
config, one run id over config + data, one result envelope (``results``), so a sweep plans it
with seeds and halving and ``report`` puts its rows beside the variants'. Each scenario kind
declares here:

- ``settings``: the class that validates ``scenario`` and fills in its defaults (the complete
  mapping is what the run id hashes, as a variant's options are);
- ``refuses``: RunConfig fields the kind cannot honour, refused before compute when they differ
  from their defaults (never silently ignored), with the reason;
- ``label``: the row a run is in the report, e.g. ``federated:ffa_lora (beta 0.5)``.

``kind_config`` validates and completes a config's ``scenario`` for its kind (``resolve``).
The recipes (what a kind computes) live with the scenarios (``federated.recipe``,
``pruning.recipe``, ``merging.recipe``, ``mixtures.recipe``); ``run.execute`` dispatches on ``kind``.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

KINDS = ("run", "federated", "prune", "recycle", "segment", "merge", "mixture", "transfer")

_ONE_PROCESS = "the scenario runs in one process; drop it"
_NO_TRAINING = "a merge trains nothing; drop it"
#: kind -> {RunConfig field: why the kind cannot honour a value other than the default}
REFUSES: dict[str, dict[str, str]] = {
    "run": {},
    "federated": {
        "head": "clients train a classification head; use --head cls", "regularizer": "not a federated setting",
        "num_processes": _ONE_PROCESS, "memory_budget": "clients run without a memory planner; drop it",
        "quantize": "the federated model keeps full-precision weights; drop it",
        "grad_checkpointing": "not wired into the client updates; drop it",
        "eval_every": "the server evaluates once per round; drop it", "val_size": "rounds are not selected on "
        "a held-out split yet (the last round is reported); drop it",
    },
    "prune": {
        "head": "pruning needs an encoder with a classification head; use --head cls",
        "regularizer": "not a pruning setting", "num_processes": _ONE_PROCESS,
        "quantize": "pruning needs full-precision weights; drop it",
        "memory_budget": "the pruning job has no memory planner; drop it",
        "save_adapter": "a pruned model's adapter is not saved yet; drop it",
    },
    "recycle": {
        "head": "the arms train a classification head; use --head cls", "regularizer": "not a recycling setting",
        "data": "the target is a GLUE task or a task file given as --task", "text_column": "give the task as --task",
        "label_column": "give the task as --task", "num_processes": _ONE_PROCESS,
        "quantize": "the pool merges into full-precision weights; drop it",
        "memory_budget": "the recycling job has no memory planner; drop it",
        "grad_checkpointing": "not wired into the recycling loop; drop it",
        "train_limit": "the N target examples are scenario n_examples", "epochs": "every arm runs scenario steps",
        "grad_accum": "one batch per step; set --batch-size", "group_by_length": "batches keep the seeded order",
        "eval_every": "the dev split is evaluated once, after the last step; drop it",
        "log_every": "the loss is recorded at the first and last step; drop it",
        "val_size": "no split is held out (the N examples train, dev reports); drop it",
        "targets": "the pool's adapters decide the layers", "r": "the pool decides the rank (fresh: the pool's)",
        "alpha": "the pool decides alpha (fresh: the pool's)", "options": "the recycled adapters' options are theirs",
        "save_adapter": "a recycled merge is not saved yet; drop it",
    },
    "segment": {
        "layers": "the U-Net is sized by scenario base and depth", "targets": "set scenario targets (all, encoder, "
        "decoder)", "head": "the U-Net has its own 1x1 conv head", "pooling": "not a U-Net setting",
        "model_dropout": "the U-Net has no dropout", "regularizer": "not a segmentation setting",
        "data": "give the image/mask folder as --data-dir", "text_column": "images have no text columns",
        "label_column": "masks are label/<name>.png", "max_length": "images have no tokens; set scenario patch",
        "train_limit": "set scenario train_images", "eval_limit": "set scenario test_images",
        "val_size": "no split is held out (the last epoch is reported on the test block); drop it",
        "eval_every": "the test block is evaluated once, after the last epoch; drop it",
        "eval_batch_size": "each test image is evaluated whole, one at a time; drop it",
        "grad_accum": "one batch per step; set --batch-size", "group_by_length": "patches all have one size",
        "quantize": "the U-Net keeps full-precision weights; drop it", "num_processes": _ONE_PROCESS,
        "memory_budget": "the segmentation loop has no memory planner; drop it",
        "grad_checkpointing": "not wired into the U-Net; drop it", "data_revision": "images are read from --data-dir",
        "trust_remote_code": "the U-Net is lorabench's own code", "save_adapter": "a U-Net arm is not saved yet; drop it",
    },
    "merge": {
        **dict.fromkeys(("lr", "weight_decay", "epochs", "batch_size", "grad_accum", "warmup_ratio", "max_grad_norm",
                         "train_limit", "group_by_length", "grad_checkpointing", "regularizer", "model_dropout",
                         "eval_every", "log_every", "memory_budget"), _NO_TRAINING),
        "val_size": "a merge selects nothing, so no split is held out; drop it",
        "head": "each task's own saved head sits on the merged update; use --head cls",
        "data": "the target is a pool task, named by --task", "text_column": "give the task as --task",
        "label_column": "give the task as --task", "num_processes": _ONE_PROCESS,
        "quantize": "the pool merges into full-precision weights; drop it",
        "targets": "the pool's adapters decide the layers", "r": "the method decides the merged rank (scenario k)",
        "alpha": "the merged update is stored at scale 1", "options": "the pool's adapters' options are theirs",
    },
    "mixture": {
        "head": "a mixture has one head per task; use --head cls", "pooling": "the mixture's heads pool by mean",
        "model_dropout": "the mixture keeps the model's own dropout", "regularizer": "not a mixture setting",
        "data": "the tasks are GLUE tasks or task files given as --task and scenario tasks",
        "text_column": "give the task as --task", "label_column": "give the task as --task",
        "data_revision": "the mixture reads GLUE folders", "trust_remote_code": "the mixture loads lorabench's models",
        "grad_accum": "one batch per step; set --batch-size", "group_by_length": "batches keep the seeded order",
        "val_size": "no split is held out (the last epoch is reported); drop it",
        "eval_every": "every task is evaluated after each epoch; drop it",
        "log_every": "the loss is recorded per epoch; drop it", "num_processes": _ONE_PROCESS,
        "quantize": "the mixture keeps full-precision weights; drop it",
        "memory_budget": "the mixture loop has no memory planner; drop it",
        "grad_checkpointing": "not wired into the mixture loop; drop it",
        "save_adapter": "a mixture's experts and routers are not saved yet; drop it",
    },
    "transfer": {
        "regularizer": "not a transfer setting", "num_processes": _ONE_PROCESS,
        "quantize": "the transfer arms keep full-precision weights; drop it",
        "memory_budget": "the transfer loop has no memory planner; drop it",
        "grad_checkpointing": "not wired into the transfer loop; drop it",
        "targets": "trans_lora adapts the variant's default layers, organ's LoRA every linear layer",
        "options": "the arms train plain LoRA", "pooling": "the models pool as they load",
        "model_dropout": "the models keep their own dropout",
        "data": "the task is a GLUE task given as --task", "text_column": "give the task as --task",
        "label_column": "give the task as --task", "data_revision": "the arms read GLUE folders",
        "trust_remote_code": "the arms load lorabench's models", "grad_accum": "one batch per step; set --batch-size",
        "group_by_length": "batches keep the seeded order", "eval_batch_size": "the arms evaluate in --batch-size",
        "val_size": "no split is held out (the arm's last epoch is reported); drop it",
        "eval_every": "the dev split is evaluated once, after the arm's last epoch; drop it",
        "log_every": "the loss is recorded at the first and last step; drop it",
    },
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def co_tasks(cfg: Any) -> list[str]:
    """The tasks a run trains on besides its own: a mixture's ``scenario.tasks`` (else none)."""
    return list(cfg.scenario.get("tasks") or []) if cfg.kind == "mixture" else []


def label(config: dict) -> str:
    """The report row of a resolved config: the variant for a run, else the scenario method."""
    kind, s = config.get("kind", "run"), config.get("scenario") or {}
    if kind == "federated":
        beta = s.get("beta")
        beta = "iid" if beta in ("inf", None) or (isinstance(beta, float) and math.isinf(beta)) else f"{beta:g}"
        return f"federated:{s.get('method')} (beta {beta})"
    if kind == "prune":
        return f"prune:{s.get('method')}" + (f"@{s.get('sparsity'):g}" if s.get("sparsity") else "")
    if kind == "recycle":
        return f"recycle:{s.get('arm')} n{s.get('n_examples')}"
    if kind == "mixture":
        routed = f" E{s.get('experts')} k{s.get('k')}" if s.get("method") != "lora" else ""
        others = [t for t in s.get("tasks") or [] if t != config.get("task")]
        return (f"mixture:{s.get('method')}{routed}" + (" frozen" if s.get("experts_from") else "")
                + (f" with {'+'.join(others)}" if others else ""))
    if kind == "merge":
        density = f"@{s['density']:g}" if s.get("density") is not None else ""
        k = f" k{s['k']}" if s.get("k") is not None else ""
        return f"merge:{s.get('method')}{density}{k}" + (" weighted" if s.get("weights") else "")
    if kind == "transfer":
        arm, method = s.get("arm"), s.get("method")
        if method == "organ":
            where = f"@{s['position']}" if arm == "organ" else f" {arm}"
            block = f" ({s['organ_layers']})" if s.get("organ_layers") else ""
            return f"transfer:organ{where}{block}"
        source = f" from {s['source']}" + (f"-{s['source_layers']}L" if s.get("source_layers") else "") \
            if s.get("source") else ""
        return f"transfer:{method}" + (f" {arm}" if arm != method else "") + source
    if kind == "segment":
        from .segmentation.settings import label as segment_label

        return segment_label(s)
    return str(config.get("variant"))
