"""LoRA and its initialisation schemes.

Other low-rank variants (PiSSA, OLoRA, LoRA+, LoRA-FA, DoRA, DyLoRA) subclass ``LoRA``;
an initialisation is a function registered in ``INITS`` so that any of them can be
combined with any init (``apply(model, "dora", init="pissa")``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .conv import lora_conv_forward
from .registry import register
from .base import Variant, VariantError, check
from .rules.rule import RuleOptions, get_rule

#: name -> fn(variant, W (out, in) fp32). The fn sets lora_A / lora_B in place and may set
#: ``variant.lora_A0 / lora_B0`` (the init factors) when W keeps only a residual.
INITS: dict[str, Callable[["LoRA", torch.Tensor], None]] = {}
#: Inits that need r <= min(in, out) because they factorise W.
FACTORISING_INITS: set[str] = set()
#: Inits that move part of W into the adapter: the frozen base keeps W - s B0 A0.
RESIDUAL_INITS: set[str] = set()
#: PEFT's inits (``init_lora_weights``) that rewrite the base weights: a folder saved without
#: PEFT's conversion applies to that residual (``pissa_niter_4`` ... included).
RESIDUAL_PEFT_INITS = ("pissa", "olora", "corda", "loftq")


def register_init(name: str, factorises_weight: bool = False, residual: bool = False):
    """Register ``fn(variant, W)`` as init ``name``. A residual init must call
    ``variant.keep_init_factors()`` after setting lora_A / lora_B."""

    def wrap(fn):
        INITS[name] = fn
        if factorises_weight:
            FACTORISING_INITS.add(name)
        if residual:
            RESIDUAL_INITS.add(name)
        return fn

    return wrap


@register_init("kaiming")
def _kaiming(v: "LoRA", W: torch.Tensor) -> None:
    """A Kaiming-uniform, B = 0: LoRA's default (Hu et al. 2021, arXiv 2106.09685)"""
    # Hu et al. 2021 (Sec. 4.1): A random, B = 0 so that dW = BA = 0 at init.
    nn.init.kaiming_uniform_(v.lora_A, a=math.sqrt(5))
    nn.init.zeros_(v.lora_B)


@register_init("gaussian")
def _gaussian(v: "LoRA", W: torch.Tensor) -> None:
    """A ~ N(0, 1/r^2), B = 0: LoRA's random Gaussian A (Hu et al. 2021, arXiv 2106.09685)"""
    nn.init.normal_(v.lora_A, std=1.0 / v.opts.r)
    nn.init.zeros_(v.lora_B)


@register_init("swapped")
def _swapped(v: "LoRA", W: torch.Tensor) -> None:
    """A = 0, B ~ U(-0.01, 0.01): the mirror image of LoRA's (Hayou, Ghosh & Yu 2024, arXiv 2406.08447)"""
    # Hayou, Ghosh & Yu 2024, "The impact of initialization on LoRA finetuning dynamics":
    # "Init[B]" — A = 0 and B random, the mirror image of the default "Init[A]".
    nn.init.zeros_(v.lora_A)
    nn.init.uniform_(v.lora_B, -0.01, 0.01)


def describe_init(name: str) -> str:
    """One line for ``lorabench variants``: the init's docstring, else the description of the
    variant registered in the same file (``pissa`` -> PiSSA, ``olora`` -> OLoRA)."""
    fn = INITS[name]
    if (fn.__doc__ or "").strip():
        return fn.__doc__.strip().splitlines()[0]
    same_file = [registry.get(n) for n in registry.names() if registry.get(n).__module__ == fn.__module__]
    return same_file[0].description if same_file else ""


@dataclass
class _LoRAStructure:
    """LoRA's own options (listed first; ``LoRAOptions`` adds the optimisation rule's)."""

    r: int = 8
    alpha: float = 8.0  # LoRA paper, RoBERTa GLUE runs: r = alpha = 8 (scale 1)
    dropout: float = 0.0
    init: str = "kaiming"  # kaiming | gaussian | swapped | pissa | olora
    rslora: bool = False  # scale alpha / sqrt(r) (Kalajdzievski 2023, arXiv 2312.03732)
    svd_niter: int = 0  # SVD-based inits: 0 = exact SVD, n > 0 = randomized SVD with n iterations


