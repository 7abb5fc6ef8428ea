"""The contract every variant keeps, run on one variant (built-in or plugin) on a small real model:
what ``lorabench check-variant NAME`` prints, one line per property with its measured error.

    identity at init       output == the base model's, where the class claims ``identity_at_init``
    only declared tensors  3 AdamW steps move every tensor the variant declares trainable (its
                           optimizer groups, each once) and nothing else
    trainable count        the adapted layers' trainable parameters == ``num_trainable_formula``
    merge = adapted        after training, the merged model's output == the adapted model's
    unmerge restores       merge then unmerge gives back the base weights
    save / load            the saved adapter loaded onto a fresh base gives the same output
    bf16 autocast          forward and backward under bf16 autocast: finite, close to fp32
    packs                  whether runs of it train packed over one base (``lorabench.pack``), and why not

The same properties as ``tests/test_contract.py`` checks on every built-in (on tiny random models
there); tolerances are fp32 rounding on MiniLM's logits. A variant that adapts only convolutions
(``adapters.conv.ConvVariant``: CP-LoRA) runs on ``ConvNet``, a tiny seeded CNN, instead.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import inject
from .adapters import registry
from .adapters.conv import ConvVariant, num_trainable
from .checkpoint import load_adapter, save_adapter

TOL = {"identity": 1e-5, "merge": 1e-4, "unmerge": 1e-5, "save_load": 1e-5}
SENTENCES = ["a warm , funny film", "dull and far too long", "the cast is fine but the script is not", "a small joy"]


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail" or "skip"
    measured: str
    note: str = ""

    def line(self) -> str:
        return f"{self.status.upper():4}  {self.name:22} {self.measured:28} {self.note}".rstrip()


def _model(seed: int = 0):
    from .data.glue import get_task
    from .models import load_model, quiet_transformers

    quiet_transformers()
    torch.manual_seed(seed)
    model, tokenizer = load_model("minilm", get_task("sst2"), layers=2)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 0, 0, 1])
    return model.eval(), dict(batch)


@dataclass
class ConvNetOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class ConvNet(nn.Module):
    """A tiny CNN classifier for the conv adapters' contract (no download): 3x3 convs with padding 1
    (``stem``, ``down`` with stride 2, ``body`` without bias), a 1x1 conv (``mix``), mean-pooled into
    the head ``classifier``. The convs are the same for every ``seed`` (the frozen base); the head is
    seeded by ``seed``, as a task head is. ``forward(pixel_values, labels)`` gives ``loss`` and ``logits``."""

    def __init__(self, seed: int = 0, num_labels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.body = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        torch.manual_seed(seed)
        self.classifier = nn.Linear(8, num_labels)

    def forward(self, pixel_values, labels=None, output_hidden_states: bool = False) -> ConvNetOutput:
        h = F.relu(self.stem(pixel_values))  # (N, 8, H, W)
        h = F.relu(self.mix(F.relu(self.down(h))))  # (N, 16, H/2, W/2)
        h = self.body(h)  # (N, 8, H/2, W/2)
        logits = self.classifier(h.mean(dim=(2, 3)))  # (N, labels)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ConvNetOutput(loss, logits, (h,) if output_hidden_states else None)


def conv_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Four 3x8x8 images and their labels for ``ConvNet``."""
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(4, 3, 8, 8, generator=g), "labels": torch.tensor([1, 0, 0, 1])}


