"""One run's settings: a flat, typed dataclass validated before any compute.

    cfg = RunConfig.from_dict(load_yaml("run.yaml") | {"lr": 1e-3})
    cfg.resolved()   # the dict recorded in the result JSON and hashed into the run id

Every field has a default that gives a quick, sensible run (MiniLM + LoRA on SST-2).
``r`` and ``alpha`` are shortcuts that fold into ``options`` (the variant's own options).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from . import kind_config, kinds, plugins, units
from .adapters import registry
from .choices import HEADS, LOG_WITH, POOLINGS, PRECISIONS, QUANT_TYPES
from .config_types import coerce, match_option_types
from .data.fingerprint import fingerprint_of
from .data.glue import get_task, inline_task, locate
from .errors import ConfigError, DataError, VariantError
from .ids import canonical, run_id
from .regularizers import registry as regularizers
from .yamlio import YAMLLoader, load_yaml, parse_yaml  # noqa: F401  (config.load_yaml: read a run file)

_NAME = re.compile(r"[\w.\-]+")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def setting(default: Any, help: str, *, group: str, choices: tuple | None = None, flag: str | None = None,
            metavar: str | None = None, hashed: bool = True, hyperparameter: bool = True, repeat: bool = False) -> Any:
    """A RunConfig field with what the command line and the report need to know about it.

    ``help`` becomes the flag's help (the default is appended), ``choices`` the allowed values,
    ``group`` the help section; ``hashed=False`` keeps the field out of the run id (where results
    go or how they are shown, never what is computed); ``hyperparameter=False`` keeps it out of the
    report's configuration columns. ``flag`` renames the flag (``options`` is ``--opt KEY=VALUE``).
    A callable ``default`` is a default factory (``dict``); ``repeat``: the flag may be given several times."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag, "metavar": metavar,
            "hashed": hashed, "hyperparameter": hyperparameter, "repeat": repeat}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


_WHAT = "what is trained"
_OPT = "optimisation"
_EVAL = "evaluation and logging"
_RES = "resources"
_IO = "input and output"