@dataclass
class LoRAOptions(RuleOptions, _LoRAStructure):
    """LoRA's options, then the optimisation rule (``optimizer=``) and its options (``RuleOptions``)."""

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; the LoRA paper uses alpha = r")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(self.init in INITS, f"unknown init {self.init!r}; choose one of: {', '.join(sorted(INITS))}")
        check(self.svd_niter >= 0, f"svd_niter must be >= 0 (0 = exact SVD), got {self.svd_niter!r}")
        super().__post_init__()


@register("lora")
class LoRA(Variant):
    """LoRA: Low-Rank Adaptation. Hu et al. 2021, arXiv 2106.09685.

        h = W0 x + s * B A x,   A: (r, in), B: (out, r),   s = alpha / r
        (rsLoRA, Kalajdzievski 2023, arXiv 2312.03732: s = alpha / sqrt(r))

    Default init: A Kaiming-uniform (a = sqrt(5)), B = 0, so h = W0 x at init.
    How A and B train is the optimisation rule's (``optimizer=``, ``adapters.rules``).
    """

    description = "LoRA: low-rank update s*BA (Hu et al. 2021, arXiv 2106.09685); init kaiming|gaussian|swapped"
    Options = LoRAOptions
    has_lora_factors = True
    supports_conv = True  # LoRA-C on nn.Conv2d (PEFT's Conv2d LoRA): adapters/conv.py

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        self.lora_A = nn.Parameter(torch.empty(r, in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if opts.init in RESIDUAL_INITS:
            self.register_buffer("lora_A0", torch.zeros(r, in_features))  # (r, in)
            self.register_buffer("lora_B0", torch.zeros(out_features, r))  # (out, r)
        else:
            self.lora_A0 = self.lora_B0 = None
        for role in self.rule.frozen:  # LoRA-FA: A never trains
            self.factors()[role].requires_grad_(False)

    @classmethod
    def rank_bound(cls, opts):
        if opts.init in FACTORISING_INITS:
            return 1, f"which init={opts.init!r} factorises"
        return 1, "and B A has rank at most min(in, out): a larger r only adds parameters"

    @classmethod
    def unpackable(cls):
        """LoRA packs with any init, rsLoRA and any optimisation rule; a subclass packs while its layer
        output stays W0 x + s B A x, or the column scaling of it that ``pack_scale`` gives (DoRA),
        and nothing else changes the layer (``lorabench.pack``)."""
        forward_owner = next(c for c in cls.__mro__ if "forward" in vars(c))
        scale_owner = next(c for c in cls.__mro__ if "pack_scale" in vars(c))
        if forward_owner not in (Variant, scale_owner) or (cls.delta is not LoRA.delta
                                                           and cls.pack_factors is LoRA.pack_factors):
            return "its layer output is not W0 x + s B A x (nor a column scaling of it)"
        if cls.wrap_base.__func__ is not Variant.wrap_base.__func__:
            return "it stores its own copy of the base layer (4-bit)"
        if cls.needs_data():
            return "its initialisation reads training batches"
        if cls.on_step is not Variant.on_step or cls.extra_loss is not Variant.extra_loss:
            return "it changes its layers during training or adds a loss term"
        return None

    @property
    def scale(self) -> float:
        r = self.opts.r
        return self.opts.alpha / (math.sqrt(r) if self.opts.rslora else r)

    def init_from_base(self, weight):
        INITS[self.opts.init](self, weight)

    def base_offset(self):
        # Inits that move part of W into the adapter (PiSSA, OLoRA) keep their factors as
        # buffers lora_A0 / lora_B0; the frozen base weight is W - s * B0 A0.
        if self.lora_A0 is None:
            return None
        return self.scale * (self.lora_B0 @ self.lora_A0)

    @torch.no_grad()
    def keep_init_factors(self) -> None:
        """Record the current A, B as lora_A0 / lora_B0 (for residual-weight inits)."""
        self.lora_A0.copy_(self.lora_A)
        self.lora_B0.copy_(self.lora_B)

    def factors(self):
        return {"A": self.lora_A, "B": self.lora_B}

    def pack_factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A, B, s) as ``delta`` uses them, for a pack's batched product (``lorabench.pack``)."""
        return self.lora_A, self.lora_B, self.scale

    def pack_scale(self, weight: torch.Tensor) -> torch.Tensor | None:
        """In a pack, the layer output of this run is ``c * (W0 x_d + s B A x_d) + W0 (x - x_d) + b``
        with ``c`` (out,) this column scaling (x_d: x after the adapter's dropout); None: c = 1."""
        return None

    def delta(self, x):
        z = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return F.linear(z * self.scale, self.lora_B)  # (..., out)

    def delta_weight(self):
        return self.scale * (self.lora_B @ self.lora_A)  # (out, in)

    def conv_forward(self, x, layer):
        """LoRA-C: conv(x; W0) + b + s B(A(x)), A a conv like the base kernel, B a 1x1 conv (adapters.conv)."""
        return lora_conv_forward(self, x, layer)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        frozen = get_rule(getattr(opts, "optimizer", "adamw")).frozen
        sizes = {"A": opts.r * in_features, "B": opts.r * out_features}
        return sum(n for role, n in sizes.items() if role not in frozen)

    # ---- PEFT export: a plain LoRA with the scale folded into B --------------------------
    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A == the update relative to the *original* base weight."""
        B, A = self.scale * self.lora_B, self.lora_A
        if self.lora_A0 is not None:
            # W_orig + s(BA - B0A0): a rank-2r LoRA on the original weight, as PEFT's own
            # PiSSA/OLoRA conversion does.
            B = torch.cat([B, -self.scale * self.lora_B0], dim=1)
            A = torch.cat([A, self.lora_A0], dim=0)
        return B, A

    def peft_tensors(self):
        B, A = self.lowrank_factors()
        return {"lora_A.weight": A.detach().contiguous(), "lora_B.weight": B.detach().contiguous()}

    def peft_config(self):
        r = self.lowrank_factors()[1].shape[0]
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}

    # ---- PEFT import: a plain LoRA folder (PEFT's LoraConfig: s = lora_alpha / r, or / sqrt(r)) --
    peft_method = "LORA"
    peft_names = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B"}

    @classmethod
    def options_from_peft(cls, config):
        init = config.pop("init_lora_weights", True)
        if isinstance(init, str) and init.startswith(RESIDUAL_PEFT_INITS):
            raise VariantError(
                f"this PEFT LoRA was initialised with init_lora_weights={init!r}, so it applies to PEFT's "
                "residual of the base weights, not to the base itself; convert it in PEFT to a plain LoRA "
                "(save_pretrained(..., path_initial_model_for_weight_conversion=...)), which lorabench reads")
        for unused in ("use_dora", "megatron_core", "qalora_group_size"):  # no effect here (DoRA: variant dora)
            config.pop(unused, None)
        return {"r": config.pop("r"), "alpha": float(config.pop("lora_alpha", 8)),
                "rslora": bool(config.pop("use_rslora", False)), "dropout": float(config.pop("lora_dropout", 0.0))}


@register("swapped")
class SwappedLoRA(LoRA):
    """LoRA with swapped initialisation: A = 0, B ~ U(-0.01, 0.01).

    Hayou, Ghosh & Yu 2024, "The impact of initialization on LoRA finetuning dynamics"
    (arXiv 2406.08447), as used in the "Better Call LoRA" seed study. Same update rule
    as LoRA, h = W0 x + s B A x; still h = W0 x at init because A = 0.
    """

    description = "LoRA with swapped init A=0, B~U(-0.01,0.01) (Hayou et al. 2024, arXiv 2406.08447)"

    @dataclass
    class Options(LoRAOptions):
        init: str = "swapped"
