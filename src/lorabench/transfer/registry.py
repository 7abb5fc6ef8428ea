"""The transfer-method registry: ``register`` (where a method is defined), ``get`` and ``names``.

A method moves what was learned on one base model to another (or to another place in the same
model): ``trans_lora`` distils a source LoRA into a target LoRA on filtered synthetic inputs,
``organ`` trains a block of layers and transplants it. Each method has its own ``Options``
dataclass (paper defaults, checked in ``__post_init__`` before anything loads) and a ``run``
that returns the ``lorabench-transfer`` record (``transfer.record``). Method files import this
module, never the package face (``transfer/__init__.py`` imports every method file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..registries import Registry

#: The registered transfer methods: ``register(name)`` in each method file, ``get``, ``names``.
METHODS = Registry("transfer method", lambda name, known: ConfigError(
    f"unknown transfer method {name!r}; choose one of: {', '.join(known)}"))
register, get, names = METHODS.register, METHODS.get, METHODS.names


class Method:
    """One transfer method: its options and its run."""

    name: ClassVar[str] = ""
    #: One line for ``lorabench transfer --help``: what it does and the paper.
    description: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    @classmethod
    def run(cls, opts: Any, out: Path, *, progress: bool = True) -> dict:
        """Run the method with ``opts`` (an ``Options``), writing files under ``out``; returns the record."""
        raise NotImplementedError


def check_fraction(value: float, flag: str) -> None:
    """``0 < value <= 1`` or a ConfigError naming ``flag``."""
    if not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ConfigError(f"{flag} must be a fraction in (0, 1], got {value!r}; e.g. {flag} 0.5")


def check_positive(value: Any, flag: str) -> None:
    """A positive integer (not a bool) or a ConfigError naming ``flag``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


def check_arms(arms: list[str], known: tuple[str, ...]) -> None:
    """Every name in ``arms`` is one of ``known``, each once, or a ConfigError naming them."""
    bad = [a for a in arms if a not in known]
    if bad or len(set(arms)) != len(arms):
        raise ConfigError(f"--arms {' '.join(arms)}: give each arm once, of {', '.join(known)}")


def check_training(opts: Any) -> None:
    """The optimisation settings every method's Options has: weight decay >= 0, warmup in [0, 1),
    a gradient-norm clip >= 0 (0 = off)."""
    if not (opts.weight_decay >= 0 and math.isfinite(opts.weight_decay)):
        raise ConfigError(f"--weight-decay must be a number >= 0, got {opts.weight_decay!r}")
    if not 0 <= opts.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {opts.warmup_ratio!r}")
    if not (opts.max_grad_norm >= 0 and math.isfinite(opts.max_grad_norm)):
        raise ConfigError(f"--max-grad-norm must be a number >= 0 (0 = off), got {opts.max_grad_norm!r}")


def opt(default: Any, help: str) -> Any:
    """A method option: its default and its ``--help`` line (``lorabench transfer <method> --help``)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})
