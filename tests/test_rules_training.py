"""The optimisation rules (``optimizer=``) where they meet the rest of lorabench: ``train.fit``
calls ``before_step`` once per optimiser step, on the clipped gradients; the CLI's ``--opt``
composes structure, init and rule; ``lorabench variants`` lists structures, initialisations and
rules; save/load keeps the rule and its state (AltLoRA's momentum and alternation, Stable-LoRA's
stop), which is optional on load and checked; a rule-trained LoRA exports to PEFT.
(Each rule's defining property: tests/test_rules.py.)"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.data import DataLoader

import lorabench
from lorabench.adapters.rules import RULES, RuleOptions
from lorabench.inject import adapted_layers

from conftest import build_model, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]

def first_adapter(model):
    return next(iter(adapted_layers(model)))[1].adapter


def synthetic_loaders(n: int = 64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (n, 8), generator=g)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": (ids[i, 0] >= 50).long()} for i in range(n)]
    collate = torch.utils.data.default_collate
    return DataLoader(data, batch_size=16, collate_fn=collate), {"validation": DataLoader(data[:32], batch_size=32, collate_fn=collate)}


@pytest.mark.parametrize("optimizer", ["lora_pro", "altlora", "stable"])
def test_fit_calls_before_step_once_per_optimizer_step(optimizer, monkeypatch):
    from lorabench import inject
    from lorabench.config import RunConfig
    from lorabench.data import get_task
    from lorabench.train import fit

    calls, norms = [], []
    real = inject.before_step

    def spy(model):  # the rule sees the clipped gradients, as inside the papers' optimizers
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        calls.append(1)
        real(model)

    monkeypatch.setattr(inject, "before_step", spy)
    cfg = RunConfig.from_dict({"lr": 1e-2, "epochs": 2, "batch_size": 16, "quiet": True, "targets": TARGETS,
                               "max_grad_norm": 1e-3, "options": {"r": 4, "optimizer": optimizer}})
    model = lorabench.apply(build_model("bert"), cfg.variant, cfg.targets, **cfg.variant_options())
    train, dev = synthetic_loaders()
    out = fit(model, train, dev, get_task("sst2"), cfg, progress=False)
    assert out["status"] == "ok" and out["step"] == 8 and len(calls) == 8
    assert max(norms) <= 1e-3 * (1 + 1e-4), norms
    assert all(math.isfinite(loss) for _, loss in out["train_loss"])


def test_cli_opt_optimizer_composes_structure_init_and_rule():
    from lorabench import commands as cli
    from lorabench.commands.args import config_from_args
    from lorabench.config import ConfigError

    args = cli.build_parser().parse_args(["train", "--variant", "dora", "--opt", "init=pissa",
                                          "--opt", "optimizer=lora_plus", "--opt", "lr_ratio=4"])
    opts = config_from_args(args).variant_options()
    assert (opts["init"], opts["optimizer"], opts["lr_ratio"]) == ("pissa", "lora_plus", 4.0)
    args = cli.build_parser().parse_args(["train", "--variant", "vera", "--opt", "optimizer=lora_fa"])
    with pytest.raises(ConfigError, match="keeps no plain dense factors"):
        config_from_args(args).variant_options()


def test_variants_lists_structures_initialisations_and_rules():
    from lorabench.adapters.lora import INITS
    from lorabench.commands.variants import describe_variants

    text = describe_variants()
    assert text.index("structures") < text.index("\ninitialisations") < text.index("\noptimisation rules")
    rules = text[text.index("\noptimisation rules"):].splitlines()[2:]
    assert [line.split()[0] for line in rules] == list(RULES)
    for line, rule in zip(rules, RULES.values()):
        assert rule.description in line and "arXiv" in line
        defaults = {f.name: f.default for f in dataclasses.fields(RuleOptions)}
        assert all(f"{o}={defaults[o]!r}" in line for o in rule.options)
    inits = text[text.index("\ninitialisations"):text.index("\noptimisation rules")].splitlines()[2:]
    assert sorted(line.split()[0] for line in inits) == sorted(INITS)
    assert all("arXiv" in line for line in inits)


def test_save_load_keeps_the_rule(tmp_path):
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="altlora", alt_beta=0.8)
    train_steps(model, make_batch())
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(build_model("bert"), tmp_path)
    v = first_adapter(loaded)
    assert v.opts.optimizer == "altlora" and v.opts.alt_beta == 0.8 and v.rule.name == "altlora"
    torch.testing.assert_close(outputs(loaded.eval(), make_batch()), outputs(model, make_batch()), atol=1e-6, rtol=0)


def test_a_rule_trained_lora_exports_to_peft(tmp_path):
    peft = pytest.importorskip("peft")
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="lora_pro")
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2))
    model.train()
    for _ in range(3):
        model(**make_batch()).loss.backward()
        lorabench.before_step(model)
        opt.step()
        opt.zero_grad()
    model.eval()
    lorabench.export_peft(model, tmp_path)  # the rule changes how it trained, not what it is
    loaded = peft.PeftModel.from_pretrained(build_model("bert"), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded, make_batch()), outputs(model, make_batch()), atol=1e-5, rtol=0)


def _rule_steps(model, steps: int) -> None:
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2, weight_decay=0.0))
    model.train()
    for _ in range(steps):
        model(**make_batch()).loss.backward()
        lorabench.before_step(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def test_altlora_momentum_and_bases_are_saved_with_the_adapter(tmp_path):
    model = lorabench.apply(build_model("bert"), "lora", targets=TARGETS, r=4, optimizer="altlora", alt_beta=0.8)
    _rule_steps(model, 3)  # A then B each step: the next step carries both momenta into the new bases
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(build_model("bert"), tmp_path)
    for (name, a), (_, b) in zip(adapted_layers(model), adapted_layers(loaded)):
        mine, theirs = a.adapter.rule.state_dict(), b.adapter.rule.state_dict()
        assert sorted(mine) == sorted(theirs) == ["basis_A", "basis_B", "count_A", "count_B", "momentum_A",
                                                  "momentum_B", "steps"], name
        for key in mine:
            torch.testing.assert_close(theirs[key], mine[key], atol=0, rtol=0)
        assert int(mine["count_A"]) == int(mine["count_B"]) == 3
    # the next step (projected, momentum-carried) moves both alike
    for m in (model, loaded):
        opt = torch.optim.SGD(lorabench.param_groups(m, lr=1e-2))
        m.train()
        m.zero_grad(set_to_none=True)
        m(**make_batch(seed=5)).loss.backward()
        lorabench.before_step(m)
        opt.step()
    for (name, a), (_, b) in zip(adapted_layers(model), adapted_layers(loaded)):
        torch.testing.assert_close(b.adapter.lora_A, a.adapter.lora_A, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.adapter.lora_B, a.adapter.lora_B, atol=1e-6, rtol=1e-5)


def test_stable_lora_stop_is_saved_with_the_adapter(tmp_path):
    model = lorabench.apply(build_model("bert"), "lora", targets=["query"], r=4, optimizer="stable")
    v = first_adapter(model)
    with torch.no_grad():
        v.lora_B.fill_(1.0)  # ||A|| < ||B||: the next step stops the shrinking for good
    lorabench.before_step(model)
    assert not v.rule.shrinking
    lorabench.save_adapter(model, tmp_path)
    loaded = lorabench.load_adapter(build_model("bert"), tmp_path)
    w = first_adapter(loaded)
    assert not w.rule.shrinking
    with torch.no_grad():
        w.lora_B.zero_()  # the condition fails again, and still A is not shrunk
    A = w.lora_A.detach().clone()
    lorabench.before_step(loaded)
    assert torch.equal(w.lora_A, A)


def test_rule_state_is_optional_on_load_and_checked(tmp_path):
    from safetensors.torch import load_file, save_file

    from lorabench.checkpoint import WEIGHTS_NAME, AdapterFileError

    model = lorabench.apply(build_model("bert"), "lora", targets=["query"], r=4, optimizer="stable")
    lorabench.save_adapter(model, tmp_path)
    path = tmp_path / WEIGHTS_NAME
    tensors = load_file(str(path))
    assert any(".rule." in k for k in tensors)
    save_file({k: v for k, v in tensors.items() if ".rule." not in k}, str(path))  # as saved before rule state
    assert first_adapter(lorabench.load_adapter(build_model("bert"), tmp_path)).rule.shrinking  # starts fresh
    save_file({**tensors, "bert.pooler.dense.rule.shrinking": torch.tensor(False)}, str(path))
    with pytest.raises(AdapterFileError, match="rule state for 'bert.pooler.dense'"):
        lorabench.load_adapter(build_model("bert"), tmp_path)
