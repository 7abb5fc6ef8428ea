"""One name -> class registry, filled where each class is defined by a ``register(name)`` class
decorator: the variants (``adapters/registry.py``), the merge methods (``merging/registry.py``)
and the regularizers (``regularizers/registry.py``) each hold one.

Names are looked up case-insensitively with '-' read as '_'; an unknown name raises the error
the registry was made with (``unknown(name, known names)``), in its own words.
"""

from __future__ import annotations

from typing import Any, Callable


class Registry:
    def __init__(self, kind: str, unknown: Callable[[str, list[str]], Exception]):
        self.kind = kind  # "variant", "merge method", ...: named when a name is registered twice
        self.unknown = unknown
        self.classes: dict[str, Any] = {}

    def register(self, name: str):
        """Class decorator: make the class available as ``name`` (and set its ``name``)."""

        def wrap(cls):
            old = self.classes.get(name)
            if old is not None and old is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({old.__qualname__}, {cls.__qualname__})")
            cls.name = name
            self.classes[name] = cls
            return cls

        return wrap

    def get(self, name: str):
        """The class registered as ``name`` (case-insensitive, '-' == '_')."""
        key = name.strip().lower().replace("-", "_")
        if key not in self.classes:
            raise self.unknown(name, self.names())
        return self.classes[key]

    def names(self) -> list[str]:
        return sorted(self.classes)
