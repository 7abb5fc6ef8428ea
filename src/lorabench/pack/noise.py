"""Dropout inside a pack: every run draws exactly the masks it draws when it trains alone.

Alone, a run's random draws during training all come from the global generator, seeded by
``set_seed(seed)`` at the start of ``train.fit``, in a fixed order: one int64 each time one of its
loaders is iterated (``DataLoader`` draws its workers' base seed), and one Bernoulli mask per
dropout call of each forward, of the shape that call sees: (B, T, H) hidden states, (B, h, T, T)
attention probabilities (SDPA's math path, the one it takes on a CPU when dropout is on), (B, H)
the pooled output, (B, T, in) LoRA's own input dropout; T is the run's micro-batch width.

A pack gives each run a generator of its own in that same state (``torch.Generator`` seeded with
the run's seed: the CPU global generator's state after ``manual_seed``), hands it to the run's
loaders, and replaces the shared model's dropout (its ``nn.Dropout`` modules and SDPA's attention
dropout, through the ``lorabench_pack`` attention function) with ``PackNoise.drop``: per run, the
n-th dropout call of a micro-batch's forward draws the run's full mask at its own shape from its
own generator, keeps it for the chunks of that micro-batch (``model.chunks`` spreads a run's rows
over several forwards), and applies the rows and columns the chunk holds (positions past a row's
own width are padding: their values reach no real token). The mask values are those of
``at::dropout`` on a CPU: ``bernoulli_(1 - p)`` then ``/ (1 - p)``, so on a CPU the noise is
bit-for-bit the unpacked run's. On CUDA, SDPA's fused kernels draw with Philox offsets that
cannot be replayed per run: a packed run's masks there have the same law, not the same bits.
No torch function is replaced; only the pack's own model object changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from .layers import Segments

#: The attention function a pack's shared model runs (registered with transformers' interface).
ATTENTION = "lorabench_pack"


def sequence_dims(ndim: int) -> tuple[int, ...]:
    """The dims of a dropout input that run along the tokens: (B, H) none, (B, T, H) 1,
    (B, h, T, T) 2 and 3."""
    dims = {2: (), 3: (1,), 4: (2, 3)}.get(ndim)
    if dims is None:
        raise ConfigError(f"a packed run cannot reproduce a dropout over a {ndim}-d tensor; train with --pack 1 "
                          "or --model-dropout 0")
    return dims


class PackNoise:
    """The runs' generators and the masks drawn in the current micro-batch (``tape``)."""

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.tape: dict[tuple[int, int], torch.Tensor] = {}
        self.calls: dict[int, int] = {}

    def new_micro_batch(self) -> None:
        """Forget the masks of the last micro-batch: the next forward draws anew."""
        self.tape.clear()
        self.calls.clear()

    def new_forward(self) -> None:
        """A forward over one chunk: each run's dropout calls count from 0 again."""
        self.calls.clear()

    def _noise(self, k: int, full: tuple[int, ...], dtype: torch.dtype, p: float) -> torch.Tensor:
        """Run ``k``'s noise for its next dropout call, drawn at ``full`` (its own shape) on first use."""
        n = self.calls.get(k, 0)
        self.calls[k] = n + 1
        key = (k, n)
        if key not in self.tape:  # what ``at::dropout`` draws: empty_like(x).bernoulli_(1 - p), / (1 - p)
            self.tape[key] = torch.empty(full, dtype=dtype).bernoulli_(1 - p, generator=self.generators[k]).div_(1 - p)
        return self.tape[key]

    def noise(self, x: torch.Tensor, p: float, seg: "Segments", dims: tuple[int, ...] | None = None) -> torch.Tensor:
        """(N, ...) the multiplier of ``x``'s rows: 0 or 1 / (1 - p), each run's rows from its own mask."""
        dims = sequence_dims(x.dim()) if dims is None else dims
        width = seg.width
        if any(x.shape[d] != width for d in dims):
            raise ConfigError(f"a dropout input of shape {tuple(x.shape)} does not run along the packed batch's "
                              f"{width} tokens where expected; train with --pack 1 or --model-dropout 0")
        parts = []
        for j, k in enumerate(seg.runs):
            rows, own = seg.origins[j]
            full = list(x.shape)
            full[0] = own[0]
            for d in dims:
                full[d] = own[1]
            noise = self._noise(k, tuple(full), x.dtype, p)
            for d in dims:  # cut to the chunk's width (views), before copying the rows the chunk holds
                noise = noise.narrow(d, 0, min(width, own[1]))
            if len(rows) != own[0]:
                noise = noise.index_select(0, rows)
            for d in dims:  # past the run's own width: padding, reaching no real token; kept as is
                if own[1] < width:
                    pad = list(noise.shape)
                    pad[d] = width - own[1]
                    noise = torch.cat([noise, noise.new_full(pad, 1 / (1 - p))], dim=d)
            parts.append(noise)
        noise = parts[0] if len(parts) == 1 else torch.cat(parts)
        return noise.to(x.device)

    def drop(self, x: torch.Tensor, p: float, seg: "Segments", dims: tuple[int, ...] | None = None) -> torch.Tensor:
        return x * self.noise(x, p, seg, dims)


class PackedDropout(nn.Module):
    """An ``nn.Dropout`` of the shared model: each run's rows get the mask the run draws alone."""

    def __init__(self, p: float, pack: nn.Module):
        super().__init__()
        self.p = p
        object.__setattr__(self, "pack", pack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return self.pack.noise.drop(x, self.p, self.pack.segments)


def swap_dropout(model: nn.Module, pack: nn.Module) -> None:
    """Every ``nn.Dropout`` of ``model`` (the pack's shared model) becomes a ``PackedDropout``."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, PackedDropout(child.p, pack))


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """SDPA as ``transformers`` calls it, with each run's attention dropout drawn from its own
    generator. Without dropout (evaluation) it is SDPA itself; with dropout, the math path that
    SDPA takes on a CPU then (q and k scaled by sqrt(scale), mask added, safe softmax, dropout,
    times v), which gives the unpacked run's numbers bit for bit."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not module.training or dropout == 0.0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("position_bias") is not None:
        raise ConfigError("a packed run cannot reproduce attention dropout with a position bias; train with "
                          "--pack 1 or --model-dropout 0")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if q_len > 1 and attention_mask is None and causal:
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
    dtype = query.dtype
    q, k, v = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (query, key, value))
    scale = math.sqrt(scaling if scaling is not None else 1.0 / math.sqrt(q.shape[-1]))
    attn = torch.matmul(q * scale, k.transpose(-2, -1) * scale)  # (N, h, T, T)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=attn.dtype, device=attn.device).masked_fill(
                attention_mask.logical_not(), -math.inf)
        attn = attn + attention_mask
    attn = torch.ops.aten._safe_softmax(attn, -1)
    pack = module.lorabench_pack
    attn = pack.noise.drop(attn, dropout, pack.segments, dims=(2, 3))
    out = torch.matmul(attn, v).to(dtype)  # (N, h, T, d)
    return out.transpose(1, 2).contiguous(), None


def use_packed_attention(model: nn.Module, pack: nn.Module) -> None:
    """Point ``model``'s attention layers at ``packed_attention`` (and at ``pack``)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # SDPA's masks
    inner = [m for m in model.modules() if hasattr(m, "set_attn_implementation")]
    for module in model.modules():  # the attention function is handed its attention module
        object.__setattr__(module, "lorabench_pack", pack)
    for m in inner:
        if m.config._attn_implementation in ("sdpa", ATTENTION):  # eager attention: plan.unpackable says why not
            m.set_attn_implementation(ATTENTION)
