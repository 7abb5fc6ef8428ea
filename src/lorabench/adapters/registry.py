"""The variant registry: ``register`` (where a variant is defined), ``get`` and ``names``.

Variant files import this module, never the package face (``adapters/__init__.py`` imports
every variant file, so that ``names()`` lists them all).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import VariantError

_REGISTRY: dict[str, Any] = {}


def register(name: str):
    """Class decorator: make a Variant subclass available as ``name``."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"variant {name!r} is registered twice ({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str):
    """The Variant class registered as ``name`` (case-insensitive, '-' == '_')."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise VariantError(
            f"unknown variant {name!r}; known variants: {', '.join(names())}. "
            "Run `lorabench variants` for their options."
        )
    return _REGISTRY[key]


def names() -> list[str]:
    return sorted(_REGISTRY)


def with_option(option: str) -> list[str]:
    """The variants whose ``Options`` have a field ``option`` (e.g. ``optimizer``)."""
    return [n for n in names() if option in {f.name for f in dataclasses.fields(get(n).Options)}]