@dataclass
class RunConfig:
    """One fine-tuning run: backbone, task, variant, optimisation and bookkeeping."""

    # ---- what is trained ------------------------------------------------------------
    model: str = setting("minilm", "model alias (minilm, mpnet, smollm2-135m, ...), hub id or local folder", group=_WHAT)
    layers: int | None = setting(None, "keep only the first N transformer layers (unset: all)", group=_WHAT,
                                 metavar="N")
    task: str = setting("sst2", "GLUE task (sst2, cola, mrpc, rte, stsb, qqp, mnli, qnli) or a task file "
                                "(my_task.yaml: any labelled CSV, TSV, JSON Lines, Parquet or hub dataset)", group=_WHAT)
    data: str | None = setting(None, "one labelled file (CSV, TSV, JSON Lines, Parquet) as the task, with "
                                     "--text-column and --label-column; 10%% of its rows (seeded) are the dev split",
                               group=_WHAT, metavar="FILE", hashed=False, hyperparameter=False)
    text_column: list[str] | str | None = setting(None, "with --data: the text column(s), comma-separated: one text, or "
                                                  "two for a pair task", group=_WHAT, metavar="COL[,COL]",
                                            hashed=False, hyperparameter=False)
    label_column: str | None = setting(None, "with --data: the label column (its values, sorted, are the classes)",
                                       group=_WHAT, metavar="COL", hashed=False, hyperparameter=False)
    variant: str = setting("lora", "registered variant (`lorabench variants` lists them), or one a --plugin defines",
                           group=_WHAT)
    plugins: list[str] | None = setting(None, "a .py file or module defining variants outside lorabench, loaded in "
                                              "every run process (repeatable; sweep key plugins: [...])", group=_WHAT,
                                        flag="plugin", metavar="FILE_OR_MODULE", hashed=False, hyperparameter=False,
                                        repeat=True)
    targets: list[str] | str | None = setting(
        None, "layers to adapt: names (query,value), a regex on full names, or all-linear (unset: the "
              "architecture's default, W_q and W_v)", group=_WHAT)
    r: int | None = setting(None, "rank (shortcut for the variant's option r)", group=_WHAT)
    alpha: float | None = setting(None, "scaling alpha (shortcut for the variant's option alpha)", group=_WHAT)
    options: dict = setting(dict, "a variant option, e.g. --opt init=pissa --opt lr_ratio=16 (repeatable)",
                            group=_WHAT, flag="opt", metavar="KEY=VALUE")
    head: str = setting("cls", "cls: classification head; lm: prompt + label words (decoders)", group=_WHAT,
                        choices=HEADS)
    pooling: str = setting("auto", "head cls reads [CLS] (cls) or the mean over tokens (mean); auto: as the "
                                   "checkpoint declares (mean for sentence-transformers models like minilm)",
                           group=_WHAT, choices=POOLINGS)
    model_dropout: float | None = setting(None, "set every dropout probability of the backbone and its head "
                                                "(hidden, attention, classifier) to P; unset: the checkpoint's "
                                                "(0.1 for the BERT family)", group=_WHAT, metavar="P")
    regularizer: str | None = setting(None, f"loss term against forgetting, head lm only: {', '.join(regularizers.names())}; "
                                            "NAME:weight=W sets its weight (unset: none)", group=_WHAT, metavar="NAME")
    kind: str = setting("run", "what the run is: run (one adapter, one task) or a scenario (federated, prune, "
                               "recycle, segment, merge, mixture: lorabench.kinds); its settings go in --scenario",
                        group=_WHAT, choices=kinds.KINDS)
    scenario: dict = setting(dict, "a setting of the scenario kind, e.g. --scenario method=ffa_lora --scenario "
                                   "beta=0.5 (federated), --scenario sparsity=0.5 (prune) (repeatable)",
                             group=_WHAT, metavar="KEY=VALUE")
    # ---- optimisation ---------------------------------------------------------------
    lr: float = setting(5e-4, "peak learning rate of AdamW", group=_OPT)
    weight_decay: float = setting(0.01, "AdamW decoupled weight decay (0 for biases and norms)", group=_OPT)
    epochs: float = setting(3.0, "passes over the training set (fractions allowed)", group=_OPT)
    batch_size: int = setting(32, "examples per loader batch; effective batch = batch_size * grad_accum",
                              group=_OPT)
    eval_batch_size: int = setting(64, "examples per evaluation batch", group=_OPT, hyperparameter=False)
    grad_accum: int = setting(1, "loader batches per optimizer step", group=_OPT)
    warmup_ratio: float = setting(0.06, "fraction of steps of linear warmup (then linear decay to 0)", group=_OPT)
    max_grad_norm: float = setting(1.0, "clip the trainable parameters' gradient norm (0 = off)", group=_OPT)
    max_length: int = setting(128, "truncate inputs to this many tokens", group=_OPT, metavar="N")
    train_limit: int | None = setting(None, "train on a seeded random subset of N training examples (unset: all)",
                                      group=_OPT, metavar="N")
    eval_limit: int | None = setting(None, "evaluate on a fixed random subset of N examples of each dev split "
                                           "(unset: all)", group=_OPT, metavar="N")
    val_size: int | None = setting(None, "hold out N training examples (the same for every run) as a 'val' split "
                                         "that picks the best evaluation and configuration, so dev only reports "
                                         "(unset: dev does both)", group=_OPT, metavar="N")
    seed: int = setting(0, "seeds python, numpy, torch and the data order", group=_OPT, hyperparameter=False)
    # ---- evaluation and logging -----------------------------------------------------
    eval_every: int = setting(0, "evaluate every N optimizer steps (0 = after every epoch)", group=_EVAL,
                              metavar="N")
    log_every: int = setting(10, "record the mean training loss every N optimizer steps", group=_EVAL,
                             metavar="N", hyperparameter=False)
    log_with: str | None = setting(None, "experiment tracker through accelerate, offline by default (all: every "
                                         "installed one)", group=_EVAL, choices=LOG_WITH, hashed=False,
                                   hyperparameter=False)
    logging_dir: str | None = setting(None, "folder for the tracker files (unset: <out>/tracking)", group=_EVAL,
                                      metavar="DIR", hashed=False, hyperparameter=False)
    tracker_group: str | None = setting(None, "tracker experiment / group of this run (unset: lorabench; a sweep "
                                              "sets its name)", group=_EVAL, metavar="NAME", hashed=False,
                                        hyperparameter=False)
    # ---- resources ------------------------------------------------------------------
    memory_budget: str | int | None = setting(None, "GPU memory cap, e.g. 8GiB, 512MiB or bytes", group=_RES,
                                              hyperparameter=False)
    precision: str = setting("auto", "autocast: auto = bf16 on CUDA if supported, fp32 on CPU; bf16 also runs "
                                     "on CPU; fp16 needs CUDA", group=_RES, choices=PRECISIONS)
    grad_checkpointing: bool = setting(False, "recompute activations in backward to save memory", group=_RES)
    group_by_length: bool = setting(False, "batch examples of similar length (less padding)", group=_RES)
    quantize: str | None = setting(None, "store every frozen linear layer in 4 bits (QLoRA, bitsandbytes)",
                                   group=_RES, choices=QUANT_TYPES)
    num_processes: int = setting(1, "data-parallel processes (DDP through accelerate; gloo on CPU); each takes "
                                    "batch_size / N of every batch, so the global batch is the single-process "
                                    "run's. In the run id only when > 1", group=_RES, metavar="N")
    # ---- input and output -----------------------------------------------------------
    data_dir: str | None = setting(None, "GLUE folder (one sub-folder per task); unset: $LORABENCH_GLUE_DIR, "
                                         "./glue_data, ../shared/data/glue, then the hub", group=_IO,
                                   hashed=False, hyperparameter=False)
    data_revision: str | None = setting(None, "read GLUE from the hub at this revision (commit, tag or branch) "
                                              "instead of a folder; pins the run id to that version",
                                        group=_IO, metavar="REV", hashed=False, hyperparameter=False)
    out: str = setting("runs", "folder for the result JSON (and the adapter)", group=_IO, metavar="DIR",
                       hashed=False, hyperparameter=False)
    save_adapter: bool = setting(False, "also save the trained adapter next to the result", group=_IO,
                                 hashed=False, hyperparameter=False)
    trust_remote_code: bool = setting(False, "allow a hub model's own Python code", group=_IO, hashed=False,
                                      hyperparameter=False)
    quiet: bool = setting(False, "no progress bars", group=_IO, hashed=False, hyperparameter=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), _hints(type(self))[f.name]))
        for f in dataclasses.fields(self):  # nan and inf parse as floats; no setting takes them
            value = getattr(self, f.name)
            check(not isinstance(value, float) or math.isfinite(value),
                  f"{f.name} must be a finite number, got {value}; give a number such as 5e-4")
        self.targets = _normalize_targets(self.targets)
        check(self.model.strip() != "", "model is empty; pass an alias (minilm, smollm2-135m), a hub id or a folder")
        check(self.layers is None or self.layers >= 1, f"layers must be >= 1 (or null for all), got {self.layers}")
        check(self.model_dropout is None or 0.0 <= self.model_dropout < 1.0,
              f"model_dropout must be in [0, 1) (or null for the checkpoint's), got {self.model_dropout}")
        check(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        check(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        check(not (self.head == "lm" and self.pooling == "mean"),
              "pooling 'mean' goes with head 'cls'; head 'lm' reads the label word after the prompt")
        self.regularizer = regularizers.canonical(self.regularizer, self.head)  # refused for head cls
        check(self.lr > 0, f"lr must be > 0, got {self.lr}; e.g. --lr 5e-4")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}; e.g. --epochs 3")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}; e.g. --batch-size 32")
        check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        check(self.num_processes >= 1, f"num_processes must be >= 1, got {self.num_processes}; e.g. --num-processes 2")
        for name in ("batch_size", "eval_batch_size"):  # each process takes an equal share of a batch
            size, n = getattr(self, name), self.num_processes
            check(size % n == 0, f"{name} {size} is not divisible by num_processes {n} (each process takes an "
                                 f"equal share of every batch); use a multiple of {n}, e.g. {n * max(1, round(size / n))}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        check(self.max_length > 0, f"max_length must be > 0, got {self.max_length}; e.g. --max-length 128")
        for name in ("train_limit", "eval_limit", "val_size"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"{name} must be >= 1 (or null for all examples), got {v}")
        check(self.eval_every >= 0, f"eval_every must be >= 0 (0 = every epoch), got {self.eval_every}")
        check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        check(self.log_with is None or self.log_with in LOG_WITH,
              f"log_with must be null or one of {', '.join(LOG_WITH)}, got {self.log_with!r}")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check(
            self.quantize is None or self.quantize in QUANT_TYPES,
            f"quantize must be null or one of {', '.join(QUANT_TYPES)}, got {self.quantize!r}",
        )
        self.budget_bytes()  # raises on a bad size string
        self._resolve_task()
        self._load_plugins()
        kind_config.resolve(self, DEFAULTS)  # before the variant: a scenario kind may decide it
        variant = _variant(self.variant)
        self.variant = variant.name
        self.variant_options()  # the variant validates its own options
        check(
            self.quantize is None or not variant.trains_base,
            f"quantize={self.quantize!r} stores the frozen weights in 4 bits and variant {self.variant!r} trains "
            "every weight; drop quantize or pick an adapter variant",
        )

    def _resolve_task(self) -> None:
        """GLUE names become canonical; a task file keeps its path; ``--data`` registers its task."""
        if isinstance(self.text_column, str):  # --text-column title,body
            self.text_column = [c.strip() for c in self.text_column.split(",") if c.strip()]
        given = [n for n in ("text_column", "label_column") if getattr(self, n) is not None]
        if self.data is None:
            check(not given, f"--{given[0].replace('_', '-') if given else ''} goes with --data FILE; pass --data, or "
                             "describe the task in a task file (--task my_task.yaml)")
        else:
            check(self.text_column and self.label_column, "--data FILE needs --text-column COL[,COL] and --label-column COL")
            check(len(self.text_column) <= 2, f"--text-column takes one or two columns, got {self.text_column}; join "
                                              "columns into one text with a task file (text: [[a, b]])")
            try:
                self.task = inline_task(self.data, self.text_column, self.label_column)
            except DataError as e:
                raise ConfigError(str(e)) from None
            return
        spec = _task(self.task)
        if spec.data is None:
            self.task = spec.name

    def _load_plugins(self) -> None:
        """Import the plugins (and installed entry points) before the variant is looked up."""
        self.plugins = plugins.load_all(self.plugins)

    def task_spec(self):
        """The run's ``TaskSpec`` (GLUE, a task file or ``--data``)."""
        return get_task(self.task)

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Validate ``data`` completely (keys, types, ranges, task, variant, options)."""
        check(isinstance(data, dict), f"a run config must be a mapping of settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        check(not unknown, f"unknown config key {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
        return cls(**data)

    # ---- derived values ---------------------------------------------------------------
    def budget_bytes(self) -> int | None:
        """The memory budget in bytes (None when unset)."""
        if self.memory_budget is None:
            return None
        try:
            n = units.parse_bytes(self.memory_budget)
        except ValueError:
            raise ConfigError(
                f"memory_budget {self.memory_budget!r} is not a size; write e.g. 8GiB, 512MiB or a number of bytes"
            ) from None
        check(n > 0, f"memory_budget must be > 0 bytes, got {self.memory_budget!r}; write e.g. 8GiB, or leave it unset")
        return n

    def variant_options(self) -> dict[str, Any]:
        """The variant's complete options (defaults filled in) with ``r``/``alpha`` folded in.

        Validated by the variant once per distinct (variant, options, r, alpha), then cached."""
        key = canonical([self.variant, self.options, self.r, self.alpha])
        cached = self.__dict__.get("_variant_options")
        if cached is not None and cached[0] == key:
            return dict(cached[1])
        made = self._make_variant_options()
        self.__dict__["_variant_options"] = (key, made)
        return dict(made)

    def _make_variant_options(self) -> dict[str, Any]:
        opts = {k: units.parse_number(v) for k, v in self.options.items()}
        bad = [k for k, v in opts.items() if isinstance(v, float) and not math.isfinite(v)]
        check(not bad, f"option {', '.join(bad)} must be a finite number, got {opts[bad[0]] if bad else ''}")
        for key in ("r", "alpha"):
            value = getattr(self, key)
            if value is not None:
                check(
                    key not in opts or opts[key] == value,
                    f"{key} is given twice ({key}={value} and options.{key}={opts.get(key)}); keep one",
                )
                opts[key] = value
        cls = _variant(self.variant)
        opts = match_option_types(cls.Options, opts)
        try:
            made = cls.make_options(**opts)
        except VariantError as e:
            raise ConfigError(str(e)) from None
        except TypeError as e:  # a value of the wrong type reached a comparison in __post_init__
            raise ConfigError(f"bad option value for variant {cls.name!r} ({e}); check the types in options") from None
        return dataclasses.asdict(made)

    def resolved(self) -> dict[str, Any]:
        """The run's complete settings: recorded in the result JSON and hashed into its id.

        Options are complete (the variant's defaults filled in, ``r``/``alpha`` folded in),
        the memory budget is in bytes, and the fields of ``NOT_HASHED`` are left out.
        """
        out = {}
        for f in dataclasses.fields(self):
            if f.name in NOT_HASHED or f.name in ("r", "alpha"):
                continue
            out[f.name] = getattr(self, f.name)
        out["options"] = self.variant_options()
        out["memory_budget"] = self.budget_bytes()
        out["task"] = self.task_spec().name  # a task file's name, not its path (the data fingerprint has its data)
        if self.num_processes == 1:  # the run ids of single-process runs predate the field
            del out["num_processes"]
        for name in ("model_dropout", "val_size", "regularizer"):  # nor does an unset newer field change them
            if getattr(self, name) is None:
                del out[name]
        if self.kind == "run":  # plain runs: ids from before scenario kinds existed
            del out["kind"], out["scenario"]
        return out

    def method(self) -> str:
        """The row this run is in the report: the variant, or a scenario's label (``kinds.label``)."""
        return kinds.label({"kind": self.kind, "scenario": self.scenario, "variant": self.variant,
                            "task": self.task_spec().name})

    def data_fingerprint(self) -> dict[str, Any]:
        """What data the run reads (``data.fingerprint``): the checksums of its split files, or the
        hub dataset and revision. Hashed into the run id with ``resolved()``, recorded as ``data``."""
        own = fingerprint_of(locate(self.data_dir, self.task, self.data_revision), get_task(self.task))
        return own | kind_config.trained_with(self)  # a mixture's other tasks: {"with": ...}

    def run_id(self, data: dict[str, Any] | None = None) -> str:
        """sha256 of the resolved config and the data fingerprint (computed when not given)."""
        return run_id(self.resolved(), self.data_fingerprint() if data is None else data)

    def to_dict(self) -> dict[str, Any]:
        """Every field as given (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)


#: Fields that change where results go or how they are shown, never what is computed:
#: excluded from ``resolved()`` and so from the run id (a result is found again wherever
#: the GLUE folder lives and whatever the output folder is called).
NOT_HASHED = tuple(f.name for f in dataclasses.fields(RunConfig) if not f.metadata["hashed"])
#: Every field's default (a scenario kind refuses a field it cannot honour when it differs from it).
DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RunConfig)}
#: Fields that are bookkeeping, not hyperparameters: the report never groups runs by them.
NOT_HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(RunConfig) if not f.metadata["hyperparameter"])


# ---- helpers ---------------------------------------------------------------------------
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _normalize_targets(targets: Any) -> Any:
    """"query,value" and "query" -> a list of suffixes; "all-linear" and regexes stay strings."""
    if isinstance(targets, str):
        text = targets.strip()
        check(text != "", "targets is empty; give layer names (query,value), a regex or all-linear")
        if text == "all-linear":
            return text
        if "," in text:
            return [t.strip() for t in text.split(",") if t.strip()]
        if _NAME.fullmatch(text):
            return [text]
        return text
    if isinstance(targets, list):
        check(len(targets) > 0, "targets is an empty list; give layer names, a regex or all-linear (or null)")
    return targets


def _task(name: str):
    try:
        return get_task(name)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _variant(name: str):
    try:
        return registry.get(name)
    except VariantError as e:
        raise ConfigError(str(e)) from None
