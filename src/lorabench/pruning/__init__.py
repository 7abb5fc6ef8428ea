"""Pruning with adapters: LoRAPrune (prune while LoRA trains) and LoRAM (train on a pruned base, infer on the full one).

    from lorabench.pruning import get, names
    names()        # ['lora', 'loram', 'loraprune']

One method per file, registered where it is defined (``registry.register``): ``loraprune``,
``loram`` and the unpruned baseline ``lora``. ``lorabench prune`` (``commands/prune.py``) runs
them on a BERT-family encoder (``structure``) and writes one ``lorabench-prune`` JSON per run
(``record``) and the table of all of them.
"""

from __future__ import annotations

from . import lora, loram, loraprune  # noqa: F401  (register the methods)
from .registry import Method, Outcome, get, names, register

__all__ = ["Method", "Outcome", "get", "names", "register"]
