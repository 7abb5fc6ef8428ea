"""LoRA-Squeeze: train at a high source rank, compress to the target rank with a (randomized) SVD.

Post hoc: ``squeeze(model, rank)`` (or ``lorabench squeeze DIR --rank r``) turns any LoRA-family
adapter into a plain rank-r LoRA. In training: variant ``lora_squeeze`` with ``anneal=True``
lowers its rank in steps (``on_step``) until ``target_rank``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .base import VariantError, check
from .lora import RESIDUAL_INITS, LoRA, LoRAOptions


# ---- the math: top-k SVD of B A without forming B A ----------------------------------------
@torch.no_grad()
def lowrank_svd(B: torch.Tensor, A: torch.Tensor, k: int, niter: int = 2, oversample: int = 10, seed: int = 0):
    """(U (out, k), S (k,), Vh (k, in)) of the best rank-k approximation of ``B @ A``.

    ``niter > 0``: randomized SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4: range finder with
    ``k + oversample`` probes and ``niter`` re-orthonormalised power iterations), every product
    taken through the factors. ``niter == 0``: exact, from QR of both factors and the SVD of the
    small (r, r) core (the paper's memory-efficient variant). Computed in float64.
    """
    B, A = B.double(), A.double()  # (out, r), (r, in)
    if niter == 0:
        Qb, Rb = torch.linalg.qr(B)  # (out, r), (r, r)
        Qa, Ra = torch.linalg.qr(A.T)  # (in, r), (r, r)
        U, S, Vh = torch.linalg.svd(Rb @ Ra.T)  # the (r, r) core
        return Qb @ U[:, :k], S[:k], Vh[:k] @ Qa.T
    probes = min(k + oversample, min(B.shape[0], A.shape[1]))
    g = torch.Generator(device=A.device).manual_seed(seed)  # leaves the global RNG alone
    omega = torch.randn(A.shape[1], probes, generator=g, device=A.device, dtype=A.dtype)  # (in, l)
    Q = torch.linalg.qr(B @ (A @ omega)).Q  # (out, l): the range of B A
    for _ in range(niter):
        Z = torch.linalg.qr(A.T @ (B.T @ Q)).Q  # (in, l)
        Q = torch.linalg.qr(B @ (A @ Z)).Q
    Uh, S, Vh = torch.linalg.svd((Q.T @ B) @ A, full_matrices=False)  # (l, in) is small
    return (Q @ Uh)[:, :k], S[:k], Vh[:k]


def squeeze_factors(B, A, rank: int, scale: float = 1.0, niter: int = 2, oversample: int = 10):
    """(B', A'), rank ``rank``, with ``scale * B' A'`` the best rank-r approximation of ``B A``:
    B' = U_r sqrt(S_r / scale), A' = sqrt(S_r / scale) V_r^T (the paper's balanced split)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= A.shape[0]:
        raise VariantError(f"squeeze rank must be an integer in 1..{A.shape[0]} (the source rank), got {rank!r}")
    if niter < 0 or oversample < 0:
        raise VariantError(f"niter and oversample must be >= 0, got {niter!r} and {oversample!r}; "
                           "e.g. niter=2, oversample=10")
    U, S, Vh = lowrank_svd(B, A, rank, niter, oversample)
    root = (S / scale).sqrt()
    return (U * root).to(B.dtype), (root[:, None] * Vh).to(A.dtype)


# ---- In-Squeeze: the variant -----------------------------------------------------------------
@dataclass
class LoRASqueezeOptions(LoRAOptions):
    r: int = 32  # the source rank: train high ...
    alpha: float = 32.0  # ... with s = alpha / r = 1, which squeezing keeps
    target_rank: int | None = None  # ... and deploy low; None = r // 4 (8 for r = 32)
    anneal: bool = False  # In-Squeeze: lower the rank during training (else train at r throughout)
    anneal_stages: int = 0  # number of squeezes; 0 = halve each time, ceil(log2(r / target_rank))
    anneal_end: float = 0.75  # fraction of training by which target_rank is reached; the rest recovers
    svd_niter: int = 2  # squeezes: RSVD power iterations (0 = exact SVD through QR of the factors)
    svd_oversample: int = 10  # RSVD extra probes beyond the kept rank

    def __post_init__(self):
        super().__post_init__()
        if self.target_rank is None:
            self.target_rank = max(1, self.r // 4)
        check(isinstance(self.target_rank, int) and 1 <= self.target_rank <= self.r,
              f"target_rank must be an integer in 1..r={self.r}, got {self.target_rank!r}; squeezing cannot raise the rank")
        check(isinstance(self.anneal_stages, int) and self.anneal_stages >= 0,
              f"anneal_stages must be an integer >= 0 (0 = halve the rank each stage), got {self.anneal_stages!r}")
        check(0.0 < self.anneal_end <= 1.0, f"anneal_end must be in (0, 1], got {self.anneal_end!r}; e.g. 0.75")
        check(self.svd_oversample >= 0, f"svd_oversample must be >= 0, got {self.svd_oversample!r}; e.g. 10")
        check(self.init not in RESIDUAL_INITS,
              f"init={self.init!r} keeps a rank-r part of W in the adapter, which a squeeze would cut; "
              "use init='kaiming' or 'gaussian', or squeeze a trained PiSSA adapter post hoc (lorabench.squeeze)")

    def schedule(self) -> list[int]:
        """The ranks after each squeeze: geometric from r to target_rank (halving by default)."""
        if self.target_rank == self.r:
            return []
        n = self.anneal_stages or math.ceil(math.log2(self.r / self.target_rank))
        ratio = self.target_rank / self.r
        return [max(self.target_rank, round(self.r * ratio ** (j / n))) for j in range(1, n + 1)]


@register("lora_squeeze")
class LoRASqueeze(LoRA):
    """LoRA-Squeeze: Simple and Effective Post-Tuning and In-Tuning Compression of LoRA Modules.
    Vulić, Grycner, de Laroussilhe & Pfeiffer 2026, arXiv 2602.10993.

        h = W0 x + s B[:, :k] A[:k] x,   s = alpha / r fixed, k = active rank (r at init)
        squeeze to k': U S V^T = RSVD_k'(s B A);  B' = U sqrt(S / s),  A' = sqrt(S / s) V^T

    With ``anneal`` (In-Squeeze) k goes r -> ... -> target_rank at evenly spaced steps up to
    ``anneal_end`` of training. The tensors keep their r rows (masking, not resizing): the
    optimizer built once over them stays valid, components past k are zero, get no gradient
    and are re-zeroed after each step (AdamW momentum would move them). The Adam moments of
    the kept components still refer to the pre-squeeze basis for a while (not reset).
    """

    description = ("LoRA-Squeeze: train at rank r, RSVD-compress to target_rank post hoc or in steps "
                   "during training (Vulić et al. 2026, arXiv 2602.10993)")
    Options = LoRASqueezeOptions
    running_buffers = ("rank",)  # lowered by on_step when annealing

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.register_buffer("rank", torch.tensor(opts.r, dtype=torch.int64))  # active rank k, saved

    def rank_at(self, step: int, total: int) -> int:
        """The active rank once ``step`` of ``total`` optimizer steps are done."""
        stages = self.opts.schedule()
        done = sum(step >= math.ceil(self.opts.anneal_end * total * j / len(stages)) for j in range(1, len(stages) + 1))
        return stages[done - 1] if done else self.opts.r

    def on_step(self, step, total):
        if self.opts.anneal:
            k = self.rank_at(step, total)
            if k < int(self.rank):
                self.squeeze_to(k)
        with torch.no_grad():  # the optimizer may have moved masked components
            self.lora_A[int(self.rank):].zero_()
            self.lora_B[:, int(self.rank):].zero_()

    @torch.no_grad()
    def squeeze_to(self, k: int) -> None:
        """Replace the active components by the best rank-k approximation of s B A."""
        n = int(self.rank)
        # s stays alpha / r, so B' A' is the best rank-k approximation of B A itself.
        B, A = squeeze_factors(self.lora_B[:, :n], self.lora_A[:n], k, 1.0, self.opts.svd_niter, self.opts.svd_oversample)
        self.lora_A.zero_()[:k].copy_(A)
        self.lora_B.zero_()[:, :k].copy_(B)
        self.rank.fill_(k)

    def delta(self, x):
        k = int(self.rank)
        z = F.linear(self.dropout(x), self.lora_A[:k])  # (..., k)
        return F.linear(z * self.scale, self.lora_B[:, :k])  # (..., out)

    def delta_weight(self):
        k = int(self.rank)
        return self.scale * (self.lora_B[:, :k] @ self.lora_A[:k])  # (out, in)

    def lowrank_factors(self):
        k = int(self.rank)
        return self.scale * self.lora_B[:, :k], self.lora_A[:k]  # PEFT export: a plain rank-k LoRA

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={int(self.rank)}"


# ---- Post-Squeeze: a model or a saved adapter folder -> a plain rank-r LoRA ----------------
def _lora_options(rank: int):
    from . import get

    return get("lora").make_options(r=rank, alpha=float(rank))  # scale 1: B' A' is the update


def _factors_of(adapter, variant: str):
    """(B (out, r), A (r, in)) with B A the adapter's whole update to the original base weight, asked
    of the adapter through its PEFT export: only a plain LoRA (scale folded in) qualifies."""
    try:
        config, tensors = adapter.peft_config(), adapter.peft_tensors()
    except VariantError:
        config, tensors = {}, {}
    plain = (config.get("peft_type") == "LORA" and not config.get("use_dora") and not config.get("use_rslora")
             and config.get("lora_alpha") == config.get("r"))
    if not plain:
        raise VariantError(f"variant {variant!r} has no plain low-rank update B A to squeeze; squeeze works on "
                           "LoRA-family adapters (lora, pissa, dylora, matryoshka_lora, lora_squeeze, ...)")
    return tensors["lora_B.weight"].detach(), tensors["lora_A.weight"].detach()


@torch.no_grad()
def squeeze(model: nn.Module, rank: int, niter: int = 2, oversample: int = 10) -> nn.Module:
    """Replace every adapter of ``model`` by a plain rank-``rank`` LoRA (variant ``lora``, alpha =
    rank) whose update is the best rank-r approximation of the current one. Restores the original
    base weight of residual inits (PiSSA). Returns the same model, ready for save_adapter."""
    from .. import adapters
    from ..inject import adapted_layers, state_of

    state = state_of(model)
    layers = list(adapted_layers(model))
    if not layers or getattr(model, "lorabench_shared", None) is not None:
        raise VariantError(f"variant {state.variant!r} has no per-layer low-rank factors to squeeze; "
                           "squeeze works on LoRA-family adapters")
    if any(layer.merged for _, layer in layers):
        raise VariantError("the adapter is merged into the base weights; call lorabench.unmerge(model) before squeeze")
    if any(layer.quantized for _, layer in layers):
        raise VariantError("squeeze writes a LoRA for the full-precision base, but this base is 4-bit; save the "
                           "adapter and run `lorabench squeeze DIR --rank r` on the folder instead")
    opts = _lora_options(rank)
    new = {name: squeeze_factors(*_factors_of(layer.adapter, state.variant), rank, 1.0, niter, oversample)
           for name, layer in layers}  # every layer checked before any is changed
    for name, layer in layers:
        offset = layer.adapter.base_offset()
        if offset is not None:
            layer.set_weight(layer.weight.float() + offset.float())  # back to W (PiSSA kept W - s B0 A0)
        old = layer.adapter
        adapter = adapters.get("lora")(old.in_features, old.out_features, opts)
        adapter.to(device=layer.base_layer.weight.device, dtype=old.dtype)
        B, A = new[name]
        adapter.lora_A.copy_(A)
        adapter.lora_B.copy_(B)
        adapter.train(old.training)
        layer.adapter = adapter
    model.lorabench_state = replace(state, variant="lora", options=asdict(opts))
    return model


def squeeze_adapter_dir(directory: str | os.PathLike, rank: int, out: str | os.PathLike | None = None,
                        niter: int = 2, oversample: int = 10) -> Path:
    """``lorabench squeeze``: read a saved LoRA-family adapter (no base model needed: it stores B
    and A), write the plain rank-``rank`` LoRA to ``out`` (default ``DIR-r{rank}``)."""
    from safetensors.torch import save_file

    from .. import adapters
    from ..checkpoint import (CONFIG_NAME, RULE_INFIX, WEIGHTS_NAME, AdapterFileError, _version,
                              atomic_write_bytes, read_adapter_config, read_adapter_tensors)

    src = Path(directory)
    config, tensors = read_adapter_config(src), read_adapter_tensors(src)
    variant, targets = config.get("variant"), config.get("targets") or []
    cls = adapters.get(variant)
    opts = cls.make_options(**config.get("options", {}))
    if not targets or any(k.startswith("lorabench_shared.") for k in tensors):
        raise VariantError(f"variant {variant!r} has no per-layer low-rank factors to squeeze; "
                           "squeeze works on LoRA-family adapters")
    new_opts = _lora_options(rank)
    prefixes = [f"{t}.adapter." for t in targets]
    tensors = {k: v for k, v in tensors.items() if RULE_INFIX not in k}  # the squeezed LoRA trains with AdamW
    result = {k: v for k, v in tensors.items() if not any(k.startswith(p) for p in prefixes)}  # the head
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if "lora_A" not in state or "lora_B" not in state:  # the saved names of the paper's factors
            raise VariantError(f"variant {variant!r} stores no lora_A / lora_B, so its update needs the base model: "
                               "load it, lorabench.load_adapter(model, DIR), then lorabench.squeeze(model, r)")
        adapter = cls(state["lora_A"].shape[1], state["lora_B"].shape[0], opts)
        try:
            adapter.load_state_dict(state)
        except RuntimeError as e:
            raise AdapterFileError(f"{src} does not match variant {variant!r} ({str(e).splitlines()[0]}); "
                                   "the file is corrupt or from another lorabench version") from None
        B, A = squeeze_factors(*_factors_of(adapter, variant), rank, 1.0, niter, oversample)
        result[prefix + "lora_A"], result[prefix + "lora_B"] = A.contiguous(), B.contiguous()
    config = {**config, "variant": "lora", "options": asdict(new_opts), "lorabench_version": _version(),
              "squeezed_from": {"variant": variant, "options": config.get("options")}}
    dest = Path(out) if out is not None else src.with_name(f"{src.name}-r{rank}")
    atomic_write_bytes(dest / WEIGHTS_NAME, lambda p: save_file(result, p, metadata={"format": "pt"}))
    atomic_write_bytes(dest / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    return dest
