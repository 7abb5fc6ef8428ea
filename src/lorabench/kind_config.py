"""Validate and complete a config's ``scenario`` for its ``kind`` (``resolve``), the half of
``lorabench.kinds`` that reads each scenario's settings class: ``RunConfig`` calls ``resolve``
while it is made, so a bad scenario setting or a refused field stops before any compute.
Kept apart from ``kinds`` (the names, refusals and labels), which the result schema reads
without loading any scenario package."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import kinds
from .data.fingerprint import fingerprint_of
from .data.glue import get_task, locate
from .errors import ConfigError
from .kinds import KINDS, REFUSES, check_kind


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
    if cfg.kind == "mixture":
        from .mixtures.settings import MixtureSettings

        return _make(MixtureSettings, cfg.scenario, "mixture")
    if cfg.kind == "transfer":
        from .transfer.settings import TransferSettings

        return _make(TransferSettings, cfg.scenario, "transfer")
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
    elif cfg.kind == "mixture":
        _decided(cfg, "variant", "lora", defaults, "the shared adapter and the experts are LoRA")
        if cfg.epochs != int(cfg.epochs):
            raise ConfigError(f"kind mixture trains whole epochs, got epochs {cfg.epochs}; e.g. --epochs 1")
        made.tasks = [get_task(t).name for t in made.tasks]  # canonical names; an unknown task: the known ones
        if len(set(made.tasks)) != len(made.tasks):
            raise ConfigError(f"scenario tasks names a task twice ({made.tasks}); name each task once")
        if made.tasks and get_task(cfg.task).name not in made.tasks:
            raise ConfigError(f"task {cfg.task} is not among scenario tasks ({', '.join(made.tasks)}); a mixture run "
                              f"reports one of the tasks it trains: add it, or run one of them (in a sweep's variant block a "
                              "list is a grid: write tasks: [[sst2, mrpc]] or tasks: sst2,mrpc)")
        cfg.scenario = made.record()
    elif cfg.kind == "transfer":
        _resolve_transfer(cfg, made, defaults)
    elif cfg.kind == "segment":
        _resolve_segment(cfg, made, defaults)


def _check_modality(cfg: Any) -> None:
    """An image task (``TaskSpec.modality`` "image") is the segment kind's, and only its."""
    image = get_task(cfg.task).modality == "image"
    if image and cfg.kind != "segment":
        raise ConfigError(f"task {cfg.task} is image segmentation: use kind segment (lorabench segment ...)")
    if cfg.kind == "segment" and not image:
        raise ConfigError(f"kind segment segments images, task {cfg.task} is text; use --task membrane with "
                          "--data-dir FOLDER (image/ and label/ inside)")


def _resolve_transfer(cfg: Any, made: Any, defaults: dict[str, Any]) -> None:
    """The arms that adapt train LoRA; whole epochs; trans_lora distils into a classification
    head, organ prompts (head lm) or trains a head (cls); the organ's LoRA takes the organ's size."""
    from .transfer.settings import SAVES

    _decided(cfg, "variant", "lora", defaults, "the arms that adapt train plain LoRA")
    if cfg.epochs != int(cfg.epochs) or cfg.epochs < 1:
        raise ConfigError(f"kind transfer trains whole epochs, got epochs {cfg.epochs}; e.g. --epochs 2")
    if made.method == "trans_lora" and cfg.head != "cls":
        raise ConfigError(f"kind transfer method trans_lora distils class distributions: use --head cls, not {cfg.head}")
    if made.method == "organ":
        for name in ("r", "alpha"):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"kind transfer method organ sets {name} itself (its LoRA arm takes the rank whose "
                                  f"size is the organ's); drop --{name}")
    if cfg.save_adapter and made.arm not in SAVES:
        raise ConfigError(f"kind transfer arm {made.arm} saves nothing (--save-adapter keeps the method's product: "
                          f"arm {' or '.join(SAVES)}); drop --save-adapter")
    cfg.scenario = made.record()


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


def trained_with(cfg: Any) -> dict:
    """The data fingerprint's part for the tasks a run trains on besides its own (a mixture's other
    ``scenario.tasks``): {"with": {task: fingerprint}}, or {} for every other run."""
    others = [t for t in kinds.co_tasks(cfg) if t != get_task(cfg.task).name]
    if not others:
        return {}
    return {"with": {t: fingerprint_of(locate(cfg.data_dir, t, cfg.data_revision), get_task(t)) for t in others}}
