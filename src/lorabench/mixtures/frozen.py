"""Frozen pre-trained experts: LoRA adapters saved by ``lorabench train --save-adapter`` (one per
task, say) become the E experts of every routed layer; only the routers (and the task heads) train
-- LoRA-Mixer's second regime (arXiv 2507.00029: "plug-and-play routing over frozen, pre-trained
LoRA modules").

Expert e of layer l is adapter e's (A, s B) on layer l, its scale s = alpha / r (alpha / sqrt(r)
for rsLoRA) folded into B. The adapters must be plain LoRA on the same base weights (fingerprint),
architecture and layers, with one rank, and no two of them the same expert (the same folder is
refused by ``MixtureConfig.check``, the same weights here: ``digest``). They are read here, before
any model loads; ``check_architecture`` compares them with the loaded model before anything is
wrapped, and ``build.load_experts`` copies them into the wrapped layers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..adapter_files import tensors_digest
from ..checkpoint import architecture, read_adapter_config, read_adapter_tensors
from ..errors import AdapterFileError


def read_experts(directories: list[str]) -> tuple[list[str], int, list[dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """(targets, r, [{layer: (A (r, in), s B (out, r))} per adapter]), checked to agree; each adapter's
    dict also holds ``__fingerprint__`` (its base weights), ``__architecture__`` (as saved, or None)
    and ``__digest__`` (of its experts' factors: what a run id hashes)."""
    targets, rank, experts = None, None, []
    for d in directories:
        config = read_adapter_config(d)
        opts = config["options"]
        if config["variant"] != "lora" or opts.get("init") in ("pissa", "olora"):
            raise AdapterFileError(f"{d} is a {config['variant']!r} adapter (init {opts.get('init')!r}); frozen experts "
                                   "must be plain LoRA on the unchanged base: train them with --variant lora")
        if targets is None:
            targets, rank = list(config["targets"]), opts["r"]
        elif list(config["targets"]) != targets or opts["r"] != rank:
            raise AdapterFileError(f"{d} adapts other layers or another rank than {directories[0]}; frozen experts "
                                   "must share targets and rank (train them with the same --targets and --opt r=)")
        tensors = read_adapter_tensors(d)
        s = opts["alpha"] / (math.sqrt(rank) if opts.get("rslora") else rank)
        experts.append({name: (tensors[f"{name}.adapter.lora_A"], s * tensors[f"{name}.adapter.lora_B"])
                        for name in targets})
        expert_digest = digest(experts[-1])
        same = [directories[i] for i, ex in enumerate(experts[:-1]) if ex["__digest__"] == expert_digest]
        if same:
            raise AdapterFileError(f"expert adapters {same[0]} and {d} hold the same LoRA weights, which makes two "
                                   "identical experts; pass each adapter once (or another adapter in its place)")
        experts[-1]["__digest__"] = expert_digest  # type: ignore[assignment]
        experts[-1]["__fingerprint__"] = config["fingerprint"]  # type: ignore[assignment]
        experts[-1]["__architecture__"] = config.get("architecture")  # type: ignore[assignment]
    return targets, rank, experts


def digest(expert: dict) -> str:
    """sha256 of an adapter's experts (every layer's A and s B: ``adapter_files.tensors_digest``), short."""
    names = sorted(k for k in expert if not k.startswith("__"))
    return tensors_digest((f"{name}.{i}", t) for name in names for i, t in enumerate(expert[name]))[:16]


def check_architecture(model: nn.Module, directories: list[str], experts: list[dict]) -> None:
    """AdapterFileError unless every adapter was saved from ``model``'s architecture (depth, width, layer
    shapes; ``checkpoint.architecture``), as ``lorabench adapter`` checks it: the fingerprint reads only
    the adapted layers, so a 2-layer model's adapters match a 3-layer model's first layers."""
    here = architecture(model)
    for d, ex in zip(directories, experts):
        saved = ex.get("__architecture__")
        if saved is None or saved.get("digest") == here["digest"]:
            continue  # saved before lorabench recorded it: the fingerprint and layer checks still run
        differ = [f"{k} {saved.get(k)} (this model: {here[k]})" for k in ("model_type", "layers", "hidden_size")
                  if saved.get(k) != here[k]]
        fix = (f"route it in the model it was trained on with --layers {saved['layers']}"
               if saved.get("layers") != here["layers"] and saved.get("layers") else
               "route it in the base model it was trained on (--model, --layers)")
        raise AdapterFileError(f"the expert adapter in {Path(d)} was saved from another architecture: "
                               f"{', '.join(differ) or 'other layer shapes'}; {fix}")
