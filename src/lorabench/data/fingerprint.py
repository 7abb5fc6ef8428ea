"""The data fingerprint: which GLUE data a run reads, known before it reads it, hashed into its run id.

    RunConfig(task="sst2", data_dir="glue_data").data_fingerprint()
    # {"source": "folder", "files": {"train": "sha256:9f3c...", "validation": "sha256:41aa..."}}
    RunConfig(task="mnli").data_fingerprint()  # no folder holds MNLI here: the hub
    # {"source": "hub", "dataset": "nyu-mll/glue", "config": "mnli", "revision": None}

A folder's fingerprint is the SHA-256 of the bytes of every file the run reads (the training
split and each dev split), so the same files under another path give the same fingerprint and an
edited, truncated or replaced file gives another. Together with ``train_limit``, ``eval_limit`` and
``seed`` (in the config) it fixes the examples a run trains and evaluates on. The hub's fingerprint
is the dataset, its config and the pinned revision; unpinned (``revision`` None) it names "the
hub's latest", which the run id cannot tell apart from a later version: pin ``--data-revision``
for an exact id. Either way the result also records what was read (``examples``: the counts and
the SHA-256 of the selected texts and labels), which is the same for a folder and the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError

if TYPE_CHECKING:  # this module stays a floor below config: it takes a Source and a TaskSpec
    from .glue import Example, Source, TaskSpec

_CHUNK = 1 << 20
_HASHES: dict[tuple, tuple[str, int]] = {}  # (path, size, mtime_ns, inode) -> (digest, when hashed)
_RACY_NS = 2_000_000_000  # a file modified this close to its hashing is hashed again (coarse mtimes)


def file_sha256(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file's bytes. Cached in this process (a sweep plans hundreds of runs on
    one file) while its size, mtime and inode are unchanged; as in git's index, an entry hashed
    within 2 s of the file's mtime is not trusted, since an edit in the same clock tick keeps both."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _HASHES.get(key)
    if cached is not None and st.st_mtime_ns + _RACY_NS < cached[1]:
        return cached[0]
    hashed_at = time.time_ns()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    _HASHES[key] = (f"sha256:{h.hexdigest()}", hashed_at)
    return _HASHES[key][0]


def read_splits(spec: TaskSpec) -> tuple[str, ...]:
    """The splits a run reads: training and every dev split (never a test split)."""
    return ("train", *spec.dev_splits)


def fingerprint_of(source: Source, spec: TaskSpec) -> dict[str, Any]:
    """The fingerprint of the data a run of ``spec`` reads from ``source`` (``glue.locate``); raises
    DataError when a split file is missing."""
    if spec.modality == "image":  # an image/mask folder (kind segment): every image and mask file
        from ..segmentation.data import folder_fingerprint

        if source.kind != "folder":
            raise DataError(f"task {spec.name} reads an image/mask folder; pass --data-dir FOLDER (with image/ "
                            "and label/)")
        return folder_fingerprint(source.path)
    if spec.data is not None:  # a task file: its files (or hub dataset) and its mapping, each split checked now
        for split in read_splits(spec):  # bad data is an input error, found before any model loads
            source.load(spec, split)
        if source.kind == "hub":
            return {"source": "hub", "dataset": source.dataset_of(spec), "config": spec.hub_config or None,
                    "revision": source.revision, "mapping": spec.data.mapping()}
        return {"source": "taskfile", "files": {split: file_sha256(source.file(spec, split, must_exist=True))
                                                for split in read_splits(spec)}, "mapping": spec.data.mapping()}
    if source.kind == "hub":
        return {"source": "hub", "dataset": source.dataset, "config": spec.hub_config, "revision": source.revision}
    return {"source": "folder", "files": {split: file_sha256(source.file(spec, split, must_exist=True))
                                          for split in read_splits(spec)}}


def short(data: dict | None) -> str:
    """A fingerprint for a table cell: ``folder:9f3c41aa`` (first hex digits of the file hashes),
    ``hub:nyu-mll/glue@REV`` or ``hub:nyu-mll/glue@latest``; "unrecorded" for old results."""
    if not isinstance(data, dict) or "source" not in data:
        return "unrecorded"
    if data["source"] == "hub":
        return f"hub:{data.get('dataset')}@{data.get('revision') or 'latest'}"
    if data["source"] == "taskfile":
        files = data.get("files") or {}
        text = "".join(f"{k}={files[k]};" for k in sorted(files)) + json.dumps(data.get("mapping"), sort_keys=True)
        return f"file:{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    files = data.get("files") or {}
    digest = hashlib.sha256("".join(f"{k}={files[k]};" for k in sorted(files)).encode()).hexdigest()
    return f"folder:{digest[:8]}"


def examples_sha256(examples: list[Example]) -> str:
    """``"sha256:<hex>"`` of the examples' texts and labels in order: the same from a folder or the hub."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.text_a, ex.text_b, ex.label], ensure_ascii=False).encode())
        h.update(b"\n")
    return f"sha256:{h.hexdigest()}"


def read_record(splits: dict[str, list[Example]]) -> dict[str, dict[str, Any]]:
    """``{split: {"count", "sha256"}}`` of the examples a run selected: the result's ``data.examples``."""
    return {split: {"count": len(exs), "sha256": examples_sha256(exs)} for split, exs in splits.items()}
