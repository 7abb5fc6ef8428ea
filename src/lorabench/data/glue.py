"""The GLUE task table and readers for the two places GLUE lives: a folder and the hub.

Wang et al. 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding", arXiv 1804.07461.

A GLUE folder is the canonical ``glue_data/`` download: one folder per task (``SST-2/``, ``CoLA/``, ...),
tab-separated files. The files differ per task (header or not, a UTF-8 BOM in MRPC, string labels in RTE/MNLI/QNLI,
CoLA's headerless sentence in column 4), and they contain stray double quotes, so they are read with ``QUOTE_NONE``.
Label indices follow the Hugging Face ``nyu-mll/glue`` dataset, so both sources agree. Image tasks: ``image_tasks``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .example import Example
from .image_tasks import image_task

HUB_DATASET = "nyu-mll/glue"
ENV_DIR = "LORABENCH_GLUE_DIR"
FIX_DIR = f"pass --data-dir (or set {ENV_DIR}) to a GLUE folder"


@dataclass(frozen=True)
class Columns:
    """Where a task's fields sit in its TSV: header names, or positions when there is no header."""
    text: tuple[str | int, ...]
    label: str | int | None
    header: bool = True
    width: int | None = None  # number of columns when there is no header


@dataclass(frozen=True)
class TaskSpec:
    name: str  # hub config name, e.g. "sst2"
    display: str  # "SST-2"
    text_fields: tuple[str, ...]  # hub column names, e.g. ("premise", "hypothesis")
    label_names: tuple[str, ...]  # index -> name (HF order); () for regression
    is_regression: bool
    num_labels: int  # 1 for STS-B
    metrics: tuple[str, ...]
    primary_metric: str
    dev_splits: tuple[str, ...]
    glue_dir: str  # folder name inside a GLUE folder
    files: dict[str, str] = field(hash=False)  # split -> file name in glue_dir
    columns: Columns = Columns(("sentence1", "sentence2"), "label")
    test_columns: Columns | None = None  # when the test file differs (CoLA has a header there)
    file_labels: tuple[str, ...] = ("0", "1")  # label text in the TSV for index 0, 1, ...
    score_range: tuple[float, float] | None = None  # regression targets must lie here
    hub_config: str = ""
    #: (train, first dev split) example counts of the GLUE release: the sweep's time estimate
    sizes: tuple[int, int] = (10000, 1000)
    #: mean WordPiece tokens of a training example (both texts, special tokens included): the
    #: estimate's cost per example. Measured on 2,000 training rows with MiniLM's tokenizer for
    #: SST-2, CoLA, MRPC, RTE, STS-B; approximate for QQP, MNLI, QNLI (not on this machine).
    mean_tokens: float = 40.0
    #: a task defined by a task file or ``--data`` (``data.taskfile.TaskData``); None for GLUE
    data: Any = field(default=None, hash=False, compare=False)
    modality: str = "text"  # "image": a segmentation task (``data.image_tasks``)

    splits = property(lambda self: tuple(self.files))

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s != "train" and s not in self.dev_splits)

    @property
    def is_pair(self) -> bool:
        return len(self.text_fields) == 2

    def columns_for(self, split: str) -> Columns:
        if split in self.test_splits and self.test_columns is not None:
            return self.test_columns
        return self.columns


_FILES, _NLI2 = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}, ("entailment", "not_entailment")
_CLS, _BIN = ("accuracy", "f1_macro"), ("accuracy", "f1", "f1_macro")  # metrics: classification, binary


def _task(name, display, text_fields, labels, metrics, primary, **kw) -> TaskSpec:
    kw.setdefault("files", dict(_FILES))
    kw.setdefault("dev_splits", ("validation",))
    kw.setdefault("file_labels", ("0", "1"))
    return TaskSpec(name=name, display=display, text_fields=text_fields, label_names=labels,
                    is_regression=not labels, num_labels=max(len(labels), 1), metrics=metrics,
                    primary_metric=primary, glue_dir=display, hub_config=name, **kw)


