"""QLoRA: LoRA on a base whose target weights are stored in 4-bit NormalFloat."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .base import check
from .lora import RESIDUAL_INITS, LoRA, LoRAOptions


@dataclass
class QLoRAOptions(LoRAOptions):
    # Appendix B of the paper: r = 64, alpha = 16 and LoRA on every linear layer
    # (targets="all-linear"); dropout 0.1 for 7B/13B models (0.05 for 33B/65B).
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    quant_type: str = "nf4"  # "nf4" (the paper's) or "fp4"
    double_quant: bool = True  # quantize the absmax constants too (Sec. 3, ~0.37 bit/param saved)
    # The dtype the 4-bit weight is dequantized to for the matmul. The paper computes in
    # bfloat16 on GPUs; "auto" follows the input (float32 on CPU), so outputs stay comparable.
    compute_dtype: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        from .. import quant

        quant.check_options(self.quant_type, self.compute_dtype)
        check(
            self.init not in RESIDUAL_INITS,
            f"init={self.init!r} rewrites the base weight, which qlora stores in 4 bits; "
            "use init='kaiming' (the paper's) or 'gaussian'",
        )


@register("qlora")
class QLoRA(LoRA):
    """QLoRA: Efficient Finetuning of Quantized LLMs.
    Dettmers, Pagnoni, Holtzman & Zettlemoyer 2023, arXiv 2305.14314.

        h = dequant(NF4(W0)) x + s B A x,   NF4 blockwise (64) absmax, absmax double-quantized (256)

    ``apply(model, "qlora")`` stores each target layer's weight in 4 bits (bitsandbytes
    ``Linear4bit``; CPU and CUDA) and trains a plain LoRA in full precision on top. The output
    at init is that of the quantized base, so it differs from the original model by the
    quantization error (``identity_at_init = False``). ``merge`` puts a full-precision copy
    of dequant(W0) + s B A in place of the 4-bit layer (4 bits cannot hold the small update);
    ``unmerge`` restores the untouched 4-bit layer. Paged optimizers are out of scope.
    """

    description = "QLoRA: LoRA on a 4-bit NF4 base, double-quantized constants (Dettmers et al. 2023, arXiv 2305.14314)"
    Options = QLoRAOptions
    identity_at_init = False

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        from .. import quant

        super().check_layer(in_features, out_features, opts, layer_name)
        quant.bitsandbytes()  # a missing install is reported before any layer changes

    @classmethod
    def wrap_base(cls, layer, opts):
        from .. import quant

        return quant.quantize_linear(layer, opts.quant_type, opts.double_quant, opts.compute_dtype)
