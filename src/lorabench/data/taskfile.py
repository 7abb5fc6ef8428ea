"""Any labelled text data as a task: a task file (YAML) says where the splits are and what the
columns mean, and becomes a ``TaskSpec`` like a GLUE task::

    name: agnews                      # the task's name in results and tables
    files: {train: agnews/train.csv, test: agnews/test.csv}   # relative to this file; or hub: below
    text: [[Title, Description]]      # 1 or 2 texts; an inner list joins columns into one text
    label: Class Index
    labels: [1, 2, 3, 4]              # the file's own spelling, mapped to 0, 1, 2, 3 in this order
    label_names: [World, Sports, Business, Sci/Tech]    # optional, for tables
    dev: {carve: 600, seed: 0}        # no dev file: hold out 600 seeded training rows (said in the result)
    metrics: [accuracy, f1_macro]     # optional; default accuracy + macro-F1 (pearson + spearman for scores)

Regression: ``score_range: [0, 5]`` instead of ``labels``. A hub dataset: ``hub: {dataset: SetFit/sst5,
config: null, revision: <commit>}`` instead of ``files`` (split names as the dataset has them).
Formats by suffix (or ``format:``): ``.csv``, ``.tsv``, ``.jsonl`` / ``.json`` (JSON Lines), ``.parquet``
(needs pyarrow). Dev splits: ``dev: validation`` (a split in ``files``; the default when there is one)
or ``dev: {carve: N, seed: S}``.

Every split a run reads is checked before any model loads (``check``: called by the data
fingerprint), with the file, row and fix in the message: a missing column (the columns found), a
label outside the set (the labels found, with counts), an empty split, a class with no training
example, a score that is not a number, mixed label types, a text empty in more rows than
``max_empty_text`` allows (default 0.01).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..errors import DataError
from ..choices import METRIC_NAMES
from .example import Example
from .readers import FORMATS, TaskData, task_error, rows

KEYS = ("name", "display", "files", "hub", "format", "text", "join", "label", "labels", "label_names",
        "score_range", "metrics", "primary_metric", "dev", "max_empty_text")
CLASSIFICATION_METRICS, REGRESSION_METRICS = ("accuracy", "f1_macro"), ("pearson", "spearman")


def _texts(value: Any, origin: str) -> tuple[tuple[str, ...], ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= 2:
        raise task_error(origin, f"text must be a column name or a list of 1 or 2 texts, got {value!r}; e.g. "
                            "text: sentence, text: [sentence1, sentence2] or text: [[title, description]]")
    out = []
    for item in items:
        cols = [item] if isinstance(item, str) else item
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c for c in cols):
            raise task_error(origin, f"each text is a column name or a list of column names to join, got {item!r}")
        out.append(tuple(cols))
    return tuple(out)


def parse(raw: Any, origin: str, folder: Path) -> tuple[dict[str, Any], TaskData]:
    """(the TaskSpec fields, the TaskData) of a task file's mapping; DataError naming the fix."""
    if not isinstance(raw, dict):
        raise task_error(origin, "must be a mapping of settings (name, files or hub, text, label, labels ...)")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise task_error(origin, f"unknown key {', '.join(map(repr, unknown))}; valid keys: {', '.join(KEYS)}")
    for key in ("name", "text", "label"):
        if key not in raw:
            raise task_error(origin, f"needs {key!r}")
    name = str(raw["name"])
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise task_error(origin, f"name {name!r} must be letters, digits, '-', '_' or '.', e.g. name: agnews")
    files, hub = raw.get("files"), raw.get("hub")
    if (files is None) == (hub is None):
        raise task_error(origin, "give exactly one of 'files' (split: path) or 'hub' ({dataset, config, revision})")
    if files is not None and (not isinstance(files, dict) or "train" not in files):
        raise task_error(origin, f"files must map split names to paths and include train, got {files!r}")
    if hub is not None and (not isinstance(hub, dict) or not hub.get("dataset")):
        raise task_error(origin, f"hub must give at least dataset (and config, revision), got {hub!r}")
    labels, score_range = raw.get("labels"), raw.get("score_range")
    if (labels is None) == (score_range is None):
        raise task_error(origin, "give exactly one of 'labels' (the class values in the file's spelling, in index "
                            "order) or 'score_range' ([low, high] for a regression task)")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) < 2 or len({str(v) for v in labels}) != len(labels):
            raise task_error(origin, f"labels must list at least 2 distinct class values, got {labels!r}")
        if len({type(v) for v in labels}) > 1:
            raise task_error(origin, f"labels mix types ({', '.join(sorted({type(v).__name__ for v in labels}))}); "
                                "write them all as the file spells them")
    if score_range is not None:
        ok = isinstance(score_range, list) and len(score_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in score_range)
        if not ok or score_range[0] >= score_range[1]:
            raise task_error(origin, f"score_range must be [low, high] with low < high, got {score_range!r}")
    regression = score_range is not None
    split_names = list(files) if files is not None else list((hub or {}).get("splits") or ["train", "validation"])
    dev, carve = raw.get("dev"), None
    if isinstance(dev, dict):
        if set(dev) - {"carve", "seed"} or not isinstance(dev.get("carve"), int) or dev["carve"] < 1:
            raise task_error(origin, f"dev must be a split name or {{carve: N, seed: S}} with N >= 1, got {dev!r}")
        carve, dev_splits = (dev["carve"], int(dev.get("seed", 0))), ("validation",)
        if "validation" in split_names:
            raise task_error(origin, "dev carves a 'validation' split from train, but files already has one; drop one")
    else:
        dev = dev if dev is not None else ("validation" if "validation" in split_names else None)
        if dev is None:
            raise task_error(origin, f"no dev split: files has {', '.join(split_names)}; name one (dev: <split>) or "
                                "hold one out of train (dev: {carve: 500, seed: 0})")
        if dev not in split_names or dev == "train":
            raise task_error(origin, f"dev {dev!r} is not a split of files ({', '.join(split_names)}) other than train")
        dev_splits = (str(dev),)
    metrics = tuple(raw.get("metrics") or (REGRESSION_METRICS if regression else CLASSIFICATION_METRICS))
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad:
        raise task_error(origin, f"unknown metric {', '.join(bad)}; choose from {', '.join(METRIC_NAMES)}")
    primary = str(raw.get("primary_metric") or metrics[0])
    if primary not in metrics:
        raise task_error(origin, f"primary_metric {primary!r} is not one of its metrics ({', '.join(metrics)})")
    fmt = raw.get("format")
    if fmt is not None and fmt not in set(FORMATS.values()):
        raise task_error(origin, f"format {fmt!r} is not one of {', '.join(sorted(set(FORMATS.values())))}")
    max_empty = raw.get("max_empty_text", 0.01)
    if not isinstance(max_empty, (int, float)) or not 0 <= max_empty < 1:
        raise task_error(origin, f"max_empty_text must be a fraction in [0, 1), got {max_empty!r}")
    data = TaskData(
        origin=origin, folder=str(folder), files=tuple((str(k), str(v)) for k, v in (files or {}).items()),
        hub=tuple(sorted((str(k), v) for k, v in (hub or {}).items() if k != "splits")), fmt=fmt,
        text=_texts(raw["text"], origin), join=str(raw.get("join", " ")), label=str(raw["label"]),
        labels=tuple(labels or ()), score_range=tuple(map(float, score_range)) if regression else None,
        carve=carve, max_empty_text=float(max_empty))
    names = raw.get("label_names") or [str(v) for v in labels or ()]
    if labels is not None and len(names) != len(labels):
        raise task_error(origin, f"label_names has {len(names)} names for {len(labels)} labels")
    splits = {s: s for s in split_names} | ({"validation": "validation"} if carve else {})
    fields = {"name": name, "display": str(raw.get("display") or name), "text_fields": tuple("+".join(t) for t in data.text),
              "label_names": tuple(map(str, names)) if not regression else (), "is_regression": regression,
              "num_labels": 1 if regression else len(labels), "metrics": metrics, "primary_metric": primary,
              "dev_splits": dev_splits, "glue_dir": name, "files": splits, "hub_config": str(dict(data.hub).get("config") or ""),
              "score_range": data.score_range}
    return fields, data