# MRPC / QQP: primary metric is accuracy. GLUE reports F1 and accuracy for both, but the
# LoRA paper (Hu et al. 2021, Table 2 footnote) and the variants benchmarked against it
# (VeRA, DoRA, PiSSA, ...) report accuracy for every task but CoLA/STS-B/MNLI-overall, so
# accuracy keeps our tables comparable with theirs; F1 and macro-F1 are reported alongside.
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _task("sst2", "SST-2", ("sentence",), ("negative", "positive"), _CLS, "accuracy",
          columns=Columns(("sentence",), "label"), sizes=(67349, 872), mean_tokens=13.0),
    _task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), _BIN, "accuracy",
          columns=Columns(("#1 String", "#2 String"), "Quality"), sizes=(3668, 408), mean_tokens=53.5),
    _task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("mcc", "accuracy", "f1_macro"), "mcc",
          columns=Columns((3,), 1, header=False, width=4), test_columns=Columns(("sentence",), None), sizes=(8551, 1043), mean_tokens=11.4),
    _task("rte", "RTE", ("sentence1", "sentence2"), _NLI2, _CLS, "accuracy", file_labels=_NLI2, sizes=(2490, 277), mean_tokens=70.2),
    _task("stsb", "STS-B", ("sentence1", "sentence2"), (), ("pearson", "spearman"), "pearson",
          columns=Columns(("sentence1", "sentence2"), "score"), file_labels=(), score_range=(0.0, 5.0), sizes=(5749, 1500), mean_tokens=28.0),
    _task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), _BIN, "accuracy",
          columns=Columns(("question1", "question2"), "is_duplicate"), sizes=(363846, 40430), mean_tokens=30.0),
    _task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), _CLS, "accuracy",
          columns=Columns(("sentence1", "sentence2"), "gold_label"),
          file_labels=("entailment", "neutral", "contradiction"),
          dev_splits=("validation_matched", "validation_mismatched"),
          files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                 "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
                 "test_mismatched": "test_mismatched.tsv"}, sizes=(392702, 9815), mean_tokens=40.0),
    _task("qnli", "QNLI", ("question", "sentence"), _NLI2, _CLS, "accuracy",
          columns=Columns(("question", "sentence"), "label"), file_labels=_NLI2, sizes=(104743, 5463), mean_tokens=51.0),
)}


def _norm(name: str) -> str:
    return "".join(c for c in str(name).lower() if c not in "-_ ")


def task_key(name: object) -> str:
    """The task's canonical name (``"SST-2"`` -> ``"sst2"``, a task file -> its ``name``); an unknown name
    normalised the same way (``RunConfig`` reports it, with the task list)."""
    if str(name).lower().endswith(TASK_FILE_SUFFIXES) and Path(str(name)).expanduser().is_file():
        return get_task(str(name)).name  # a task file: the name it gives its task
    spec = TASKS.get(_norm(str(name))) or image_task(_norm(str(name)), TaskSpec)
    return spec.name if spec is not None else _norm(str(name))


INLINE: dict[str, TaskSpec] = {}  #: tasks made from ``--data FILE ...`` in this process, by key
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def inline_task(data: str, text: list[str], label: str) -> str:
    """The key of the task ``--data FILE --text-column ... --label-column ...`` defines (registered)."""
    from .taskfile import inline_spec

    key, spec = inline_spec(data, text, label, TaskSpec)
    INLINE[key] = spec
    return key


def get_task(task: str | TaskSpec) -> TaskSpec:
    """``"SST-2"``, ``"sst2"``, ``"sts-b"``, ``"STSB"`` -> TaskSpec (case and '-'/'_' ignored); a path
    to a task file (``.yaml``) -> its TaskSpec (``data.taskfile``); an ``--data`` task's key."""
    if isinstance(task, TaskSpec):
        return task
    if str(task) in INLINE:
        return INLINE[str(task)]
    if str(task).lower().endswith(TASK_FILE_SUFFIXES):
        from .taskfile import task_from_file

        return task_from_file(str(task), TaskSpec)
    spec = TASKS.get(_norm(task)) or image_task(_norm(task), TaskSpec)
    if spec is None:
        known = ", ".join(t.display for t in TASKS.values())
        raise DataError(f"unknown GLUE task {task!r}; choose one of: {known}, or pass a task file (my_task.yaml)")
    return spec


def check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.files:
        raise DataError(f"{spec.display} has no split {split!r}; choose one of: {', '.join(spec.splits)}")


# ---------------------------------------------------------------- GLUE folder reader


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float:
    raw = raw.strip()
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise DataError(f"{where}: score {raw!r} is not a number; {spec.display} scores are numbers "
                            f"in {list(spec.score_range or ())}; fix or remove that row") from None
        lo, hi = spec.score_range or (float("-inf"), float("inf"))
        if not lo <= value <= hi:  # also rejects nan
            raise DataError(f"{where}: score {raw!r} is outside [{lo:g}, {hi:g}]; fix or remove that row")
        return value
    if raw not in spec.file_labels:
        raise DataError(f"{where}: label {raw!r} is not one of the allowed labels "
                        f"{', '.join(spec.file_labels)}; fix or remove that row")
    return spec.file_labels.index(raw)


