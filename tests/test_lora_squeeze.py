"""LoRA-Squeeze and ``lorabench.squeeze`` (compressing a trained LoRA to a lower rank by
randomised SVD): the squeezed update is the best rank-r approximation with a balanced split, a
squeezed model is a plain LoRA that saves and loads, what cannot be compressed is refused, the
``lorabench squeeze`` command round-trips, and the lora_squeeze variant's annealing halves the
rank until the target, in a hand-written loop and in ``train.fit``. (The generic contract is in
tests/test_contract.py; its PEFT export: tests/test_peft_export.py.)"""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench import VariantError
from lorabench.adapters.lora_squeeze import LoRASqueeze, lowrank_svd, squeeze_factors
from lorabench.commands import main
from lorabench.inject import adapted_layers

from conftest import TARGETS, make_batch, outputs, train_steps

BERT = TARGETS["bert"]

def _layers(model):
    return [layer for _, layer in adapted_layers(model)]


def _best_rank_k(M: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


@pytest.mark.parametrize("niter, oversample", [(0, 0), (2, 10), (3, 2)])
def test_squeezed_update_is_the_best_rank_r_approximation(niter, oversample):
    g = torch.Generator().manual_seed(0)
    decay = 0.7 ** torch.arange(12.0)  # a decaying spectrum, as trained updates have
    B = torch.randn(40, 12, generator=g) * decay  # (out, r_src)
    A = torch.randn(12, 30, generator=g)  # (r_src, in)
    for k in (1, 4, 12):
        Bk, Ak = squeeze_factors(B, A, k, scale=0.5, niter=niter, oversample=oversample)
        assert Bk.shape == (40, k) and Ak.shape == (k, 30)
        target = _best_rank_k(B @ A, k)
        torch.testing.assert_close(0.5 * Bk.double() @ Ak.double(), target, atol=1e-4 * target.abs().max().item(), rtol=0)
        # the paper's balanced split: B'^T B' = A' A'^T = S / scale
        torch.testing.assert_close(Bk.T @ Bk, Ak @ Ak.T, atol=1e-4, rtol=1e-4)
    _, S, _ = lowrank_svd(B, A, 3, niter=niter, oversample=oversample)
    torch.testing.assert_close(S, torch.linalg.svdvals((B.double() @ A.double()))[:3], atol=0, rtol=1e-4)
    with pytest.raises(VariantError, match="source rank"):
        squeeze_factors(B, A, 13)


@pytest.mark.parametrize("variant", ["lora", "pissa"])
def test_squeeze_model_gives_a_plain_lora_that_saves_and_loads(variant, make_model, tmp_path):
    model = lorabench.apply(make_model("bert"), variant, targets=BERT, r=4)
    batch = make_batch()
    train_steps(model, batch)
    updates = {n: (lambda B, A: B @ A)(*layer.adapter.lowrank_factors()).detach() for n, layer in adapted_layers(model)}
    lorabench.squeeze(model, 2, niter=0)
    state = model.lorabench_state
    assert state.variant == "lora" and state.options["r"] == 2
    fresh = make_model("bert")
    for name, layer in adapted_layers(model):
        assert layer.adapter.lora_A.shape == (2, layer.adapter.in_features)
        target = _best_rank_k(updates[name], 2)
        torch.testing.assert_close(layer.adapter.delta_weight().double(), target, atol=1e-5, rtol=0)
        # PiSSA kept W - s B0 A0 frozen; the plain LoRA sits on the original W again
        torch.testing.assert_close(layer.weight, fresh.get_submodule(name).weight, atol=1e-5, rtol=0)
    out = outputs(model, batch)
    lorabench.save_adapter(model, tmp_path)
    torch.testing.assert_close(outputs(lorabench.load_adapter(make_model("bert"), tmp_path), batch), out, atol=1e-6, rtol=0)


def test_squeeze_refuses_what_it_cannot_compress(make_model):
    for variant, opts in (("flylora", {"k": 2}), ("dora", {})):  # routed / normalised: no plain B A
        with pytest.raises(VariantError, match="no plain low-rank update"):
            lorabench.squeeze(lorabench.apply(make_model("bert"), variant, targets=BERT, r=4, **opts), 2)
    with pytest.raises(VariantError, match="no per-layer"):
        lorabench.squeeze(lorabench.apply(make_model("bert"), "vera", targets=BERT, r=4), 2)
    model = lorabench.merge(lorabench.apply(make_model("bert"), "lora", targets=BERT, r=4))
    with pytest.raises(VariantError, match="unmerge"):
        lorabench.squeeze(model, 2)


def test_cli_squeeze_round_trip(make_model, tmp_path, capsys):
    model = lorabench.apply(make_model("bert"), "lora_squeeze", targets=BERT, r=4, target_rank=2)
    batch = make_batch()
    train_steps(model, batch)
    lorabench.save_adapter(model, tmp_path / "src")
    assert main(["squeeze", str(tmp_path / "src"), "--rank", "2", "--out", str(tmp_path / "r2")]) == 0
    assert "rank-2" in capsys.readouterr().out
    loaded = lorabench.load_adapter(make_model("bert"), tmp_path / "r2")  # a plain LoRA, no base needed to write it
    assert loaded.lorabench_state.variant == "lora" and all(l.adapter.lora_A.shape[0] == 2 for l in _layers(loaded))
    expected = outputs(lorabench.squeeze(model, 2), batch)  # the same RSVD in memory
    torch.testing.assert_close(outputs(loaded, batch), expected, atol=1e-6, rtol=0)
    assert main(["squeeze", str(tmp_path / "src"), "--rank", "2"]) == 0  # default --out: DIR-r2
    assert (tmp_path / "src-r2" / "lorabench_adapter.json").is_file()
    assert main(["squeeze", str(tmp_path / "src"), "--rank", "5"]) == 2
    assert "1..4" in capsys.readouterr().err
    assert main(["squeeze", str(tmp_path / "missing"), "--rank", "2"]) == 2


def test_lora_squeeze_anneal_schedule_halves_the_rank_and_ends_at_target():
    opts = LoRASqueeze.make_options(r=16, target_rank=2, anneal=True)
    assert opts.schedule() == [8, 4, 2]
    assert LoRASqueeze.make_options(r=16, target_rank=3, anneal_stages=2).schedule() == [7, 3]
    adapter = LoRASqueeze(8, 8, opts)
    ranks = [adapter.rank_at(step, 100) for step in range(101)]
    assert ranks[24] == 16 and ranks[25] == 8 and ranks[50] == 4 and ranks[74] == 4 and ranks[75] == 2 and ranks[100] == 2
    with pytest.raises(VariantError, match="target_rank"):
        LoRASqueeze.make_options(r=4, target_rank=8)


def test_lora_squeeze_annealing_reaches_the_target_rank_by_the_end_of_training(make_model):
    model = lorabench.apply(make_model("bert"), "lora_squeeze", targets=BERT, r=8, target_rank=2, anneal=True,
                            anneal_end=0.5, svd_niter=0)
    batch = make_batch()
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=1e-2, weight_decay=0.01))  # built once, as train.fit
    model.train()
    total, history = 8, []
    for step in range(1, total + 1):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        layer = _layers(model)[0]
        before = layer.adapter.delta_weight().detach()
        lorabench.on_step(model, step, total)
        k = int(layer.adapter.rank)
        if history and k < history[-1]:  # a squeeze: the best rank-k approximation of the update
            torch.testing.assert_close(layer.adapter.delta_weight().double(), _best_rank_k(before, k), atol=1e-5, rtol=0)
        history.append(k)
    assert history == [8, 4, 4, 2, 2, 2, 2, 2]  # halving, target reached at anneal_end = 0.5
    for layer in _layers(model):
        a = layer.adapter
        assert int(a.rank) == 2 and a.lora_A.shape == (8, a.in_features)  # masked, not resized
        assert not a.lora_A[2:].any() and not a.lora_B[:, 2:].any()  # AdamW momentum re-zeroed
        assert torch.linalg.matrix_rank(a.delta_weight()) <= 2
    model.eval()
    assert not torch.allclose(outputs(model, batch), outputs(make_model("bert"), batch), atol=1e-4)


