"""Export an adapted model in PEFT's on-disk format, without importing PEFT.

    directory/
      adapter_config.json          peft_type, r, ... (from the variant), target_modules,
                                   modules_to_save (the task head), task_type, fan_in_fan_out
      adapter_model.safetensors    the keys PEFT's ``save_pretrained`` writes:
        base_model.model.<layer>.<suffix>     per-layer tensors, e.g. ``...query.lora_A.weight``
        base_model.vera_A ...                 shared tensors, keys as the variant's hook names them
        base_model.model.<head>.<param>       the trained head (PEFT strips the
                                              ``modules_to_save.<adapter>`` part when saving)

``peft.PeftModel.from_pretrained(fresh_base, directory)`` then reproduces the model.
What goes in is asked of the variant: ``layer.adapter.peft_tensors()`` and
``layer.adapter.peft_config()`` per layer, and the classmethod
``peft_shared_tensors(shared)`` for shared tensors where the variant has one. A variant
that PEFT cannot express raises VariantError from those hooks, and so does a model whose
trainable tensors live outside the adapters and the task head (``full``).

Orientation: every tensor is in ``nn.Linear`` orientation, ``lora_A (r, in)``,
``lora_B (out, r)``. PEFT keeps that orientation on GPT-2's ``Conv1D`` too and only
transposes the merged product, which it signals with ``fan_in_fan_out=True``. On an ``nn.Conv2d``
(LoRA-C, DoRA-C) the tensors take PEFT's conv shapes, ``lora_A (r, in, kh, kw)``, ``lora_B (out, r, 1, 1)``,
magnitude ``(1, out, 1, 1)``; a dilated conv is refused (PEFT's lora_A conv ignores dilation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from . import adapters
from .adapters.base import AdaptedLinear, VariantError
from .adapters.conv import AdaptedConv2d, peft_conv_tensors
from .checkpoint import atomic_write_bytes
from .inject import adapted_layers, state_of
from .peft_format import CONFIG_NAME, PREFIX, WEIGHTS_NAME

#: Config fields that describe where the adapter sits; they are ours to set, not the variant's.
PLACEMENT_FIELDS = ("target_modules", "modules_to_save", "task_type", "base_model_name_or_path", "fan_in_fan_out")


def export_peft(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` loadable by
    ``peft.PeftModel.from_pretrained(base_model, directory)``. Returns the folder.

    For PiSSA / OLoRA the exported LoRA has rank 2r and applies to the ORIGINAL base
    weights: load it onto a fresh copy of the base model, not the residual one.
    """
    state = state_of(model)
    if getattr(model, "pooling", "cls") == "mean":
        raise VariantError(
            "this model classifies the mean of its hidden states (pooling 'mean'), which a PEFT model "
            "built on AutoModelForSequenceClassification does not do; train with --pooling cls to export "
            "for PEFT, or keep lorabench.save_adapter"
        )
    layers = list(adapted_layers(model))
    if not layers:
        raise VariantError(
            f"variant {state.variant!r} adapts no layers, which PEFT's format cannot express; "
            "use lorabench.save_adapter (or lorabench.unload + save_pretrained for full fine-tuning)"
        )
    if any(layer.merged for _, layer in layers):
        raise VariantError("the adapter is merged into the base weights; call lorabench.unmerge(model) before export_peft")

    tensors: dict[str, torch.Tensor] = {}
    config = _layer_config(layers)
    for name, layer in layers:
        own = layer.adapter.peft_tensors()
        if isinstance(layer, AdaptedConv2d):  # LoRA-C / DoRA-C: PEFT's Conv2d shapes (r, in, kh, kw) ...
            own = peft_conv_tensors(layer, own)
        for suffix, t in own.items():
            tensors[f"{PREFIX}{name}.{suffix}"] = t
    tensors.update(_shared_tensors(model, state.variant))
    heads = list(state.head)
    _check_trainable(model, layers, heads)
    for head in heads:
        for key, t in model.get_submodule(head).state_dict().items():
            tensors[f"{PREFIX}{head}.{key}"] = t

    config.update(
        target_modules=_target_modules(model, [n for n, _ in layers]),
        modules_to_save=heads or None,
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else None,
        base_model_name_or_path=getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        inference_mode=True,
    )
    if any(layer.transposed for _, layer in layers):  # GPT-2's Conv1D; written only then (PEFT's
        config["fan_in_fan_out"] = True  # MiSS / Bone configs have no such field and warn about it)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    directory = Path(directory)
    atomic_write_bytes(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write_bytes(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return directory


def _layer_config(layers: list[tuple[str, AdaptedLinear]]) -> dict:
    """The variant's PEFT config fields, which every layer must agree on."""
    first_name, first = layers[0]
    config = first.adapter.peft_config()
    bad = [k for k in PLACEMENT_FIELDS if k in config]
    if bad:
        raise VariantError(f"peft_config() of variant {first.adapter.name!r} sets {bad}; export_peft fills those itself")
    for name, layer in layers[1:]:
        other = layer.adapter.peft_config()
        if other != config:
            diff = sorted(k for k in set(config) | set(other) if config.get(k) != other.get(k))
            raise VariantError(
                f"layers {first_name!r} and {name!r} need different PEFT settings ({', '.join(diff)}); "
                "PEFT's format needs one setting for all layers, so export with equal options per layer"
            )
    return dict(config)


def _shared_tensors(model: nn.Module, variant: str) -> dict[str, torch.Tensor]:
    """Shared tensors (VeRA's projections) under their full PEFT keys (``base_model.vera_A``)."""
    shared = getattr(model, "lorabench_shared", None)
    if shared is None:
        return {}
    cls = adapters.get(variant)
    hook = getattr(cls, "peft_shared_tensors", None)
    if hook is None:
        raise VariantError(
            f"variant {variant!r} has shared tensors but no peft_shared_tensors() hook, so PEFT's format "
            "cannot express it; use lorabench.save_adapter"
        )
    return dict(hook(shared))


def _check_trainable(model: nn.Module, layers: list[tuple[str, AdaptedLinear]], heads: list[str]) -> None:
    """Every trainable tensor must belong to an adapter, the shared state or a head (modules_to_save)."""
    owned = {id(p) for _, layer in layers for p in layer.adapter.parameters()}
    shared = getattr(model, "lorabench_shared", None)
    if shared is not None:
        owned.update(id(p) for p in shared.parameters())
    for head in heads:
        owned.update(id(p) for p in model.get_submodule(head).parameters())
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if stray:
        raise VariantError(
            f"{len(stray)} trainable tensors (e.g. {stray[0]!r}) are neither adapter tensors nor the task head, "
            "which PEFT's format cannot express; use lorabench.save_adapter"
        )


def _target_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Layer-name suffixes when they select exactly ``names`` under PEFT's rule
    (``key == t or key.endswith("." + t)``), else the exact names."""
    internal = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, AdaptedLinear) for c, _ in m.named_modules() if c}
    candidates = [n for n, _ in model.named_modules() if n and n not in internal]
    suffixes = sorted({n.split(".")[-1] for n in names})
    matched = {n for n in candidates if any(n == s or n.endswith("." + s) for s in suffixes)}
    return suffixes if matched == set(names) else list(names)
