"""NLoRA: the three-matrix SLoRA adapter B N A initialised from W (the official blocks, or a Nyström sketch).

Also registers the LoRA init ``"nystrom"`` (``apply(model, "lora", init="nystrom")``): the same
sketch folded into two factors, a residual init like PiSSA's with the SVD replaced by sketching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check
from .lora import LoRA, register_init

SKETCHES = ("gaussian", "columns")
NLORA_INITS = ("official", "sketch")


def nystrom_factors(W: torch.Tensor, r: int, sketch: str = "gaussian", oversample: float = 1.0,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, R, A) with Q R A = W Omega (Psi^T W Omega)^+ Psi^T W, the (generalised) Nyström
    approximation of W (out, in) of rank r; Q (out, r) has orthonormal columns, R is (r, r).

    ``sketch="gaussian"``: Omega (in, r) and Psi (out, r + ceil(oversample r)) are Gaussian test
    matrices drawn on the CPU from ``seed`` (the same on every device). Oversampling Psi keeps the
    core well conditioned (Nakatsukasa 2020, arXiv 2009.11392); without it the square core's
    pseudo-inverse can make the approximation 100x larger than W.
    ``sketch="columns"``: Omega, Psi select the first r columns / rows, the partition of NLoRA's
    Fig. 3 (W = [[A_W, F_W], [B_W, C_W]] ~ [A_W; B_W] A_W^+ [A_W F_W]).
    """
    W = W.float()
    out_f, in_f = W.shape
    if sketch == "gaussian":
        g = torch.Generator().manual_seed(seed)
        omega = torch.randn(in_f, r, generator=g).to(W.device)  # (in, r)
        rows = min(out_f, r + math.ceil(oversample * r))
        psi = torch.randn(out_f, rows, generator=g).to(W.device)  # (out, r + p)
        Y, Z = W @ omega, psi.T @ W  # (out, r), (r + p, in)
        core = psi.T @ Y  # (r + p, r)
    else:
        Y, Z, core = W[:, :r], W[:r, :], W[:r, :r]
    Q, R = torch.linalg.qr(Y)  # (out, r), (r, r)
    A = torch.linalg.pinv(core) @ Z  # (r, in)
    return Q, R, A


@register_init("nystrom", factorises_weight=True, residual=True)
def _nystrom(v: LoRA, W: torch.Tensor) -> None:
    """NLoRA's seeded Gaussian Nyström sketch of W folded into A, B, residual frozen (Guo, Chang & Wu 2025, arXiv 2502.14482)"""
    # NLoRA's sketch folded into two factors: s B A = Q R A (the Nyström approximation), the frozen
    # base keeps W - s B0 A0 (as PiSSA with the SVD replaced by a seeded Gaussian sketch). Each rank-1
    # term is split so that column j of B and row j of A have the same norm.
    Q, R, A = nystrom_factors(W, v.opts.r)
    B = Q @ R  # (out, r)
    c = torch.sqrt(A.norm(dim=1) / B.norm(dim=0).clamp_min(1e-12)).clamp_min(1e-12)  # (r,)
    with torch.no_grad():
        v.lora_B.copy_(B * c / math.sqrt(v.scale))
        v.lora_A.copy_(A / c[:, None] / math.sqrt(v.scale))
    v.keep_init_factors()


@dataclass
class NLoRAOptions:
    r: int = 8
    alpha: float = 8.0  # the official scripts: lora_alpha = lora_rank (s = 1)
    inttune: bool = False  # IntTune: only the intermediate r x r matrix N trains, A and B stay frozen
    # official: B = W[:, :r], N = W[:r, :r], A = W[:r], added on top of W (the official nlora_init);
    # sketch: s B N A = a Nyström approximation of W (pseudo-inverse core), the frozen base keeps the residual
    init: str = "official"
    sketch: str = "gaussian"  # init="sketch": gaussian | columns (see nystrom_factors)
    oversample: float = 1.0  # init="sketch", gaussian: Psi has r + ceil(oversample r) columns
    seed: int = 0  # init="sketch": of the Gaussian test matrices

    def __post_init__(self):
        check(isinstance(self.r, int) and self.r > 0, f"r must be a positive integer, got {self.r!r}; use e.g. r=8")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; the official scripts use alpha = r")
        check(self.sketch in SKETCHES, f"sketch must be one of {', '.join(SKETCHES)}, got {self.sketch!r}")
        check(self.oversample >= 0, f"oversample must be >= 0 (extra sketch rows per rank), got {self.oversample!r}; use 1.0")
        check(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}; use e.g. seed=0")
        check(self.init in NLORA_INITS, f"init must be one of {', '.join(NLORA_INITS)}, got {self.init!r}")
        check(self.init == "sketch" or (self.sketch, self.oversample, self.seed) == ("gaussian", 1.0, 0),
              "sketch, oversample and seed shape the Nyström sketch of init='sketch'; add init='sketch' "
              "(the default init='official' takes blocks of W)")


