"""Read the two kinds of file an adapter folder holds, JSON and safetensors, with one error each.

``read_json`` and ``read_safetensors`` raise ``AdapterFileError`` naming the file, what is wrong
with it and the caller's fix: ``missing`` (the file is not there) or ``fix`` (it is there but not
valid: truncated, corrupt, not UTF-8). lorabench's own adapters (``checkpoint``), PEFT folders
(``peft_import``) and the result JSON beside an adapter (``merging.merge``) are read through them,
so every adapter file is read the same safe way: JSON with ``json.loads``, tensors with
``safetensors.torch.load_file``, nothing unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import AdapterFileError


def read_json(path: Path, *, missing: str, fix: str) -> Any:
    """The JSON value in ``path``. ``missing``: the whole message when the file does not exist;
    ``fix``: what to do when it exists but is not valid JSON (appended to the parser's reason)."""
    if not path.is_file():
        raise AdapterFileError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{path} is not valid JSON ({e}); {fix}") from None


def read_safetensors(path: Path, *, missing: str, fix: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor in the safetensors file ``path`` (on the CPU); ``missing`` and ``fix`` as for
    ``read_json`` (``fix`` None: the message ends with the reason)."""
    if not path.is_file():
        raise AdapterFileError(missing)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(f"{path} is truncated or corrupt ({e})" + (f"; {fix}" if fix else "")) from None
