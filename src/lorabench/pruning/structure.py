"""Where the prunable groups of a BERT-family encoder live: attention heads and FFN channels.

One ``Block`` per encoder layer (``encoder.layer.<i>`` of BERT, RoBERTa, ELECTRA ...):

    heads     rows of attention.self.{query, key, value} (head_dim rows per head, dim 0)
              and columns of attention.output.dense (dim 1)
    channels  rows of intermediate.dense (dim 0) and columns of output.dense (dim 1)

Removing a head (channel) removes exactly those rows and columns; masking it zeroes the outputs
of its rows (``pruning.masks``), which gives the same layer output (``pruning.remove``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError

#: Each prunable linear layer of a block: (path inside the block, group, dim of the weight it is cut along).
LINEARS: dict[str, tuple[str, int]] = {
    "attention.self.query": ("heads", 0),
    "attention.self.key": ("heads", 0),
    "attention.self.value": ("heads", 0),
    "attention.output.dense": ("heads", 1),
    "intermediate.dense": ("channels", 0),
    "output.dense": ("channels", 1),
}
#: The layers whose outputs a mask zeroes (the rows of a group): masking them is removing the group.
MASKED = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")
#: LoRA targets of every method here (module-name suffixes): all linear layers of each block, as the
#: official LoRAPrune script/prune.sh (q, k, v, o, gate, up, down) and LoRAM's recovery (q, k, v, o, up, down).
TARGETS = list(LINEARS)


@dataclass(frozen=True)
class Block:
    """One encoder layer: its module name, index and group sizes."""

    name: str  # e.g. "bert.encoder.layer.0"
    index: int
    heads: int  # attention heads now
    head_dim: int
    channels: int  # FFN intermediate channels now
    hidden: int

    def path(self, linear: str) -> str:
        return f"{self.name}.{linear}"

    def group_size(self, linear: str) -> int:
        """Rows (or columns) of ``linear`` per group: head_dim for a head, 1 for a channel."""
        return self.head_dim if LINEARS[linear][0] == "heads" else 1


def _linear_width(layer: nn.Module, dim: int) -> int:
    weight = layer.weight if not hasattr(layer, "base_layer") else layer.base_layer.weight
    return weight.shape[dim]


def blocks(model: nn.Module) -> list[Block]:
    """The encoder layers of ``model`` that have every layer in ``LINEARS`` (in model order)."""
    found = []
    for name, module in model.named_modules():
        try:
            attention = module.get_submodule("attention.self")
            layers = {p: module.get_submodule(p) for p in LINEARS}
        except AttributeError:
            continue
        heads = getattr(attention, "num_attention_heads", None)
        head_dim = getattr(attention, "attention_head_size", None)
        if not isinstance(heads, int) or not isinstance(head_dim, int):
            continue
        channels = _linear_width(layers["intermediate.dense"], 0)
        hidden = _linear_width(layers["output.dense"], 0)
        found.append(Block(name, len(found), heads, head_dim, channels, hidden))
    return found


def check_supported(model: nn.Module, name: str) -> list[Block]:
    """The blocks of ``model``; ConfigError (before any compute) for an architecture without them."""
    found = blocks(model)
    if not found:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ConfigError(f"lorabench prune supports BERT-family encoders (bert, roberta, electra: encoder layers with "
                          f"attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense); "
                          f"{name} is model type {model_type!r}; use e.g. --model minilm")
    return found


def prunable(found: list[Block], keep_first: int | None = None, keep_last: int = 1) -> list[Block]:
    """The blocks that are pruned: all but the first ``keep_first`` (default int(0.1 L)) and the last
    ``keep_last``, as the official LoRAPrune ``freeze()`` (loraprune/utils.py: layer < int(0.1 L) or
    the last layer keep every group; LoRAM's scripts prune range(4, 78) of 80 layers, about the same)."""
    n = len(found)
    first = int(0.1 * n) if keep_first is None else keep_first
    return [b for b in found if first <= b.index < n - keep_last]


def count(n: int, sparsity: float) -> int:
    """Groups pruned out of ``n`` at ``sparsity``: int(n * sparsity) (official ``local_prune``)."""
    return int(n * sparsity + 1e-9)


def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
        raise ConfigError(f"sparsity must be in [0, 1) (the fraction of heads and FFN channels pruned in each pruned "
                          f"layer), got {sparsity!r}; use e.g. --sparsity 0.5")
