"""Donor organs (Neural Organ Transplantation, Al-Zuraiqi 2026, arXiv 2601.13580): a contiguous
block of decoder layers taken out of a model, saved as a standalone checkpoint and inserted into
a recipient model at a chosen position.

    organ = extract(model, 13, 16)                 # deep copies of layers 13, 14, 15
    insert(recipient, organ, position=1)           # recipient.layers: 0, organ x3, 1, 2, ...
    save(organ, "organ/")                          # organ/organ.safetensors + organ/organ.json
    organ = load("organ/", recipient)              # checked against the recipient before any compute

The recipient's layer list grows by the organ's length; every attention layer's ``layer_idx`` (the
KV-cache slot) is renumbered and ``config.num_hidden_layers`` follows, so generation with a cache
still works. Only safetensors and JSON are read.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, ModelError
from ..results import atomic_write_bytes, write_json_atomic

ORGAN_SCHEMA = "lorabench-organ"
WEIGHTS, META = "organ.safetensors", "organ.json"


@dataclass
class Organ:
    """Donor layers and where they came from: ``layers[start:end]`` of ``source`` (hidden size
    ``hidden_size``); ``position`` is where it was (or will be) inserted, None before that."""

    layers: nn.ModuleList
    source: str
    start: int
    end: int
    hidden_size: int
    position: int | None = None
    info: dict = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.layers.parameters())

    def numel(self) -> int:
        return sum(p.numel() for p in self.layers.parameters())

    def meta(self) -> dict:
        layer = self.layers[0]
        return {"schema": ORGAN_SCHEMA, "schema_version": 1, "source_model": self.source,
                "layer_range": [self.start, self.end], "num_layers": len(self.layers), "position": self.position,
                "hidden_size": self.hidden_size, "layer_class": type(layer).__name__, "parameters": self.numel(),
                **self.info}


def config_of(model: nn.Module):
    """The transformers config of ``model`` (a PromptClassifier, a causal LM or a bare decoder)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} has no transformers config; pass a transformers model")
    return config


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (``model.model.layers`` in Llama, ``transformer.h`` in
    GPT-2): the list whose length is ``config.num_hidden_layers``."""
    config = config_of(model)
    if not getattr(config, "is_decoder", False) and getattr(config, "model_type", "") in ("bert", "mpnet", "roberta"):
        raise ModelError(f"organ transplantation needs a decoder-only model and {config.model_type!r} is an encoder "
                         "(the paper reports it works poorly there); use e.g. smollm2-135m with --head lm")
    n = config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return module
    raise ModelError(f"found no list of {n} transformer layers in {type(model).__name__}")


def model_name(model: nn.Module) -> str:
    return str(getattr(config_of(model), "name_or_path", "") or type(model).__name__)


def extract(model: nn.Module, start: int, end: int) -> Organ:
    """Deep copies of ``layers[start:end]`` of ``model`` (the model is left as it was), trainable."""
    layers = decoder_layers(model)
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(layers)):
        raise ConfigError(f"organ layers {start}:{end} are out of range: the model has {len(layers)} layers; "
                          f"pass START:END with 0 <= START < END <= {len(layers)}, e.g. --organ-layers 4:7")
    organ = nn.ModuleList(copy.deepcopy(layers[i]) for i in range(start, end))
    for p in organ.parameters():
        p.requires_grad_(True)
    return Organ(organ, model_name(model), start, end, int(config_of(model).hidden_size))


def check_position(model: nn.Module, position: int) -> None:
    n = len(decoder_layers(model))
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position <= n:
        raise ConfigError(f"organ position {position!r} is out of range: the recipient has {n} layers, so an organ "
                          f"goes before layer 0..{n - 1} or at the end ({n}); pass a position in 0..{n}")


def check_fits(organ: Organ, model: nn.Module) -> None:
    """The organ's hidden size and layer class are the recipient's (raised before any compute)."""
    config = config_of(model)
    recipient = decoder_layers(model)
    if organ.hidden_size != config.hidden_size:
        raise ModelError(f"the organ has hidden size {organ.hidden_size} (from {organ.source}) and the recipient "
                         f"{config.hidden_size}; transplant it into a model of the same architecture and width")
    if type(organ.layers[0]).__name__ != type(recipient[0]).__name__:
        raise ModelError(f"the organ's layers are {type(organ.layers[0]).__name__} and the recipient's "
                         f"{type(recipient[0]).__name__}; transplant it into a model of the same architecture")


def renumber(layers: nn.ModuleList) -> None:
    """``layer_idx`` = the layer's position, in every module of every layer that has one (the KV-cache slot)."""
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i


