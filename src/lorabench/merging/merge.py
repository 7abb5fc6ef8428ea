"""Read the adapters to merge, check them before any compute, and merge them: ``merge_adapters``.

An adapter merges when its variant is LoRA-form: it keeps dense factors A, B, its layer output is
W0 x + s B A x, and nothing else changes the layer (``why_not_mergeable``: the test ``lorabench.pack``
applies, without the column scaling a pack also takes: lora, swapped, lora_plus, lora_fa, ffa_lora,
allora, pissa, olora). Each layer's update is read
as ``lowrank_factors()``: ``(B, A)`` with ``B @ A`` the change relative to the ORIGINAL base
weights. For PiSSA / OLoRA (residual inits: the frozen base is W - s B0 A0) that is the rank-2r
pair ``[s B | -s B0]``, ``[A; A0]`` (as ``export_peft`` writes them), so they merge correctly with
plain LoRAs and the merged adapter applies to the original base.

Every adapter needs the result JSON that ``lorabench train --save-adapter`` writes beside it
(``run-<id>.json`` beside ``run-<id>-adapter/``): it names the adapter's task. All adapters must
share the base model, its weights (fingerprint), architecture and target layers; no method needs
equal ranks (every method works on the factors or on dW = B A). The task a run JSON names becomes
a folder name (``out/<task>/``), so it must be one plain path component (``outputs.safe_name``).

``plan_merge`` runs every check (options and finite weights first, before any file is read; then
each adapter once: one folder passed twice, or two folders of the same content, is refused, as it
would count one update twice) and ``compute`` does the math; ``merge_adapters`` is both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapter_files import read_json, repeated_folder, tensors_digest
from ..adapters import registry
from ..adapters.base import Variant
from ..checkpoint import (
    CONFIG_NAME,
    RULE_INFIX,
    read_adapter_config,
    read_adapter_tensors,
)
from ..errors import AdapterFileError, VariantError
from ..outputs import safe_name
from . import concat, dare, lego, linear, ties  # noqa: F401  (register the methods)
from . import registry as methods


@dataclass
class Source:
    """One adapter to merge."""

    directory: Path
    config: dict  # its lorabench_adapter.json
    result: dict  # the run's result JSON
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (B (out, r), A (r, in)), B A = dW
    head: dict[str, torch.Tensor]  # the task head's tensors (every saved tensor outside the adapters)
    digest: str = ""  # sha256 of the factors and head: equal for two copies of one adapter

    @property
    def task(self) -> str:
        return self.result["task"]

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values()))[1].shape[0]


def why_not_mergeable(variant: str) -> str | None:
    """Why adapters of ``variant`` cannot merge, or None when they can."""
    cls = registry.get(variant)
    if not cls.has_lora_factors:
        return "it keeps no plain dense low-rank factors A, B"
    if cls.forward is not Variant.forward:  # DoRA packs (a column scaling of W x + s B A x), but B A alone
        return "its layer output is not W0 x + s B A x"  # is not its update: merging B A would drop the rest
    return cls.unpackable()


def mergeable_variants() -> list[str]:
    return [n for n in registry.names() if why_not_mergeable(n) is None]


def result_beside(directory: Path) -> dict:
    """The result JSON of the run that saved ``directory``."""
    path = directory.parent / f"{directory.name.removesuffix('-adapter')}.json"
    missing = (f"no result JSON {path.name} beside {directory}; lorabench merge reads each adapter's task from the "
               "run-<id>.json that `lorabench train --save-adapter` writes beside run-<id>-adapter/")
    if not directory.name.endswith("-adapter"):
        raise AdapterFileError(missing)
    result = read_json(path, missing=missing, fix="train the adapter again")
    if not isinstance(result, dict) or not isinstance(result.get("task"), str):
        raise AdapterFileError(f"{path} names no task (a 'task' string); is it a lorabench result JSON?")
    safe_name(result["task"], f"the task in {path}")  # it becomes the folder out/<task>/
    return result


def content_digest(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], head: dict[str, torch.Tensor]) -> str:
    """sha256 of every factor and head tensor (``adapter_files.tensors_digest``)."""
    named = [(f"{n}.{k}", t) for n, (B, A) in factors.items() for k, t in (("B", B), ("A", A))] + sorted(head.items())
    return tensors_digest(named)


def read_source(directory: str | Path) -> Source:
    directory = Path(directory)
    config = read_adapter_config(directory)
    why = why_not_mergeable(config["variant"])
    if why is not None:
        raise VariantError(f"{directory} is a {config['variant']!r} adapter, which cannot merge: {why}. lorabench merge "
                           f"takes LoRA-form adapters (W0 x + s B A x): {', '.join(mergeable_variants())}")
    result = result_beside(directory)
    tensors = read_adapter_tensors(directory)
    cls = registry.get(config["variant"])
    opts = cls.make_options(**config["options"])
    factors, owned = {}, set()
    for layer in config["targets"]:
        prefix = f"{layer}.adapter."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        owned.update(k for k in tensors if k.startswith((prefix, f"{layer}{RULE_INFIX}")))
        if "lora_A" not in state or "lora_B" not in state:
            raise AdapterFileError(f"{directory} has no lora_A / lora_B for layer {layer!r}; the file is corrupt, "
                                   "save the adapter again")
        n_in, n_out = state["lora_A"].shape[1], state["lora_B"].shape[0]
        variant = cls(n_in, n_out, opts)
        variant.load_state_dict(state)
        with torch.no_grad():
            B, A = variant.lowrank_factors()  # B @ A: the change to the original base weight
        factors[layer] = (B.detach().float(), A.detach().float())
    head = {k: v for k, v in tensors.items() if k not in owned and not k.startswith("lorabench_shared.")}
    return Source(directory, config, result, factors, head, content_digest(factors, head))


def pool_folders(paths: list[str]) -> list[Path]:
    """Each path is an adapter folder, or a folder whose ``run-*-adapter`` folders are the pool."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / CONFIG_NAME).is_file():
            out.append(p)
        elif p.is_dir() and sorted(p.glob("run-*-adapter")):
            out.extend(sorted(p.glob("run-*-adapter")))
        else:
            raise AdapterFileError(f"scenario pool entry {p} is neither an adapter folder nor a folder holding "
                                   "run-<id>-adapter folders (lorabench train --save-adapter); check the path")
    return out


