"""Uni-LoRA: every layer's A and B read from one trained vector through a fixed isometric projection."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check


@dataclass
class UniLoRAOptions:
    r: int = 4  # rank of every layer's A, B (PEFT's default)
    theta_d_length: int = 256  # d, the length of the one trained vector (PEFT's default)
    projection_seed: int = 42  # seed of the projection P (PEFT's proj_seed)
    init_bound: float = 0.02  # theta_d ~ U(-init_bound, init_bound); not 0, else B and A get no gradient
    dropout: float = 0.0

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=4")
        check(
            isinstance(self.theta_d_length, int) and self.theta_d_length > 0,
            f"theta_d_length must be a positive integer, got {self.theta_d_length!r}; use e.g. theta_d_length=256",
        )
        check(isinstance(self.projection_seed, int), f"projection_seed must be an integer, got {self.projection_seed!r}")
        check(self.init_bound > 0, f"init_bound must be > 0 (theta_d = 0 gets no gradient), got {self.init_bound!r}; use 0.02")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


def balanced_projection(D: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Row -> column of a one-hot-per-row projection P (D, d): each of the d columns is hit
    floor(D/d) or ceil(D/d) times, at random places (the paper's projection, balanced as in PEFT).

    A random permutation pi of the D rows, taken mod d, hits every residue equally often; a
    random relabelling sigma of the d columns makes which columns get the extra hit random too.
    """
    pi = torch.randperm(D, generator=generator)
    sigma = torch.randperm(d, generator=generator)
    return sigma[pi % d].to(torch.int32)  # (D,)


def column_scales(index: torch.Tensor, d: int) -> torch.Tensor:
    """1 / sqrt(hits) per column (0 for an unused column): the columns of P become orthonormal,
    so P is an isometry, ||P theta|| = ||theta||."""
    hits = torch.bincount(index.long(), minlength=d).float()  # (d,)
    return torch.where(hits > 0, hits.clamp_min(1).rsqrt(), torch.zeros_like(hits))


@register("uni_lora")
class UniLoRA(Variant):
    """Uni-LoRA: One Vector is All You Need. Li, Han, Su, Li, Cai & Ji 2025, arXiv 2506.00799.

        theta_D = P theta_d:  all layers' LoRA factors, flattened (D = sum r (in + out)), are a fixed
        projection of ONE trained vector theta_d (d << D);  h = W0 x + B A x  (no scale factor)
        P (D, d): one non-zero per row, each column normalised (1 / sqrt(its hits)): an isometry

    theta_d and P live once on the model (``shared_state``); layer k reads its slice of P.
    Init: theta_d ~ U(-0.02, 0.02) and both A and B come from it, so h != W0 x at init
    (by O(r 0.02^2)): ``identity_at_init`` is False.
    """

    description = "Uni-LoRA: all layers' A, B from one trained vector via a fixed isometric projection (Li et al. 2025, arXiv 2506.00799)"
    Options = UniLoRAOptions
    identity_at_init = False

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        if shared is None or not hasattr(shared, "theta_d"):
            raise VariantError("Uni-LoRA layers need the shared vector; create them with lorabench.apply(model, 'uni_lora')")
        # Layers take consecutive slices of P in the order apply creates them, the order of the
        # shapes shared_state was given (A then B per layer, as PEFT lays out theta_D).
        start = shared.__dict__.get("next_row", 0)
        self.rows_A = (start, start + opts.r * in_features)
        self.rows_B = (self.rows_A[1], self.rows_A[1] + out_features * opts.r)
        if self.rows_B[1] > shared.proj_index.numel():
            raise VariantError(
                "more Uni-LoRA layers than the shared projection was built for; create them all with one "
                "lorabench.apply(model, 'uni_lora') call"
            )
        shared.__dict__["next_row"] = self.rows_B[1]
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    @classmethod
    def shared_state(cls, shapes, opts):
        D = sum(opts.r * (i + o) for i, o in shapes)
        d = opts.theta_d_length
        generator = torch.Generator(device="cpu").manual_seed(opts.projection_seed)
        index = balanced_projection(D, d, generator)  # (D,)
        theta_d = torch.empty(d).uniform_(-opts.init_bound, opts.init_bound)  # global RNG, like every trained init
        return {"theta_d": nn.Parameter(theta_d), "proj_index": index, "proj_scale": column_scales(index, d)}

    @staticmethod
    @torch.no_grad()
    def set_projection(shared: nn.Module, index: torch.Tensor) -> None:
        """Replace P by the one with row -> column map ``index`` (D,) (e.g. another implementation's)."""
        if index.shape != shared.proj_index.shape:
            raise VariantError(f"a projection index of shape {tuple(shared.proj_index.shape)} is needed, got {tuple(index.shape)}")
        shared.proj_index.copy_(index)
        shared.proj_scale.copy_(column_scales(index, shared.theta_d.numel()))

    # ---- compute ---------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.shared.theta_d.dtype

    def factors_from_theta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, in), B (out, r)) = this layer's slices of P theta_d."""
        w = self.shared.theta_d * self.shared.proj_scale  # (d,): P's non-zeros are 1 / sqrt(hits)
        index = self.shared.proj_index
        A = w.index_select(0, index[slice(*self.rows_A)]).view(self.opts.r, self.in_features)  # (r, in)
        B = w.index_select(0, index[slice(*self.rows_B)]).view(self.out_features, self.opts.r)  # (out, r)
        return A, B

    def delta(self, x):
        A, B = self.factors_from_theta()
        return F.linear(F.linear(self.dropout(x), A), B)  # (..., r) -> (..., out)

    def pack_factors(self):
        """(A, B, 1) read from theta as ``delta`` reads them, for a pack's batched product."""
        A, B = self.factors_from_theta()
        return A, B, 1.0

    @classmethod
    def unpackable(cls):
        return None

    def delta_weight(self):
        A, B = self.factors_from_theta()
        return B @ A  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        # Nothing per layer: the model trains theta_d_length parameters in all (the shared theta_d).
        return 0

    # ---- PEFT export (peft_type UNILORA with save_indices: P travels with the adapter) ------
    def peft_tensors(self):
        index, scale = self.shared.proj_index, self.shared.proj_scale
        idx_A = index[slice(*self.rows_A)].long().view(self.opts.r, self.in_features)  # (r, in)
        idx_B = index[slice(*self.rows_B)].long().view(self.out_features, self.opts.r)  # (out, r)
        return {
            "unilora_indices_A": idx_A.contiguous(),
            "unilora_indices_B": idx_B.contiguous(),
            "unilora_scales_A": scale[idx_A].detach().contiguous(),
            "unilora_scales_B": scale[idx_B].detach().contiguous(),
        }

    def peft_config(self):
        o = self.opts
        return {
            "peft_type": "UNILORA",
            "r": o.r,
            "theta_d_length": o.theta_d_length,
            "proj_seed": o.projection_seed,
            "init_theta_d_bound": o.init_bound,
            "unilora_dropout": o.dropout,
            "save_indices": True,
        }

    @classmethod
    def peft_shared_tensors(cls, shared: nn.Module) -> dict[str, torch.Tensor]:
        return {"base_model.unilora_theta_d": shared.theta_d.detach().contiguous()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows_A={self.rows_A}, rows_B={self.rows_B}"
