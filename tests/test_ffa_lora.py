"""FFA-LoRA (A frozen at its random init, only B trains): the scaling factor alpha acts as a
learning rate (SGD with (alpha, lr) equals (k alpha, lr / k^2), unlike LoRA), and the federated
average of B is exactly the average update, unlike averaging LoRA's A and B separately.
(The generic checks run on it from tests/test_contract.py.)"""

from __future__ import annotations

import torch

import lorabench

from conftest import build_model, layers, make_batch, outputs, train_steps

TARGETS = ["query", "value", "dense"]  # BERT: square and non-square layers

def _sgd(model, batch, lr: float, steps: int = 3) -> None:
    opt = torch.optim.SGD(lorabench.param_groups(model, lr=lr))
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _adapter_outputs(variant: str, alpha: float, lr: float) -> torch.Tensor:
    model = build_model("bert")
    torch.manual_seed(7)  # the same random A in both runs
    lorabench.apply(model, variant, targets=TARGETS, r=4, alpha=alpha)
    model.classifier.requires_grad_(False)  # compare the adapters only
    _sgd(model, make_batch(), lr)
    return outputs(model, make_batch())


def test_ffa_lora_scaling_factor_is_a_learning_rate():
    """Sec. 4: with A fixed and B0 = 0, SGD with (alpha, lr) equals (k alpha, lr / k^2); not so for LoRA."""
    k = 2.0
    a, b = _adapter_outputs("ffa_lora", 8, 0.5), _adapter_outputs("ffa_lora", 8 * k, 0.5 / k**2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a, outputs(build_model("bert"), make_batch()), atol=1e-3)  # it trained
    c, d = _adapter_outputs("lora", 8, 0.5), _adapter_outputs("lora", 8 * k, 0.5 / k**2)
    assert not torch.allclose(c, d, atol=1e-4)


def test_ffa_lora_federated_average_of_B_is_the_average_update():
    """Two clients from the same init: averaging B gives exactly the mean of their updates,
    while averaging LoRA's A and B separately does not."""

    def clients(variant):
        deltas, factors = [], []
        for seed in (11, 12):
            model = build_model("bert")
            torch.manual_seed(3)
            lorabench.apply(model, variant, targets=["query"], r=4)
            train_steps(model, make_batch(seed), steps=4, lr=0.05)  # AdamW
            layer = layers(model)["bert.encoder.layer.0.attention.self.query"].adapter
            deltas.append(layer.delta_weight().detach())
            factors.append((layer.lora_A.detach(), layer.lora_B.detach(), layer.scale))
        (A1, B1, s), (A2, B2, _) = factors
        return (deltas[0] + deltas[1]) / 2, s * ((B1 + B2) / 2) @ ((A1 + A2) / 2)

    mean_update, fedavg = clients("ffa_lora")
    torch.testing.assert_close(fedavg, mean_update, atol=1e-7, rtol=0)
    mean_update, fedavg = clients("lora")
    assert (fedavg - mean_update).abs().max() > 0.05 * mean_update.abs().max()
