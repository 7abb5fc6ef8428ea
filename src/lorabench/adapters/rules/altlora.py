"""AltLoRA: projected gradients and low-rank momentum for each factor in turn (``optimizer=altlora``)."""

from __future__ import annotations

import torch

from .rule import register_rule
from .projected import FullProduct, compute_dtype, gram, project_A, project_B


@register_rule("altlora")
class AltLoRA(FullProduct):
    """AltLoRA: Towards Better Gradient Approximation in Low-Rank Adaptation with Alternating
    Projections. Yu, Wang, Chen & Xue 2025, arXiv 2505.12455. Official code:
    github.com/LucasXinYu/AltLoRA, optimizer_new.py (class ``altlora``; logtrainer.py builds it with
    betas=(0.9, 0.999), reg=1e-5; main_lora.py sets lora_alt = False).

    Per factor, the least-squares projection of the full gradient with the other factor held fixed,
    and a momentum that lives in the low-rank space, carried into the current basis:

        A: m_A <- beta ((B^T B)^-1 B^T B') m_A + (1 - beta) (B^T B)^-1 g_A / s^2,   A <- A - lr m_A / (1 - beta^k)
        B: m_B <- beta m_B (A' A^T (A A^T)^-1) + (1 - beta) g_B (A A^T)^-1 / s^2,   B <- B - lr m_B / (1 - beta^k)

    (B', A': the other factor when this one last stepped; k: this factor's steps; A A^T, B^T B get
    + 1e-5 I, the official reg.) That update is the paper's Algorithm 1 (AltLoRA: a plain momentum
    step, no second moment), as the released optimizer does; weight decay is decoupled
    (A <- A - lr wd A). The rule moves A and B itself (``steps_itself``), inside optimizer.step().

    ``alt_schedule="both"`` (default, the released code's): every step updates A, then B, B's
    projection using the A just updated (g_B is still the backward's, at the old A).
    ``alt_schedule="alternate"``: one factor per step, B first (with the default B = 0, A's gradient
    s B^T G is 0 until B has moved); the other factor's gradient is dropped.
    ``alt_update="adamw"`` (with "alternate" only; lorabench's altlora before issue 14): instead of
    the plain step, the bias-corrected momentum becomes the factor's gradient and AdamW (beta1 = 0)
    steps it, which divides by the second moment of the momentum: neither Algorithm 1 nor
    Algorithm 2 (AltLoRA+, the second moment of the projected gradient).

    Deviations from the released optimizer: it steps with its constructor's lr, so the trainer's
    schedule never reaches it (lorabench uses the run's schedule); it has no 1/s^2 (the same at
    s = 1, lorabench's alpha = r default); it decays after the step, by lr wd (lorabench: AdamW's
    order, the same to O(lr^2)). The state (step counts, momenta, bases) is per layer and saved with
    the adapter, so a reloaded adapter continues where it stopped.
    """

    description = ("AltLoRA: projected gradients and low-rank momentum, A then B every step, plain momentum "
                   "step (Alg. 1; alt_schedule='alternate': one factor per step) (Yu, Wang, Chen & Xue 2025, "
                   "arXiv 2505.12455)")
    options = ("alt_beta", "alt_schedule", "alt_update")
    ridge = 1e-5  # the official runs' reg
    betas = (0.0, 0.999)  # alt_update="adamw": AdamW's for A and B (the rule keeps the first moment itself)

    def __init__(self, opts):
        super().__init__(opts)
        self.steps = 0  # optimizer steps seen (with finite gradients)
        self.momentum: dict[str, torch.Tensor] = {}  # "A": (r, in), "B": (out, r)
        self.basis: dict[str, torch.Tensor] = {}  # the other factor when this one last stepped
        self.count = {"A": 0, "B": 0}

    @property
    def steps_itself(self) -> bool:
        return self.opts.alt_update == "momentum"

    def param_groups(self, adapter, lr, weight_decay):
        groups = super().param_groups(adapter, lr, weight_decay)
        # its own step (Algorithm 1): the RULE_STEP mark; else AdamW with beta1 = 0 on the momentum
        return self.own_groups(adapter, groups, **({} if self.steps_itself else {"betas": self.betas}))

    def role(self) -> str:
        """The factor the next "alternate" step updates: B on odd steps (1, 3, ...), A on even ones."""
        return "B" if self.steps % 2 == 0 else "A"

    @torch.no_grad()
    def momentum_of(self, role: str, adapter) -> torch.Tensor:
        """Update and return the bias-corrected momentum of factor ``role`` from its gradient, with
        the other factor as it is now."""
        f = adapter.factors()
        beta, s, dt = self.opts.alt_beta, adapter.scale, compute_dtype(f["A"])
        Af, Bf = f["A"].detach().to(dt), f["B"].detach().to(dt)
        if role == "B":
            g = project_B(f["B"].grad.to(dt), Af, s, self.ridge)  # (out, r)
            if "B" in self.momentum:  # carry m_B from the old A' to the current A
                carry = torch.linalg.solve(gram(Af, self.ridge, rows=True), Af @ self.basis["B"].T).T  # (r, r)
                g = beta * self.momentum["B"] @ carry + (1 - beta) * g
            else:
                g = (1 - beta) * g
            self.basis["B"] = Af.clone()
        else:
            g = project_A(f["A"].grad.to(dt), Bf, s, self.ridge)  # (r, in)
            if "A" in self.momentum:  # carry m_A from the old B' to the current B
                carry = torch.linalg.solve(gram(Bf, self.ridge, rows=False), Bf.T @ self.basis["A"])  # (r, r)
                g = beta * carry @ self.momentum["A"] + (1 - beta) * g
            else:
                g = (1 - beta) * g
            self.basis["A"] = Bf.clone()
        self.momentum[role] = g
        self.count[role] += 1
        return g / (1 - beta ** self.count[role])

    @staticmethod
    def _finite(adapter) -> bool:
        return all(torch.isfinite(p.grad).all() for p in adapter.factors().values())

    @torch.no_grad()
    def before_step(self, adapter):
        if self.defer(adapter):
            return
        A, B = adapter.factors()["A"], adapter.factors()["B"]
        if not self._finite(adapter):
            return  # an fp16 overflow: GradScaler skips this step, so the momentum must not see it
        role = self.role()
        stepped, other = (B, A) if role == "B" else (A, B)
        stepped.grad.copy_(self.momentum_of(role, adapter))
        other.grad = None
        self.steps += 1

    @torch.no_grad()
    def step(self, adapter, lr, weight_decay):
        if not self._finite(adapter):
            return  # an fp16 overflow: no step, and the momentum must not see it
        roles = ("A", "B") if self.opts.alt_schedule == "both" else (self.role(),)
        for role in roles:  # A first: B's projection then uses the new A
            p = adapter.factors()[role]
            update = self.momentum_of(role, adapter).to(p.dtype)
            if weight_decay:
                p.mul_(1 - lr * weight_decay)
            p.add_(update, alpha=-float(lr))
        self.steps += 1

    def state_dict(self):
        state = {"steps": torch.tensor(self.steps), **{f"count_{k}": torch.tensor(n) for k, n in self.count.items()}}
        state |= {f"momentum_{k}": m for k, m in self.momentum.items()}
        return state | {f"basis_{k}": b for k, b in self.basis.items()}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
        self.count = {k: int(state[f"count_{k}"]) for k in ("A", "B")}
        self.momentum = {k: state[f"momentum_{k}"] for k in ("A", "B") if f"momentum_{k}" in state}
        self.basis = {k: state[f"basis_{k}"] for k in ("A", "B") if f"basis_{k}" in state}
