"""Rank tools over an adapted model or a saved adapter: ``evaluate_ranks`` (a rank-flexible
adapter scored at each rank, for AURAC) and LoRA-Squeeze's post-training compression
(``squeeze`` on a model, ``squeeze_adapter_dir`` on a saved folder, ``lorabench squeeze``).
The per-layer math (randomized SVD of B A) is in ``adapters/lora_squeeze.py``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .adapters import registry
from .adapters.lora_squeeze import squeeze_factors
from .adapters.nested_rank import power_of_two_ranks
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes, read_adapter_config, read_adapter_tensors
from .errors import AdapterFileError, VariantError
from .inject import RULE_INFIX, adapted_layers, set_rank, state_of


def evaluate_ranks(model: nn.Module, evaluate: Callable[[nn.Module], float], ranks=None) -> dict[int, float]:
    """``{rank: evaluate(model)}`` with the adapter set to each rank (``lorabench.set_rank``).

    Works for every rank-flexible variant (matryoshka_lora, dylora). ``ranks`` defaults to
    1, 2, 4, ... up to the adapters' max rank r (and r). ``evaluate`` runs in eval mode; the
    model's mode and every layer's rank are restored afterwards. Feed the result to
    ``lorabench.metrics.aurac(list(d), list(d.values()))``.
    """
    layers = [layer for _, layer in adapted_layers(model)]
    if any(layer.merged for layer in layers):
        raise VariantError("evaluate_ranks needs an unmerged adapter (a merged one has a fixed rank); "
                           "call lorabench.unmerge(model) first")
    if not layers or not all(hasattr(layer.adapter, "set_rank") for layer in layers):
        set_rank(model, 1)  # raises the "fixed rank" error before anything changes
    max_rank = min(layer.adapter.opts.r for layer in layers)
    ranks = power_of_two_ranks(max_rank) if ranks is None else tuple(ranks)
    previous = [int(layer.adapter.eval_rank) for layer in layers]
    was_training = model.training
    model.eval()
    scores: dict[int, float] = {}
    try:
        for b in ranks:
            set_rank(model, b)
            scores[int(b)] = float(evaluate(model))
    finally:
        for layer, b in zip(layers, previous):
            layer.adapter.set_rank(b)
        model.train(was_training)
    return scores


# ---- Post-Squeeze (LoRA-Squeeze, arXiv 2602.10993): a model or a saved folder -> a plain rank-r LoRA ---
def _lora_options(rank: int):
    return registry.get("lora").make_options(r=rank, alpha=float(rank))  # scale 1: B' A' is the update


def _factors_of(adapter, variant: str):
    """(B (out, r), A (r, in)) with B A the adapter's whole update to the original base weight, asked
    of the adapter through its PEFT export: only a plain LoRA (scale folded in) qualifies."""
    try:
        config, tensors = adapter.peft_config(), adapter.peft_tensors()
    except VariantError:
        config, tensors = {}, {}
    plain = (config.get("peft_type") == "LORA" and not config.get("use_dora") and not config.get("use_rslora")
             and config.get("lora_alpha") == config.get("r"))
    if not plain:
        raise VariantError(f"variant {variant!r} has no plain low-rank update B A to squeeze; squeeze works on "
                           "LoRA-family adapters (lora, pissa, dylora, matryoshka_lora, lora_squeeze, ...)")
    return tensors["lora_B.weight"].detach(), tensors["lora_A.weight"].detach()


@torch.no_grad()
def squeeze(model: nn.Module, rank: int, niter: int = 2, oversample: int = 10) -> nn.Module:
    """Replace every adapter of ``model`` by a plain rank-``rank`` LoRA (variant ``lora``, alpha =
    rank) whose update is the best rank-r approximation of the current one. Restores the original
    base weight of residual inits (PiSSA). Returns the same model, ready for save_adapter."""
    state = state_of(model)
    layers = list(adapted_layers(model))
    if not layers or getattr(model, "lorabench_shared", None) is not None:
        raise VariantError(f"variant {state.variant!r} has no per-layer low-rank factors to squeeze; "
                           "squeeze works on LoRA-family adapters")
    if any(layer.merged for _, layer in layers):
        raise VariantError("the adapter is merged into the base weights; call lorabench.unmerge(model) before squeeze")
    if any(layer.quantized for _, layer in layers):
        raise VariantError("squeeze writes a LoRA for the full-precision base, but this base is 4-bit; save the "
                           "adapter and run `lorabench squeeze DIR --rank r` on the folder instead")
    opts = _lora_options(rank)
    new = {name: squeeze_factors(*_factors_of(layer.adapter, state.variant), rank, 1.0, niter, oversample)
           for name, layer in layers}  # every layer checked before any is changed
    for name, layer in layers:
        offset = layer.adapter.base_offset()
        if offset is not None:
            layer.set_weight(layer.weight.float() + offset.float())  # back to W (PiSSA kept W - s B0 A0)
        old = layer.adapter
        adapter = registry.get("lora")(old.in_features, old.out_features, opts)
        adapter.to(device=layer.base_layer.weight.device, dtype=old.dtype)
        B, A = new[name]
        adapter.lora_A.copy_(A)
        adapter.lora_B.copy_(B)
        adapter.train(old.training)
        layer.adapter = adapter
    model.lorabench_state = replace(state, variant="lora", options=asdict(opts))
    return model


def squeeze_adapter_dir(directory: str | os.PathLike, rank: int, out: str | os.PathLike | None = None,
                        niter: int = 2, oversample: int = 10) -> Path:
    """``lorabench squeeze``: read a saved LoRA-family adapter (no base model needed: it stores B
    and A), write the plain rank-``rank`` LoRA to ``out`` (default ``DIR-r{rank}``). ``out`` must lie
    outside the source folder: the source adapter is never replaced."""
    src = Path(directory)
    dest = Path(out) if out is not None else src.with_name(f"{src.name}-r{rank}")
    if dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents:
        raise AdapterFileError(f"--out {dest} is the input adapter folder {src} (or inside it), and squeeze never "
                               f"overwrites its input; pass another --out, e.g. {src.name}-r{rank}")
    config, tensors = read_adapter_config(src), read_adapter_tensors(src)
    variant, targets = config.get("variant"), config.get("targets") or []
    cls = registry.get(variant)
    opts = cls.make_options(**config.get("options", {}))
    if not targets or any(k.startswith("lorabench_shared.") for k in tensors):
        raise VariantError(f"variant {variant!r} has no per-layer low-rank factors to squeeze; "
                           "squeeze works on LoRA-family adapters")
    new_opts = _lora_options(rank)
    prefixes = [f"{t}.adapter." for t in targets]
    tensors = {k: v for k, v in tensors.items() if RULE_INFIX not in k}  # the squeezed LoRA trains with AdamW
    result = {k: v for k, v in tensors.items() if not any(k.startswith(p) for p in prefixes)}  # the head
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if "lora_A" not in state or "lora_B" not in state:  # the saved names of the paper's factors
            raise VariantError(f"variant {variant!r} stores no lora_A / lora_B, so its update needs the base model: "
                               "load it, lorabench.load_adapter(model, DIR), then lorabench.squeeze(model, r)")
        adapter = cls(state["lora_A"].shape[1], state["lora_B"].shape[0], opts)
        try:
            adapter.load_state_dict(state)
        except RuntimeError as e:
            raise AdapterFileError(f"{src} does not match variant {variant!r} ({str(e).splitlines()[0]}); "
                                   "the file is corrupt or from another lorabench version") from None
        B, A = squeeze_factors(*_factors_of(adapter, variant), rank, 1.0, niter, oversample)
        result[prefix + "lora_A"], result[prefix + "lora_B"] = A.contiguous(), B.contiguous()
    config = {**config, "variant": "lora", "options": asdict(new_opts), "lorabench_version": __version__,
              "squeezed_from": {"variant": variant, "options": config.get("options")}}
    atomic_write_bytes(dest / WEIGHTS_NAME, lambda p: save_file(result, p, metadata={"format": "pt"}))
    atomic_write_bytes(dest / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return dest
