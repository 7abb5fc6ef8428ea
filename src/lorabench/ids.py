"""The run id: a stable hash of a resolved run config (the same config always gets the same id)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: dict) -> str:
    """Stable id of a resolved run config: the same config always gets the same id."""
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:12]
