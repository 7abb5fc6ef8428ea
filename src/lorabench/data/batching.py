"""Tokenize GLUE once (cached on disk as safetensors), then batch with dynamic padding.

The cache key is a hash of the tokenizer's identity (name, class, vocabulary size,
truncation side, its output on a probe pair), ``max_length``, the format_fn's name and a
hash of the exact texts and labels being tokenized, so an edited file, another subset or
another prompt never reuses a stale entry. Nothing is pickled: one ``.safetensors`` file per entry with
the key as JSON metadata.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler

from .glue import DataError, Example, TaskSpec, get_task, resolve_source

CACHE_VERSION = 1
#: The dev subset of ``eval_limit`` is drawn with this fixed seed, not the run's seed, so
#: every run of a sweep (all seeds, all variants) is scored on the same dev examples.
EVAL_SUBSET_SEED = 0
#: ``val_size`` examples are held out of the training set with this fixed seed (not the run's),
#: so every run of a sweep selects on the same ``val`` split and trains on the rest.
VAL_SPLIT_SEED = 0
VAL_SPLIT = "val"
_PROBE = ("Probe: the cat sat.", "A second, shorter text!")
_CHUNK = 4096

FormatFn = Callable[[Example], "tuple[str, str | None]"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LORABENCH_CACHE") or Path.home() / ".cache" / "lorabench" / "tokenized")


def subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``limit`` examples, kept in file order; all of them when
    ``limit`` is None or at least the split's size."""
    if limit is None or limit >= len(examples):
        return list(examples)
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(examples), generator=g)[:limit].sort().values
    return [examples[i] for i in keep.tolist()]


