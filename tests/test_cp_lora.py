"""CP-LoRA (``adapters/cp_lora.py``): the four-convolution forward equals F.conv2d with the assembled
kernel W0 + s * sum_r U_out ∘ U_in ∘ U_h ∘ U_w (outputs and factor gradients) for every stride, padding
(ints, 'same', 'valid'), dilation and kernel shape; identity at init; options and targets refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lorabench
from lorabench.contract import ConvNet, conv_batch, train_steps
from lorabench.errors import VariantError

R = 3
GEOMETRIES = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (3, 5), "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"kernel_size": (5, 1), "stride": (1, 3), "padding": (0, 0), "dilation": (2, 1)},
    {"kernel_size": 1},
    {"kernel_size": 3, "padding": "same", "dilation": 2},
    {"kernel_size": (2, 4), "padding": "same"},  # even kernels: 'same' pads one more at the end
    {"kernel_size": 3, "padding": "valid", "bias": False},
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(g) for g in GEOMETRIES])
def test_forward_and_gradients_equal_assembled_kernel(geometry):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 6, **geometry))
    x = torch.randn(2, 4, 11, 10)
    base_out = net(x).detach()
    model = lorabench.apply(net, "cp_lora", targets=["0"], r=R, alpha=6.0)
    layer = model[0]
    a = layer.adapter
    torch.testing.assert_close(model(x), base_out, atol=0, rtol=0)  # U_out = 0: the base output exactly
    with torch.no_grad():
        for U in (a.U_out, a.U_in, a.U_h, a.U_w):
            U.normal_()
    out = model(x)
    b = layer.base_layer
    dW = (6.0 / R) * torch.einsum("or,ir,hr,wr->oihw", a.U_out, a.U_in, a.U_h, a.U_w)  # (out, in, kh, kw)
    want = F.conv2d(x, b.weight + dW, b.bias, b.stride, b.padding, b.dilation)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-5)
    g = torch.randn_like(out)
    factors = [a.U_out, a.U_in, a.U_h, a.U_w]
    ours = torch.autograd.grad((out * g).sum(), factors)
    theirs = torch.autograd.grad((want * g).sum(), factors)
    for i, (p, q) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-5, msg=f"gradient of factor {i}")
    torch.testing.assert_close(a.delta_weight(), dW.reshape(6, -1))


def test_shapes_init_and_merge():
    model = lorabench.apply(ConvNet(), "cp_lora", r=R)
    a = model.down.adapter  # 8 -> 16, 3x3
    assert (a.U_out.shape, a.U_in.shape, a.U_h.shape, a.U_w.shape) == ((16, R), (8, R), (3, R), (3, R))
    assert a.U_out.abs().sum() == 0 and all(U.abs().sum() > 0 for U in (a.U_in, a.U_h, a.U_w))
    assert a.U_in.abs().max() <= 1 / 8**0.5 and a.U_h.abs().max() <= 1 / 3**0.5
    batch = conv_batch()
    train_steps(model, batch)
    assert all(p.grad is None for p in model.parameters())
    assert model.down.adapter.U_in.requires_grad and model.down.base_layer.weight.requires_grad is False
    logits = model(**batch).logits
    lorabench.merge(model)
    torch.testing.assert_close(model(**batch).logits, logits, atol=1e-6, rtol=0)


def test_bad_options_and_targets():
    for bad, match in [({"r": 0}, "r must be a positive integer"), ({"alpha": 0}, "alpha must be > 0"),
                       ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"), ({"rank": 2}, "has no option 'rank'")]:
        with pytest.raises(VariantError, match=match):
            lorabench.apply(ConvNet(), "cp_lora", **bad)
    with pytest.raises(VariantError, match="optimizer='lora_plus' needs a LoRA-family variant"):
        lorabench.apply(ConvNet(), "cp_lora", optimizer="lora_plus")
    linear = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(VariantError, match="adapts only nn.Conv2d layers"):
        lorabench.apply(linear, "cp_lora", targets=["0"])
