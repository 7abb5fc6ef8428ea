"""BD-LoRA: LoRA with one factor block-diagonal, so each tensor-parallel shard computes its part alone."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check

MODES = ("column", "row")
#: Layer-name suffix -> how Megatron-style tensor parallelism shards that layer (first match wins, so the
#: specific names precede the generic ``dense``). Column-parallel: the first layer of a pair (attention's
#: q, k, v; the MLP's up / gate), its output sharded. Row-parallel: the second (attention's output, the
#: MLP's down), its input sharded. BERT's ``intermediate.dense`` is the MLP's up projection: column.
DEFAULT_PARALLEL = (
    ("intermediate.dense", "column"), ("attention.output.dense", "row"), ("output.dense", "row"),
    *((s, "column") for s in ("q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key", "value", "q", "k", "v",
                              "query_key_value", "c_attn", "up_proj", "gate_proj", "gate_up_proj", "c_fc", "fc1",
                              "dense_h_to_4h", "w1", "w3", "wi", "wi_0", "wi_1")),
    *((s, "row") for s in ("o_proj", "out_proj", "o", "down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "wo",
                           "dense")),
)


def parse_parallel(spec: str) -> tuple[tuple[str, str], ...] | None:
    """``parallel`` as (suffix, mode) rules tried before DEFAULT_PARALLEL; None for one mode on every layer."""
    if spec in MODES:
        return None
    if spec == "auto":
        return ()
    rules = []
    for item in spec.split(","):
        suffix, sep, mode = item.strip().rpartition(":")
        if not sep or not suffix or mode not in MODES:
            raise VariantError(
                f"parallel={spec!r}: entry {item.strip()!r} is not SUFFIX:column or SUFFIX:row; write e.g. "
                "parallel='intermediate.dense:column,dense:row', or 'auto' (the name table), 'column' or 'row'")
        rules.append((suffix, mode))
    return tuple(rules)


def parallel_mode(spec: str, layer_name: str) -> str:
    """'column' or 'row' for ``layer_name``: the user's rules, then DEFAULT_PARALLEL, by name suffix."""
    rules = parse_parallel(spec)
    if rules is None:
        return spec
    for suffix, mode in (*rules, *DEFAULT_PARALLEL):
        if layer_name == suffix or layer_name.endswith("." + suffix):
            return mode
    raise VariantError(
        f"BD-LoRA cannot tell whether layer {layer_name!r} is column- or row-parallel (no name rule matches); "
        f"add one, e.g. parallel='{layer_name.rsplit('.', 1)[-1]}:column', or set parallel='column' / 'row'")


@dataclass
class BDLoRAOptions:
    r: int = 16  # total rank over all blocks (r / blocks per block); the paper runs 2x and 4x LoRA's rank (8 here)
    alpha: float = 16.0  # s = alpha / r, as LoRA (r = alpha: scale 1, as lorabench's LoRA default)
    blocks: int = 8  # the tensor-parallel degree served with: 8 (eight A100s) in the paper's experiments
    # "auto": by layer name (DEFAULT_PARALLEL); "column" / "row": every layer; "SUFFIX:MODE,...": these
    # rules first, then the name table. Resolved per layer (``layer_options``) to "column" or "row".
    parallel: str = "auto"
    dropout: float = 0.0

    def __post_init__(self):
        check(isinstance(self.blocks, int) and self.blocks > 0,
              f"blocks must be a positive integer (the tensor-parallel degree), got {self.blocks!r}; use e.g. blocks=8")
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=16")
        check(self.r % self.blocks == 0,
              f"r={self.r} is not a multiple of blocks={self.blocks}: each of the {self.blocks} blocks holds r / blocks "
              f"rank components; choose r = {max(1, self.r // self.blocks) * self.blocks} or "
              f"{(self.r // self.blocks + 1) * self.blocks}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; use alpha = r for scale 1")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")
        check(isinstance(self.parallel, str), f"parallel must be a string, got {self.parallel!r}; use 'auto'")
        parse_parallel(self.parallel)