def insert(model: nn.Module, organ: Organ, position: int) -> nn.Module:
    """Insert ``organ``'s layers (the modules themselves, not copies) into ``model`` before layer
    ``position`` (``position == len(layers)``: at the end). Returns the same model."""
    check_position(model, position)
    check_fits(organ, model)
    layers = decoder_layers(model)
    config = config_of(model)
    types = getattr(config, "layer_types", None)
    for i, layer in enumerate(organ.layers):
        layers.insert(position + i, layer)
        if isinstance(types, list):  # per-layer attention kinds (Qwen2, Gemma): the donor's own
            types.insert(position + i, types[min(organ.start + i, len(types) - 1)])
    config.num_hidden_layers = len(layers)  # Llama's forward runs layers[:num_hidden_layers]
    renumber(layers)
    organ.position = position
    return model


def save(organ: Organ, directory: str | os.PathLike) -> Path:
    """``directory/organ.safetensors`` (keys ``layers.<i>.<param>``) and ``directory/organ.json``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"layers.{k}": v.detach().contiguous().clone() for k, v in organ.layers.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(folder / META, organ.meta())
    return folder


def read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path} ({e}); pass a folder written by lorabench transfer organ") from None
    if meta.get("schema") != ORGAN_SCHEMA:
        raise ModelError(f"{path} is not a lorabench organ (schema {meta.get('schema')!r}, expected {ORGAN_SCHEMA!r})")
    return meta


def load(directory: str | os.PathLike, recipient: nn.Module) -> Organ:
    """The organ saved in ``directory``, built from copies of the recipient's own layer class and
    filled from the file; its hidden size, layer class and tensor shapes are checked against the
    recipient before anything runs. Not yet inserted: ``insert(recipient, organ, organ.position)``."""
    meta = read_meta(directory)
    tensors = load_file(str(Path(directory) / WEIGHTS))
    n = int(meta["num_layers"])
    template = decoder_layers(recipient)[0]
    organ = Organ(nn.ModuleList(copy.deepcopy(template) for _ in range(n)), meta["source_model"],
                  meta["layer_range"][0], meta["layer_range"][1], int(meta["hidden_size"]), meta.get("position"))
    if type(template).__name__ != meta.get("layer_class"):
        raise ModelError(f"the organ's layers are {meta.get('layer_class')} and the recipient's "
                         f"{type(template).__name__}; transplant it into a model of the same architecture")
    check_fits(organ, recipient)
    state = organ.layers.state_dict()
    wanted = {f"layers.{k}": v.shape for k, v in state.items()}
    got = {k: v.shape for k, v in tensors.items()}
    if wanted.keys() != got.keys() or any(wanted[k] != got[k] for k in wanted):
        bad = sorted(set(wanted) ^ set(got)) or [k for k in wanted if wanted[k] != got[k]]
        raise ModelError(f"{Path(directory) / WEIGHTS} does not fit the recipient's layers (first mismatch: "
                         f"{bad[0]}); it was saved from another architecture or size")
    with torch.no_grad():
        organ.layers.load_state_dict({k.removeprefix("layers."): v for k, v in tensors.items()})
    return organ
