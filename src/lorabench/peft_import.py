"""Read a PEFT adapter folder onto a base model as a lorabench adapter: the inverse of ``export_peft``.

    lorabench.load_peft(model, "their-peft-adapter/")   # adapter_config.json + adapter_model.safetensors

The variant that reads a folder is the one whose class declares its method (``Variant.peft_method``:
``LORA``, ``DORA`` for a LoRA with ``use_dora``, ``VERA``); its ``options_from_peft`` turns the config
into options and its ``peft_names`` say where each tensor goes, next to the ``peft_config`` /
``peft_tensors`` hooks that export it. An exported PiSSA / OLoRA / LoRA+ ... folder is a plain PEFT
LoRA, so it comes back as variant ``lora`` with the same outputs. Everything else is refused with a
message naming it: another ``peft_type``, a config field lorabench has no counterpart for (per-layer
``rank_pattern``, ``layers_to_transform``, trainable biases ...), tensors the variant does not read,
a pickled ``adapter_model.bin``, a NaN or infinite tensor. Only JSON and safetensors are read
(``safetensors.torch.load_file``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapter_files import check_finite, read_json, read_safetensors
from .adapters import registry
from .errors import AdapterFileError, VariantError
from .inject import adapted_layers, apply, state_of
from .peft_format import CONFIG_NAME, PREFIX, WEIGHTS_NAME

#: Config fields that say where the adapter sits or who wrote it: ``load_peft`` reads them itself.
PLACEMENT = ("peft_type", "peft_version", "task_type", "base_model_name_or_path", "revision", "inference_mode",
             "auto_mapping", "target_modules", "modules_to_save", "fan_in_fan_out")


def is_peft_folder(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CONFIG_NAME).is_file()


def readers() -> dict[str, type]:
    """PEFT method -> the lorabench variant that reads it (declared on the class itself)."""
    out = {}
    for name in registry.names():
        cls = registry.get(name)
        if vars(cls).get("peft_method"):
            out[cls.peft_method] = cls
    return out


def read_peft_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``adapter_config.json`` as a dict, with the method it names (``method``: LORA, DORA, VERA ...)."""
    path = Path(directory) / CONFIG_NAME
    config = read_json(path, missing=f"no {CONFIG_NAME} in {directory}; is this a folder written by PEFT's save_pretrained?",
                       fix="save the PEFT adapter again")
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise AdapterFileError(f"{path} has no 'peft_type'; it is not a PEFT adapter config")
    dora = config["peft_type"] == "LORA" and config.get("use_dora")
    return {**config, "method": "DORA" if dora else config["peft_type"]}


def variant_for(config: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """(variant class, its options) for a PEFT config, or a VariantError naming the method or field."""
    known = readers()
    method = config["method"]
    if method not in known:
        raise VariantError(f"PEFT method {method} has no lorabench reader; lorabench reads PEFT folders of "
                           f"{', '.join(f'{m} (as {c.name})' for m, c in sorted(known.items()))}")
    cls = known[method]
    rest = {k: v for k, v in config.items() if k not in PLACEMENT and k != "method"}
    try:
        options = cls.options_from_peft(rest)
    except KeyError as e:
        raise AdapterFileError(f"the PEFT {method} config has no {e.args[0]!r}; save the adapter again") from None
    unsupported = sorted(k for k, v in rest.items() if v not in (None, False, "", "none", [], {}))
    if unsupported:
        raise VariantError(
            f"PEFT {method} adapter sets {', '.join(f'{k}={rest[k]!r}' for k in unsupported)}, which lorabench's "
            f"{cls.name} has no counterpart for; it reads {method} folders with {', '.join(sorted(options))} "
            "and one setting for every layer")
    return cls, options


def read_peft_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    weights = Path(directory) / WEIGHTS_NAME
    pickled = Path(directory) / "adapter_model.bin"
    if not weights.is_file() and pickled.is_file():
        raise AdapterFileError(f"{pickled} is a pickle, which lorabench never loads; convert it to safetensors "
                               "(load it in PEFT once and save_pretrained(dir, safe_serialization=True))")
    tensors = read_safetensors(weights, missing=f"no {WEIGHTS_NAME} in {directory}; the PEFT folder is incomplete")
    return check_finite(tensors, weights, "train it again or save it again with PEFT")


def load_peft(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Apply the PEFT adapter in ``directory`` to the fresh base ``model`` (see the module docstring).

    The model then is an ordinary lorabench model of the reading variant (``lora``, ``dora``,
    ``vera``): ``save_adapter``, ``merge``, ``export_peft`` and ``lorabench eval`` work on it.
    Load it onto the model the adapter was trained on, with its own classification head (pooling
    ``cls``): PEFT's ``AutoModelForSequenceClassification`` reads no mean-pooled head."""
    directory = Path(directory)
    config = read_peft_config(directory)
    cls, options = variant_for(config)
    tensors = read_peft_tensors(directory)
    if getattr(model, "lorabench_state", None) is not None:
        raise VariantError("load_peft needs a plain base model; this one already has an adapter (lorabench.unload it)")
    if getattr(model, "pooling", "cls") == "mean":
        raise VariantError("a PEFT adapter classifies with the model's own head; load the base with pooling='cls' "
                           "(lorabench.models.load_model(..., pooling='cls'), --pooling cls)")
    targets = config.get("target_modules")
    apply(model, cls.name, targets=sorted(targets) if isinstance(targets, list) else targets, initialize=False,
          **options)
    _copy(model, cls, tensors, directory)
    return model


@torch.no_grad()
def _copy(model: nn.Module, cls: type, tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Every tensor of the file into the model; a missing or unread one is an error naming it."""
    destinations: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model):
        for suffix, attr in cls.peft_names.items():
            destinations[f"{PREFIX}{name}.{suffix}"] = getattr(layer.adapter, attr)
    shared = getattr(model, "lorabench_shared", None)
    optional = {key: getattr(shared, attr) for key, attr in cls.peft_shared_names().items() if key in tensors}
    for head in state_of(model).head:
        for key, t in model.get_submodule(head).state_dict(keep_vars=True).items():
            optional[f"{PREFIX}{head}.{key}"] = t
    missing = sorted(set(destinations) - set(tensors))
    unread = sorted(set(tensors) - set(destinations) - set(optional))
    if missing or unread:
        raise AdapterFileError(
            f"{directory / WEIGHTS_NAME} does not fit this model as a {cls.name} adapter: "
            + (f"no tensor {missing[0]!r} ({len(missing)} missing; load the base model it was trained on, "
               "with as many layers) " if missing else "")
            + (f"tensor {unread[0]!r} ({len(unread)} in all) is not one lorabench reads" if unread else ""))
    for key, target in {**destinations, **optional}.items():
        value = tensors[key]
        if value.numel() != target.numel():
            raise AdapterFileError(f"tensor {key!r} has shape {tuple(value.shape)}, the model expects "
                                   f"{tuple(target.shape)}; load the base model the adapter was trained on")
        target.copy_(value.reshape(target.shape).to(target.dtype))
