"""``TransferSettings``: the transfer half of a ``kind: transfer`` run (the run half is a RunConfig).

One run is one arm of one transfer method (``transfer.trans_lora``, ``transfer.organ_method``) at
one seed; a sweep grids over ``arm`` (and ``position``) as over a variant's options, so every arm
gets seeds, intervals and a corrected test against the others in ``lorabench report``.

    trans_lora arms: trans_lora (the method), random_keep, unfiltered, source, direct, no_adapter
    organ arms:      organ (at scenario position), lora (all-linear LoRA of the organ's size), no_adapter

The run's own settings are the target side: ``--model``/``--layers`` are the target base (organ: the
recipient), ``--lr``, ``--epochs``, ``--r``/``--alpha`` (trans_lora), the limits, batch size and
precision train the arm. The scenario holds what only the method has. Each run records only the
settings its arm uses (``record``): arm ``direct`` trains no generator, so a sweep over
``temperature`` does not rerun it under new ids. Every field is read as its type or refused with a
ConfigError naming the scenario key, before any compute; the method's own ``Options`` check the
rest when the run starts, before any model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config_types import coerce
from ..errors import ConfigError

METHODS = ("trans_lora", "organ")
#: method -> its arms, the method's own first (the default).
ARMS = {"trans_lora": ("trans_lora", "random_keep", "unfiltered", "source", "direct", "no_adapter"),
        "organ": ("organ", "lora", "no_adapter")}
#: The trans_lora arms distilled from the source on synthetic inputs (they need the generator and the filter).
DISTILLED = ("trans_lora", "random_keep", "unfiltered")
#: The arms whose trained weights ``--save-adapter`` keeps (the method's product).
SAVES = ("trans_lora", "organ")

#: scenario key -> (its type, its default: the method's Options default). trans_lora's, then organ's.
TRANS_LORA = {"source": (str, "minilm"), "source_layers": (int | None, None), "generator": (str, "smollm2-135m"),
              "generator_layers": (int | None, None), "seeds": (int, 5), "synthetic": (int, 512),
              "keep": (float, 0.5), "keep_per": (str, "class"), "top_p": (float, 0.95), "max_new_tokens": (int, 24),
              "folds": (int, 2), "temperature": (float, 1.0), "distill_epochs": (int, 10),
              "head_lr": (float, 1e-2), "head_epochs": (int, 50)}
ORGAN = {"organ_layers": (str | None, None), "position": (int, 1)}
#: arm -> the scenario keys it uses (the others are not part of its run).
USES = {"trans_lora": tuple(TRANS_LORA), "random_keep": tuple(TRANS_LORA), "unfiltered": tuple(TRANS_LORA),
        "source": ("source", "source_layers"), "direct": (), "no_adapter@trans_lora": ("seeds", "head_lr", "head_epochs"),
        "organ": ("organ_layers", "position"), "lora": ("organ_layers",), "no_adapter@organ": ()}


@dataclass
class TransferSettings:
    method: str = ""
    arm: str | None = None  # [the method's own arm]
    # trans_lora
    source: str | None = None
    source_layers: int | None = None
    generator: str | None = None
    generator_layers: int | None = None
    seeds: int | None = None
    synthetic: int | None = None
    keep: float | None = None
    keep_per: str | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    folds: int | None = None
    temperature: float | None = None
    distill_epochs: int | None = None
    head_lr: float | None = None
    head_epochs: int | None = None
    # organ
    organ_layers: str | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        self.method = coerce("scenario method", self.method, str)
        if self.method not in METHODS:
            raise ConfigError(f"kind transfer needs scenario method, one of {', '.join(METHODS)}; e.g. "
                              f"--scenario method=trans_lora; got {self.method!r}")
        arms = ARMS[self.method]
        self.arm = arms[0] if self.arm is None else coerce("scenario arm", self.arm, str)
        if self.arm not in arms:
            raise ConfigError(f"scenario arm {self.arm!r} is not an arm of {self.method}; choose one of "
                              f"{', '.join(arms)}")
        own, other = (TRANS_LORA, ORGAN) if self.method == "trans_lora" else (ORGAN, TRANS_LORA)
        given = [k for k in other if getattr(self, k) is not None]
        if given:
            raise ConfigError(f"scenario {', '.join(given)}: not "
                              f"a setting of {self.method}; drop "
                              f"{'it' if len(given) == 1 else 'them'} (its settings: {', '.join(own)})")
        uses = self.uses()
        unused = [k for k in own if k not in uses and getattr(self, k) is not None]
        if unused:
            raise ConfigError(f"scenario {', '.join(unused)}: arm {self.arm} of {self.method} does not use "
                              f"{'it' if len(unused) == 1 else 'them'}; drop {'it' if len(unused) == 1 else 'them'} "
                              f"(it uses: {', '.join(uses) or 'none of the scenario settings'})")
        for key in uses:  # the arm's settings, typed, with the method's defaults filled in
            hint, default = own[key]
            value = default if getattr(self, key) is None else getattr(self, key)
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            setattr(self, key, coerce(f"scenario {key}", value, hint))
        self._check_values()

    def uses(self) -> tuple[str, ...]:
        """The scenario keys this run's arm uses."""
        return USES.get(f"{self.arm}@{self.method}", USES.get(self.arm, ()))

    def _check_values(self) -> None:
        for key in ("source_layers", "generator_layers", "seeds", "synthetic", "max_new_tokens", "folds",
                    "distill_epochs", "head_epochs"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"scenario {key} must be a positive integer, got {value!r}")
        for key in ("keep", "top_p"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise ConfigError(f"scenario {key} must be a fraction in (0, 1], got {value!r}")
        for key in ("temperature", "head_lr"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"scenario {key} must be a number > 0, got {value!r}")
        if self.keep_per is not None and self.keep_per not in ("class", "all"):
            raise ConfigError(f"scenario keep_per must be 'class' or 'all', got {self.keep_per!r}")
        if self.position is not None and self.position < 0:
            raise ConfigError(f"scenario position must be a layer index >= 0, got {self.position}")

    def record(self) -> dict[str, Any]:
        """The complete mapping the run id hashes: method, arm and the arm's settings."""
        return {"method": self.method, "arm": self.arm, **{k: getattr(self, k) for k in self.uses()}}

    def options(self, cfg: Any) -> dict[str, Any]:
        """The method's ``Options`` keywords for ``cfg`` (kind transfer): the run's settings on the
        target side, the scenario's for the rest, and only this run's arm (and position)."""
        run = {"task": cfg.task, "lr": cfg.lr, "epochs": int(cfg.epochs), "batch_size": cfg.batch_size,
               "max_length": cfg.max_length, "train_limit": cfg.train_limit, "eval_limit": cfg.eval_limit,
               "data_dir": cfg.data_dir, "seed": cfg.seed, "precision": cfg.precision,
               "weight_decay": cfg.weight_decay, "warmup_ratio": cfg.warmup_ratio, "max_grad_norm": cfg.max_grad_norm,
               "arms": [self.arm]}
        mine = {k: getattr(self, k) for k in self.uses()}
        if self.method == "trans_lora":
            r = cfg.r if cfg.r is not None else 8
            alpha = cfg.alpha if cfg.alpha is not None else 2.0 * r
            return {**run, **mine, "target": cfg.model, "target_layers": cfg.layers, "r": r, "alpha": alpha}
        position = mine.pop("position", None)
        return {**run, **mine, "model": cfg.model, "layers": cfg.layers, "head": cfg.head, "lora_lr": cfg.lr,
                "positions": [] if position is None else [position]}