def stratified_subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """Like ``subset``, but the draw is spread over the labels: the classes present (in a seeded
    order) take turns giving one seeded-random example each until ``limit`` are drawn, so five seeds
    of a binary task hold both classes (3 and 2). Float labels (regression) and unlabelled rows
    (-1) have no classes to spread over: those draw as ``subset`` does. Kept in file order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    labels = [ex.label for ex in examples]
    if any(isinstance(y, float) for y in labels) or all(y == -1 for y in labels):
        return subset(examples, limit, seed)
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(examples), generator=g).tolist():
        by_class.setdefault(int(labels[i]), []).append(i)
    classes = sorted(by_class)
    queues = [by_class[classes[j]] for j in torch.randperm(len(classes), generator=g).tolist()]
    drawn: list[int] = []
    while len(drawn) < limit:
        for q in queues:
            if q and len(drawn) < limit:
                drawn.append(q.pop(0))
    return [examples[i] for i in sorted(drawn)]


def hold_out(examples: list[Example], size: int, seed: int = VAL_SPLIT_SEED) -> tuple[list[Example], list[Example]]:
    """(held out, rest): a seeded random ``size`` of ``examples`` and the others, both in file order."""
    g = torch.Generator().manual_seed(seed)
    held = set(torch.randperm(len(examples), generator=g)[:size].tolist())
    return ([ex for i, ex in enumerate(examples) if i in held],
            [ex for i, ex in enumerate(examples) if i not in held])


def _format_key(format_fn: FormatFn | None) -> str | None:
    if format_fn is None:
        return None
    key = getattr(format_fn, "cache_key", None)
    if key is None:
        key = f"{getattr(format_fn, '__module__', '?')}.{getattr(format_fn, '__qualname__', type(format_fn).__name__)}"
    return str(key)


def _tokenizer_key(tokenizer) -> dict:
    probe = tokenizer(*_PROBE, truncation=True, max_length=64)
    return {
        "name": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab": len(tokenizer),
        # the probe is too short to show it, and the prompt path truncates on the left
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "probe": {k: list(v) for k, v in probe.items()},
    }


def _content_hash(pairs: list[tuple[str, str | None]], labels: list) -> str:
    h = hashlib.sha256()
    for (a, b), y in zip(pairs, labels):
        h.update(json.dumps([a, b, y], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


class TokenizedDataset(Dataset):
    """Token ids of every example, stored flat: example i is ``input_ids[offsets[i]:offsets[i+1]]``."""

    def __init__(self, tensors: dict[str, torch.Tensor], examples: list[Example] | None = None):
        self.input_ids = tensors["input_ids"]  # (total_tokens,) int32
        self.offsets = tensors["offsets"]  # (N + 1,) int64
        self.token_type_ids = tensors.get("token_type_ids")  # (total_tokens,) or None
        self.labels = tensors["labels"]  # (N,) int64 or float64
        self.lengths = (self.offsets[1:] - self.offsets[:-1]).tolist()
        self.examples = examples  # the source examples, in the same order

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        item = {"input_ids": self.input_ids[lo:hi], "labels": self.labels[i]}
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[lo:hi]
        return item


def _tokenize(tokenizer, pairs, max_length: int, progress: bool, desc: str) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {"input_ids": [], "token_type_ids": []}
    chunks = range(0, len(pairs), _CHUNK)
    try:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=desc, unit="chunk", disable=not progress or len(chunks) < 4)
    except ImportError:
        pass
    for start in chunks:
        part = pairs[start : start + _CHUNK]
        a = [p[0] for p in part]
        b = [p[1] for p in part]
        if any(x is None for x in b) and not all(x is None for x in b):
            raise DataError(f"{desc}: format_fn returned a second text for some examples and None for others; "
                            "return None for all or for none")
        enc = tokenizer(a, None if b[0] is None else b, truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False)
        out["input_ids"] += enc["input_ids"]
        if "token_type_ids" in enc:
            out["token_type_ids"] += enc["token_type_ids"]
    if not out["token_type_ids"]:
        del out["token_type_ids"]
    return out


def encode(examples: list[Example], tokenizer, spec: TaskSpec, split: str, *, max_length: int = 128,
           format_fn: FormatFn | None = None, cache_dir: str | os.PathLike | None = None,
           key_extra: dict | None = None, progress: bool = True) -> TokenizedDataset:
    """Tokenize examples (or load them from the on-disk cache) into a TokenizedDataset."""
    if not examples:
        raise DataError(f"{spec.display} {split} has no examples; check the data folder")
    pairs = [format_fn(ex) if format_fn else (ex.text_a, ex.text_b) for ex in examples]
    labels = [ex.label for ex in examples]
    key = {"version": CACHE_VERSION, "tokenizer": _tokenizer_key(tokenizer), "task": spec.name, "split": split,
           "max_length": max_length, "format": _format_key(format_fn), **(key_extra or {}),
           "content": _content_hash(pairs, labels)}
    key_json = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key_json.encode()).hexdigest()[:20]
    path = Path(cache_dir or default_cache_dir()) / f"{spec.name}-{split}-{digest}.safetensors"
    tensors = _load_cached(path, key_json)
    if tensors is None:
        tensors = _build(tokenizer, pairs, labels, spec, split, max_length, progress)
        _save_cached(path, tensors, key_json)
    return TokenizedDataset(tensors, list(examples))


def _build(tokenizer, pairs, labels, spec, split, max_length, progress) -> dict[str, torch.Tensor]:
    enc = _tokenize(tokenizer, pairs, max_length, progress, f"tokenize {spec.display} {split}")
    lengths = [len(ids) for ids in enc["input_ids"]]
    if 0 in lengths:
        i = lengths.index(0)
        raise DataError(f"{spec.display} {split} example {i} tokenizes to zero tokens; check its text or format_fn")
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    total = int(offsets[-1])

    def flat(rows):
        return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=total))

    tensors = {"input_ids": flat(enc["input_ids"]), "offsets": offsets,
               "labels": torch.tensor(labels, dtype=torch.float64 if spec.is_regression else torch.int64)}
    if "token_type_ids" in enc:
        tensors["token_type_ids"] = flat(enc["token_type_ids"]).to(torch.int8)
    return tensors


def _load_cached(path: Path, key_json: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key_json:
                return None
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable tokenization cache {path} ({e}); re-tokenizing", stacklevel=3)
        return None


def _save_cached(path: Path, tensors: dict[str, torch.Tensor], key_json: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata={"key": key_json})
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a shared cache should be readable
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    except OSError as e:
        warnings.warn(f"could not write tokenization cache under {path.parent} ({e}); "
                      "set LORABENCH_CACHE or cache_dir to a writable folder", stacklevel=3)


class Collator:
    """A list of examples -> one batch padded on the right to its longest example."""

    def __init__(self, pad_token_id: int, regression: bool):
        self.pad_token_id = pad_token_id
        self.regression = regression

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        batch = {"input_ids": torch.full((len(items), width), self.pad_token_id, dtype=torch.long),  # (B, T)
                 "attention_mask": torch.zeros(len(items), width, dtype=torch.long)}  # (B, T)
        has_types = "token_type_ids" in items[0]
        if has_types:
            batch["token_type_ids"] = torch.zeros(len(items), width, dtype=torch.long)  # (B, T)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            batch["input_ids"][row, :n] = it["input_ids"]
            batch["attention_mask"][row, :n] = 1
            if has_types:
                batch["token_type_ids"][row, :n] = it["token_type_ids"]
        labels = torch.stack([it["labels"] for it in items])  # (B,)
        batch["labels"] = labels.float() if self.regression else labels.long()
        return batch


class ShuffledBatches(Sampler):
    """Index batches in a seeded random order; epoch e uses a generator seeded by (seed, e), so
    the order is bit-for-bit repeatable and independent of how often earlier epochs ran.

    ``group_by_length``: shuffle, sort by length within mega-batches of ``mega_batches``
    batches, cut into batches, shuffle the batch order — similar lengths share a batch,
    so there is less padding, while batches stay random.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0,
                 group_by_length: bool = False, mega_batches: int = 50):
        self.lengths = torch.tensor(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batches = mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        mixed = hashlib.sha256(f"{self.seed}:{self.epoch}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") >> 1)
        self.epoch += 1
        perm = torch.randperm(len(self.lengths), generator=g)  # (N,)
        if not self.group_by_length:
            yield from (c.tolist() for c in perm.split(self.batch_size))
            return
        batches = []
        for mega in perm.split(self.batch_size * self.mega_batches):
            order = torch.sort(self.lengths[mega], descending=True, stable=True).indices
            batches += mega[order].split(self.batch_size)
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i].tolist()


