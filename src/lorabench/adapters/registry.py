"""The variant registry: ``register`` (where a variant is defined), ``get`` and ``names``.

Variant files import this module, never the package face (``adapters/__init__.py`` imports
every variant file, so that ``names()`` lists them all).
"""

from __future__ import annotations

import dataclasses
from ..errors import VariantError
from ..registries import Registry

#: The registered variants: ``register(name)`` in each variant file, ``get``, ``names``.
VARIANTS = Registry("variant", lambda name, known: VariantError(
    f"unknown variant {name!r}; known variants: {', '.join(known)}. Run `lorabench variants` for their options."))
register, get, names = VARIANTS.register, VARIANTS.get, VARIANTS.names


def with_option(option: str) -> list[str]:
    """The variants whose ``Options`` have a field ``option`` (e.g. ``optimizer``)."""
    return [n for n in names() if option in {f.name for f in dataclasses.fields(get(n).Options)}]
