"""What ``benchmarks/step_time.py`` builds for each variant: the lorabench options, the PEFT model
and optimizer that compute the same training step, and the per-step hooks either side needs.

The pairings are those of the PEFT-parity tests (tests/test_peft_parity.py, test_randlora.py,
test_uni_lora.py, test_miss.py, test_adalora.py), with the same hyperparameters on both sides:

* LoRA family (r = alpha = 8): lora, rslora (alpha / sqrt r), dora, pissa, olora as LoraConfig
  options; lora_plus as PEFT's ``create_loraplus_optimizer`` (lr of B = 16 x lr, both decayed);
  lora_fa as a PEFT LoRA with every ``lora_A`` frozen (what ``create_lorafa_optimizer`` does to A;
  that optimizer also rescales B's gradient by (A A^T)^-1 / s^2, which lorabench's lora_fa, plain
  AdamW on B, does not, so it is left out).
* VeRA r = 256, RandLoRA r = 32 / alpha = 640, Uni-LoRA r = 4 / d = 256, MiSS r = 64 (balance):
  PEFT's defaults, which are lorabench's.
* AdaLoRA init_r = 12 -> target_r = 8, alpha = 8, the budget shrinking over the whole run
  (tinit = tfinal = 0, deltaT = 1: a re-allocation every step). Both sides add the orthogonality
  regulariser to the loss (PEFT inside its forward), read the gradients after backward and
  re-allocate after the step: lorabench's ``before_step`` / ``on_step``, PEFT's
  ``update_and_allocate`` (its documented place, after ``optimizer.step()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

R, ALPHA = 8, 8
LORA_RATIO = 16.0  # LoRA+'s lr_B / lr_A (lorabench's and PEFT's documented default)


class Hooks:
    """What one implementation's training step does around forward, backward and ``opt.step()``:
    nothing, for most variants."""

    def loss(self, model, loss):
        return loss

    def before_step(self, model) -> None:  # after backward
        pass

    def after_step(self, model) -> None:  # after opt.step(), before zero_grad
        pass

    def after_zero_grad(self, model) -> None:
        pass


class LorabenchHooks(Hooks):
    """lorabench's training-loop protocol (as ``lorabench.train`` runs it): the variant's loss
    term, ``before_step`` on the finished gradients, ``on_step`` after the step."""

    def __init__(self, total: int):
        self.step, self.total = 0, total

    def loss(self, model, loss):
        import lorabench

        return loss + lorabench.inject.extra_loss(model)

    def before_step(self, model) -> None:
        import lorabench

        lorabench.before_step(model)

    def after_zero_grad(self, model) -> None:
        import lorabench

        self.step += 1
        lorabench.on_step(model, self.step, self.total)


class PeftAdaLoraHooks(Hooks):
    """PEFT's AdaLoRA: ``update_and_allocate(step)`` after ``optimizer.step()``, before zero_grad."""

    def __init__(self):
        self.step = 0

    def after_step(self, model) -> None:
        self.step += 1
        model.base_model.update_and_allocate(self.step)


def adamw(model, lr: float, weight_decay: float, adamw_kw: dict):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **adamw_kw)


def loraplus(model, lr: float, weight_decay: float, adamw_kw: dict):
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=LORA_RATIO,
                                     loraplus_weight_decay=weight_decay, **adamw_kw)


@dataclass(frozen=True)
class Spec:
    """One row: lorabench ``apply(variant, **opts)`` vs ``get_peft_model(peft_config(targets, total))``."""

    variant: str
    opts: dict
    peft_config: Callable  # (targets, total steps) -> a PEFT config
    peft_optimizer: Callable = adamw  # (peft model, lr, weight decay, AdamW options) -> optimizer
    peft_frozen: tuple[str, ...] = ()  # PEFT parameter-name fragments frozen after get_peft_model
    hooks: bool = False  # the variant needs the step hooks (lorabench's protocol, PEFT's own)
    peft_hooks: Callable = Hooks  # () -> the PEFT side's Hooks
    note: str = field(default="", compare=False)