def check_count(n: int) -> None:
    if n < 2:
        raise AdapterFileError(f"merging needs two or more adapters, got {n}; pass several "
                               "run-<id>-adapter folders (one per task)")


def check_sources(sources: list[Source]) -> None:
    """One base, one architecture and the same target layers for all, and no adapter twice, or an
    error naming the two."""
    check_count(len(sources))
    first = sources[0]
    for s in sources[1:]:
        for key, what in (("targets", "target layers"), ("base_model", "base model"), ("fingerprint", "base weights")):
            if s.config.get(key) != first.config.get(key):
                raise AdapterFileError(
                    f"{s.directory} and {first.directory} differ in their {what} ({key}: {s.config.get(key)!r} vs "
                    f"{first.config.get(key)!r}); merge adapters trained on one base with the same --targets")
        digest = (s.config.get("architecture") or {}).get("digest")
        if digest != (first.config.get("architecture") or {}).get("digest"):
            raise AdapterFileError(f"{s.directory} and {first.directory} were saved from different architectures "
                                   "(layer count or shapes); merge adapters of one base with the same --layers")
    for i, s in enumerate(sources):
        for t in sources[:i]:
            if s.digest and s.digest == t.digest:
                raise AdapterFileError(f"adapter {s.directory} is the same adapter as {t.directory} (equal factors and "
                                       "head); pass each adapter once (--weights weighs one more)")


def check_distinct_folders(directories: list[str | Path]) -> None:
    """One folder passed twice (the same resolved path) is refused, naming it."""
    repeat = repeated_folder(directories)
    if repeat is not None:
        first, again = repeat
        also = f" (also as {first})" if first != again else ""
        raise AdapterFileError(f"adapter {again} is passed twice{also}; pass each adapter once (--weights weighs one "
                               "more)")


@dataclass
class Merged:
    """The merged factors per layer and what made them."""

    method: str
    weights: list[float]
    density: float | None
    k: int | None
    seed: int
    rank: int
    sources: list[Source]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    def options(self) -> dict[str, Any]:
        used = methods.get(self.method).uses
        return {"weights": self.weights, "rank": self.rank, **{k: getattr(self, k) for k in ("density", "k", "seed")
                                                                if k in used}}

    def key(self, folders: list[str]) -> str:
        """A short hash of what makes this merge: method, options, each source's content and folder name."""
        what = {"method": self.method, "options": self.options(),
                "sources": [[s.digest, name] for s, name in zip(self.sources, folders)]}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def plan_merge(directories: list[str | Path], method: str, *, weights: list[float] | None = None,
               density: float | None = None, k: int | None = None, seed: int | None = None) -> Merged:
    """Every check of a merge, no compute: the options (before any file is read), then the
    adapters. The returned Merged has no factors yet (``compute``)."""
    cls = methods.get(method)
    check_count(len(directories))
    methods.check_options(cls, len(directories), weights, density, k, seed)
    check_distinct_folders(directories)
    return plan_sources([read_source(d) for d in directories], method, weights=weights, density=density, k=k,
                        seed=seed)


def plan_sources(sources: list[Source], method: str, *, weights: list[float] | None = None,
                 density: float | None = None, k: int | None = None, seed: int | None = None) -> Merged:
    """``plan_merge`` of adapters already read (``read_source``)."""
    cls = methods.get(method)
    weights, density = methods.check_options(cls, len(sources), weights, density, k, seed)
    check_sources(sources)
    rank = cls.rank([s.rank for s in sources], k)
    shapes = {layer: (B.shape[0], A.shape[1]) for layer, (B, A) in sources[0].factors.items()}
    layer, (n_out, n_in) = min(shapes.items(), key=lambda kv: min(kv[1]))
    if rank > min(n_out, n_in):
        raise VariantError(f"the merged rank {rank} is larger than min(in, out) = {min(n_out, n_in)} of layer {layer!r}; "
                           f"merge fewer adapters or pass --k {min(n_out, n_in)} or less")
    return Merged(cls.name, weights, density, k, 0 if seed is None else seed, rank, sources, {})


def compute(merged: Merged) -> Merged:
    """Fill ``merged.factors``: the method's merge, layer by layer in the adapters' target order."""
    cls = methods.get(merged.method)
    generator = torch.Generator().manual_seed(merged.seed)
    merged.factors = {name: cls.merge_layer([s.factors[name] for s in merged.sources], merged.weights, merged.rank,
                                            merged.density, generator)
                      for name in merged.sources[0].config["targets"]}
    return merged


def merge_adapters(directories: list[str | Path], method: str, *, weights: list[float] | None = None,
                   density: float | None = None, k: int | None = None, seed: int | None = None) -> Merged:
    """Merge the adapters in ``directories`` (see the package docstring); every check runs first."""
    return compute(plan_merge(directories, method, weights=weights, density=density, k=k, seed=seed))
