"""Sizes, durations and numbers as people write them: ``8GiB``, ``1h02m``, ``5e-4``."""

from __future__ import annotations

import re
from typing import Any

#: A number as written in a config file or on a command line (``5e-4``, ``-1``, ``.5``).
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "kb": 10**3,
    "m": 2**20, "mib": 2**20, "mb": 10**6,
    "g": 2**30, "gib": 2**30, "gb": 10**9,
    "t": 2**40, "tib": 2**40, "tb": 10**12,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_bytes(size: str | int | float) -> int:
    """``"8GiB"`` -> 8589934592. KiB/MiB/GiB/TiB (and bare K/M/G/T) are powers of 1024,
    KB/MB/GB/TB powers of 1000; a bare number is bytes. Raises ValueError otherwise."""
    if isinstance(size, bool):
        raise ValueError(f"not a size: {size!r}")
    if isinstance(size, (int, float)):
        if size < 0:
            raise ValueError(f"negative size: {size!r}")
        return int(size)
    match = _SIZE.fullmatch(str(size))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {size!r} (write e.g. 8GiB, 512MiB or 1000000)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_seconds(s: float) -> str:
    """75 -> '1m15s'; 3725 -> '1h02m'."""
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def parse_number(value: Any) -> Any:
    """A number-looking string as a number (YAML 1.1 reads ``5e-4`` as a string); else ``value``."""
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value
