"""Write merged factors as complete adapter folders: ``write_merged``, ``write_adapter``.

The merged update is shared and each task keeps its own head, so the merge writes one complete
adapter folder per source task, ``out/<task>/`` (``lorabench.load_adapter`` loads each onto the
base): the same merged factors in every folder, beside that task's own head. The merged adapter is
a plain ``lora`` of rank R with alpha = R (scale 1; the sources' scales are folded into B) and the
sources' targets and base fingerprint.

One ``--out`` holds one merge (``check_out``): it must be new or empty, or hold only this very
merge's files (its ``merge.json`` records the same ``key``: method, options, each source's
content and folder), so a second, different merge can never leave its task folders beside the
first one's ``merge.json``. Folder names come from the run JSONs' tasks, each one plain path
component (``outputs.safe_name``), so nothing is written outside ``out``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .._version import __version__
from ..adapters import registry as variants
from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes
from ..errors import ConfigError
from ..outputs import safe_name

#: The files of a merge beside its task folders.
RECORD, TABLE = "merge.json", "merge.md"

#: Fields of a source's adapter config that the merged adapter keeps (where it applies).
KEPT = ("format", "format_version", "targets", "fingerprint", "base_model", "model_class", "pooling", "architecture")


def write_adapter(directory: str | Path, like: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  rank: int, merged: dict | None = None) -> Path:
    """A plain rank-``rank`` LoRA (alpha = rank: scale 1) of these factors with the head and base of
    ``like`` (a ``merge.Source``)."""
    directory = Path(directory)
    opts = variants.get("lora").make_options(r=rank, alpha=float(rank))
    config = {key: like.config[key] for key in KEPT if key in like.config}
    config.update(lorabench_version=__version__, variant="lora", options=dataclasses.asdict(opts),
                  head=like.config.get("head", []), merged=merged)
    tensors = {k: v.contiguous() for k, v in like.head.items()}
    for name, (B, A) in factors.items():
        tensors[f"{name}.adapter.lora_A"] = A.contiguous()
        tensors[f"{name}.adapter.lora_B"] = B.contiguous()
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return directory


def task_folders(sources: list[Any]) -> list[str]:
    """One folder name per source: its task, with -2, -3 ... for a task merged twice."""
    names: list[str] = []
    for s in sources:
        safe_name(s.task, f"the task of {s.directory}")
        names.append(s.task if s.task not in names else f"{s.task}-{sum(n.split('-')[0] == s.task for n in names) + 1}")
    return names


def write_merged(merged: Any, out: str | Path) -> dict[str, Path]:
    """``out/<task>/`` for every source: the merged factors with that task's head. {folder name: path}."""
    info = {"method": merged.method, **merged.options(), "sources": [str(s.directory) for s in merged.sources]}
    return {name: write_adapter(Path(out) / name, s, merged.factors, merged.rank, info)
            for name, s in zip(task_folders(merged.sources), merged.sources)}


def recorded_key(out: Path) -> str | None:
    """The ``key`` of the merge whose merge.json is in ``out``, or None (none, or not a merge's)."""
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record.get("key") if isinstance(record, dict) and record.get("schema") == "lorabench-merge" else None


def check_out(out: str | Path, key: str, folders: list[str], flag: str = "--out") -> None:
    """Refuse an ``out`` holding anything but this merge's own files (see the module docstring)."""
    out = Path(out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    shown = ", ".join(entries[:4]) + (f" ... ({len(entries)} entries)" if len(entries) > 4 else "")
    if recorded_key(out) != key:
        what = "another merge's files" if (out / RECORD).is_file() else "files that are not this merge's"
        raise ConfigError(f"{flag} {out} already holds {what} ({shown}); one folder holds one merge: pass a "
                          f"new or empty {flag}, e.g. {flag} {out.parent / (out.name + '-2')}")
    extra = sorted(set(entries) - {RECORD, TABLE, *folders})
    if extra:
        raise ConfigError(f"{flag} {out} holds this merge's files and others ({', '.join(extra[:4])}); one folder "
                          f"holds one merge: remove them or pass a new or empty {flag}")
