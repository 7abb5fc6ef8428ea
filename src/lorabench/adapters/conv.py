"""Adapters on ``nn.Conv2d``: the ``AdaptedConv2d`` wrapper and the helpers every conv form shares.

A conv kernel ``W0`` of shape ``(out, in, kh, kw)`` is, for an adapter, the matrix ``(out, in*kh*kw)``
that multiplies unfolded input patches (im2col). ``AdaptedConv2d.weight`` is that view, so a variant's
``delta_weight``, ``merged_weight`` and ``init_from_base`` work on conv layers unchanged; the adapter's
``in_features`` is ``in*kh*kw``. Only the forward differs: a variant that supports convolutions
(``supports_conv = True``) has a ``conv_forward(x, layer)`` hook that computes its change as
convolutions, never by unfolding the input.

    LoRA-C   (variant lora):    h = conv(x; W0) + s * B(A(x)),  A: conv (in -> r) with the base kernel's
                                size, stride, padding and dilation; B: 1x1 conv (r -> out) (PEFT's form)
    DoRA-C   (variant dora):    h = m / ||W0 + s dW||_(1,2,3) * (conv(x; W0) + s * B(A(x))) + b
    CP-LoRA  (variant cp_lora): dW a CP decomposition, as 1x1 / depthwise / depthwise / 1x1 convs

Limits, refused with a VariantError before anything changes: ``groups != 1`` (depthwise and grouped
convs), ``padding_mode != "zeros"``, transposed convs (``nn.ConvTranspose2d`` is never a target).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .base import AdaptedLinear, Variant, VariantError

#: The hooks that make up a variant's layer math. A subclass that overrides one of them below the
#: class that wrote its ``conv_forward`` changes what the conv form would have to compute, so it
#: loses conv support (DyLoRA's rank sampling, MatryoshkaLoRA's nested ranks ...).
LAYER_MATH = ("forward", "delta", "delta_weight", "merged_weight", "unmerged_weight", "on_step")


class ConvVariant(Variant):
    """A variant that adapts only convolutions and needs the kernel's shape (CP-LoRA).

    ``in_features`` is ``in*kh*kw`` as for every conv adapter; ``kernel_size`` is ``(kh, kw)``.
    Its trainable count is ``num_trainable_conv(in_channels, out_channels, kh, kw, opts)``.
    """

    supports_conv = True

    def __init__(self, in_features: int, out_features: int, opts: Any, shared: dict | None = None,
                 kernel_size: tuple[int, int] = (1, 1)):
        super().__init__(in_features, out_features, opts, shared)
        self.kernel_size = tuple(kernel_size)
        self.in_channels = in_features // (self.kernel_size[0] * self.kernel_size[1])

    @classmethod
    def num_trainable_conv(cls, in_channels: int, out_channels: int, kh: int, kw: int, opts: Any) -> int:
        raise NotImplementedError


class AdaptedConv2d(AdaptedLinear):
    """A frozen ``nn.Conv2d`` plus one variant: ``forward(x) = adapter.conv_forward(x, self)``.

    ``weight`` is the base kernel as an ``(out, in*kh*kw)`` matrix (a view), so ``merge`` / ``unmerge``
    (inherited: explicit, never on ``.eval()``) fold the variant's ``merged_weight`` into the kernel.
    """

    @staticmethod
    def shape_of(layer: nn.Module) -> tuple[int, int]:
        """(in*kh*kw, out): the fan-in and fan-out of the kernel as a matrix."""
        kh, kw = layer.kernel_size
        return layer.in_channels // layer.groups * kh * kw, layer.out_channels

    @property
    def transposed(self) -> bool:
        return False

    @property
    def quantized(self) -> bool:
        return False

    @property
    def weight(self) -> torch.Tensor:
        w = self.base_layer.weight
        return w.reshape(w.shape[0], -1)  # (out, in*kh*kw)

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise VariantError("an adapted nn.Conv2d has no linear form; use conv(x, kernel)")

    def conv(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """conv(x; kernel) with the base layer's stride, padding and dilation, without bias.
        ``kernel``: (out, in, kh, kw), or a matrix (out, in*kh*kw) of ``weight``'s layout."""
        b = self.base_layer
        kernel = kernel.reshape(b.weight.shape) if kernel.dim() == 2 else kernel
        return F.conv2d(x, kernel, None, b.stride, b.padding, b.dilation)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        w = self.base_layer.weight
        w.copy_(weight.reshape(w.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self.base_layer(x)
        return self.adapter.conv_forward(x, self)


# ---- which variants adapt convolutions -------------------------------------------------------
def _owner(cls: type, attr: str) -> type | None:
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def conv_support(cls: type[Variant]) -> str | None:
    """Why ``cls`` cannot adapt an ``nn.Conv2d``, or None when it can."""
    if not cls.supports_conv:
        return "it has no convolution form (supports_conv = False)"
    hook = _owner(cls, "conv_forward")
    if hook is None:
        return "it sets supports_conv but defines no conv_forward hook"
    changed = [m for m in LAYER_MATH if (o := _owner(cls, m)) is not None and not issubclass(hook, o)]
    if changed:
        return f"it changes {', '.join(changed)} beyond its conv form ({hook.__name__}.conv_forward)"
    if cls.needs_data():
        return "its initialisation reads training batches through linear layers"
    if _owner(cls, "wrap_base") is not Variant or _owner(cls, "shared_state") is not Variant:
        return "it stores its own base layer or shared tensors, which conv layers do not take"
    return None


def linear_variants() -> list[str]:
    """The registered variants that adapt linear layers (all but the conv-only ones: CP-LoRA)."""
    return [n for n in registry.names() if not issubclass(registry.get(n), ConvVariant)]


def conv_variants() -> list[str]:
    """The registered variants that adapt ``nn.Conv2d``."""
    return [n for n in registry.names() if conv_support(registry.get(n)) is None]


def check_targets(cls: type[Variant], modules: dict[str, nn.Module], names: list[str]) -> None:
    """VariantError naming the fix when ``cls`` cannot adapt one of the target layers."""
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    if convs:
        why = conv_support(cls)
        if why is not None:
            raise VariantError(
                f"variant {cls.name!r} cannot adapt the nn.Conv2d layer {convs[0]!r}: {why}. Variants that adapt "
                f"convolutions: {', '.join(conv_variants())}; or target only linear layers")
    linear = [n for n in names if n not in convs]
    if linear and issubclass(cls, ConvVariant):
        raise VariantError(f"variant {cls.name!r} adapts only nn.Conv2d layers, and {linear[0]!r} is a "
                           f"{type(modules[linear[0]]).__name__}; target conv layers (targets='all-conv')")
    for n in convs:
        m = modules[n]
        if m.groups != 1:
            raise VariantError(f"conv layer {n!r} has groups={m.groups}: grouped and depthwise convs are not "
                               "supported by lorabench's conv adapters; leave it out of targets")
        if m.padding_mode != "zeros":
            raise VariantError(f"conv layer {n!r} has padding_mode={m.padding_mode!r}: conv adapters support "
                               "padding_mode='zeros' only; leave it out of targets")


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a target as its adapter sees it: (in*kh*kw, out) for a conv."""
    return (AdaptedConv2d if isinstance(module, nn.Conv2d) else AdaptedLinear).shape_of(module)


def wrap_layer(cls: type[Variant], base: nn.Module, shape: tuple[int, int], opts: Any,
               shared: dict | None) -> AdaptedLinear:
    """A new adapter of ``cls`` on ``base``, wrapped: AdaptedConv2d for an nn.Conv2d, else AdaptedLinear."""
    if isinstance(base, nn.Conv2d):
        kernel = {"kernel_size": tuple(base.kernel_size)} if issubclass(cls, ConvVariant) else {}
        adapter = cls(*shape, opts, shared, **kernel)
        wrapper: type[AdaptedLinear] = AdaptedConv2d
    else:
        adapter = cls(*shape, opts, shared)
        wrapper = AdaptedLinear
    adapter.to(device=base.weight.device)
    return wrapper(base, adapter)


def num_trainable(layer: AdaptedLinear) -> int:
    """The variant's formula for this layer: ``num_trainable_formula(in, out)`` (in = in*kh*kw for a
    conv), or ``num_trainable_conv(in, out, kh, kw)`` for a conv-only variant."""
    a = layer.adapter
    if isinstance(a, ConvVariant):
        return type(a).num_trainable_conv(a.in_channels, a.out_features, *a.kernel_size, a.opts)
    return type(a).num_trainable_formula(a.in_features, a.out_features, a.opts)


# ---- LoRA-C: the low-rank change as two convolutions ------------------------------------------
def lowrank_conv(A: torch.Tensor, B: torch.Tensor, s: float, x: torch.Tensor, layer: AdaptedConv2d) -> torch.Tensor:
    """s * B(A(x)): A (r, in*kh*kw) as a conv with the base kernel's size, stride, padding and dilation,
    B (out, r) as a 1x1 conv. Equals conv(x; s * B A) (PEFT's LoRA Conv2d)."""
    r = A.shape[0]
    z = layer.conv(x, A.reshape(r, *layer.base_layer.weight.shape[1:]))  # (N, r, H', W')
    return F.conv2d(z, B.reshape(B.shape[0], r, 1, 1)) * s  # (N, out, H', W')


def lora_conv_forward(v: Variant, x: torch.Tensor, layer: AdaptedConv2d) -> torch.Tensor:
    """LoRA-C: h = conv(x; W0) + b + s * B(A(dropout(x)))."""
    x_a = v.dropout(x.to(v.dtype))
    return layer.base_layer(x) + lowrank_conv(v.lora_A, v.lora_B, v.scale, x_a, layer).to(x.dtype)


def peft_conv_tensors(layer: AdaptedConv2d, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA / DoRA layer's PEFT tensors in PEFT's conv shapes: lora_A (r, in, kh, kw), lora_B
    (out, r, 1, 1), the DoRA magnitude (1, out, 1, 1)."""
    b = layer.base_layer
    if tuple(b.dilation) != (1, 1):
        raise VariantError("PEFT builds the lora_A conv of a Conv2d without the base layer's dilation, so it "
                           f"cannot reproduce this adapter on a dilated conv (dilation={tuple(b.dilation)}); "
                           "use lorabench.save_adapter")
    shapes = {"lora_A.weight": lambda t: t.reshape(t.shape[0], *b.weight.shape[1:]),
              "lora_B.weight": lambda t: t.reshape(*t.shape, 1, 1),
              "lora_magnitude_vector": lambda t: t.reshape(1, -1, 1, 1)}
    unknown = sorted(set(tensors) - set(shapes))
    if unknown:
        raise VariantError(f"variant {layer.adapter.name!r} has PEFT tensors {unknown} with no conv form; "
                           "use lorabench.save_adapter")
    return {k: shapes[k](t).contiguous() for k, t in tensors.items()}
