"""Output-space regularizers against forgetting (``--regularizer``), one file each behind
``registry``, as ``adapters/`` is for variants: ``attach(model, spec)`` gives a ``--head lm``
model the term, which its head adds to the loss."""

from . import mask_target  # noqa: F401  (registers)
from .registry import canonical, get, names, parse  # noqa: F401


def attach(model, spec: str | None) -> None:
    """Give ``model`` (before any adapter is applied: the regularizer keeps the base it regularizes
    toward) the regularizer ``spec`` names; nothing when ``spec`` is None."""
    if spec is None:
        return
    cls, opts = parse(spec)
    model.regularizer = cls(model, opts)