# ---- rows -> examples, with every check a user's data needs -------------------------------------
def examples(data: TaskData, spec: Any, split: str) -> list:
    """The examples of ``split`` (a carved dev split and the train split it leaves), checked."""
    source = data.read_from(split)
    table, lines = rows(data, source)
    where = str(data.path(source)) if data.files else f"hub {dict(data.hub)['dataset']} {source}"
    if not table:
        raise DataError(f"{where}: split {source!r} has no rows; point files at a non-empty file")
    columns = {c for c in table[0]}
    wanted = {c for text in data.text for c in text} | {data.label}
    missing = sorted(wanted - columns)
    if missing:
        raise DataError(f"{where}: no column {', '.join(map(repr, missing))} (found: {', '.join(map(repr, table[0]))}); "
                        f"fix text / label in {data.origin}")
    out, empty = [], 0
    for row, line in zip(table, lines):
        texts = [data.join.join(str(row.get(c) if row.get(c) is not None else "").strip() for c in cols).strip()
                 for cols in data.text]
        empty += any(not t for t in texts)
        out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, _label(data, row.get(data.label), where, line)))
    if empty > data.max_empty_text * len(out):
        raise DataError(f"{where}: {empty} of {len(out)} rows have an empty text ({', '.join('+'.join(t) for t in data.text)}), "
                        f"more than max_empty_text {data.max_empty_text:g} allows; clean the file or raise "
                        f"max_empty_text in {data.origin}")
    _check_label_types(data, table, where)
    if data.carve:
        out = _carve(out, data, split, where)
    if split == "train" and data.labels:
        counts = Counter(ex.label for ex in out)
        absent = [str(data.labels[i]) for i in range(len(data.labels)) if counts[i] == 0]
        if absent:
            raise DataError(f"{where}: class {', '.join(absent)} has no training example (counts: "
                            f"{', '.join(f'{data.labels[i]}: {counts[i]}' for i in range(len(data.labels)))}); drop it "
                            f"from labels in {data.origin} or add examples")
    return out