def _lora(**kw) -> Callable:
    def config(targets, total):
        from peft import LoraConfig

        return LoraConfig(task_type="SEQ_CLS", r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets, **kw)

    return config


def _vera(targets, total):
    from peft import VeraConfig

    return VeraConfig(task_type="SEQ_CLS", r=256, d_initial=0.1, projection_prng_key=0, target_modules=targets)


def _randlora(targets, total):
    from peft import RandLoraConfig

    return RandLoraConfig(task_type="SEQ_CLS", r=32, randlora_alpha=640, projection_prng_key=0, target_modules=targets)


def _uni_lora(targets, total):
    from peft import UniLoraConfig

    return UniLoraConfig(task_type="SEQ_CLS", r=4, theta_d_length=256, target_modules=targets)


def _miss(targets, total):
    from peft import MissConfig

    return MissConfig(task_type="SEQ_CLS", r=64, init_weights=True, target_modules=targets)


def _adalora(targets, total):
    from peft import AdaLoraConfig

    return AdaLoraConfig(task_type="SEQ_CLS", init_r=12, target_r=8, lora_alpha=8, tinit=0, tfinal=0, deltaT=1,
                         orth_reg_weight=0.5, total_step=total, target_modules=targets)


LORA = {"r": R, "alpha": ALPHA}
SPECS: dict[str, Spec] = {
    "lora": Spec("lora", LORA, _lora()),
    "rslora": Spec("lora", {**LORA, "rslora": True}, _lora(use_rslora=True)),
    "dora": Spec("dora", LORA, _lora(use_dora=True)),
    "pissa": Spec("pissa", LORA, _lora(init_lora_weights="pissa")),
    "olora": Spec("olora", LORA, _lora(init_lora_weights="olora")),
    "lora_plus": Spec("lora_plus", {**LORA, "lr_ratio": LORA_RATIO}, _lora(), peft_optimizer=loraplus),
    "lora_fa": Spec("lora_fa", LORA, _lora(), peft_frozen=("lora_A",)),
    "vera": Spec("vera", {"r": 256, "d_initial": 0.1, "projection_seed": 0}, _vera),
    "randlora": Spec("randlora", {"r": 32, "alpha": 640.0, "projection_seed": 0}, _randlora),
    "uni_lora": Spec("uni_lora", {"r": 4, "theta_d_length": 256}, _uni_lora),
    "miss": Spec("miss", {"r": 64}, _miss),
    "adalora": Spec("adalora", {"init_r": 12, "target_r": 8, "alpha": 8.0, "tinit": 0, "tfinal": 0, "deltaT": 1,
                                "orth_reg_weight": 0.5}, _adalora, hooks=True, peft_hooks=PeftAdaLoraHooks),
}
VARIANTS = list(SPECS)


def parse_variants(text: str) -> list[str]:
    """``all`` or a comma-separated list of SPECS' keys."""
    names = VARIANTS if text == "all" else [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in SPECS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from all, {', '.join(VARIANTS)}")
    return names


def build_lorabench(model, name: str, targets, lr: float, weight_decay: float, adamw_kw: dict, total: int):
    """(model, optimizer, hooks) of lorabench for row ``name``."""
    import lorabench

    spec = SPECS[name]
    lorabench.apply(model, spec.variant, targets=targets, **spec.opts)
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=lr, weight_decay=weight_decay), **adamw_kw)
    return model, opt, LorabenchHooks(total) if spec.hooks else Hooks()


def build_peft(model, name: str, targets, lr: float, weight_decay: float, adamw_kw: dict, total: int):
    """(model, optimizer, hooks) of PEFT for row ``name``."""
    from peft import get_peft_model

    spec = SPECS[name]
    model = get_peft_model(model, spec.peft_config(targets, total))
    for n, p in model.named_parameters():
        if any(part in n for part in spec.peft_frozen):
            p.requires_grad_(False)
    return model, spec.peft_optimizer(model, lr, weight_decay, adamw_kw), spec.peft_hooks()
