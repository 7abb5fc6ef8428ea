"""One run's settings: a flat, typed dataclass validated before any compute.

    cfg = RunConfig.from_dict(load_yaml("run.yaml") | {"lr": 1e-3})
    cfg.resolved()   # the dict recorded in the result JSON and hashed into the run id

Every field has a default that gives a quick, sensible run (MiniLM + LoRA on SST-2).
``r`` and ``alpha`` are shortcuts that fold into ``options`` (the variant's own options).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Fields that change where results go or how they are shown, never what is computed:
#: excluded from ``resolved()`` and so from the run id (a result is found again wherever
#: the GLUE folder lives and whatever the output folder is called).
NOT_HASHED = ("out", "quiet", "data_dir", "save_adapter", "trust_remote_code")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HEADS = ("cls", "lm")
POOLINGS = ("auto", "cls", "mean")  # lorabench.models.POOLINGS
QUANTIZE = ("nf4", "fp4")  # lorabench.quant.QUANT_TYPES
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_NAME = re.compile(r"[\w.\-]+")


class ConfigError(ValueError):
    """A bad run setting. The message names the problem and the fix."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class RunConfig:
    """One fine-tuning run: backbone, task, variant, optimisation and bookkeeping."""

    # ---- what is trained ------------------------------------------------------------
    model: str = "minilm"  #: model alias (minilm, smollm2-135m, ...), hub id or local folder
    layers: int | None = None  #: keep only the first N transformer layers (None = all)
    task: str = "sst2"  #: GLUE task: sst2, cola, mrpc, rte, stsb, qqp, mnli, qnli
    variant: str = "lora"  #: registered variant (``lorabench variants`` lists them)
    #: layers to adapt: list of module-name suffixes, a regex on full names, "all-linear",
    #: or None for the architecture's default (W_q, W_v); "query,value" means a list
    targets: list[str] | str | None = None
    r: int | None = None  #: shortcut for options["r"]
    alpha: float | None = None  #: shortcut for options["alpha"]
    options: dict = field(default_factory=dict)  #: the variant's options (its Options dataclass)
    head: str = "cls"  #: "cls": classification head; "lm": prompt + label words (decoders)
    #: head "cls": "cls" (the model's own head), "mean" (mean of the last hidden states) or
    #: "auto" (what the checkpoint declares: mean for sentence-transformers models like minilm)
    pooling: str = "auto"
    # ---- optimisation ---------------------------------------------------------------
    lr: float = 5e-4  #: peak learning rate of AdamW
    weight_decay: float = 0.01  #: AdamW decoupled weight decay (0 for biases and norms)
    epochs: float = 3.0  #: passes over the training set (fractions allowed)
    batch_size: int = 32  #: examples per loader batch; effective batch = batch_size * grad_accum
    eval_batch_size: int = 64  #: examples per evaluation batch
    grad_accum: int = 1  #: loader batches per optimizer step
    warmup_ratio: float = 0.06  #: fraction of steps of linear warmup (then linear decay to 0)
    max_grad_norm: float = 1.0  #: clip the trainable parameters' gradient norm (0 = off)
    max_length: int = 128  #: truncate inputs to this many tokens
    train_limit: int | None = None  #: use only the first N training examples
    eval_limit: int | None = None  #: use only the first N examples of each dev split
    seed: int = 0  #: seeds python, numpy, torch and the data order
    # ---- evaluation and logging -----------------------------------------------------
    eval_every: int = 0  #: evaluate every N optimizer steps (0 = after every epoch)
    log_every: int = 10  #: record the mean training loss every N optimizer steps
    # ---- resources ------------------------------------------------------------------
    memory_budget: str | int | None = None  #: GPU memory cap, e.g. "8GiB", "512MiB" or bytes
    precision: str = "auto"  #: auto (fp32 on CPU, bf16 on CUDA if supported) | fp32 | bf16 (CUDA or CPU) | fp16 (CUDA)
    grad_checkpointing: bool = False  #: recompute activations in backward to save memory
    group_by_length: bool = False  #: batch examples of similar length (less padding)
    quantize: str | None = None  #: "nf4" | "fp4": store every frozen linear layer in 4 bits (bitsandbytes)
    #: data-parallel processes (DDP through accelerate); each takes batch_size / N of every batch,
    #: so the global batch is the single-process run's. Hashed into the run id only when > 1
    num_processes: int = 1
    # ---- input and output -----------------------------------------------------------
    data_dir: str | None = None  #: GLUE folder (one sub-folder per task); None = the hub
    out: str = "runs"  #: folder for the result JSON (and the adapter)
    save_adapter: bool = False  #: also save the trained adapter next to the result
    trust_remote_code: bool = False  #: allow a hub model's own Python code
    quiet: bool = False  #: no progress bars

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _hints()[f.name]))
        self.targets = _normalize_targets(self.targets)
        check(self.model.strip() != "", "model is empty; pass an alias (minilm, smollm2-135m), a hub id or a folder")
        check(self.layers is None or self.layers >= 1, f"layers must be >= 1 (or null for all), got {self.layers}")
        check(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        check(self.pooling in POOLINGS, f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        check(not (self.head == "lm" and self.pooling == "mean"),
              "pooling 'mean' goes with head 'cls'; head 'lm' reads the label word after the prompt")
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
        for name in ("train_limit", "eval_limit"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"{name} must be >= 1 (or null for all examples), got {v}")
        check(self.eval_every >= 0, f"eval_every must be >= 0 (0 = every epoch), got {self.eval_every}")
        check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check(
            self.quantize is None or self.quantize in QUANTIZE,
            f"quantize must be null or one of {', '.join(QUANTIZE)}, got {self.quantize!r}",
        )
        self.budget_bytes()  # raises on a bad size string
        self.task = _task(self.task).name
        variant = _variant(self.variant)
        self.variant = variant.name
        self.variant_options()  # the variant validates its own options
        check(
            self.quantize is None or not variant.trains_base,
            f"quantize={self.quantize!r} stores the frozen weights in 4 bits and variant {self.variant!r} trains "
            "every weight; drop quantize or pick an adapter variant",
        )

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
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
        from .measure import parse_bytes

        try:
            n = parse_bytes(self.memory_budget)
        except ValueError:
            raise ConfigError(
                f"memory_budget {self.memory_budget!r} is not a size; write e.g. 8GiB, 512MiB or a number of bytes"
            ) from None
        check(n > 0, f"memory_budget must be > 0 bytes, got {self.memory_budget!r}; write e.g. 8GiB, or leave it unset")
        return n

    def variant_options(self) -> dict[str, Any]:
        """The variant's complete options (defaults filled in) with ``r``/``alpha`` folded in."""
        from .adapters.base import VariantError

        opts = {k: _number(v) for k, v in self.options.items()}
        for key in ("r", "alpha"):
            value = getattr(self, key)
            if value is not None:
                check(
                    key not in opts or opts[key] == value,
                    f"{key} is given twice ({key}={value} and options.{key}={opts.get(key)}); keep one",
                )
                opts[key] = value
        cls = _variant(self.variant)
        opts = _match_option_types(cls.Options, opts)
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
        if self.num_processes == 1:  # the run ids of single-process runs predate the field
            del out["num_processes"]
        return out

    def run_id(self) -> str:
        from .results import run_id

        return run_id(self.resolved())

    def to_dict(self) -> dict[str, Any]:
        """Every field as given (round-trips through ``from_dict``)."""
        return dataclasses.asdict(self)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run config file (a YAML mapping of RunConfig fields)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}; fix its syntax") from None
    if data is None:
        return {}
    check(isinstance(data, dict), f"config file {path} must hold a mapping of settings (key: value), not a {type(data).__name__}")
    return data


# ---- helpers ---------------------------------------------------------------------------
@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` as a string; read number-looking strings as numbers."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or a ConfigError naming the expected type."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if is_union else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if value is None:
        check(len(kinds) < len(args), f"{name} must not be null; give a {_type_name(kinds[0])}")
        return None
    for kind in kinds:
        converted = _as(value, kind)
        if converted is not _FAIL:
            return converted
    wanted = " or ".join(_type_name(k) for k in kinds)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


_FAIL = object()


def _as(value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return value if isinstance(value, bool) else _FAIL
    if isinstance(value, bool):
        return _FAIL  # True is an int in Python, never a number here
    value = _number(value)
    if origin is int:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else _FAIL
    if origin is float:
        return float(value) if isinstance(value, (int, float)) else _FAIL
    if origin is str:
        return value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) else _FAIL)
    if origin is dict:
        return dict(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _FAIL
    if origin is list:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return list(value) if ok else _FAIL
    return _FAIL


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind) or kind
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping", list: "a list of strings"}.get(origin, str(kind))


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


def _match_option_types(options_cls: type, opts: dict[str, Any]) -> dict[str, Any]:
    """int -> float for float options (alpha=16 and 16.0 are one run id); 8.0 -> 8 for ints."""
    try:
        hints = typing.get_type_hints(options_cls)
    except Exception:  # an annotation we cannot resolve: leave the values as they are
        return opts
    out = dict(opts)
    for key, value in opts.items():
        hint = hints.get(key)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        elif hint is int and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    return out


def _task(name: str):
    from .data import DataError, get_task

    try:
        return get_task(name)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _variant(name: str):
    from . import adapters
    from .adapters.base import VariantError

    try:
        return adapters.get(name)
    except VariantError as e:
        raise ConfigError(str(e)) from None
