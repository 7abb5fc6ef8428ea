"""Frozen pre-trained experts: LoRA adapters saved by ``lorabench train --save-adapter`` (one per
task, say) become the E experts of every routed layer; only the routers (and the task heads) train
-- LoRA-Mixer's second regime (arXiv 2507.00029: "plug-and-play routing over frozen, pre-trained
LoRA modules").

Expert e of layer l is adapter e's (A, s B) on layer l, its scale s = alpha / r (alpha / sqrt(r)
for rsLoRA) folded into B. The adapters must be plain LoRA on the same base weights (fingerprint)
and layers, with one rank. They are read here, before any model loads; ``build.load_experts``
copies them into the wrapped layers.
"""

from __future__ import annotations

import math

import torch

from ..checkpoint import read_adapter_config, read_adapter_tensors
from ..errors import AdapterFileError


def read_experts(directories: list[str]) -> tuple[list[str], int, list[dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """(targets, r, [{layer: (A (r, in), s B (out, r))} per adapter]), checked to agree."""
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
        experts[-1]["__fingerprint__"] = config["fingerprint"]  # type: ignore[assignment]
    return targets, rank, experts