def _label(data: TaskData, value: Any, where: str, line: int) -> int | float:
    if data.score_range is not None:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}, row {line}: score {value!r} is not a number; fix or remove that row") from None
        lo, hi = data.score_range
        if not lo <= score <= hi:  # also rejects nan
            raise DataError(f"{where}, row {line}: score {score:g} is outside score_range [{lo:g}, {hi:g}]")
        return score
    spelled = [str(v) for v in data.labels]
    text = str(value).strip() if value is not None else ""
    if text not in spelled:
        raise LabelOutside(where, line, value)
    return spelled.index(text)


class LabelOutside(DataError):
    def __init__(self, where: str, line: int, value: Any):
        super().__init__(f"{where}, row {line}: label {value!r} is not in labels")
        self.where, self.line, self.value = where, line, value


def _check_label_types(data: TaskData, table: list[dict], where: str) -> None:
    kinds = Counter(type(r.get(data.label)).__name__ for r in table)
    if data.labels and len(kinds) > 1:
        raise DataError(f"{where}: the label column {data.label!r} mixes types ({', '.join(f'{k}: {n}' for k, n in kinds.items())} "
                        "rows); write every label the same way")


def _carve(out: list, data: TaskData, split: str, where: str) -> list:
    size, seed = data.carve
    if size >= len(out):
        raise DataError(f"{where}: dev carve {size} leaves no training rows (train has {len(out)}); lower dev.carve "
                        f"in {data.origin}")
    held = set(np.random.RandomState(seed).permutation(len(out))[:size].tolist())
    keep = [ex for i, ex in enumerate(out) if (i in held) == (split == "validation")]
    return keep


