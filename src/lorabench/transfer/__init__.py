"""Transfer across base models (``lorabench transfer``): one method per file, registered where it
is defined (``registry.register``), as variants are.

    from lorabench.transfer import get
    method = get("trans_lora")
    record = method.run(method.Options(source="minilm", target="mpnet", target_layers=2), out)

``trans_lora`` (Trans-LoRA, arXiv 2405.17258): distil a source LoRA into a target-base LoRA on
discriminator-filtered synthetic inputs. ``organ`` (Neural Organ Transplantation, arXiv
2601.13580): train a block of decoder layers inserted into a frozen model, save it as a standalone
checkpoint (``transfer.organ``), sweep its position, vs LoRA of the same size.
"""

from __future__ import annotations

from . import organ_method, trans_lora  # noqa: F401  (register the methods)
from .registry import Method, get, names, register

__all__ = ["Method", "get", "names", "register"]
