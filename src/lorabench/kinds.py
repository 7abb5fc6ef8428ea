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
``pruning.recipe``); ``run.execute`` dispatches on ``kind``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import ConfigError

KINDS = ("run", "federated", "prune")

_ONE_PROCESS = "the scenario runs in one process; drop it"
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
    return str(config.get("variant"))
