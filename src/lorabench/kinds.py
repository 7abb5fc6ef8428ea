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

The recipes (what a kind computes) live with the scenarios (``federated.recipe``,
``pruning.recipe``, ``merging.recipe``); ``run.execute`` dispatches on ``kind``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ConfigError

KINDS = ("run", "federated", "prune", "recycle", "segment", "merge")

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
        "save_adapter": "a federated run keeps no adapter file yet; drop it",
        "log_with": "a federated run writes no tracker files yet; drop it",
    },
    "prune": {
        "head": "pruning needs an encoder with a classification head; use --head cls",
        "regularizer": "not a pruning setting", "num_processes": _ONE_PROCESS,
        "quantize": "pruning needs full-precision weights; drop it",
        "memory_budget": "the pruning job has no memory planner; drop it",
        "save_adapter": "a pruned model's adapter is not saved yet; drop it",
        "log_with": "a pruning run writes no tracker files yet; drop it",
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
        "log_with": "a recycling run writes no tracker files yet; drop it",
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
        "log_with": "a segmentation run writes no tracker files yet; drop it",
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
        "log_with": "a merge run writes no tracker files; drop it",
    },
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def settings(cfg: Any) -> Any:
    """The validated settings object of ``cfg``'s kind (None for a plain run)."""
    if cfg.kind == "federated":
        from .federated.settings import FedSettings

        return _make(FedSettings, cfg.scenario, "federated")
    if cfg.kind == "prune":
        from .pruning.settings import PruneSettings

        given = dict(cfg.scenario)
        if "method" in given and "sparsity" not in given:
            given |= PruneSettings.defaults_for(str(given["method"]))
        return _make(PruneSettings, given, "prune")
    if cfg.kind == "recycle":
        from .merging.recycle_settings import RecycleSettings

        return _make(RecycleSettings, cfg.scenario, "recycle")
    if cfg.kind == "merge":
        from .merging.merge_settings import MergeSettings

        return _make(MergeSettings, cfg.scenario, "merge")
    if cfg.kind == "segment":
        from .segmentation.settings import SegmentSettings

        given = {k: getattr(cfg, k) for k in ("r", "alpha") if getattr(cfg, k) is not None}  # --r 4: scenario r
        return _make(SegmentSettings, given | dict(cfg.scenario), "segment")
    return None


def _make(cls: type, given: dict, kind: str) -> Any:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"scenario key {', '.join(map(repr, unknown))} is not a {kind} setting; valid: "
                          f"{', '.join(known)}")
    if kind == "federated" and "method" not in given:
        raise ConfigError("kind federated needs scenario.method (fedavg, ffa_lora, lora_fair, fedsmooth); "
                          "e.g. --scenario method=fedavg")
    try:
        return cls(**given)
    except TypeError as e:  # a value of the wrong type reached a comparison
        raise ConfigError(f"bad {kind} setting ({e}); check the types under scenario") from None


def resolve(cfg: Any, defaults: dict[str, Any]) -> None:
    """Validate ``cfg.scenario`` for ``cfg.kind`` and complete it in place; refuse the fields the
    kind cannot honour; set the fields the kind decides (federated: the variant is the method's and
    epochs are the local epochs). ``defaults``: RunConfig's field defaults."""
    check_kind(cfg.kind)
    _check_modality(cfg)
    if cfg.kind == "run":
        if cfg.scenario:
            raise ConfigError(f"scenario settings ({', '.join(cfg.scenario)}) need a scenario kind; set kind to "
                              f"one of {', '.join(KINDS[1:])}, or drop scenario")
        return
    for name, why in REFUSES[cfg.kind].items():
        if getattr(cfg, name) != defaults[name]:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"kind {cfg.kind} does not take {flag} {getattr(cfg, name)!r} ({name} in a file): {why}")
    made = settings(cfg)
    if cfg.kind == "federated":
        from .federated import registry as fed

        variant = fed.get(made.method).variant
        _decided(cfg, "variant", variant, defaults, f"the aggregation {made.method} trains {variant}")
        _decided(cfg, "epochs", float(made.local_epochs), defaults, "set scenario local_epochs instead")
        cfg.scenario = made.record() | {"options": dataclasses.asdict(made.method_options())}
    elif cfg.kind == "prune":
        _decided(cfg, "variant", "lora", defaults, "pruning trains plain LoRA factors")
        cfg.scenario = made.record()
    elif cfg.kind == "recycle":
        _decided(cfg, "variant", "lora", defaults, "the pool and a fresh LoRA are plain LoRA")
        cfg.scenario = made.record()
    elif cfg.kind == "merge":
        _decided(cfg, "variant", "lora", defaults, "a merge of LoRA-form adapters is a LoRA")
        cfg.scenario = made.record()
    elif cfg.kind == "segment":
        _resolve_segment(cfg, made, defaults)


def _check_modality(cfg: Any) -> None:
    """An image task (``TaskSpec.modality`` "image") is the segment kind's, and only its."""
    from .data.glue import get_task

    image = get_task(cfg.task).modality == "image"
    if image and cfg.kind != "segment":
        raise ConfigError(f"task {cfg.task} is image segmentation: use kind segment (lorabench segment ...)")
    if cfg.kind == "segment" and not image:
        raise ConfigError(f"kind segment segments images, task {cfg.task} is text; use --task membrane with "
                          "--data-dir FOLDER (image/ and label/ inside)")


def _resolve_segment(cfg: Any, made: Any, defaults: dict[str, Any]) -> None:
    """The U-Net is lorabench's own; the variant, rank and alpha are the arm's; whole epochs; the
    image/mask folder found when --data-dir is not given."""
    from .segmentation.data import default_folder

    _decided(cfg, "model", "unet", defaults, "the segment kind trains lorabench's own U-Net, sized by scenario "
             "base and depth")
    _decided(cfg, "variant", made.arm if made.is_adapter else "full", defaults, f"arm {made.arm} decides it")
    _decided(cfg, "r", made.r, defaults, "set scenario r")
    _decided(cfg, "alpha", made.alpha, defaults, "set scenario alpha")
    if cfg.epochs != int(cfg.epochs):
        raise ConfigError(f"kind segment trains whole epochs, got epochs {cfg.epochs}; e.g. --epochs 10")
    if cfg.data_dir is None:
        cfg.data_dir = str(default_folder(cfg.task))
    cfg.scenario = made.record()


def _decided(cfg: Any, name: str, value: Any, defaults: dict[str, Any], why: str) -> None:
    given = getattr(cfg, name)
    if given != defaults[name] and given != value:
        raise ConfigError(f"kind {cfg.kind} sets {name} itself ({why}); drop {name}={given!r}")
    setattr(cfg, name, value)


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
    if kind == "merge":
        density = f"@{s['density']:g}" if s.get("density") is not None else ""
        k = f" k{s['k']}" if s.get("k") is not None else ""
        return f"merge:{s.get('method')}{density}{k}" + (" weighted" if s.get("weights") else "")
    if kind == "segment":
        from .segmentation.settings import label as segment_label

        return segment_label(s)
    return str(config.get("variant"))