def _header_index(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise DataError(f"{path}: the header has no column {name!r} (found: {', '.join(header)}); "
                        "is this the right file for the task?")
    return header.index(name)


def check_file(path: Path, spec: TaskSpec) -> Path:
    """``path``, or a DataError saying which GLUE file is missing and where to point lorabench."""
    if not path.is_file():
        raise DataError(f"missing GLUE file {path}; {FIX_DIR} that holds {spec.glue_dir}/{path.name}")
    return path


def read_tsv(path: str | os.PathLike, spec: TaskSpec, split: str) -> list[Example]:
    """Read one GLUE TSV file into Examples. Test files without labels give label -1."""
    path = check_file(Path(path), spec)
    cols = spec.columns_for(split)
    unlabelled_ok = split in spec.test_splits
    try:
        return _read_rows(path, spec, split, cols, unlabelled_ok)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}): "
                        f"not a GLUE TSV file; re-download {spec.display} or point --data-dir at a GLUE folder") from None


def _read_rows(path: Path, spec: TaskSpec, split: str, cols: Columns, unlabelled_ok: bool) -> list[Example]:
    examples = []
    # utf-8-sig strips MRPC's byte-order mark; QUOTE_NONE keeps the stray quotes as text.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if cols.header:
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path} is empty; expected a header row; re-download {spec.display}")
            text_idx = [_header_index(header, c, path) for c in cols.text]
            if cols.label in header or not unlabelled_ok:
                label_idx = _header_index(header, cols.label, path)
            else:
                label_idx = None
            width = len(header)
        else:
            text_idx, label_idx, width = list(cols.text), cols.label, cols.width
        for row in reader:
            if not row:  # blank line
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != width:
                raise DataError(f"{where}: expected {width} tab-separated columns, found {len(row)}; "
                                "fix or remove that row")
            texts = [row[i] for i in text_idx]
            label = -1 if label_idx is None else _parse_label(spec, row[label_idx], where)
            examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"{path} has no examples (no rows after the header); re-download {spec.display} "
                        "or point --data-dir at a complete GLUE folder")
    return examples


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Where GLUE comes from: ``kind`` "folder" (``path`` = the glue_data folder) or "hub"
    (``revision``: the hub dataset's commit, tag or branch; None = its latest)."""

    kind: str
    path: Path | None = None
    tried: tuple[str, ...] = ()  # what resolve_source looked at before settling here
    revision: str | None = None

    def __str__(self) -> str:
        if self.kind == "folder":
            return str(self.path)
        return f"hub:{HUB_DATASET}" + (f"@{self.revision}" if self.revision else "")

    def task_dir(self, spec: TaskSpec) -> Path:
        if spec.data is not None:
            return Path(spec.data.folder)
        return _task_dir(self.path, spec) or self.path / spec.glue_dir

    @property
    def dataset(self) -> str | None:
        return HUB_DATASET if self.kind == "hub" else None

    def dataset_of(self, spec: TaskSpec) -> str | None:
        """The hub dataset ``spec`` reads from this source (a task file's own, else GLUE's)."""
        if spec.data is not None and spec.data.hub:
            return dict(spec.data.hub)["dataset"]
        return self.dataset

    def file(self, spec: TaskSpec, split: str, must_exist: bool = False) -> Path:
        if spec.data is not None:  # a task file: the file the split is read from (a carved dev: train's)
            path = spec.data.path(spec.data.read_from(split))
            if must_exist and not path.is_file():
                raise DataError(f"task file {spec.data.origin}: split {split!r}: {path} does not exist; fix files")
            return path
        path = self.task_dir(spec) / spec.files[split]
        return check_file(path, spec) if must_exist else path

    def load(self, task: str | TaskSpec, split: str) -> list[Example]:
        spec = get_task(task)
        check_split(spec, split)
        if spec.data is not None:
            from .taskfile import checked_examples

            return checked_examples(spec.data, spec, split)
        if self.kind == "folder":
            return read_tsv(self.file(spec, split), spec, split)
        return _read_hub(spec, split, self.tried, self.revision)


def _task_dir(root: Path, spec: TaskSpec) -> Path | None:
    """``root/SST-2``, or a folder whose name matches the task loosely (``sst2``, ``sst-2``)."""
    if (root / spec.glue_dir).is_dir():
        return root / spec.glue_dir
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and _norm(child.name) == spec.name:
                return child
    return None


def locate(data_dir: str | os.PathLike | None = None, task: str | TaskSpec | None = None,
           revision: str | None = None) -> Source:
    """The first of: ``data_dir``, ``$LORABENCH_GLUE_DIR``, ``./glue_data``, ``../shared/data/glue``
    (both relative to the working directory), then the hub dataset ``nyu-mll/glue``; a ``revision``
    asks for the hub at that revision. Does not check that the hub can be read (``resolve_source``
    does): the data fingerprint of a planned run needs only to know where its data comes from.

    An explicit ``data_dir`` or environment variable must be a directory. With ``task``, the
    two automatic folders count only when they hold that task, so a partial folder falls
    through to the hub.
    """
    spec = get_task(task) if task is not None else None
    if spec is not None and spec.data is not None:  # a task file names its own data
        for given, what in ((data_dir, "--data-dir"), (revision, "--data-revision")):
            if given is not None:
                raise DataError(f"{what} {str(given)!r} is for GLUE; task {spec.name} reads what {spec.data.origin} "
                                f"names (pin a hub dataset's revision there); drop {what}")
        return Source("hub" if spec.data.hub else "taskfile", None if spec.data.hub else Path(spec.data.folder),
                      (spec.data.origin,), dict(spec.data.hub).get("revision"))
    if revision is not None:
        if data_dir is not None:
            raise DataError(f"--data-revision {revision!r} pins the hub dataset, --data-dir {str(data_dir)!r} "
                            "names a folder: pass one of them")
        return Source("hub", None, ("--data-revision (the hub dataset at that revision)",), revision)
    for given, what in ((data_dir, "--data-dir"), (os.environ.get(ENV_DIR) or None, ENV_DIR)):
        if given is not None:
            path = Path(given).expanduser()
            if not path.is_dir():
                raise DataError(f"{what} {str(given)!r} is not a directory; point it at a GLUE folder "
                                f"(one subfolder per task, e.g. SST-2/train.tsv)")
            return Source("folder", path.resolve())
    tried = ["--data-dir (not given)", f"{ENV_DIR} (not set)"]
    for candidate in (Path("glue_data"), Path("..") / "shared" / "data" / "glue"):
        if candidate.is_dir() and (spec is None or _task_dir(candidate, spec) is not None):
            return Source("folder", candidate.resolve(), tuple(tried))
        missing = "missing" if not candidate.is_dir() else f"no {spec.glue_dir}/ inside"
        tried.append(f"{candidate.resolve()} ({missing})")
    return Source("hub", None, tuple(tried))


def resolve_source(data_dir: str | os.PathLike | None = None, task: str | TaskSpec | None = None,
                   revision: str | None = None) -> Source:
    """``locate``, and when that is the hub, make sure ``datasets`` is installed. Raises DataError
    listing everything tried when nothing works."""
    source = locate(data_dir, task, revision)
    if source.kind == "hub" and not (task is not None and get_task(task).data is not None):
        try:
            import datasets  # noqa: F401  (optional dependency, imported only when needed)
        except ImportError:
            tried = [*source.tried, f"hub dataset {HUB_DATASET} (the `datasets` package is not installed: "
                                    "pip install datasets)"]
            raise DataError(f"no GLUE data found; tried: {'; '.join(tried)}. Fix: {FIX_DIR}") from None
    return source


def _read_hub(spec: TaskSpec, split: str, tried: tuple[str, ...], revision: str | None = None) -> list[Example]:
    import datasets

    try:
        pinned = {"revision": revision} if revision is not None else {}
        ds = datasets.load_dataset(HUB_DATASET, spec.hub_config, split=split, **pinned)
    except Exception as e:  # offline, hub down, bad cache: one message naming everything tried
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        attempts = "; ".join([*tried, f"hub dataset {HUB_DATASET}/{spec.hub_config} ({type(e).__name__}: {reason})"])
        raise DataError(f"could not load {spec.display} {split}; tried: {attempts}. Fix: {FIX_DIR} "
                        "or connect to the Hugging Face hub") from e
    a = ds[spec.text_fields[0]]
    b = ds[spec.text_fields[1]] if spec.is_pair else [None] * len(a)
    examples = []
    for i, (ta, tb, y) in enumerate(zip(a, b, ds["label"])):
        if spec.is_regression:
            y = round(float(y), 5)  # hub stores float32: 3.8 -> 3.7999999; the files have <= 3 decimals
        elif not (0 <= y < spec.num_labels or (y == -1 and split in spec.test_splits)):
            raise DataError(f"hub {HUB_DATASET}/{spec.hub_config} {split} row {i}: label {y!r} is outside "
                            f"0..{spec.num_labels - 1}; clear the datasets cache and retry")
        examples.append(Example(ta, tb, y))
    return examples


def load_glue(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None,
              revision: str | None = None) -> list[Example]:
    """Examples of one split (``"train"``, a dev split such as ``"validation"``, or a test split)."""
    spec = get_task(task)
    check_split(spec, split)
    return resolve_source(data_dir, task=spec, revision=revision).load(spec, split)
