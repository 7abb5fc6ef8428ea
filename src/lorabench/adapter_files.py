"""Read the two kinds of file an adapter folder holds, JSON and safetensors, with one error each.

``read_json`` and ``read_safetensors`` raise ``AdapterFileError`` naming the file, what is wrong
with it and the caller's fix: ``missing`` (the file is not there) or ``fix`` (it is there but not
valid: truncated, corrupt, not UTF-8). lorabench's own adapters (``checkpoint``), PEFT folders
(``peft_import``) and the result JSON beside an adapter (``merging.merge``) are read through them,
so every adapter file is read the same safe way: JSON with ``json.loads``, tensors with
``safetensors.torch.load_file``, nothing unpickled. ``check_finite`` refuses a file holding a NaN or
infinite tensor (a diverged or damaged adapter scores nonsense, never an ordinary number), and
``recorded_task`` reads the GLUE task a run recorded for the adapter it saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import hashlib
from collections.abc import Iterable

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


def check_finite(tensors: dict[str, torch.Tensor], path: Path, fix: str) -> dict[str, torch.Tensor]:
    """``tensors`` as they are, or an AdapterFileError naming ``path``, the first tensor (by name)
    holding a NaN or an infinity, and ``fix``."""
    for key in sorted(tensors):
        t = tensors[key]
        if not (t.is_floating_point() or t.is_complex()):
            continue
        try:
            bad = ~torch.isfinite(t)
        except (RuntimeError, TypeError):  # a dtype isfinite lacks on this device (float8): as float32
            bad = ~torch.isfinite(t.float())
        if bad.any():
            kind = "NaN" if torch.isnan(t.float()).any() else "infinite"
            raise AdapterFileError(f"{path}: tensor {key!r} holds {int(bad.sum())} {kind} values of {t.numel()}; "
                                   f"the adapter diverged or the file is damaged, {fix}")
    return tensors


def recorded_task(directory: str | os.PathLike) -> str | None:
    """The task the run that saved ``directory`` recorded: ``task`` of the result JSON ``run-<id>.json``
    that ``lorabench train --save-adapter`` writes beside ``run-<id>-adapter/``; None where there is
    none to read (an adapter saved by ``save_adapter`` alone, a PEFT folder, an unreadable result)."""
    directory = Path(os.path.abspath(directory))
    paths = [directory / "lorabench_adapter.json"]  # a task the adapter's own config records comes first
    if directory.name.endswith("-adapter"):
        paths.append(directory.parent / f"{directory.name.removesuffix('-adapter')}.json")
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("task"), str):
            return data["task"]
    return None


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors in the given order (each name, shape and fp32 values): equal for two
    copies of one adapter wherever they are stored (merge and mixture refuse an adapter given twice)."""
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().float().contiguous().reshape(-1).cpu()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def repeated_folder(directories: Iterable[str | os.PathLike]) -> tuple[str, str] | None:
    """(the first spelling, the later one) of the first folder given twice (the same resolved path), or None."""
    seen: dict[Path, str] = {}
    for d in directories:
        key = Path(d).resolve()
        if key in seen:
            return seen[key], str(d)
        seen[key] = str(d)
    return None


def folder_bytes(directory: str | os.PathLike) -> int:
    """The size on disk of every file under ``directory`` (a saved adapter's ``adapter_bytes``)."""
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
