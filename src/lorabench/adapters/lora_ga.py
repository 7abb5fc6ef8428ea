"""LoRA-GA: LoRA initialised from the SVD of the full-weight gradient on a few batches."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .registry import register
from ..fourbit import is_quantized
from .base import VariantError, adapted_layers, check
from .lora import RESIDUAL_INITS, LoRA, LoRAOptions

DIRECTIONS = ("ArB2r", "A2rBr")


@dataclass
class LoRAGAOptions(LoRAOptions):
    alpha: float = 16.0  # the paper's runs: r = 8, alpha = 16
    # Sec. 3.3 "stable output": A0, B0 are scaled by d_out^(1/4) / sqrt(gamma).
    stable_gamma: float = 16.0
    # Which singular directions go where, both from the top 2r (Sec. 3.2). "ArB2r": A0 = V[:, :r]^T,
    # B0 = U[:, r:2r] (the official code's default); "A2rBr": A0 = V[:, r:2r]^T, B0 = U[:, :r] (the
    # paper's text). Either way the first step approximates G by its best rank-2r part.
    direction: str = "ArB2r"

    def __post_init__(self):
        super().__post_init__()
        check(self.stable_gamma > 0, f"stable_gamma must be > 0, got {self.stable_gamma!r}; the paper uses 16")
        check(self.direction in DIRECTIONS, f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        check(
            self.init not in RESIDUAL_INITS,
            f"init={self.init!r} is a residual init of its own; LoRA-GA's init comes from prepare(), "
            "the data-free init only holds until then: use init='kaiming'",
        )


@register("lora_ga")
class LoRAGA(LoRA):
    """LoRA-GA: Low-Rank Adaptation with Gradient Approximation.
    Wang, Yu & Li 2024, arXiv 2407.05000.

        G = dL/dW0 (averaged over a few batches) = U S V^T
        A0 = c V[:, :r]^T,  B0 = c U[:, r:2r],  c = d_out^(1/4) / sqrt(gamma)
        h = (W0 - s B0 A0) x + s B A x      (output unchanged at init)

    The first SGD step of LoRA changes W by -lr s^2 (B0 B0^T G + G A0^T A0); with these
    factors that is -lr s^2 c^2 times the best rank-2r approximation of G, so LoRA starts in
    the direction full fine-tuning would take (Sec. 3.2). ``lorabench.prepare(model,
    batches)`` does the estimate (the training loop calls it); until then the adapter is a
    plain LoRA. A0, B0 are kept as buffers, so save / load / PEFT export rebuild the residual.
    """

    description = "LoRA-GA: A,B from the SVD of the full-weight gradient on a few batches (Wang et al. 2024, arXiv 2407.05000)"
    Options = LoRAGAOptions
    changes_base = True  # after prepare(): the frozen base is W0 - s B0 A0

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        del self.lora_A0, self.lora_B0  # LoRA sets None for its data-free inits
        self.register_buffer("lora_A0", torch.zeros(r, in_features))  # (r, in)
        self.register_buffer("lora_B0", torch.zeros(out_features, r))  # (out, r)
        # False only between a fresh apply() and prepare(); a loaded adapter is complete.
        self.prepared = True
        self._warned = False

    @classmethod
    def rank_bound(cls, opts):
        return 2, "and LoRA-GA takes 2r singular directions of the layer's gradient"

    def init_from_base(self, weight):
        super().init_from_base(weight)  # LoRA's init (B = 0) until prepare()
        self.prepared = False

    # ---- the gradient-based init ---------------------------------------------------------
    @torch.no_grad()
    def init_from_gradient(self, G: torch.Tensor) -> None:
        """Set A0, B0 (and A, B) from the weight gradient ``G`` (out, in), Sec. 3.2-3.3."""
        r = self.opts.r
        if self.opts.svd_niter == 0:
            U, _, Vh = torch.linalg.svd(G.float(), full_matrices=False)  # (out, k), (k, in)
            V = Vh.T
        else:  # randomized SVD, as the official code (q = 4r, niter iterations)
            U, _, V = torch.svd_lowrank(G.float(), q=min(4 * r, *G.shape), niter=self.opts.svd_niter)
        if self.opts.direction == "ArB2r":
            A, B = V[:, :r].T, U[:, r : 2 * r]  # (r, in), (out, r)
        else:
            A, B = V[:, r : 2 * r].T, U[:, :r]
        c = self.out_features**0.25 / self.opts.stable_gamma**0.5
        self.lora_A.copy_(c * A)
        self.lora_B.copy_(c * B)
        self.keep_init_factors()  # the frozen base becomes W0 - s B0 A0 (LoRA.base_offset)
        self.prepared = True

    @classmethod
    def prepare(cls, model, batches, opts):
        """Estimate G = dL/dW0 of every adapted layer on ``batches`` and re-initialise from it."""
        batches = list(batches)
        if not batches:
            raise VariantError("LoRA-GA needs at least one batch to estimate gradients; pass a few training batches")
        layers = gradient_layers(model, "LoRA-GA")
        # Restore W0 first (prepare may run twice): the gradient is the base model's.
        for layer in layers:
            offset = layer.adapter.base_offset()
            if offset is not None:
                layer.set_weight(layer.weight.float() + offset)
            layer.adapter.lora_A0.zero_()
            layer.adapter.lora_B0.zero_()
            layer.adapter.lora_B.data.zero_()  # so the model is exactly the base model
        grads = weight_gradients(model, layers, batches)
        for layer, G in zip(layers, grads):
            layer.adapter.init_from_gradient(G)
            layer.set_weight(layer.weight.float() - layer.adapter.base_offset())

    def forward(self, x, layer):
        # (prepare's own passes run with the adapter frozen, so they do not warn)
        if self.training and not self.prepared and not self._warned and self.lora_B.requires_grad:
            self._warned = True
            warnings.warn(
                "a lora_ga adapter is training before lorabench.prepare(model, batches): it is a plain "
                "LoRA until then; call prepare with a few training batches first", stacklevel=2
            )
        return super().forward(x, layer)


def gradient_layers(model, method: str) -> list:
    """The adapted layers of ``model``, checked to hold full-precision base weights: a
    gradient-based init needs dL/dW0, which a 4-bit base layer does not have."""
    layers = [layer for _, layer in adapted_layers(model)]
    if any(is_quantized(layer.base_layer) for layer in layers):
        raise VariantError(
            f"{method} estimates the gradient of the full-precision base weights, and this model's are "
            "stored in 4 bits; call lorabench.prepare(model, batches) before lorabench.quant.quantize_model "
            "(lorabench train --quantize does it in that order)"
        )
    return layers


def weight_gradients(model, layers, batches) -> list[torch.Tensor]:
    """dL/dW (out, in) of each layer's base weight, averaged over ``batches``; every
    parameter's requires_grad and the model's train/eval mode are restored afterwards."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    was_training = model.training
    weights = [layer.base_layer.weight for layer in layers]
    try:
        for p in params:
            p.requires_grad_(False)
        for w in weights:
            w.grad = None
            w.requires_grad_(True)
        model.train()
        with torch.enable_grad():
            for batch in batches:
                model(**batch).loss.backward()
        grads = [w.grad.float() / len(batches) for w in weights]
        return [g.t() if layer.transposed else g for g, layer in zip(grads, layers)]
    finally:
        for w in weights:
            w.grad = None
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)
        model.train(was_training)
