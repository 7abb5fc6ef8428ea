"""The layers of a pack: one frozen base layer, K runs' adapters applied each to its own rows.

A packed batch stacks the micro-batches of the runs taking part in this forward, run after run
along the batch dimension (``Segments``: which rows are whose). Every frozen layer computes once
for all rows. An adapted layer then adds, for run k on its rows only,

    delta_k(x) = s_k * (x A_k^T) B_k^T            A_k: (r_k, in), B_k: (out, r_k)

as two batched products over the K runs (``torch.bmm``): the rows of each run are gathered into
one slab of a (K, L, in) tensor (a view when every run has as many rows, else a zero-padded copy
through one index), and the factors are stacked (ranks zero-padded to the largest). PiSSA/OLoRA
keep the *original* W in the shared base and add their residual as one more low-rank term,
-s_k (x A0_k^T) B0_k^T, concatenated to the factors: never a per-run copy of the base.

Each run's trainable head (a linear ``classifier`` / ``score``) is applied the same way.
Dropout inside a pack (the model's, the adapters') draws each run's masks exactly as the run
draws them alone (``pack.noise``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .noise import PackNoise


class Segments:
    """The rows of a packed batch: run ``runs[j]`` owns ``rows[j]`` consecutive rows, in that order.

    ``width``: the packed batch's tokens per row. ``origins[j]``: where run ``runs[j]``'s rows come
    from, ``(indices into its micro-batch, (its rows, its width))`` (for its dropout masks);
    by default all the rows of a micro-batch as wide as the packed batch."""

    def __init__(self, runs: list[int], rows: list[int], width: int = 0,
                 origins: list[tuple[torch.Tensor, tuple[int, int]]] | None = None):
        self.runs, self.rows, self.width = list(runs), list(rows), width
        self.origins = origins if origins is not None else [(torch.arange(n), (n, width)) for n in self.rows]
        self.total = sum(rows)
        self.equal = len(set(rows)) == 1
        self._index: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.runs)

    def owner(self, device) -> torch.Tensor:
        """(N,) the position j in ``runs`` of each row's run."""
        key = ("owner", str(device))
        if key not in self._index:
            self._index[key] = torch.repeat_interleave(torch.arange(len(self.rows), device=device),
                                                       torch.tensor(self.rows, device=device))
        return self._index[key]

    def _slots(self, per_row: int, device) -> torch.Tensor:
        """Where each of the N * per_row flat positions goes in the (K * L_max) padded layout."""
        key = ("slots", per_row, str(device))
        if key not in self._index:
            longest = max(self.rows) * per_row
            starts = torch.arange(len(self.rows), device=device) * longest
            lengths = torch.tensor(self.rows, device=device) * per_row
            offsets = torch.arange(int(lengths.sum()), device=device) - torch.repeat_interleave(
                torch.cumsum(lengths, 0) - lengths, lengths)
            self._index[key] = torch.repeat_interleave(starts, lengths) + offsets
        return self._index[key]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ..., d) -> (K, L, d): each run's flattened rows in one slab (zero-padded when uneven)."""
        d, per_row = x.shape[-1], x[0].numel() // x.shape[-1]
        flat = x.reshape(-1, d)
        if self.equal:
            return flat.view(len(self.rows), -1, d)
        slots = self._slots(per_row, x.device)
        padded = flat.new_zeros(len(self.rows) * max(self.rows) * per_row, d).index_copy(0, slots, flat)
        return padded.view(len(self.rows), -1, d)

    def join(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of ``split`` for an output (K, L, d_out), shaped as ``like`` with its last dim d_out."""
        d = y.shape[-1]
        flat = y.reshape(-1, d)
        if not self.equal:
            flat = flat.index_select(0, self._slots(like[0].numel() // like.shape[-1], y.device))
        return flat.view(*like.shape[:-1], d)


class Pack(nn.Module):
    """What the packed layers share: the runs' random draws (``noise``) and the current ``Segments``."""

    def __init__(self, seeds: list[int]):
        super().__init__()
        self.noise = PackNoise(seeds)
        self.segments: Segments | None = None

    @contextmanager
    def rows(self, segments: Segments) -> Iterator[None]:
        """Inside: every packed layer reads ``segments``; each run's dropout calls count from 0."""
        self.segments = segments
        self.noise.new_forward()
        try:
            yield
        finally:
            self.segments = None


class PackedLinear(nn.Module):
    """A frozen ``base_layer`` shared by the runs of a pack, each run's adapter on its own rows.

    ``adapters[k]`` is run k's variant module (one that packs: its change is a low-rank product,
    ``pack_factors``, maybe with a column scaling, ``pack_scale``), the very object its own model
    holds, so its optimizer, rule and saved adapter are the run's own; a run that adapts no layer
    (``head``) holds an empty module here. For run k on its rows, with x_d its adapter's dropout of x:

        y_k = W x + b + (c_k - 1) W x_d + c_k s_k B_k A_k x_d      c_k = 1 unless ``pack_scale`` (DoRA)
    """

    def __init__(self, base_layer: nn.Module, adapters: list[nn.Module | None], pack: Pack):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleList([nn.Module() if a is None else a for a in adapters])
        self.present = [a is not None for a in adapters]
        object.__setattr__(self, "pack", pack)  # shared by every layer: not a submodule

    @property
    def weight(self) -> torch.Tensor:
        """The frozen W0 as (out, in) (GPT-2's ``Conv1D`` stores (in, out))."""
        w = self.base_layer.weight
        return w.t() if type(self.base_layer).__name__ == "Conv1D" else w

    def factors(self, runs: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(A: (R_k, in), B^T: (R_k, out))] of ``runs``, scale folded into B and the residual term
        of a PiSSA/OLoRA run appended (rank 0: a run with no adapter here)."""
        out = []
        W = self.weight
        for k in runs:
            v = self.adapters[k]
            if not self.present[k]:
                out.append((W.new_zeros(0, W.shape[1]), W.new_zeros(0, W.shape[0])))
                continue
            A, B, s = v.pack_factors()
            if getattr(v, "lora_A0", None) is not None:  # the shared base holds W, the run W - s B0 A0
                A, B = torch.cat([A, v.lora_A0]), torch.cat([B, -v.lora_B0], dim=1)
            out.append((A, (B * s).t()))
        return out

    @staticmethod
    def low_rank(xs: torch.Tensor, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(K, L, out) each run's x_k A_k^T B_k^T for ``xs`` (K, L, in): one batched product per
        stretch of consecutive runs of one rank (a VeRA run's r = 256 never pads a LoRA run's r = 8;
        ``PackedModel`` orders a chunk's runs by rank, so a stretch is a slice, not a copy)."""
        stretches: list[list[int]] = []
        for j, (A, _) in enumerate(factors):
            if stretches and factors[stretches[-1][0]][0].shape[0] == A.shape[0]:
                stretches[-1].append(j)
            else:
                stretches.append([j])
        out = []
        for group in stretches:
            x = xs[group[0]:group[-1] + 1]  # (G, L, in), a view
            if factors[group[0]][0].shape[0] == 0:  # runs that adapt no layer here (head)
                out.append(x.new_zeros(*x.shape[:2], factors[group[0]][1].shape[1]))
                continue
            A = torch.stack([factors[j][0] for j in group])  # (G, R, in)
            B = torch.stack([factors[j][1] for j in group])  # (G, R, out)
            out.append(torch.bmm(torch.bmm(x, A.transpose(1, 2)), B))  # (G, L, R) -> (G, L, out)
        return out[0] if len(out) == 1 else torch.cat(out)

    def column_scales(self, runs: list[int]) -> torch.Tensor | None:
        """(K, out) each run's c (``pack_scale``), or None when every c is 1."""
        W = self.weight
        scales = [self.adapters[k].pack_scale(W) if self.present[k] and hasattr(self.adapters[k], "pack_scale")
                  else None for k in runs]
        if all(c is None for c in scales):
            return None
        return torch.stack([W.new_ones(W.shape[0]) if c is None else c for c in scales])

    def lora_dropout(self, x: torch.Tensor, seg: Segments) -> torch.Tensor:
        """(N, T, in) ``x`` with each run's own LoRA dropout (p = 0: its rows as they are)."""
        drop = [getattr(getattr(self.adapters[k], "opts", None), "dropout", 0.0) for k in seg.runs]
        if not any(drop):
            return x
        parts, start = [], 0
        for j, (k, n, p) in enumerate(zip(seg.runs, seg.rows, drop)):
            part = x[start:start + n]
            if p > 0:
                one = Segments([k], [n], seg.width, [seg.origins[j]])
                part = self.pack.noise.drop(part, p, one)
            parts.append(part)
            start += n
        return torch.cat(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = self.pack.segments
        h = self.base_layer(x)
        factors = self.factors(seg.runs)
        x_d = x.to(factors[0][0].dtype)
        if self.training:  # the adapters' own dropout on their input: the runs that have one, each its own mask
            x_d = self.lora_dropout(x_d, seg)
        delta = self.low_rank(seg.split(x_d), factors)  # (K, L, out)
        c = self.column_scales(seg.runs)
        if c is None:
            return h + seg.join(delta, h).to(h.dtype)
        bias = self.base_layer.bias
        wx_d = F.linear(x_d, self.weight.to(x_d.dtype)) if x_d is not x else (h if bias is None else h - bias)
        c = c[seg.owner(h.device)].view(-1, *[1] * (h.dim() - 2), h.shape[-1])  # (N, 1.., out): each row's run's c
        return h + ((c - 1) * wx_d + c * seg.join(delta, h)).to(h.dtype)


class PackedHead(nn.Module):
    """The runs' trainable linear heads (``classifier`` / ``score``), each on its own rows."""

    def __init__(self, heads: list[nn.Linear], pack: Pack):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        object.__setattr__(self, "pack", pack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seg = self.pack.segments
        heads = [self.heads[k] for k in seg.runs]
        W = torch.stack([h.weight for h in heads])  # (K, C, H)
        y = torch.bmm(seg.split(x.to(W.dtype)), W.transpose(1, 2))  # (K, L, C)
        if heads[0].bias is not None:
            y = y + torch.stack([h.bias for h in heads]).unsqueeze(1)
        return seg.join(y, x).to(x.dtype)
