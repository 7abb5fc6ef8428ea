"""The rank-flexible LoRA base: the first b components of A and B form a usable rank-b adapter.

DyLoRA and MatryoshkaLoRA train so that any prefix rank works; both evaluate, merge and export
at the rank chosen with ``set_rank(b)`` (``lorabench.set_rank``). Each says in ``delta_at(b)``
how its rank-b update is scaled.
"""

from __future__ import annotations

import math
import numbers

import torch

from .base import VariantError
from .lora import LoRA


class NestedRankLoRA(LoRA):
    """LoRA whose eval / merge / export rank is ``eval_rank`` (<= r): h = W0 x + delta_at(b) x."""

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        # The rank used in eval mode, delta_weight and export; a buffer, so it is saved.
        self.register_buffer("eval_rank", torch.tensor(opts.r, dtype=torch.int64))
        self.merged_rank: int | None = None

    @staticmethod
    def scale_of(opts, b: int) -> float:
        """The scale of the rank-b adapter: alpha / b, or alpha / sqrt(b) with rsLoRA."""
        return opts.alpha / (math.sqrt(b) if opts.rslora else b)

    def set_rank(self, rank: int) -> None:
        """Use the first ``rank`` components in eval mode, delta_weight and export."""
        r = self.opts.r
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 1 <= rank <= r:
            raise VariantError(f"{type(self).__name__} rank must be an integer in 1..{r} (its max rank r), got {rank!r}")
        self.eval_rank.fill_(int(rank))

    def delta_at(self, b: int) -> torch.Tensor:
        """The rank-b update, (out, in)."""
        raise NotImplementedError

    def delta_weight(self):
        return self.delta_at(int(self.eval_rank))

    def merged_weight(self, weight):
        # Remember the rank merged in, so unmerge removes exactly that even after set_rank.
        self.merged_rank = int(self.eval_rank)
        return weight + self.delta_at(self.merged_rank).to(weight.dtype)

    def unmerged_weight(self, merged):
        b = self.merged_rank if self.merged_rank is not None else int(self.eval_rank)
        self.merged_rank = None
        return merged - self.delta_at(b).to(merged.dtype)


def power_of_two_ranks(r: int) -> tuple[int, ...]:
    """1, 2, 4, ... below r, then r itself: the official rank set (``1,2,4,...`` cut at r)."""
    return tuple(2**i for i in range(r.bit_length()) if 2**i < r) + (r,)