def _conv_model(seed: int = 0):
    return ConvNet(seed).eval(), conv_batch()


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def train_steps(model, batch, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on ``batch`` with the variant's parameter groups (no weight decay, so a tensor
    moves only if it gets a gradient), in the documented order: the loss with the variant's own term,
    ``before_step`` (the optimisation rule), the step, ``on_step``. Leaves eval mode. The contract
    tests of every built-in (``tests/test_contract.py``) train with this loop too."""
    opt = torch.optim.AdamW(inject.param_groups(model, lr=lr, weight_decay=0.0))
    model.train()
    for step in range(steps):
        loss = model(**batch).loss + inject.extra_loss(model)
        loss.backward()
        inject.before_step(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        inject.on_step(model, step + 1, steps)
    model.eval()


def run_contract(name: str, options: dict[str, Any] | None = None, targets: Any = None) -> list[Check]:
    """Every property of the contract for variant ``name`` with ``options``."""
    cls = registry.get(name)
    options = dict(options or {})
    checks: list[Check] = []
    make = _conv_model if issubclass(cls, ConvVariant) else _model  # conv-only variants: on ConvNet
    model, batch = make()
    base = _logits(model, batch)
    base_bf16 = _bf16_error(model, batch, base)  # the yardstick: the base model's own bf16 rounding
    inject.apply(model, name, targets, **options)
    inject.prepare(model, [batch])
    if cls.identity_at_init:
        err = _err(_logits(model, batch), base)
        checks.append(Check("identity at init", "pass" if err <= TOL["identity"] else "fail", f"max |Δlogit| {err:.2e}",
                            "" if err <= TOL["identity"] else "the class claims identity_at_init = True"))
    else:
        checks.append(Check("identity at init", "skip", "-", "identity_at_init = False"))
    checks += _trainable_checks(model, batch, cls, options)
    checks += _merge_checks(model, batch, cls)
    checks.append(_save_load(model, batch, name, make))
    checks.append(_bf16(model, batch, base_bf16))
    why = cls.unpackable()
    checks.append(Check("packs", "pass", "packs" if why is None else "trains alone", why or "lorabench.pack"))
    return checks


def _trainable_checks(model, batch, cls, options) -> list[Check]:
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    groups = inject.param_groups(model, lr=1e-3, weight_decay=0.0)
    in_groups = [id(p) for g in groups for p in g["params"]]
    declared = {id(p) for n, p in named.items() if p.requires_grad}
    running = {f"{n}.adapter.{b}" for n, layer in inject.adapted_layers(model) for b in layer.adapter.running_buffers}
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, batch)
    after = model.state_dict()
    moved_frozen = sorted(k for k, v in before.items() if k not in trainable and k not in running
                          and not torch.equal(after[k], v))
    stuck = sorted(k for k in trainable if torch.equal(after[k], before[k]))
    problems = []
    if len(in_groups) != len(set(in_groups)) or set(in_groups) != declared:
        problems.append("optimizer groups != trainable tensors (each exactly once)")
    if moved_frozen:
        problems.append(f"frozen tensor(s) changed: {', '.join(moved_frozen[:3])}")
    if stuck:
        problems.append(f"trainable tensor(s) did not move: {', '.join(stuck[:3])}")
    change = max((_err(after[k], before[k]) for k in moved_frozen), default=0.0)
    out = [Check("only declared tensors", "fail" if problems else "pass", f"max frozen change {change:.2e}",
                 "; ".join(problems))]
    layers = list(inject.adapted_layers(model))
    counted = sum(p.numel() for _, layer in layers for p in layer.adapter.parameters() if p.requires_grad)
    try:
        formula = sum(num_trainable(layer) for _, layer in layers)  # per layer; conv layers by their kernel
    except NotImplementedError:
        return out + [Check("trainable count", "skip", f"{counted:,} counted", "no num_trainable_formula")]
    ok = formula == counted
    return out + [Check("trainable count", "pass" if ok else "fail", f"{counted:,} vs formula {formula:,}",
                        "" if ok else "num_trainable_formula disagrees with the tensors that train")]


def _merge_checks(model, batch, cls) -> list[Check]:
    if not cls.wraps_layers:
        return [Check("merge = adapted", "skip", "-", "adapts no layer"), Check("unmerge restores", "skip", "-", "")]
    if not cls.mergeable:
        return [Check("merge = adapted", "skip", "-", "mergeable = False"), Check("unmerge restores", "skip", "-", "")]
    adapted = _logits(model, batch)
    weights = {n: layer.weight.detach().clone() for n, layer in inject.adapted_layers(model)}
    inject.merge(model)
    err = _err(_logits(model, batch), adapted)
    inject.unmerge(model)
    back = max(_err(layer.weight.detach(), weights[n]) for n, layer in inject.adapted_layers(model))
    return [Check("merge = adapted", "pass" if err <= TOL["merge"] else "fail", f"max |Δlogit| {err:.2e}",
                  "" if err <= TOL["merge"] else "merged_weight does not reproduce forward"),
            Check("unmerge restores", "pass" if back <= TOL["unmerge"] else "fail", f"max |ΔW| {back:.2e}",
                  "" if back <= TOL["unmerge"] else "unmerged_weight is not the inverse of merged_weight")]


def _save_load(model, batch, name: str, make=_model) -> Check:
    want = _logits(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, f"{tmp}/adapter")
        fresh, _ = make(seed=1)  # another seed: the head and adapter must come from the file
        load_adapter(fresh, f"{tmp}/adapter")
        err = _err(_logits(fresh, batch), want)
    ok = err <= TOL["save_load"]
    return Check("save / load", "pass" if ok else "fail", f"max |Δlogit| {err:.2e}",
                 "" if ok else f"the saved {name} adapter does not reproduce the model")


def _bf16_error(model, batch, ref: torch.Tensor) -> float:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    return _err(out, ref)


def _bf16(model, batch, base_err: float) -> Check:
    """Forward and backward under bf16 autocast: they run, are finite, and the logits stay within 5%
    of their fp32 scale (bf16 keeps ~3 significant digits; the base model's own bf16 error is shown
    for scale). Catches a forward that breaks, overflows or computes in the wrong dtype."""
    ref = _logits(model, batch)
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch)
        out.loss.backward()
    except Exception as e:  # a variant whose forward breaks under autocast: the failure is the finding
        return Check("bf16 autocast", "fail", type(e).__name__, str(e).splitlines()[0][:80])
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    finite = torch.isfinite(out.loss).item() and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
    model.eval()
    model.eval()
    err = _bf16_error(model, batch, ref)
    ok = finite and err <= 0.05 * max(float(ref.abs().max()), 1.0)
    return Check("bf16 autocast", "pass" if ok else "fail", f"max |Δlogit| {err:.2e} (base {base_err:.2e})",
                 "" if ok else ("non-finite loss or gradient" if not finite else "far from the fp32 logits"))
