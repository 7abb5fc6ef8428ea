"""Helpers for the PEFT-parity tests of RandLoRA, Uni-LoRA, MiSS, AdaLoRA and the conv adapters
(test_randlora.py, test_uni_lora.py, test_miss.py, test_adalora.py, test_conv_adapters.py): PEFT is the test oracle, and it draws its random
tensors (bases, projection indices, initial weights) from its own RNG streams, so ours are
copied into PEFT (or PEFT's projection into ours) before the outputs, the loss and the gradients
of every paired tensor are compared (fp32, 1e-5). Import it after ``pytest.importorskip("peft")``."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

import lorabench

from conftest import TARGETS, make_batch, outputs

#: ``pytestmark`` of those files: transformers' own deprecation inside PEFT's from_pretrained,
#: and PEFT's note on fan_in_fan_out.
PEFT_WARNINGS = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to:UserWarning"),
]


def peft_layer(peft_model, name):
    return peft_model.base_model.model.get_submodule(name)


def with_peft(model, config_cls, arch, **kw):
    return get_peft_model(model, config_cls(target_modules=TARGETS[arch], task_type="SEQ_CLS", **kw))


@torch.no_grad()
def perturb_and_copy(pairs, std=0.1, seed=7):
    """Move each of our tensors off its init, then copy it into PEFT's (reshaped to PEFT's shape)."""
    g = torch.Generator().manual_seed(seed)
    for ours, theirs in pairs:
        ours.add_(std * torch.randn(ours.shape, generator=g))
        theirs.copy_(ours.reshape(theirs.shape))


def assert_same_step(ours, theirs, pairs, batch, outputs_of, plain, ours_loss=lambda m, b: m(**b).loss) -> None:
    """Outputs (``outputs_of(model, batch)``, which differ from the ``plain`` model's), the loss, and
    the gradients of every paired tensor agree (fp32: 1e-5, the loss 1e-6)."""
    out = outputs_of(ours, batch)
    assert not torch.allclose(out, outputs_of(plain, batch), atol=1e-3), "the adapter changes nothing"
    torch.testing.assert_close(out, outputs_of(theirs, batch), atol=1e-5, rtol=0)
    loss_ours, loss_theirs = ours_loss(ours, batch), theirs(**batch).loss
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-6, rtol=0)
    loss_ours.backward()
    loss_theirs.backward()
    for i, (a, b) in enumerate(pairs):
        assert a.grad is not None and a.grad.abs().sum() > 0, f"tensor {i} got no gradient"
        torch.testing.assert_close(a.grad, b.grad.reshape(a.shape), atol=1e-5, rtol=0, msg=f"gradient {i}")


def assert_parity(ours, theirs, pairs, arch, make_model, ours_loss=lambda m, b: m(**b).loss):
    """Outputs, the loss, and the gradients of every paired tensor and of the head agree."""
    assert_same_step(ours, theirs.eval(), pairs, make_batch(), outputs, make_model(arch), ours_loss)
    head = ours.lorabench_state.head[0]
    peft_head = peft_layer(theirs, head).modules_to_save["default"]
    for p, q in zip(ours.get_submodule(head).parameters(), peft_head.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=0)


def export_round_trip(model, arch, make_model, tmp_path):
    batch = make_batch()
    out = outputs(model, batch)
    lorabench.export_peft(model, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(make_model(arch), tmp_path).eval()
    for w in caught:
        text = str(w.message)
        # PEFT's own RandLoRA save repeats the shared bases under every layer; ours writes them once
        # (base_model.randlora_A / _B), which PEFT loads, and it reports the per-layer copies missing.
        if "missing adapter keys" in text:
            keys = re.findall(r"'([^']+)'", text)
            assert keys and all(re.search(r"\.randlora_[AB]\.default$", k) for k in keys), text
    torch.testing.assert_close(outputs(loaded, batch), out, atol=1e-5, rtol=0)
