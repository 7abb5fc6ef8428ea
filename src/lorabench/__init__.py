"""lorabench: LoRA and its variants behind one interface, benchmarked fairly on GLUE.

    import lorabench
    model = lorabench.apply(model, "lora", targets=["query", "value"], r=8, alpha=8)
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=5e-4, weight_decay=0.01))
    loss.backward(); lorabench.before_step(model); opt.step(); lorabench.on_step(model, step, total)
    lorabench.save_adapter(model, "adapter/")
    lorabench.load_peft(fresh_model, "peft-adapter/")   # a PEFT LoRA / DoRA / VeRA folder, as lorabench
"""

from ._version import __version__
from .adapters import Variant, register
from .adapters import names as variants
from .errors import VariantError
from .ranks import evaluate_ranks, squeeze
from .checkpoint import load_adapter, save_adapter
from .metrics import aurac
from .peft_export import export_peft
from .peft_import import load_peft
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




__all__ = [
    "__version__",
    "Variant",
    "VariantError",
    "apply",
    "aurac",
    "before_step",
    "count_parameters",
    "evaluate_ranks",
    "export_peft",
    "load_adapter",
    "load_peft",
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