def build_loaders(task, tokenizer, *, data_dir=None, max_length: int = 128, batch_size: int = 32,
                  eval_batch_size: int | None = None, train_limit: int | None = None,
                  eval_limit: int | None = None, seed: int = 0, group_by_length: bool = False,
                  format_fn: FormatFn | None = None, cache_dir=None, data_revision: str | None = None,
                  val_size: int | None = None, progress: bool = True) -> tuple[DataLoader, dict[str, DataLoader]]:
    """(train_loader, {dev_split: dev_loader}) for one GLUE task.

    ``val_size``: that many training examples held out (``hold_out``, the same for every run) as
    the evaluation split ``val``, first in the dict, which selects; the rest is the training set.
    ``train_limit``: a random subset of that many training examples drawn with ``seed``.
    ``eval_limit``: a random subset of each dev split drawn with the fixed EVAL_SUBSET_SEED,
    the same for every run. Dev loaders keep file order (predictions line up with examples).
    """
    spec = get_task(task)
    _check_positive(max_length, "--max-length", "e.g. 128")
    _check_positive(batch_size, "--batch-size", "e.g. 32")
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    _check_positive(eval_batch_size, "--eval-batch-size", "or leave it unset to use the batch size")
    for value, flag in ((train_limit, "--train-limit"), (eval_limit, "--eval-limit"), (val_size, "--val-size")):
        if value is not None:
            _check_positive(value, flag, "or leave it unset to use the whole split")
    source = resolve_source(data_dir, task=spec, revision=data_revision)
    collate = Collator(pad_token_id(tokenizer), spec.is_regression)
    common = dict(max_length=max_length, format_fn=format_fn, cache_dir=cache_dir, progress=progress)

    train_all = source.load(spec, "train")
    val_ex: list[Example] | None = None
    if val_size is not None:
        if val_size >= len(train_all):
            raise DataError(f"--val-size {val_size} leaves no training examples: {spec.display} train has "
                            f"{len(train_all)} ({source}); hold out fewer, e.g. --val-size {max(1, len(train_all) // 10)}")
        val_ex, train_all = hold_out(train_all, val_size)
    if train_limit is not None and len(train_all) < train_limit:
        warnings.warn(f"{spec.display} train has {len(train_all)} examples ({source}), fewer than --train-limit "
                      f"{train_limit}: training on all {len(train_all)}", stacklevel=2)
    train_ex = subset(train_all, train_limit, seed)
    train_ds = encode(train_ex, tokenizer, spec, "train", key_extra={"limit": train_limit, "seed": seed}, **common)
    sampler = ShuffledBatches(train_ds.lengths, batch_size, seed=seed, group_by_length=group_by_length)
    train_loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate)

    dev = dev_loaders(source, spec, tokenizer, eval_batch_size, eval_limit, common)
    if val_ex is None:
        return train_loader, dev
    val_ds = encode(val_ex, tokenizer, spec, VAL_SPLIT, **common)
    return train_loader, {VAL_SPLIT: DataLoader(val_ds, batch_size=eval_batch_size, shuffle=False, collate_fn=collate),
                          **dev}


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its eos token, else 0."""
    return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)


def dev_loaders(source, spec: TaskSpec, tokenizer, batch_size: int, eval_limit: int | None,
                common: dict | None = None) -> dict[str, DataLoader]:
    """{dev split: loader} in file order: ``eval_limit`` examples drawn with EVAL_SUBSET_SEED, the
    same for every run (``lorabench eval`` reads them without the training set)."""
    collate = Collator(pad_token_id(tokenizer), spec.is_regression)
    loaders = {}
    for split in spec.dev_splits:
        dev_ex = subset(source.load(spec, split), eval_limit, EVAL_SUBSET_SEED)
        dev_ds = encode(dev_ex, tokenizer, spec, split, key_extra={"limit": eval_limit}, **(common or {}))
        loaders[split] = DataLoader(dev_ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return loaders


def _check_positive(value, flag: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise DataError(f"{flag} must be a positive integer, got {value!r}; {hint}")
