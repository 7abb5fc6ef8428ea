"""Save and load adapters: one safetensors file of tensors and one JSON of config.

    adapter_dir/
      lorabench_adapter.json          variant, options, targets, base fingerprint, version
      lorabench_adapter.safetensors   every adapter tensor, shared tensors, trained head, and the
                                      optimisation rule's state (<layer>.rule.<key>: AltLoRA's momentum,
                                      Stable-LoRA's stop)

Nothing is ever unpickled. Loading checks the base-model fingerprint before touching
the model, so an adapter cannot silently land on the wrong base weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .adapter_files import check_finite, read_json, read_safetensors
from .adapters import registry
from .errors import AdapterFileError, VariantError
from .inject import (
    RULE_INFIX,
    adapted_layers,
    adapter_tensors,
    apply,
    fingerprint,
    head_modules,
    in_head,
    is_linear,
    state_of,
)
from .results import atomic_write_bytes, file_mode  # noqa: F401  (atomic_write_bytes: re-exported)

CONFIG_NAME = "lorabench_adapter.json"
WEIGHTS_NAME = "lorabench_adapter.safetensors"
FORMAT_VERSION = 1


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save the adapter of ``model`` (see the module docstring). Returns the folder."""
    state = state_of(model)
    directory = Path(directory)
    layers = list(adapted_layers(model))
    if any(layer.merged for _, layer in layers):
        raise VariantError("the adapter is merged into the base weights; call lorabench.unmerge(model) before saving")
    tensors = adapter_tensors(model)
    config = {
        "format": "lorabench-adapter",
        "format_version": FORMAT_VERSION,
        "lorabench_version": __version__,
        **state.to_json(),
        "base_model": getattr(getattr(model, "config", None), "_name_or_path", None),
        "model_class": type(model).__name__,
        "pooling": getattr(model, "pooling", "cls"),  # "mean" / "lm" for lorabench's own heads
        "architecture": architecture(model),
    }
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return directory


#: Fields of ``lorabench_adapter.json`` and their JSON types (checked all at once on read).
REQUIRED_FIELDS = {"variant": str, "options": dict, "targets": list, "fingerprint": str}


def architecture(model: nn.Module) -> dict:
    """What shapes the model: depth, width, type, and a digest of every linear and embedding layer's
    name and shape (an adapter only fits the architecture it was trained on)."""
    config = getattr(model, "config", None)
    heads = head_modules(model)
    shapes = []
    for name, m in model.named_modules():
        if ".adapter" in f".{name}" or in_head(name, heads) or getattr(m, "weight", None) is None:
            continue  # the adapter's own tensors and the task head are not the base architecture
        if is_linear(m) or isinstance(m, nn.Embedding):
            # (in, out) whatever the storage: a 4-bit layer packs its weight, GPT-2's Conv1D stores (in, out)
            shape = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else tuple(m.weight.shape)
            shapes.append(f"{name.removesuffix('.base_layer')}:{shape}")  # named as before apply
    return {"model_type": getattr(config, "model_type", None), "layers": getattr(config, "num_hidden_layers", None),
            "hidden_size": getattr(config, "hidden_size", None),
            "digest": hashlib.sha256("\n".join(shapes).encode()).hexdigest()[:16]}


def _check_architecture(model: nn.Module, config: dict, directory: Path) -> None:
    saved = config.get("architecture")
    if saved is None:  # saved before lorabench recorded it: the fingerprint and shape checks still run
        return
    here = architecture(model)
    if here["digest"] == saved.get("digest"):
        return
    differ = [f"{k} {saved.get(k)} (this model: {here[k]})" for k in ("model_type", "layers", "hidden_size")
              if saved.get(k) != here[k]]
    fix = (f"load it with --layers {saved['layers']} (lorabench.models.load_model(..., layers={saved['layers']}))"
           if saved.get("layers") != here["layers"] and saved.get("layers") else "load the base model it was trained on")
    raise AdapterFileError(f"the adapter in {directory} was saved from another architecture: "
                           f"{', '.join(differ) or 'other layer shapes'}; {fix}")