def label_report(data: TaskData, split: str) -> str:
    """The labels found in a split with their counts (for the message about a label outside the set)."""
    table, _ = rows(data, data.read_from(split))
    counts = Counter(str(r.get(data.label)) for r in table)
    return ", ".join(f"{k!r}: {n}" for k, n in counts.most_common())


_CHECKED: dict[tuple, list] = {}


def checked_examples(data: TaskData, spec: Any, split: str) -> list:
    """``load_examples``, once per file version (a sweep plans hundreds of runs on one file)."""
    source = data.read_from(split)
    stamp = data.path(source).stat().st_mtime_ns if data.files and data.path(source).exists() else None
    key = (data, split, stamp)
    if key not in _CHECKED:
        _CHECKED[key] = load_examples(data, spec, split)
    return _CHECKED[key]


def load_examples(data: TaskData, spec: Any, split: str) -> list:
    try:
        return examples(data, spec, split)
    except LabelOutside as e:
        raise DataError(f"{e.where}, row {e.line}: label {e.value!r} is not in labels "
                        f"[{', '.join(map(str, data.labels))}]; labels found: {label_report(data, split)}; fix labels in "
                        f"{data.origin} or the row") from None


def task_from_file(path: str, spec_cls: type) -> Any:
    """The ``spec_cls`` (TaskSpec) of a task file, parsed once per file version."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise DataError(f"task file {path} does not exist; pass a GLUE task name or an existing task file") from None
    return _task_file_spec(str(p.resolve()), st.st_size, st.st_mtime_ns, spec_cls)


@functools.lru_cache(maxsize=64)
def _task_file_spec(path: str, size: int, mtime_ns: int, spec_cls: type) -> Any:
    fields, data = read_task_file(path)
    return spec_cls(**fields, data=data)


def inline_spec(data: str, text: list[str], label: str, spec_cls: type) -> tuple[str, Any]:
    """(key, spec) of ``--data FILE --text-column ... --label-column ...`` (``one_file``: 10% dev, seed 0)."""
    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(f"--data {data} is not a file; pass a CSV, TSV, JSON Lines or Parquet file")
    key = f"data:{path.resolve()}:{','.join(text)}:{label}"
    fields, parsed = parse(one_file(str(path), text, label, None, 0.1, 0), f"--data {data}", path.resolve().parent)
    return key, spec_cls(**fields, data=parsed)


def read_task_file(path: str | Path) -> tuple[dict[str, Any], TaskData]:
    """Parse a task file (YAML, read as data only)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read task file {path} ({e}); pass an existing YAML file") from None
    except yaml.YAMLError as e:
        raise DataError(f"task file {path} is not valid YAML ({e}); fix the file") from None
    return parse(raw, str(path), path.resolve().parent)


def one_file(path: str, text: list[str], label: str, labels: list | None, dev_fraction: float,
             seed: int) -> dict[str, Any]:
    """The task-file mapping of ``--data FILE --text-column ... --label-column ...``: one file, a dev
    split of ``dev_fraction`` of its rows carved from it (``seed``), the label set given or, sorted,
    the values found in the file."""
    p = Path(path)
    tmp = TaskData(origin=f"--data {path}", folder=str(p.resolve().parent), files=(("train", p.name),), hub=(),
                   fmt=None, text=((text[0],),), join=" ", label=label, labels=("?", "??"), score_range=None,
                   carve=None, max_empty_text=1.0)
    table, _ = rows(tmp, "train")
    if not table:
        raise DataError(f"--data {path} has no rows; pass a file with a header and labelled rows")
    if label not in table[0]:
        raise DataError(f"--data {path}: no column {label!r} (found: {', '.join(map(repr, table[0]))}); fix "
                        "--label-column")
    if labels is None:
        labels = sorted({r.get(label) for r in table}, key=lambda v: (str(type(v)), v))
    name = p.parent.name if p.stem.lower() in ("train", "data", "all", "dataset") and p.parent.name else p.stem
    return {"name": name, "files": {"train": p.name}, "text": list(text), "label": label, "labels": labels,
            "dev": {"carve": max(1, round(dev_fraction * len(table))), "seed": seed}}
