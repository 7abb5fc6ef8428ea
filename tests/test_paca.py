"""PaCA (partial connections: r columns of W are trained in place): only the selected columns
change, the forward is one matmul with the effective weight, merge and unmerge restore the
columns, the gradient is the full weight gradient of those columns, and only the selected part of
the activation is kept for backward. (The generic checks run on it from tests/test_contract.py;
its PEFT export: tests/test_peft_export.py.)"""

from __future__ import annotations

import torch
from torch import nn

import lorabench

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers
R = 4


def test_paca_changes_only_the_selected_columns_in_one_matmul():
    batch = make_batch()
    base_model = build_model("bert")
    model = lorabench.apply(build_model("bert"), "paca", targets=TARGETS, r=R)
    torch.testing.assert_close(outputs(model, batch), outputs(base_model, batch), atol=1e-5, rtol=0)
    train_steps(model, batch)
    out = outputs(model, batch)
    x = torch.randn(2, 5, 32)
    for n, layer in layers(model).items():
        v, W = layer.adapter, base_model.get_submodule(n).weight.detach()
        idx = v.paca_indices
        assert v.paca_indices.dtype == torch.long and len(set(idx.tolist())) == R
        effective = W.clone()
        effective[:, idx] = v.scale * v.paca_w.detach()
        if layer.adapter.in_features == 32:  # the forward is one plain matmul with the effective weight
            torch.testing.assert_close(layer(x), nn.functional.linear(x, effective, layer.bias), atol=1e-6, rtol=0)
        merged = v.merged_weight(W)
        torch.testing.assert_close(merged, effective, atol=0, rtol=0)
        others = torch.ones(W.shape[1], dtype=torch.bool)
        others[idx] = False
        assert torch.equal(merged[:, others], W[:, others])  # every other connection is untouched
        assert not torch.equal(merged[:, idx], W[:, idx])
    lorabench.merge(model)
    torch.testing.assert_close(outputs(model, batch), out, atol=1e-5, rtol=0)
    lorabench.unmerge(model)
    for n, layer in layers(model).items():
        assert torch.equal(layer.weight, base_model.get_submodule(n).weight)  # unmerge restores the columns


def test_paca_gradient_is_the_weight_gradient_of_the_selected_columns_and_keeps_partial_activations():
    batch = make_batch()
    model = lorabench.apply(build_model("bert"), "paca", targets=TARGETS, r=R)
    train_steps(model, batch)  # columns away from W, so the effective weight matters
    reference = build_model("bert")  # full fine-tuning of the effective weights
    reference.classifier.load_state_dict(model.classifier.state_dict())  # the head trained too
    for n, layer in layers(model).items():
        with torch.no_grad():
            reference.get_submodule(n).weight.copy_(layer.adapter.merged_weight(layer.weight))
    model.train(), reference.train()
    model(**batch).loss.backward()
    reference(**batch).loss.backward()
    for n, layer in layers(model).items():
        v, G = layer.adapter, reference.get_submodule(n).weight.grad
        torch.testing.assert_close(v.paca_w.grad, v.scale * G[:, v.paca_indices], atol=1e-7, rtol=1e-4)
    # Only x[..., idx] is kept for backward, never the full activation (Sec. 3).
    layer = layers(model)["bert.encoder.layer.0.attention.self.query"]
    x = torch.randn(2, 5, 32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        layer(x)
    assert (2, 5, R) in saved and (2, 5, 32) not in saved
