"""Every registered variant trains under bf16 autocast (the default precision of
``benchmarks/glue_quality.py`` on CPU and of ``auto`` on a GPU): one forward and backward of a
tiny BERT gives a finite gradient for every trainable tensor. Variants with their own backward
(DoRA's fused layer, VeRA's projected weight gradient) run it under the forward's autocast."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from conftest import build_model, make_batch

import lorabench
from lorabench.adapters.conv import linear_variants


@pytest.mark.parametrize("variant", linear_variants())  # on transformers: the conv-only ones have their own tests
def test_one_bf16_autocast_step_gives_finite_gradients(variant):
    if variant == "qlora":
        pytest.importorskip("bitsandbytes")
    fields = {f.name: f.default for f in dataclasses.fields(lorabench.adapters.get(variant).Options)}
    small = {"r": 8} if isinstance(fields.get("r"), int) and fields["r"] > 16 else {}  # the tiny BERT is 32 wide
    model = lorabench.apply(build_model("bert"), variant, **small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LoRA-GA / LoRA-SB train before prepare here: fine for this check
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**make_batch()).loss + lorabench.inject.extra_loss(model)
        loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing or variant in ("full",), missing[:3]
    bad = [n for n, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert bad == []
    assert all(p.grad.dtype == p.dtype for p in trainable.values() if p.grad is not None)
