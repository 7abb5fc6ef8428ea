"""The run id: a stable hash of what a run computes (the same config on the same data always gets the same id)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: dict, data: dict | None = None) -> str:
    """The first 12 hex digits of the sha256 of ``{"config": config, "data": data}`` in canonical JSON:
    the resolved config and the data fingerprint (``lorabench.data.fingerprint``).

    ``data=None`` gives the id of schema-1 results, written before the data was part of the id (the
    hash of ``config`` alone): reading an old result recomputes its id this way."""
    payload = config if data is None else {"config": config, "data": data}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()[:12]