@register("bd_lora")
class BDLoRA(Variant):
    """BD-LoRA: Block-Diagonal LoRA. Wang, Kübler, Budhathoki, Wang & Kleindessner 2025, "Block-Diagonal LoRA
    for Eliminating Communication Overhead in Tensor Parallel LoRA Serving", arXiv 2510.23346. The authors'
    code: PEFT's ``BdLoraConfig`` / ``BdLoraLinearVariant`` (peft/tuners/lora/variants.py).

        h = W0 x + s B A x,  s = alpha / r,  A: (r, in), B: (out, r), N = blocks (the TP degree)
        column-parallel layer (q, k, v, up, gate): B = blockdiag(B_1..B_N), B_i (out/N, r/N)
        row-parallel layer (o, down):              A = blockdiag(A_1..A_N), A_i (r/N, in/N)

    Shard i of a column-parallel layer holds W0's output rows i, A's rank rows i and B_i: from the full x
    it computes its output slice alone. Shard i of a row-parallel layer holds W0's input columns i, A_i and
    B's rank columns i: its partial sum joins the all-reduce the base layer does anyway. Only the diagonal
    blocks are stored, in PEFT's layout (blocks stacked along the non-rank side): column lora_B (out, r/N),
    row lora_A (r, in/N). Init as LoRA: A Kaiming-uniform (a = sqrt(5)) on each block, B = 0.

    Defaults: blocks = 8 and r = 2 x LoRA's: the abstract's "0.87x (1.74x) the adapter parameters" on
    Llama-3.1-70B (0.86x / 1.73x on 8B) are BD-LoRA at 2x (4x) LoRA's rank with 8 blocks
    (``lora_matched_rank`` finds a rank with LoRA's parameter count instead).
    Deviations: PEFT draws a block-diagonal A with kaiming_uniform_(a=0) (bound sqrt(6 / (in/N))); here LoRA's
    a = sqrt(5) on the block. Export to PEFT is a plain LoRA with the blocks expanded (zeros off the diagonal,
    exact; PEFT training it further would not keep the structure). No ``optimizer=`` rules. A fused QKV
    (GPT-2 c_attn) is split into N contiguous output blocks, not per q / k / v as an engine shards it.
    """

    description = ("BD-LoRA: LoRA with B block-diagonal on column-parallel layers (q,k,v,up,gate), A on row-parallel "
                   "(o,down), so TP shards need no extra communication (Wang et al. 2025, arXiv 2510.23346); "
                   "deviations: A init a=sqrt(5) as LoRA (PEFT: a=0), PEFT export as dense LoRA, no optimizer= rules")
    Options = BDLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        check(opts.parallel in MODES, f"BD-LoRA layers need parallel resolved to 'column' or 'row' (got "
                                      f"{opts.parallel!r}); build them with lorabench.apply(model, 'bd_lora')")
        r, n = opts.r, opts.blocks
        row = opts.parallel == "row"
        self.lora_A = nn.Parameter(torch.empty(r, in_features // n if row else in_features))  # row: N blocks (r/N, in/N)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r if row else r // n))  # column: N blocks (out/N, r/N)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # fan_in = in (column) or in / N (row): one block's

    # ---- which factor is block-diagonal: decided per layer, by its name --------------------
    @classmethod
    def layer_options(cls, opts, layer_name):
        return dataclasses.replace(opts, parallel=parallel_mode(opts.parallel, layer_name))

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        mode = parallel_mode(opts.parallel, layer_name)
        limit = min(in_features, out_features)
        if opts.r > limit:
            raise VariantError(f"r={opts.r} is larger than min(in, out) = {limit} of layer {layer_name!r}, and B A has "
                               f"rank at most that; choose r <= {limit - limit % opts.blocks}")
        side, size = ("input", in_features) if mode == "row" else ("output", out_features)
        if size % opts.blocks:
            raise VariantError(
                f"layer {layer_name!r} is {mode}-parallel, so its {side} size {size} is cut into blocks={opts.blocks} "
                f"shards, which does not divide it; choose blocks dividing {size} (the TP degree must too), or "
                f"leave the layer out of targets")

    @classmethod
    def unpackable(cls):
        return "its block-diagonal factor is stored as blocks, and a pack's batched product takes dense A, B"

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    @property
    def row(self) -> bool:
        return self.opts.parallel == "row"

    def blocks(self) -> torch.Tensor:
        """The block-diagonal factor's N diagonal blocks: (N, out/N, r/N) of B, or (N, r/N, in/N) of A."""
        n = self.opts.blocks
        if self.row:
            return self.lora_A.view(n, self.opts.r // n, self.in_features // n)
        return self.lora_B.view(n, self.out_features // n, self.opts.r // n)

    def dense_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, in), B (out, r)) with the block-diagonal factor expanded: zeros off its diagonal blocks."""
        full = torch.block_diag(*self.blocks())
        return (full, self.lora_B) if self.row else (self.lora_A, full)

    def delta(self, x):
        x, n = self.dropout(x), self.opts.blocks
        if self.row:
            xb = x.unflatten(-1, (n, self.in_features // n))  # (..., N, in/N): shard i's input
            z = torch.einsum("...nm,nkm->...nk", xb, self.blocks()).flatten(-2)  # (..., r)
            return F.linear(z * self.scale, self.lora_B)  # (..., out)
        z = (F.linear(x, self.lora_A) * self.scale).unflatten(-1, (n, self.opts.r // n))  # (..., N, r/N)
        return torch.einsum("...nk,nok->...no", z, self.blocks()).flatten(-2)  # (..., out)

    def delta_weight(self):
        A, B = self.dense_factors()
        return self.scale * (B @ A)  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        if opts.parallel not in MODES:
            raise VariantError(f"the count depends on the layer's parallel mode; pass the layer's options "
                               f"(BDLoRA.layer_options(opts, name)), not parallel={opts.parallel!r}")
        r, n = opts.r, opts.blocks
        return r * in_features // n + r * out_features if opts.parallel == "row" else r * in_features + r * out_features // n

    @classmethod
    def lora_matched_rank(cls, layers: list[tuple[int, int, str]], lora_r: int, blocks: int) -> int:
        """The smallest multiple of ``blocks`` whose BD-LoRA parameters over ``layers`` ((in, out, mode) each)
        reach LoRA's at rank ``lora_r`` (the paper compares at similar parameter counts)."""
        lora = sum(lora_r * (i + o) for i, o, _ in layers)
        per_rank = sum(i / blocks + o if mode == "row" else i + o / blocks for i, o, mode in layers)
        return blocks * math.ceil(lora / per_rank / blocks - 1e-9)

    # ---- PEFT export: a plain LoRA, the scale folded into B, zeros off the diagonal blocks ---
    def peft_tensors(self):
        A, B = self.dense_factors()
        return {"lora_A.weight": A.detach().contiguous(), "lora_B.weight": (self.scale * B).detach().contiguous()}

    def peft_config(self):
        r = self.opts.r
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}
