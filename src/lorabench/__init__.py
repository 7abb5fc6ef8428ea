"""lorabench: LoRA and its variants behind one interface, benchmarked fairly on GLUE.

    import lorabench
    model = lorabench.apply(model, "lora", targets=["query", "value"], r=8, alpha=8)
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=5e-4, weight_decay=0.01))
    loss.backward(); lorabench.before_step(model); opt.step(); lorabench.on_step(model, step, total)
    lorabench.save_adapter(model, "adapter/")
"""

__version__ = "0.1.0"

from .adapters import Variant, VariantError, register
from .adapters import names as variants
from .adapters.lora_squeeze import squeeze
from .adapters.matryoshka_lora import evaluate_ranks
from .checkpoint import load_adapter, save_adapter
from .metrics import aurac
from .inject import (
    apply,
    before_step,
    count_parameters,
    merge,
    on_step,
    param_groups,
    prepare,
    set_rank,
    unload,
    unmerge,
)


def export_peft(model, directory):
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` loadable by PEFT."""
    from .peft_export import export_peft as _export

    return _export(model, directory)


__all__ = [
    "Variant",
    "VariantError",
    "apply",
    "aurac",
    "before_step",
    "count_parameters",
    "evaluate_ranks",
    "export_peft",
    "load_adapter",
    "merge",
    "on_step",
    "param_groups",
    "prepare",
    "register",
    "save_adapter",
    "set_rank",
    "squeeze",
    "unload",
    "unmerge",
    "variants",
]
