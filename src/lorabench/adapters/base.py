"""The variant interface and the layer wrapper every variant lives in.

``AdaptedLinear`` replaces one target ``nn.Linear`` (or GPT-2 ``Conv1D``) of the model.
It keeps the frozen base layer untouched as ``base_layer`` and owns one ``Variant``
(``adapter``), which holds the method's tensors and says how they change the output.

All weights handed to a variant are in ``nn.Linear`` orientation, ``(out_features,
in_features)``, whatever the base layer stores (GPT-2's ``Conv1D`` keeps ``(in, out)``).

The defaults of ``Variant`` give plain additive low-rank behaviour,
``h = W0 x + delta(x)`` with ``delta_weight() = dW``, so most methods override
``__init__``, ``init_from_base`` and one or two of ``delta`` / ``forward``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import fourbit
from ..errors import VariantError, check  # noqa: F401  (check: for the variant files)
from .registry import with_option
from .rules.rule import get_rule


def check_foreign_optimizer(variant_cls: type, name: Any) -> None:
    """``optimizer=name`` given to a variant whose options have no rule: fine for the default
    (``adamw``: the variant's own groups), a VariantError naming the fix otherwise."""
    get_rule(name)
    if name == "adamw":
        return
    why = ("keeps no plain dense factors A, B for a rule to act on" if not variant_cls.has_lora_factors
           else "has its optimisation rule built in")
    raise VariantError(
        f"optimizer={name!r} needs a LoRA-family variant with an 'optimizer' option; variant {variant_cls.name!r} "
        f"{why}. Use one of: {', '.join(with_option('optimizer'))} (e.g. variant='lora', optimizer={name!r})"
    )


class Variant(nn.Module):
    """One adapted layer's trainable (and frozen helper) tensors, and the hooks that use them.

    Subclasses set ``Options`` (a dataclass of the method's hyperparameters with the
    paper's defaults) and the class flags below, and register with ``@register(name)``.
    """

    name: ClassVar[str] = ""
    #: One line for ``lorabench variants``: what it is and the paper.
    description: ClassVar[str] = ""

    @dataclasses.dataclass
    class Options:
        pass

    #: False for baselines that wrap no layer (``full``, ``head``).
    wraps_layers: ClassVar[bool] = True
    #: True when every base weight trains (full fine-tuning).
    trains_base: ClassVar[bool] = False
    #: True when the model output equals the base model's right after ``apply``.
    identity_at_init: ClassVar[bool] = True
    #: True when ``base_offset()`` is subtracted from the base weight (PiSSA, OLoRA).
    changes_base: ClassVar[bool] = False
    #: True when ``factors()`` returns trainable low-rank factors A, B (the LoRA family), which
    #: the optimisation rules (``adapters.rules``: LoRA+, LoRA-Pro ...) act on.
    has_lora_factors: ClassVar[bool] = False
    #: False when the output cannot be folded into one weight (FlyLoRA's input-dependent top-k
    #: routing): ``merged_weight`` raises VariantError, and the contract test checks that it does.
    mergeable: ClassVar[bool] = True
    #: Buffers that training changes outside the optimizer (FlyLoRA's load-balancing bias, in
    #: ``on_step``). Saved and loaded like any buffer; the contract test lets them move.
    running_buffers: ClassVar[tuple[str, ...]] = ()
    #: True when a ``conv_forward(x, layer)`` hook adapts nn.Conv2d too (``adapters.conv``; a subclass that changes the layer math loses it).
    supports_conv: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, opts: Any, shared: dict | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.opts = opts
        # The model-level SharedState module (or None). A plain reference, not a submodule,
        # so shared tensors are stored (and saved) once, on the model.
        object.__setattr__(self, "shared", shared)

    # ---- options -------------------------------------------------------------------
    @classmethod
    def make_options(cls, **options: Any) -> Any:
        """Build and validate ``Options``; an unknown key names the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        if "optimizer" in options and "optimizer" not in fields:  # a variant without rules: adamw only
            check_foreign_optimizer(cls, options.pop("optimizer"))
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise VariantError(
                f"variant {cls.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(fields) or '(none)'}"
            )
        opts = cls.Options(**options)
        rule = get_rule(getattr(opts, "optimizer", "adamw"))
        if rule.needs and not cls.has_lora_factors:
            check_foreign_optimizer(cls, rule.name)
        rule.check(cls, opts)  # e.g. lora_fa with A = 0
        return opts

    @classmethod
    def rank_bound(cls, opts: Any) -> tuple[int, str] | None:
        """``(k, why)`` when every adapted layer must have ``k * r <= min(in, out)`` (a rank-r update of
        a weight whose rank is at most min(in, out)); None (the default) for no bound."""
        return None

    @classmethod
    def layer_options(cls, opts: Any, layer_name: str) -> Any:
        """The options the layer ``layer_name`` is built with: ``opts`` (the default). BD-LoRA resolves here,
        by the layer's name, which of its factors is block-diagonal."""
        return opts

    @classmethod
    def check_layer(cls, in_features: int, out_features: int, opts: Any, layer_name: str) -> None:
        """Raise VariantError when the options cannot fit this layer: here the ``rank_bound``."""
        bound = cls.rank_bound(opts)
        if bound is None:
            return
        k, why = bound
        limit = min(in_features, out_features)
        if k * opts.r > limit:
            taken = f"r={opts.r}" if k == 1 else f"{k}r = {k * opts.r}"
            raise VariantError(f"{taken} is larger than min(in, out) = {limit} of layer {layer_name!r}, {why}; "
                               f"choose r <= {limit // k}")

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def shared_state(cls, shapes: list[tuple[int, int]], opts: Any) -> dict | None:
        """Tensors shared by every adapted layer (VeRA's random projections).

        ``shapes`` lists the ``(in_features, out_features)`` of all target layers.
        Returned tensors are registered once on the model and handed to each layer.
        """
        return None

    @classmethod
    def shared_param_groups(cls, shared: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups for trainable shared tensors (Uni-LoRA's one vector)."""
        params = [p for p in shared.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def init_from_base(self, weight: torch.Tensor) -> None:
        """Data-free initialisation from the base weight ``(out, in)`` (fp32 copy)."""

    def base_offset(self) -> torch.Tensor | None:
        """What to subtract from the base weight, ``(out, in)``, or None (the default).

        PiSSA and OLoRA move the principal part of W into the adapter and keep the
        residual ``W - offset`` frozen. The offset is a function of saved tensors, so a
        loaded adapter rebuilds the same residual from the original base weights.
        """
        return None

    @classmethod
    def wrap_base(cls, layer: nn.Module, opts: Any) -> nn.Module:
        """The base layer the adapter will sit on. Default: ``layer`` itself; QLoRA returns a
        4-bit copy (``lorabench.quant``). Called by ``apply`` before ``init_from_base``."""
        return layer

    @classmethod
    def prepare(cls, model: nn.Module, batches: Any, opts: Any) -> None:
        """Data-driven initialisation before training (LoRA-GA, LoRA-SB). Default: nothing."""

    @classmethod
    def needs_data(cls) -> bool:
        """True when the variant overrides ``prepare`` (its init reads training batches)."""
        return cls.prepare.__func__ is not Variant.prepare.__func__

    def on_step(self, step: int, total: int) -> None:
        """Called after every optimizer step (DyLoRA rank sampling, AdaLoRA). Default: nothing.
        (The optimisation rule's own ``on_step`` is called next to it by ``inject.on_step``.)"""

    @classmethod
    def unpackable(cls) -> str | None:
        """Why runs of this variant cannot share one frozen base in a pack (``lorabench.pack``), or
        None when they can: each run's change must be a low-rank product on the layer input."""
        if cls.trains_base:
            return "it trains the base weights"
        if not cls.wraps_layers:
            return "it adapts no layer (only the head trains)"
        return "its change to a layer is not a low-rank product on the layer input"

    # ---- compute ---------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return 1.0

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's additive contribution to the output for input ``x`` (..., in)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, layer: "AdaptedLinear") -> torch.Tensor:
        """h = W0 x + b + delta(x). Override for non-additive methods (DoRA)."""
        return layer.base_layer(x) + self.delta(x.to(self.dtype)).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The additive weight update dW, ``(out, in)``, such that delta(x) = x dW^T."""
        raise NotImplementedError

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight that reproduces ``forward`` in one plain linear layer."""
        return weight + self.delta_weight().to(weight.dtype)

    def unmerged_weight(self, merged: torch.Tensor) -> torch.Tensor:
        """Inverse of ``merged_weight``."""
        return merged - self.delta_weight().to(merged.dtype)

    # ---- optimisation ----------------------------------------------------------------
    def factors(self) -> dict[str, nn.Parameter]:
        """The low-rank factors by role, ``{"A": (r, in), "B": (out, r)}`` (LoRA family); ``{}`` here."""
        return {}

    @property
    def rule(self):
        """The optimisation rule of this layer (``optimizer=`` option; ``adamw`` without one)."""
        rule = self.__dict__.get("_rule")
        if rule is None:
            rule = self.__dict__["_rule"] = get_rule(getattr(self.opts, "optimizer", "adamw"))(self.opts)
        return rule

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups for this layer's trainable tensors: the rule's (default: one group)."""
        return self.rule.param_groups(self, lr, weight_decay)

    def before_step(self) -> None:
        """After backward and gradient clipping (gradients complete and unscaled), before the
        optimizer step: the rule adjusts gradients (LoRA-Pro, AltLoRA, ALLoRA) or factors (Stable-LoRA)."""
        self.rule.before_step(self)

    def extra_loss(self) -> torch.Tensor | None:
        """This layer's term added to the training loss (AdaLoRA's orthogonality regulariser), or
        None (the default). ``inject.extra_loss`` sums it over the layers."""
        return None

    @classmethod
    def num_trainable_formula(cls, in_features: int, out_features: int, opts: Any) -> int:
        """Trainable parameters per adapted layer, from the paper (checked by the tests)."""
        raise NotImplementedError

    # ---- export ----------------------------------------------------------------------
    def peft_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for PEFT's format under their PEFT suffixes (``lora_A.weight`` ...)."""
        raise VariantError(f"variant {self.name!r} cannot be exported to PEFT's format")

    def peft_config(self) -> dict:
        """PEFT ``adapter_config.json`` fields (besides targets and modules_to_save)."""
        raise VariantError(f"variant {self.name!r} cannot be exported to PEFT's format")

    # ---- import (lorabench.load_peft): the inverse of the two hooks above ------------
    #: The PEFT method this variant reads back: PEFT's ``peft_type``, or ``"DORA"`` for a LoRA
    #: with ``use_dora``. Read from the class itself (``vars``), so subclasses (PiSSA, LoRA+ ...) read nothing.
    peft_method: ClassVar[str | None] = None
    #: PEFT's per-layer tensor suffix -> this variant's tensor, for ``load_peft`` to copy into.
    peft_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def options_from_peft(cls, config: dict) -> dict:
        """This variant's options for a PEFT ``adapter_config.json`` of ``peft_method``. Takes the fields
        it reads out of ``config`` (a copy); ``load_peft`` refuses any field left with a non-default value."""
        raise VariantError(f"variant {cls.name!r} reads no PEFT adapter")

    @classmethod
    def peft_shared_names(cls) -> dict[str, str]:
        """PEFT's key of a shared tensor (``base_model.vera_A``) -> ours, copied when the file has it."""
        return {}

    # ---- helpers ---------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.opts}"


class AdaptedLinear(nn.Module):
    """A frozen linear layer plus one variant: ``forward(x) = adapter(x, self)``.

    ``merge()`` folds the adapter into the base weight (explicitly, never on ``.eval()``);
    ``unmerge()`` restores it.
    """

    def __init__(self, base_layer: nn.Module, adapter: Variant):
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.merged = False
        self.disabled = False
        # A 4-bit base layer set aside while a full-precision merged copy stands in for it
        # (kept out of the module tree, so it is neither saved nor counted twice).
        self.__dict__["_quantized_base"] = None

    @staticmethod
    def shape_of(layer: nn.Module) -> tuple[int, int]:
        """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D."""
        if isinstance(layer, nn.Linear):
            return layer.in_features, layer.out_features
        in_f, out_f = layer.weight.shape  # Conv1D stores (in, out)
        return in_f, out_f

    @property
    def transposed(self) -> bool:
        return not isinstance(self.base_layer, nn.Linear)

    @property
    def quantized(self) -> bool:
        """True when the base weight is stored in 4 bits (``lorabench.quant``)."""
        return fourbit.is_quantized(self.base_layer)

    @property
    def weight(self) -> torch.Tensor:
        """The base weight in (out, in) orientation (a view, not a copy; for a 4-bit base,
        a dequantized copy)."""
        if self.quantized:
            return fourbit.dequantize(self.base_layer)
        w = self.base_layer.weight
        return w.t() if self.transposed else w

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x W^T + b with a weight of our (out, in) orientation."""
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Write a (out, in) weight back into the base layer, keeping its dtype and layout."""
        if self.quantized:
            # Rounding a residual of the already-rounded weight again would add a second
            # quantisation error; quantizing after apply stores the exact residual once (QPiSSA).
            raise VariantError(
                "this layer's base weight is stored in 4 bits and cannot be rewritten in place; apply the "
                "adapter to the full-precision model and quantize afterwards (lorabench.quant.quantize_model: "
                "the residual is then stored in 4 bits, as QPiSSA does), or use an init that leaves the base "
                "weight alone (e.g. init='kaiming')"
            )
        w = self.base_layer.weight
        w.copy_(weight.t() if self.transposed else weight)

    @torch.no_grad()
    def subtract_base_offset(self) -> None:
        """W <- W - ``adapter.base_offset()`` (PiSSA / OLoRA keep only the residual frozen)."""
        offset = self.adapter.base_offset()
        if offset is not None:
            self.set_weight(self.weight.float() - offset.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base_layer(x)
        return self.adapter(x, self)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.weight
            merged = self.adapter.merged_weight(w.float())
            if self.quantized:
                # 4 bits cannot hold W + dW (re-quantizing would round most of dW away), so a
                # full-precision copy stands in until unmerge puts the 4-bit layer back.
                self.__dict__["_quantized_base"] = self.base_layer
                self.base_layer = fourbit.dense_linear(self.base_layer, merged.to(w.dtype))
            else:
                self.set_weight(merged)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.weight.float()
            restored = self.adapter.unmerged_weight(w)  # also resets the variant's merge state
            if self._quantized_base is not None:
                self.base_layer = self._quantized_base  # the untouched 4-bit weights
                self.__dict__["_quantized_base"] = None
            else:
                self.set_weight(restored)
            self.merged = False

    def extra_repr(self) -> str:
        return f"merged={self.merged}"


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    """Every ``(name, AdaptedLinear)`` of ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module
