"""The regularizer registry: ``register`` (where a regularizer is defined), ``get``, ``names`` and
``parse``, the one spelling of ``RunConfig.regularizer``:

    "mask_target"               the paper's defaults
    "mask_target:weight=0.5"    NAME:KEY=VALUE[,KEY=VALUE...] sets the regularizer's own options

Regularizer files import this module, never the package face (``regularizers/__init__.py``
imports every regularizer file, so that ``names()`` lists them all). A regularizer is a loss
term on the model's outputs against forgetting, added by the head that computes the loss; it
says which heads it works with (``heads``) and keeps its settings in its own ``Options``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import ConfigError
from ..registries import Registry

#: The registered regularizers: ``register(name)`` in each regularizer file, ``get``, ``names``.
REGULARIZERS = Registry("regularizer", lambda name, known: ConfigError(
    f"unknown regularizer {name!r}; known regularizers: {', '.join(known)} (or leave regularizer unset)"))
register, get, names = REGULARIZERS.register, REGULARIZERS.get, REGULARIZERS.names


def parse(spec: str) -> tuple[Any, Any]:
    """(class, its validated Options) of ``"NAME"`` or ``"NAME:KEY=VALUE,..."``."""
    name, _, rest = spec.partition(":")
    cls = get(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    given: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise ConfigError(f"bad regularizer option {item!r} in {spec!r}; write {cls.name}:KEY=VALUE with KEY "
                              f"one of {', '.join(fields)}")
        try:
            given[key] = float(value)
        except ValueError:
            raise ConfigError(f"regularizer option {key} must be a number, got {value!r} in {spec!r}") from None
        if not math.isfinite(given[key]):  # float() reads inf and nan; no regularizer setting takes them
            raise ConfigError(f"regularizer option {key} must be a finite number, got {value.strip()!r} in {spec!r}; "
                              f"e.g. {cls.name}:{key}=1")
    return cls, cls.Options(**given)


def canonical(spec: str | None, head: str) -> str | None:
    """``spec`` spelled with every option given (one run id however it was written), after checking
    that the regularizer works with ``head``; None stays None."""
    if spec is None:
        return None
    cls, opts = parse(spec)
    if head not in cls.heads:
        raise ConfigError(f"regularizer {cls.name!r} needs head {' or '.join(cls.heads)} (it regularizes a "
                          f"decoder's next-token distribution), got head {head!r}; add --head "
                          f"{cls.heads[0]} with a decoder model, or drop --regularizer")
    return f"{cls.name}:" + ",".join(f"{k}={v:g}" for k, v in dataclasses.asdict(opts).items())
