"""The variants: one class in one file of this package, registered where it is defined::

    @register("dora")
    class DoRA(Variant): ...

Importing this package imports every module in it (variant files are discovered, so adding a
method touches no other file), so ``names()`` lists them all. The registry itself lives in
``registry.py``; the optimisation rules in ``rules/``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import VariantError
from . import rules  # noqa: F401  (the rules register themselves: adamw, lora_plus, ...)
from .base import AdaptedLinear, Variant
from .conv import AdaptedConv2d, conv_variants
from .registry import get, names, register

#: Modules of this package that hold no variant.
NOT_VARIANTS = ("base", "registry", "rules", "conv", "dora_conv")


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in NOT_VARIANTS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["AdaptedConv2d", "AdaptedLinear", "Variant", "VariantError", "conv_variants", "get", "names", "register"]
