"""Rank-schedule and routing variants: matryoshka_lora (+ AURAC, evaluate_ranks), lora_squeeze
(+ squeeze, ``lorabench squeeze``), flylora. Each test checks the method's defining property;
the generic contract (identity, merge, save/load, counts) is in test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

import lorabench
from lorabench import VariantError
from lorabench.adapters import get
from lorabench.adapters.lora_squeeze import LoRASqueeze, lowrank_svd, squeeze_factors
from lorabench.cli import main
from lorabench.inject import adapted_layers, head_modules
from lorabench.metrics import aurac

from conftest import TARGETS, make_batch, outputs, train_steps

BERT = TARGETS["bert"]
# transformers' own deprecation, triggered inside PEFT's from_pretrained.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def _layers(model):
    return [layer for _, layer in adapted_layers(model)]


def _copy_head(src, dst):
    for h in head_modules(src):
        dst.get_submodule(h).load_state_dict(src.get_submodule(h).state_dict())


def _best_rank_k(M: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


# ---- AURAC ------------------------------------------------------------------------------------
def test_matryoshka_aurac_is_the_normalised_trapezoid_over_the_evaluated_ranks():
    ranks, acc = [1, 2, 4, 8], [0.5, 0.6, 0.7, 0.8]
    # linear: (1 * 1.1/2 + 2 * 1.3/2 + 4 * 1.5/2) / (8 - 1) = 4.85 / 7
    assert aurac(ranks, acc) == pytest.approx(4.85 / 7)
    # log2: each doubling weighs 1: (0.55 + 0.65 + 0.75) / 3
    assert aurac(ranks, acc, scale="log2") == pytest.approx(0.65)
    assert aurac([1, 4, 32], [0.7, 0.7, 0.7]) == pytest.approx(0.7)  # a flat curve gives its value
    assert aurac([16], [0.42]) == 0.42
    assert lorabench.aurac is aurac
    with pytest.raises(ValueError, match="increasing"):
        aurac([4, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one score per rank"):
        aurac([1, 2], [0.1])


# ---- MatryoshkaLoRA ---------------------------------------------------------------------------
def test_matryoshka_p_is_the_sum_of_the_nested_scales():
    cls = get("matryoshka_lora")
    s = {b: 1 / math.sqrt(b) for b in (1, 2, 4, 8)}  # defaults: alpha = 1, rsLoRA scaling
    P = cls.p_diagonal(cls.make_options(r=8))
    expected = [s[1] + s[2] + s[4] + s[8], s[2] + s[4] + s[8]] + [s[4] + s[8]] * 2 + [s[8]] * 4
    torch.testing.assert_close(P, torch.tensor(expected))
    P = cls.p_diagonal(cls.make_options(r=8, train_ranks=[2, 8], alpha=2.0, rslora=False))  # s_b = 2 / b
    torch.testing.assert_close(P, torch.tensor([1.0 + 0.25] * 2 + [0.25] * 6))
    with pytest.raises(VariantError, match="add 8"):
        cls.make_options(r=8, train_ranks=[1, 2, 4])
    with pytest.raises(VariantError, match="outside"):
        cls.make_options(r=8, train_ranks="1,9,8")


def test_matryoshka_training_forward_trains_every_nested_lora_at_once():
    torch.manual_seed(0)
    adapter = get("matryoshka_lora")(12, 10, get("matryoshka_lora").make_options(r=4))
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(3, 5, 12)
    s = lambda b: 1 / math.sqrt(b)  # noqa: E731
    nested = sum(s(b) * x @ adapter.lora_A[:b].T @ adapter.lora_B[:, :b].T for b in (1, 2, 4))
    adapter.train()
    torch.testing.assert_close(adapter.delta(x), nested, rtol=1e-5, atol=1e-6)
    adapter.eval()  # default eval rank r: the plain rank-4 LoRA, P not applied
    torch.testing.assert_close(adapter.delta(x), s(4) * x @ adapter.lora_A.T @ adapter.lora_B.T, rtol=1e-5, atol=1e-6)


def test_matryoshka_set_rank_equals_a_plain_lora_built_from_the_prefix(make_model):
    model = lorabench.apply(make_model("bert"), "matryoshka_lora", targets=BERT, r=4)
    batch = make_batch()
    train_steps(model, batch)
    for b in (1, 2, 3, 4):
        lorabench.set_rank(model, b)
        plain = lorabench.apply(make_model("bert"), "lora", targets=BERT, r=b, alpha=1.0, rslora=True)
        for src, dst in zip(_layers(model), _layers(plain)):
            dst.adapter.lora_A.data.copy_(src.adapter.lora_A[:b])
            dst.adapter.lora_B.data.copy_(src.adapter.lora_B[:, :b])
        _copy_head(model, plain)
        torch.testing.assert_close(outputs(model, batch), outputs(plain, batch), atol=1e-5, rtol=0)
    assert len({outputs(lorabench.set_rank(model, b), batch).sum().item() for b in (1, 2, 4)}) == 3


def test_matryoshka_eval_p_keeps_p_at_every_rank():
    cls = get("matryoshka_lora")
    torch.manual_seed(1)
    adapter = cls(12, 10, cls.make_options(r=4, eval_p=True))
    torch.nn.init.normal_(adapter.lora_B)
    x = torch.randn(7, 12)
    adapter.train()
    trained = adapter.delta(x)
    adapter.eval()
    torch.testing.assert_close(adapter.delta(x), trained)  # rank r in eval == the trained function
    adapter.set_rank(2)
    P = adapter.P[:2]
    torch.testing.assert_close(adapter.delta(x), x @ adapter.lora_A[:2].T @ (adapter.lora_B[:, :2] * P).T)
    torch.testing.assert_close(adapter.delta_weight(), (adapter.lora_B[:, :2] * P) @ adapter.lora_A[:2])


def test_matryoshka_evaluate_ranks_sweeps_powers_of_two_and_restores_the_model(make_model):
    model = lorabench.apply(make_model("bert"), "matryoshka_lora", targets=BERT, r=8)
    lorabench.set_rank(model, 3)
    model.train()
    seen = []

    def evaluate(m):
        assert not m.training
        seen.append({int(layer.adapter.eval_rank) for layer in _layers(m)})
        return 0.1 * int(_layers(m)[0].adapter.eval_rank)

    scores = lorabench.evaluate_ranks(model, evaluate)
    assert list(scores) == [1, 2, 4, 8] and seen == [{1}, {2}, {4}, {8}]
    assert scores[4] == pytest.approx(0.4)
    assert all(int(layer.adapter.eval_rank) == 3 for layer in _layers(model)) and model.training
    assert aurac(list(scores), list(scores.values())) == pytest.approx((0.15 + 0.6 + 2.4) / 7)
    assert list(lorabench.evaluate_ranks(model, evaluate, ranks=[2, 6])) == [2, 6]
    dylora = lorabench.apply(make_model("bert"), "dylora", targets=BERT, r=4)
    assert list(lorabench.evaluate_ranks(dylora, lambda m: 0.0)) == [1, 2, 4]
    with pytest.raises(VariantError, match="fixed rank"):
        lorabench.evaluate_ranks(lorabench.apply(make_model("bert"), "lora", targets=BERT, r=4), evaluate)


# ---- LoRA-Squeeze -----------------------------------------------------------------------------
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


# ---- FlyLoRA ----------------------------------------------------------------------------------
def test_flylora_a_is_frozen_sparse_and_seeded(make_model):
    torch.manual_seed(0)
    model = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=8, k=2)
    layers = _layers(model)
    before = [layer.adapter.lora_A.clone() for layer in layers]
    for layer in layers:
        A = layer.adapter.lora_A  # (r, in)
        assert not isinstance(A, torch.nn.Parameter)
        assert ((A != 0).sum(dim=1) == round(layer.adapter.in_features * 2 / 8)).all()  # density k / r
        assert A[A != 0].std().item() == pytest.approx(1 / 8, rel=0.35)  # N(0, 1/r^2)
    assert not torch.equal(before[0], before[1])  # each layer its own projection
    assert lorabench.count_parameters(model)[0] == sum(8 * l.adapter.out_features for l in layers) + sum(
        p.numel() for p in model.classifier.parameters())
    train_steps(model, make_batch())
    assert all(torch.equal(layer.adapter.lora_A, a) for layer, a in zip(layers, before))
    torch.manual_seed(0)
    again = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=8, k=2)
    assert torch.equal(_layers(again)[0].adapter.lora_A, before[0])  # same seed, same A
    p4 = get("flylora")(64, 8, get("flylora").make_options(r=8, k=2, density=0.5)).lora_A
    assert ((p4 != 0).sum(dim=1) == 32).all()


def test_flylora_routes_only_k_of_r_components_to_b():
    cls = get("flylora")
    torch.manual_seed(0)
    adapter = cls(16, 6, cls.make_options(r=8, k=3))
    torch.nn.init.normal_(adapter.lora_B)
    adapter.d.copy_(torch.linspace(-0.05, 0.05, 8))
    x = torch.randn(4, 5, 16)
    y = x @ adapter.lora_A.T  # (4, 5, 8)
    top = (y + adapter.d).topk(3, dim=-1).indices  # the official fork's routing score
    gated = torch.zeros_like(y).scatter(-1, top, y.gather(-1, top))  # only the k winners pass
    torch.testing.assert_close(adapter.delta(x), adapter.scale * gated @ adapter.lora_B.T)
    assert ((gated != 0).sum(-1) == 3).all()
    adapter.delta(x[0, 0]).sum().backward()  # one token: exactly k columns of B learn
    assert (adapter.lora_B.grad.abs().sum(0) > 0).sum().item() == 3


def test_flylora_is_identity_at_init_and_balances_its_experts():
    cls = get("flylora")
    torch.manual_seed(0)
    adapter = cls(16, 6, cls.make_options(r=8, k=2, bias_u=0.01, bias_update="step")).eval()
    x = torch.randn(64, 16)
    assert not adapter.delta(x).any()  # B = 0
    assert not adapter.counts.any()  # eval forwards do not count
    adapter.train()
    adapter.delta(x)
    counts = adapter.counts.clone()
    assert counts.sum() == 64 * 2
    adapter.on_step(1, 10)
    torch.testing.assert_close(adapter.d, 0.01 * torch.sign(counts.mean() - counts))  # busy experts lose bias
    assert not adapter.counts.any() and "d" in adapter.state_dict() and "counts" not in adapter.state_dict()
    with pytest.raises(VariantError, match="k"):
        cls.make_options(r=4, k=8)


def test_flylora_cannot_merge_or_export_to_peft(make_model, tmp_path):
    model = lorabench.apply(make_model("bert"), "flylora", targets=BERT, r=4, k=2)
    with pytest.raises(VariantError, match="cannot be merged"):
        lorabench.merge(model)
    assert not any(layer.merged for layer in _layers(model))
    with pytest.raises(VariantError, match="flylora"):
        lorabench.export_peft(model, tmp_path)
