"""The two reference points every PEFT method is compared with: full fine-tuning and a trained head only."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import register
from .base import Variant


@register("full")
class Full(Variant):
    """Full fine-tuning. Devlin et al. 2019 (BERT), arXiv 1810.04805, Sec. 4.

        W <- W - lr * dL/dW   for every weight of the model (and the task head)

    Wraps no layer; ``apply`` leaves every parameter trainable, and ``save_adapter``
    saves all of them (the whole model).
    """

    description = "full fine-tuning: every weight trains (Devlin et al. 2019, arXiv 1810.04805)"
    wraps_layers = False
    trains_base = True

    @dataclass
    class Options:
        pass


@register("head")
class Head(Variant):
    """Task head only (linear probing of frozen features). Devlin et al. 2019 (BERT),
    arXiv 1810.04805, Sec. 5.3 (feature-based approach).

        h = head(f(x)), f frozen; only the head's weights train

    Wraps no layer; ``apply`` freezes the backbone and keeps ``classifier`` / ``score`` trainable.
    """

    description = "task head only, backbone frozen (linear probing; Devlin et al. 2019, arXiv 1810.04805)"
    wraps_layers = False

    @dataclass
    class Options:
        pass

    @classmethod
    def unpackable(cls):
        """A head run packs: it adds nothing to the shared frozen encoder, its head is its own."""
        return None
