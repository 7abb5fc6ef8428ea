"""AdaLoRA: an SVD-form adapter whose rank budget is moved, during training, to the layers that need it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .base import Variant, VariantError, check


@dataclass
class AdaLoRAOptions:
    # Defaults are PEFT's AdaLoraConfig (LoraConfig's lora_alpha = 8).
    init_r: int = 12  # rank every layer starts with
    target_r: int = 8  # average rank per layer left at the end: the final budget is target_r x layers
    alpha: float = 8.0  # scale alpha / init_r (PEFT: lora_alpha / (ranknum + 1e-5), ranknum = init_r)
    tinit: int = 0  # steps before the budget starts to shrink
    tfinal: int = 0  # steps at the end with the final allocation fixed
    deltaT: int = 1  # steps between two re-allocations while the budget shrinks
    beta1: float = 0.85  # EMA of the sensitivity |w * dL/dw| (paper Sec. 3.2)
    beta2: float = 0.85  # EMA of its uncertainty |I - I_bar| (paper Sec. 3.2)
    orth_reg_weight: float = 0.5  # gamma of the orthogonality regulariser R(P, Q) (paper Sec. 3.1)
    dropout: float = 0.0

    def __post_init__(self):
        check(isinstance(self.init_r, int) and self.init_r > 0, f"init_r must be a positive integer, got {self.init_r!r}; use e.g. init_r=12")
        check(
            isinstance(self.target_r, int) and 0 < self.target_r <= self.init_r,
            f"target_r must be an integer in 1..init_r={self.init_r}, got {self.target_r!r}; e.g. target_r=8 with init_r=12",
        )
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}; PEFT's default is 8")
        check(isinstance(self.tinit, int) and self.tinit >= 0, f"tinit must be an integer >= 0 (steps), got {self.tinit!r}")
        check(isinstance(self.tfinal, int) and self.tfinal >= 0, f"tfinal must be an integer >= 0 (steps), got {self.tfinal!r}")
        check(isinstance(self.deltaT, int) and self.deltaT >= 1, f"deltaT must be an integer >= 1 (steps), got {self.deltaT!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            check(0 < v < 1, f"{name} must be in (0, 1), got {v!r}; the paper uses 0.85")
        check(self.orth_reg_weight >= 0, f"orth_reg_weight must be >= 0, got {self.orth_reg_weight!r}; PEFT uses 0.5")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout!r}")


class RankAllocator:
    """The model-level half of AdaLoRA (paper Sec. 3.3, Algorithm 1): the budget schedule and the
    global ranking of triplets. One per model, kept on the shared-state module; every layer's
    ``on_step`` forwards to it and it acts once per step.

    Budget b(t) (Sec. 3.3): init_bgt for t <= tinit; target_bgt + (init_bgt - target_bgt)
    (1 - (t - tinit) / (T - tfinal - tinit))^3 until T - tfinal, re-allocating every deltaT steps;
    at t = T - tfinal the final allocation to target_bgt, re-applied at every later step.
    """

    def __init__(self, opts: AdaLoRAOptions, budget: torch.Tensor):
        self.opts = opts
        self.budget = budget  # [init_bgt, target_bgt], the shared tensor
        self.layers: list["AdaLoRA"] = []
        self.last_step: int | None = None
        self.total: int | None = None  # the run's length, from on_step
        self.updates = 0  # importance updates so far
        self.warned = False

    @staticmethod
    def of(shared: nn.Module, opts: AdaLoRAOptions | None = None) -> "RankAllocator":
        """The allocator kept on ``shared`` (created with ``opts`` the first time)."""
        if "adalora_allocator" not in shared.__dict__:
            shared.__dict__["adalora_allocator"] = RankAllocator(opts, shared.adalora_budget)
        return shared.__dict__["adalora_allocator"]

    @property
    def init_bgt(self) -> int:
        return int(self.budget[0])  # init_r x layers

    @property
    def target_bgt(self) -> int:
        return int(self.budget[1])  # target_r x layers

    def schedule(self, step: int, total: int) -> tuple[int, bool]:
        """(budget, re-allocate now) for a step of the shrinking phases (PEFT's budget_schedule)."""
        o = self.opts
        if step <= o.tinit:
            return self.init_bgt, False
        if step > total - o.tfinal:
            return self.target_bgt, True
        left = 1 - (step - o.tinit) / (total - o.tfinal - o.tinit)
        return int((self.init_bgt - self.target_bgt) * left**3 + self.target_bgt), step % o.deltaT == 0

    def on_step(self, step: int, total: int) -> None:
        if step == self.last_step:  # another layer already did this step
            return
        self.last_step, self.total = step, total
        o, final = self.opts, total - self.opts.tfinal
        if o.tinit >= final:
            raise VariantError(
                f"AdaLoRA's schedule has no budget phase: tinit={o.tinit} >= total steps {total} - tfinal={o.tfinal}; "
                "lower tinit / tfinal or train longer"
            )
        if step < final:
            updated = [layer.update_importance() for layer in self.layers]
            self.updates += any(updated)
            budget, now = self.schedule(step, total)
            if now:
                self.mask_to_budget(budget)
        elif step == final:
            self.mask_to_budget(self.target_bgt)
            for layer in self.layers:
                layer.reset_importance()
        else:
            for layer in self.layers:
                layer.grads = None
                layer.apply_mask()  # pruned singular values stay 0 although their gradients move them

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> None:
        """Keep the ``budget`` highest-scoring triplets over all layers; zero the others' lambda."""
        if self.updates == 0:
            if not self.warned:
                warnings.warn(
                    "AdaLoRA's rank allocator got no gradients, so no rank was re-allocated: call "
                    "lorabench.inject.before_step(model) after backward, before optimizer.step() (lorabench.train does)",
                    stacklevel=5,
                )
                self.warned = True
            return
        k = self.init_bgt - budget
        if k <= 0:
            return
        scores = [layer.triplet_scores() for layer in self.layers]
        threshold = torch.kthvalue(torch.cat(scores).float().cpu(), k).values.item()
        for layer, s in zip(self.layers, scores):
            layer.apply_mask(s > threshold)  # ties at the threshold go too, as in PEFT


@register("adalora")
class AdaLoRA(Variant):
    """AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning.
    Zhang, Chen, Bukharin, Karampatziakis, He, Cheng, Chen & Zhao 2023, arXiv 2303.10512.

        h = W0 x + s P Lambda Q x,   P = lora_B (out, r), Lambda = diag(lora_E) (r,), Q = lora_A (r, in),
        s = alpha / (init_r + 1e-5);  loss + gamma R,  R = mean over P, Q of ||P^T P - I||_F, ||Q Q^T - I||_F

    Every ``deltaT`` steps the triplets (P_i, lambda_i, Q_i) of ALL layers are ranked by smoothed
    sensitivity x uncertainty and the lowest lambda_i zeroed, down to a budget falling cubically
    from init_r to target_r per layer between ``tinit`` and ``total - tfinal`` (``RankAllocator``).
    Init (PEFT): Q, P ~ N(0, 0.02^2), Lambda = 0, so h = W0 x.
    """

    description = "AdaLoRA: SVD-form P diag(E) Q with importance-based rank re-allocation over training (Zhang et al. 2023, arXiv 2303.10512)"
    Options = AdaLoRAOptions

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        if shared is None or not hasattr(shared, "adalora_budget"):
            raise VariantError("AdaLoRA layers need the model's rank allocator; create them with lorabench.apply(model, 'adalora')")
        r = opts.init_r
        self.lora_A = nn.Parameter(torch.empty(r, in_features).normal_(0.0, 0.02))  # (r, in): Q, right singular vectors
        self.lora_E = nn.Parameter(torch.zeros(r))  # (r,): Lambda, the singular values
        self.lora_B = nn.Parameter(torch.empty(out_features, r).normal_(0.0, 0.02))  # (out, r): P, left singular vectors
        # (r,): triplets kept by the allocator. Training state, not saved: a saved lora_E already
        # holds the allocation (pruned lambda_i = 0), as PEFT's weights do.
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool), persistent=False)
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()
        self.grads: list[torch.Tensor] | None = None  # this step's gradients of A, E, B (``before_step``)
        for name in ("A", "E", "B"):  # smoothed sensitivity and uncertainty (not saved: training state)
            p = getattr(self, f"lora_{name}")
            self.register_buffer(f"ipt_{name}", torch.zeros_like(p), persistent=False)
            self.register_buffer(f"unc_{name}", torch.zeros_like(p), persistent=False)
        RankAllocator.of(shared, opts).layers.append(self)

    @classmethod
    def shared_state(cls, shapes, opts):
        # The total rank budget at the start and at the end (PEFT's init_bgt, target_bgt). The
        # model's allocator (``adalora_allocator``) hangs on the shared module next to it.
        return {"adalora_budget": torch.tensor([opts.init_r * len(shapes), opts.target_r * len(shapes)])}

    # ---- compute ---------------------------------------------------------------------
    @property
    def scale(self) -> float:
        return self.opts.alpha / (self.opts.init_r + 1e-5)  # the official code's / (ranknum + 1e-5)

    def delta(self, x):
        z = F.linear(self.dropout(x), self.lora_A * self.lora_E[:, None])  # (..., r): Lambda Q x
        return F.linear(z, self.lora_B) * self.scale  # (..., out)

    def delta_weight(self):
        return self.scale * (self.lora_B @ (self.lora_A * self.lora_E[:, None]))  # (out, in)

    def extra_loss(self):
        """This layer's share of gamma R(P, Q): the regulariser is a mean over all 2 L matrices."""
        if self.opts.orth_reg_weight == 0:
            return None
        A, B = self.lora_A, self.lora_B
        eye = torch.eye(self.opts.init_r, device=A.device, dtype=A.dtype)
        # Frobenius norms, not squared: the official code and PEFT (the paper writes the square).
        R = torch.linalg.matrix_norm(A @ A.t() - eye) + torch.linalg.matrix_norm(B.t() @ B - eye)
        n_matrices = 2 * len(RankAllocator.of(self.shared).layers)
        return self.opts.orth_reg_weight * R / n_matrices

    # ---- rank allocation -------------------------------------------------------------
    def before_step(self):
        # The importance needs this step's gradients, which are gone (zero_grad) by on_step.
        self.grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                      for p in (self.lora_A, self.lora_E, self.lora_B)]
        super().before_step()

    def on_step(self, step, total):
        RankAllocator.of(self.shared).on_step(step, total)

    @torch.no_grad()
    def update_importance(self) -> bool:
        """EMAs of I = |w * g| (post-step w, this step's g, as PEFT) and of |I - I_bar|. False if no gradients."""
        if self.grads is None:
            return False
        b1, b2 = self.opts.beta1, self.opts.beta2
        for name, g in zip(("A", "E", "B"), self.grads):
            ipt = (getattr(self, f"lora_{name}") * g).abs()
            ema, unc = getattr(self, f"ipt_{name}"), getattr(self, f"unc_{name}")
            ema.mul_(b1).add_((1 - b1) * ipt)  # sensitivity smoothing
            unc.mul_(b2).add_((1 - b2) * (ipt - ema).abs())  # uncertainty quantification
        self.grads = None
        return True

    def reset_importance(self) -> None:
        for buf in (self.ipt_A, self.unc_A, self.ipt_E, self.unc_E, self.ipt_B, self.unc_B):
            buf.zero_()

    def triplet_scores(self) -> torch.Tensor:
        """S_i = s(lambda_i) + mean_j s(Q_ij) + mean_k s(P_ki) with s = I_bar * U_bar (Sec. 3.2), (r,)."""
        return self.ipt_E * self.unc_E + (self.ipt_A * self.unc_A).mean(1) + (self.ipt_B * self.unc_B).mean(0)

    @torch.no_grad()
    def apply_mask(self, keep: torch.Tensor | None = None) -> None:
        """Zero the singular values of pruned triplets (and record ``keep`` as the rank pattern)."""
        if keep is not None:
            self.rank_mask.copy_(keep)
        self.lora_E.masked_fill_(~self.rank_mask, 0.0)

    @classmethod
    def num_trainable_formula(cls, in_features, out_features, opts):
        # The full init_r structure trains (pruned triplets are zeroed, not removed), as PEFT counts it.
        return opts.init_r * (in_features + out_features + 1)

    # ---- PEFT export (peft_type ADALORA: the full init_r structure, pruned lambda_i = 0) ----
    def peft_tensors(self):
        return {
            "lora_A": self.lora_A.detach().contiguous(),
            "lora_B": self.lora_B.detach().contiguous(),
            "lora_E": self.lora_E.detach()[:, None].contiguous(),  # PEFT keeps E as (r, 1)
        }

    def peft_config(self):
        o = self.opts
        # PEFT insists on a schedule with a budget phase even for inference; the run's own length
        # when it trained, else the shortest valid one.
        total = RankAllocator.of(self.shared).total or o.tinit + o.tfinal + 1
        return {
            "peft_type": "ADALORA",
            "init_r": o.init_r,
            "target_r": o.target_r,
            "lora_alpha": o.alpha,
            "lora_dropout": o.dropout,
            "tinit": o.tinit,
            "tfinal": o.tfinal,
            "deltaT": o.deltaT,
            "beta1": o.beta1,
            "beta2": o.beta2,
            "orth_reg_weight": o.orth_reg_weight,
            "total_step": total,
        }

    @classmethod
    def peft_shared_tensors(cls, shared: nn.Module) -> dict[str, torch.Tensor]:
        return {}  # the budgets are config, not tensors, in PEFT

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={int(self.lora_E.count_nonzero())}"