def read_adapter_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    config = read_json(path, missing=f"no {CONFIG_NAME} in {directory}; is this a folder written by lorabench.save_adapter?",
                       fix="the file is corrupt, save the adapter again")
    if not isinstance(config, dict) or config.get("format") != "lorabench-adapter":
        raise AdapterFileError(f"{path} is not a lorabench adapter config (missing 'format': 'lorabench-adapter')")
    problems = [f"'{k}' is missing" if k not in config else f"'{k}' must be a JSON {t.__name__}, got {config[k]!r}"
                for k, t in REQUIRED_FIELDS.items() if not isinstance(config.get(k), t)]
    if isinstance(config.get("targets"), list) and not all(isinstance(t, str) for t in config["targets"]):
        problems.append("'targets' must list layer names (strings)")
    if not problems:
        try:
            registry.get(config["variant"]).make_options(**config["options"])
        except (VariantError, TypeError) as e:
            problems.append(f"'options': {e}")
    if problems:
        raise AdapterFileError(f"{path}: {'; '.join(problems)}; the file was edited or is corrupt, save the "
                               "adapter again")
    return config


def read_adapter_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The saved tensors (safetensors only), or an AdapterFileError naming the fix (a NaN or
    infinite tensor included: every reader of an adapter refuses it before using it)."""
    path = Path(directory) / WEIGHTS_NAME
    tensors = read_safetensors(path, fix="save the adapter again",
                               missing=f"no {WEIGHTS_NAME} in {directory}; the adapter folder is incomplete, save it again")
    return check_finite(tensors, path, "train it again (e.g. with a lower --lr) or save it again")


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the saved adapter to a fresh base ``model`` (the one it was trained on)."""
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights = directory / WEIGHTS_NAME
    tensors = read_adapter_tensors(directory)

    if getattr(model, "lorabench_state", None) is not None:
        raise VariantError("load_adapter needs a plain base model; this one already has an adapter (lorabench.unload it, or load a fresh model)")
    names = config["targets"]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise AdapterFileError(
            f"the model has no layer {missing[0]!r} that the adapter in {directory} targets; "
            f"load the base model it was trained on ({config.get('base_model')})"
        )
    _check_architecture(model, config, directory)
    fp_names = names or [n for n, m in model.named_modules() if is_linear(m)][:8]
    if fingerprint(model, fp_names) != config["fingerprint"]:
        raise AdapterFileError(
            f"the adapter in {directory} was trained on other base weights ({config.get('base_model')}, "
            f"fingerprint {config['fingerprint']}); load that base model before load_adapter"
        )
    apply(model, config["variant"], targets=names if names else None, initialize=False, **config["options"])
    rule_state = _pop_rule_state(tensors, dict(adapted_layers(model)), weights)
    expected = {k for k in adapter_tensors(model) if RULE_INFIX not in k}  # a fresh rule's state is optional
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise AdapterFileError(
            f"{weights} does not match variant {config['variant']!r}: "
            f"missing {missing[:3]}, unexpected {extra[:3]}; the file is corrupt or from another lorabench version"
        )
    _load_tensors(model, tensors)
    for name, layer in adapted_layers(model):
        layer.subtract_base_offset()
        if name in rule_state:  # else the rule starts fresh (an adapter saved before it had state)
            layer.adapter.rule.load_state_dict(rule_state[name])
    return model


def _pop_rule_state(tensors: dict[str, torch.Tensor], layers: dict, weights: Path) -> dict[str, dict]:
    """Take the rules' tensors out of ``tensors``: {layer name: {key: tensor}}."""
    state: dict[str, dict] = {}
    for key in [k for k in tensors if RULE_INFIX in k]:
        name, sub = key.split(RULE_INFIX, 1)
        if name not in layers:
            raise AdapterFileError(f"{weights} holds optimizer-rule state for {name!r}, which the adapter does not "
                                   "adapt; the file is corrupt or from another lorabench version")
        state.setdefault(name, {})[sub] = tensors.pop(key)
    return state


@torch.no_grad()
def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for key, value in tensors.items():
        target = params.get(key, buffers.get(key))
        if target.shape != value.shape:
            raise AdapterFileError(f"tensor {key!r} has shape {tuple(value.shape)}, the model expects "
                                   f"{tuple(target.shape)}; load the model (and task head) the adapter was trained with")
        target.copy_(value.to(target.dtype))
