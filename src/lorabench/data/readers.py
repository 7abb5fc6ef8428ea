"""Reading a task file's splits into rows (column -> value): CSV, TSV, JSON Lines, Parquet, or a hub
dataset. No checks here beyond the format's own; ``taskfile.examples`` checks what the rows mean."""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class TaskData:
    """The data half of a task file: where its splits are and how rows become examples."""

    origin: str  # the task file (or "--data FILE"), for messages
    folder: str  # relative file paths resolve here
    files: tuple[tuple[str, str], ...]  # (split, path); empty for a hub task
    hub: tuple[tuple[str, Any], ...]  # (("dataset", ...), ("config", ...), ("revision", ...)); empty for files
    fmt: str | None
    text: tuple[tuple[str, ...], ...]  # each text: the columns joined into it
    join: str
    label: str
    labels: tuple  # file spelling, index order; () for regression
    score_range: tuple[float, float] | None
    carve: tuple[int, int] | None  # (size, seed) of a dev split held out of train
    max_empty_text: float

    def mapping(self) -> dict[str, Any]:
        """What the run id hashes besides the bytes read: every setting that changes the examples."""
        return {"text": [list(t) for t in self.text], "join": self.join, "label": self.label,
                "labels": list(self.labels), "score_range": self.score_range,
                "carve": list(self.carve) if self.carve else None, "format": self.fmt,
                "splits": sorted(s for s, _ in self.files)}

    def path(self, split: str) -> Path:
        return Path(self.folder) / dict(self.files)[split]

    def read_from(self, split: str) -> str:
        """The split of the source a split is read from (a carved dev split comes from train)."""
        return "train" if self.carve and split == "validation" else split


def task_error(origin: str, message: str) -> DataError:
    return DataError(f"task file {origin}: {message}")


# ---- reading rows ----------------------------------------------------------------------------
def _format(data: TaskData, path: Path) -> str:
    fmt = data.fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise task_error(data.origin, f"cannot tell the format of {path} from its suffix; add format: csv, tsv, jsonl "
                                 "or parquet")
    return fmt


@functools.lru_cache(maxsize=16)
def _rows_cached(data: TaskData, split: str, stamp: tuple) -> tuple[list[dict], list[int]]:
    return _read_rows(data, split)


def rows(data: TaskData, split: str) -> tuple[list[dict], list[int]]:
    """(rows as column -> value, the line or row number of each) of one source split; cached while
    the file is unchanged."""
    stamp = ()
    if data.files:
        try:
            st = data.path(split).stat()
        except OSError:
            raise task_error(data.origin, f"split {split!r}: file {data.path(split)} does not exist; fix the path under "
                                     "files (relative to the task file)") from None
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    return _rows_cached(data, split, stamp)


def _read_rows(data: TaskData, split: str) -> tuple[list[dict], list[int]]:
    if data.hub:
        return _hub_rows(data, split)
    path = data.path(split)
    fmt = _format(data, path)
    try:
        if fmt in ("csv", "tsv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
                out = [(dict(r), reader.line_num) for r in reader]
        elif fmt == "jsonl":
            out = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except ValueError as e:
                            raise DataError(f"{path}, line {i}: not a JSON object ({e}); fix or remove that line") from None
                        if not isinstance(obj, dict):
                            raise DataError(f"{path}, line {i}: a JSON Lines row must be an object, got {type(obj).__name__}")
                        out.append((obj, i))
        else:
            out = [(r, i + 1) for i, r in enumerate(_parquet(path))]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return [r for r, _ in out], [n for _, n in out]


def _parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow (or \"lorabench[data]\")") from None
    return pq.read_table(path).to_pylist()


def _hub_rows(data: TaskData, split: str) -> tuple[list[dict], list[int]]:
    hub = dict(data.hub)
    try:
        import datasets
    except ImportError:
        raise task_error(data.origin, "a hub task needs the datasets package; pip install datasets") from None
    try:
        ds = datasets.load_dataset(hub["dataset"], hub.get("config"), split=split, revision=hub.get("revision"))
    except Exception as e:  # offline, unknown dataset or split: one line naming what was asked
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise task_error(data.origin, f"could not load hub dataset {hub['dataset']} split {split} ({reason}); check the "
                                 "name, config and revision, or connect to the Hugging Face hub") from e
    out = ds.to_list()
    return out, list(range(1, len(out) + 1))