def test_train_fit_anneals_lora_squeeze_to_its_target_rank(make_model):
    """The real loop (train.fit builds AdamW once, calls on_step(step, total_steps)) ends at target_rank."""
    from torch.utils.data import DataLoader, default_collate

    from lorabench.config import RunConfig
    from lorabench.data import get_task
    from lorabench.train import fit

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (96, 8), generator=g)
    rows = [{"input_ids": i, "attention_mask": torch.ones(8, dtype=torch.long), "labels": (i[0] >= 50).long()} for i in ids]
    cfg = RunConfig.from_dict({"variant": "lora_squeeze", "options": {"r": 8, "alpha": 8.0, "anneal": True, "target_rank": 2},
                               "lr": 2e-2, "epochs": 2, "batch_size": 16, "quiet": True, "targets": BERT})
    model = lorabench.apply(make_model("bert"), cfg.variant, cfg.targets, **cfg.variant_options())
    train = DataLoader(rows[:64], batch_size=16, collate_fn=default_collate)
    out = fit(model, train, {"validation": DataLoader(rows[64:], batch_size=32, collate_fn=default_collate)},
              get_task("sst2"), cfg, progress=False)
    assert out["status"] == "ok" and out["step"] == 8
    assert all(int(layer.adapter.rank) == 2 and not layer.adapter.lora_A[2:].any() for layer in _layers(model))
