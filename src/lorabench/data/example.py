"""One labelled example, as every reader returns it (GLUE folders, the hub, task files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float  # class index, a regression score, or -1 when the split has no labels