@register("nlora")
class NLoRA(Variant):
    """NLoRA: Nyström-Initiated Low-Rank Adaptation for Large Language Models.
    Guo, Chang & Wu 2025, arXiv 2502.14482 (SLoRA structure, Nyström init, IntTune).
    Official code: github.com/TracyGuo2001/NLoRA, peft/src/peft/tuners/lora/layer.py (``nlora_init``).

        init="official" (default):  B = W[:, :r], N = W[:r, :r], A = W[:r, :];   h = W x + s B N A x
        init="sketch":  W ~ Q R A0 (Nyström sketch);  B0 = Q, N0 = R / s, A0;  h = (W - s B0 N0 A0) x + s B N A x

    SLoRA puts an r x r matrix N between LoRA's A and B; NLoRA initialises (B, N, A) from W, and
    IntTune (``inttune=True``) trains only N (r^2 values). The official nlora_init copies the blocks
    of W (in (out, in) orientation) and adds s B N A on top of the unchanged W: no pseudo-inverse,
    no residual, so the output changes at init (``identity_at_init = False``). ``init="sketch"`` is
    lorabench's Nyström form (its default before issue 14): s B N A is the Nyström approximation
    W Omega (Psi^T W Omega)^+ Psi^T W from seeded Gaussian test matrices (``sketch="columns"``: the
    first r columns / rows, with the pseudo-inverse the official code leaves out), the frozen base
    keeps the residual as in PiSSA, and the output is unchanged at init.
    """

    description = ("NLoRA: W + s B N A with B = W[:, :r], N = W[:r, :r], A = W[:r] (the official nlora_init; output "
                   "changes at init); init='sketch': Nyström sketch with pseudo-inverse, residual frozen; inttune "
                   "trains N only (Guo et al. 2025, arXiv 2502.14482)")
    Options = NLoRAOptions
    identity_at_init = False  # the official init adds s B N A on top of W (init="sketch" is identity)
    changes_base = False  # init="sketch" subtracts s B0 N0 A0 from W (base_offset)

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        r = opts.r
        self.lora_N = nn.Parameter(torch.zeros(r, r))  # (r, r)
        residual = opts.init == "sketch"
        if opts.inttune:  # A, B frozen: they are their own init values
            self.register_buffer("lora_A", torch.zeros(r, in_features))  # (r, in)
            self.register_buffer("lora_B", torch.zeros(out_features, r))  # (out, r)
        else:
            self.lora_A = nn.Parameter(torch.zeros(r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, r))
            if residual:
                self.register_buffer("lora_A0", torch.zeros(r, in_features))
                self.register_buffer("lora_B0", torch.zeros(out_features, r))
        if residual:
            self.register_buffer("lora_N0", torch.zeros(r, r))

    @classmethod
    def check_layer(cls, in_features, out_features, opts, layer_name):
        if opts.r > min(in_features, out_features):
            raise VariantError(
                f"r={opts.r} is larger than min(in, out) = {min(in_features, out_features)} of layer "
                f"{layer_name!r}, whose rank-r Nyström sketch NLoRA takes; choose r <= {min(in_features, out_features)}"
            )

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    def init_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B0, N0, A0): the factors at init, which the frozen residual is built from."""
        if self.opts.inttune:
            return self.lora_B, self.lora_N0, self.lora_A
        return self.lora_B0, self.lora_N0, self.lora_A0

    @torch.no_grad()
    def init_from_base(self, weight):
        o = self.opts
        if o.init == "official":  # nlora_init: the blocks of W, no pseudo-inverse, W unchanged
            self.lora_B.copy_(weight[:, : o.r])
            self.lora_N.copy_(weight[: o.r, : o.r])
            self.lora_A.copy_(weight[: o.r, :])
            return
        Q, R, A = nystrom_factors(weight, o.r, o.sketch, o.oversample, o.seed)
        self.lora_B.copy_(Q)
        self.lora_N.copy_(R / self.scale)
        self.lora_A.copy_(A)
        self.lora_N0.copy_(self.lora_N)
        if not o.inttune:
            self.lora_A0.copy_(A)
            self.lora_B0.copy_(Q)

    def base_offset(self):
        if self.opts.init == "official":
            return None
        B0, N0, A0 = self.init_factors()
        return self.scale * (B0 @ N0 @ A0)  # (out, in)

    # ---- compute -----------------------------------------------------------------------
    def delta(self, x):
        z = F.linear(x, self.lora_A)  # (..., r)
        z = F.linear(z, self.lora_N * self.scale)  # (..., r)
        return F.linear(z, self.lora_B)  # (..., out)

    def pack_factors(self):
        """(A, B N, s): the same rank-r product, for a pack's batched product (``lorabench.pack``)."""
        return self.lora_A, self.lora_B @ self.lora_N, self.scale

    @classmethod
    def unpackable(cls):
        return None

    def delta_weight(self):
        return self.scale * (self.lora_B @ self.lora_N @ self.lora_A)  # (out, in)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        if opts.inttune:
            return opts.r * opts.r
        return opts.r * (in_features + out_features) + opts.r * opts.r

    # ---- PEFT export: the update relative to the ORIGINAL W (init="sketch": a rank-2r LoRA) ----
    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A == the change of the original base weight: s B N A (official init),
        s (B N A - B0 N0 A0) (init="sketch")."""
        if self.opts.init == "official":
            return self.scale * self.lora_B @ self.lora_N, self.lora_A
        B0, N0, A0 = self.init_factors()
        B = torch.cat([self.scale * self.lora_B @ self.lora_N, -self.scale * B0 @ N0], dim=1)  # (out, 2r)
        return B, torch.cat([self.lora_A, A0], dim=0)  # (2r, in)

    def peft_tensors(self):
        B, A = self.lowrank_factors()
        return {"lora_A.weight": A.detach().contiguous(), "lora_B.weight": B.detach().contiguous()}

    def peft_config(self):
        r = self.lowrank_factors()[1].shape[0]
        return {"peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "lora_dropout": 0.0}
