"""``export_peft`` of variants whose trained update is a plain LoRA for PEFT: the initialisation
variants (LoRA-SB, NLoRA with and without IntTune, LoRA's nystrom init, PaCA) after prepare and
training, and the rank-schedule variants (MatryoshkaLoRA at a chosen rank, LoRA-Squeeze after
annealing) as a plain rank-2 LoRA; each folder loads with ``PeftModel.from_pretrained`` and gives
the same outputs. (Per-variant exports and refusals are in each variant's file; the LoRA family:
tests/test_peft_parity.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench

from conftest import TARGETS, build_model, make_batch, outputs, train_steps

BERT = TARGETS["bert"]  # square and non-square layers
R = 4
# transformers' own deprecation, triggered inside PEFT's from_pretrained.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

@pytest.mark.parametrize("variant, opts", [
    ("lora_sb", {"r": R}), ("nlora", {"r": R}), ("nlora", {"r": R, "inttune": True}),
    ("nlora", {"r": R, "init": "sketch"}),
    ("lora", {"r": R, "init": "nystrom"}), ("paca", {"r": R}),
])
def test_export_loads_in_peft(variant, opts, tmp_path):
    peft = pytest.importorskip("peft")
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), variant, targets=BERT, **opts)
    lorabench.prepare(model, [batch])
    train_steps(model, batch)
    lorabench.export_peft(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(build_model("bert"), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant, opts", [("matryoshka_lora", {"r": 4}),
                                           ("lora_squeeze", {"r": 4, "anneal": True, "target_rank": 2})])
def test_rank_variants_export_to_peft_as_plain_lora(variant, opts, make_model, tmp_path):
    peft = pytest.importorskip("peft")
    model = lorabench.apply(make_model("bert"), variant, targets=BERT, **opts)
    batch = make_batch()
    train_steps(model, batch)  # lora_squeeze anneals to rank 2 in these 3 steps
    if variant == "matryoshka_lora":
        lorabench.set_rank(model, 2)
    out = outputs(model, batch)
    lorabench.export_peft(model, tmp_path)
    assert peft.PeftConfig.from_pretrained(tmp_path).r == 2
    loaded = peft.PeftModel.from_pretrained(make_model("bert"), tmp_path).eval()
    torch.testing.assert_close(outputs(loaded, batch), out, atol=1e-5, rtol=0)
