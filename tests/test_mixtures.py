"""Mixtures of LoRA experts (``lorabench.mixtures``, ``lorabench mixture``): the routers' gates,
the RLOO estimator, a one-expert mixture against plain LoRA, task interleaving, usage statistics,
frozen experts, an end-to-end run and the errors raised before any compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lorabench import inject, models
from lorabench.adapters import registry as variants
from lorabench.adapters.base import AdaptedLinear
from lorabench.checkpoint import read_adapter_tensors, save_adapter
from lorabench.commands import mixture
from lorabench.commands.args import Parser
from lorabench.errors import ConfigError, DataError
from lorabench.mixtures.build import build
from lorabench.mixtures.config import MixtureConfig
from lorabench.mixtures.experts import ExpertOptions, MixtureLoRA, RoutingState
from lorabench.mixtures.frozen import read_experts
from lorabench.mixtures.interleave import Interleaved
from lorabench.mixtures.loop import fit
from lorabench.mixtures.lora_mixer import LoRAMixerRouter, rsl
from lorabench.mixtures.remix import ReMixRouter, ordered_log_prob, rloo_advantages
from lorabench.mixtures.usage import summarize

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir() or not (GLUE / "MRPC").is_dir(),
                                reason=f"GLUE data not found at {GLUE}")
TINY = ["--layers", "2", "--train-limit", "32", "--eval-limit", "32", "--max-length", "32", "--batch-size", "16"]


def cli(argv):
    p = Parser(prog="lorabench")
    sub = p.add_subparsers(dest="command", required=True)
    mixture.add_parser(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


# ---- routers ------------------------------------------------------------------------------


def test_lora_mixer_gates_keep_exactly_k_experts_and_sum_to_one():
    torch.manual_seed(0)
    router = LoRAMixerRouter(16, 5, LoRAMixerRouter.make_options(5, k=2))
    x = torch.randn(3, 7, 16)
    g = router.route(x, None)  # (3, 7, 5)
    assert ((g > 0).sum(-1) == 2).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(3, 7))
    p = torch.softmax(router.W_r(x), -1)
    top = p.topk(2, -1)
    # the kept gates are the two largest probabilities, renormalised
    torch.testing.assert_close(g.gather(-1, top.indices), top.values / top.values.sum(-1, keepdim=True))
    # backward is the softmax's (straight-through): even the experts left out pass a gradient to W_r
    (g * torch.arange(5.0)).sum().backward()
    assert router.W_r.weight.grad.abs().sum() > 0
    k1 = LoRAMixerRouter(16, 5, LoRAMixerRouter.make_options(5, k=1))
    (k1.route(x, None) * torch.arange(5.0)).sum().backward()
    assert k1.W_r.weight.grad.abs().sum() > 0  # gates of exactly 1 still train the router


@pytest.mark.parametrize("training", [True, False])
def test_remix_gates_are_exactly_one_over_k(training):
    torch.manual_seed(0)
    router = ReMixRouter(16, 6, ReMixRouter.make_options(6, k=3))
    router.train(training)
    g = router.route(torch.randn(2, 5, 16), torch.ones(2, 5))
    assert ((g > 0).sum(-1) == 3).all()
    assert set(g.unique().tolist()) == {0.0, float(torch.tensor(1 / 3))}  # 1/k in fp32
    assert not g.requires_grad  # non-learnable weights: the router learns only through RLOO


def test_rloo_advantage_and_gradient_match_the_formula():
    rewards = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]])  # (M=3, B=2)
    # R_m - mean of the other two, written out
    expected = torch.tensor([[1 - (3 - 1) / 2, -2 - (0 + 4) / 2], [3 - (1 - 1) / 2, 0 - (-2 + 4) / 2],
                             [-1 - (1 + 3) / 2, 4 - (-2 + 0) / 2]])
    torch.testing.assert_close(rloo_advantages(rewards), expected)
    # gradient of the surrogate -(A * log pi(s)).mean() for a categorical policy, k = 1:
    # grad log softmax(theta)[s] = onehot(s) - softmax(theta)
    theta = torch.tensor([0.2, -0.5, 1.0], requires_grad=True)
    draws = torch.tensor([0, 2, 2])  # M = 3 draws for one example
    r = torch.tensor([0.5, -1.0, 2.0])
    a = rloo_advantages(r[:, None])[:, 0]
    lp = ordered_log_prob(torch.log_softmax(theta, -1).expand(3, 3), draws[:, None])
    (-(a * lp).mean()).backward()
    p = torch.softmax(theta.detach(), -1)
    estimate = sum(a[m] * (torch.eye(3)[draws[m]] - p) for m in range(3)) / 3
    torch.testing.assert_close(theta.grad, -estimate)


def test_ordered_log_prob_without_replacement_by_hand():
    log_p = torch.tensor([0.5, 0.3, 0.2]).log()
    got = ordered_log_prob(log_p, torch.tensor([1, 0]))
    assert math.isclose(float(got), math.log(0.3) + math.log(0.5 / (1 - 0.3)), rel_tol=1e-5)


def test_rsl_is_minus_token_expert_mutual_information():
    p = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    mask = torch.tensor([1.0, 1.0, 0.0])  # the last token is padding

    def h(q):
        return -sum(v * math.log(v) for v in q)

    expected = (h([0.9, 0.1]) + h([0.1, 0.9])) / 2 - h([0.5, 0.5])
    assert math.isclose(float(rsl(p, mask)), expected, rel_tol=1e-5)


def test_one_expert_with_k1_equals_a_plain_lora_layer():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    lora_cls = variants.get("lora")
    plain = lora_cls(16, 12, lora_cls.make_options(r=4, alpha=8.0))
    with torch.no_grad():
        plain.lora_A.normal_()
        plain.lora_B.normal_()
    mix = MixtureLoRA(16, 12, ExpertOptions(experts=1, r=4, alpha=8.0))
    with torch.no_grad():
        mix.lora_A[0].copy_(plain.lora_A)
        mix.lora_B[0].copy_(plain.lora_B)
    state = RoutingState({"block": LoRAMixerRouter(16, 1, LoRAMixerRouter.make_options(1, k=1))})
    mix.block, mix.__dict__["routing"] = "block", state
    x = torch.randn(2, 5, 16)
    state.begin(None, None)
    torch.testing.assert_close(AdaptedLinear(base, mix)(x), AdaptedLinear(base, plain)(x))


def tiny_routed(router_cls, **router_opts):
    """A 2-block random BERT (no download) with one sst2 head, q,k,v,o routed over 4 experts."""
    from transformers import BertConfig, BertModel

    from lorabench.data import get_task
    from lorabench.mixtures.experts import apply_experts
    from lorabench.mixtures.multitask import MultiTaskModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = MultiTaskModel("bert", BertModel(config, add_pooling_layer=False), {"sst2": get_task("sst2")})
    base = {"input_ids": torch.randint(0, 50, (3, 6)), "attention_mask": torch.ones(3, 6, dtype=torch.long),
            "labels": torch.tensor([0, 1, 1])}
    before = model("sst2", **base).logits.detach()
    names = apply_experts(model, model.bert, None, ExpertOptions(4, 2, 4.0), router_cls,
                          router_cls.make_options(4, **router_opts))
    return model, base, before, names


def test_routed_model_equals_the_base_at_init_and_has_one_router_per_block():
    model, batch, before, names = tiny_routed(LoRAMixerRouter, k=2)
    assert len(names) == 8 and sorted(model.routers) == ["bert-encoder-layer-0", "bert-encoder-layer-1"]
    torch.testing.assert_close(model("sst2", **batch).logits, before)  # every B_e = 0


def test_remix_objective_is_the_mean_task_loss_and_trains_the_router():
    model, batch, _, _ = tiny_routed(ReMixRouter, k=2, samples=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.5)  # experts that differ, so selections change the loss
    model.train()
    opts = ReMixRouter.make_options(4, k=2, samples=3)
    torch.manual_seed(5)
    loss = ReMixRouter.objective(model, "sst2", batch, opts)
    torch.manual_seed(5)  # the same draws
    rows = {k: v.repeat(3, *[1] * (v.dim() - 1)) for k, v in batch.items()}
    torch.testing.assert_close(loss.detach(), model("sst2", **rows).loss.detach())
    loss.backward()
    router = model.routers["bert-encoder-layer-0"].W_r.weight
    assert router.grad is not None and router.grad.abs().sum() > 0  # only the RLOO term reaches W_r


# ---- interleaving and usage -----------------------------------------------------------------


def test_proportional_interleaving_keeps_every_batch_once_per_epoch():
    loaders = {"a": [f"a{i}" for i in range(6)], "b": [f"b{i}" for i in range(3)]}
    stream = Interleaved(loaders, seed=1)
    first, second = list(stream), list(stream)
    for epoch in (first, second):
        assert sorted(b for _, b in epoch) == sorted(loaders["a"] + loaders["b"])
        assert [t for t, _ in epoch].count("a") == 6 and all(b.startswith(t) for t, b in epoch)
    assert first != second  # a new order every epoch ...
    assert list(Interleaved(loaders, seed=1)) == first  # ... and the same one for the same seed


def test_temperature_sampling_probabilities_and_length():
    stream = Interleaved({"a": list(range(9)), "b": list(range(1))}, sampling="temperature", temperature=2.0)
    p = stream.probabilities()
    assert math.isclose(p["a"], 3 / 4) and math.isclose(p["b"], 1 / 4)  # 9^(1/2) : 1^(1/2)
    epoch = list(stream)
    assert len(epoch) == 10 and {t for t, _ in epoch} <= {"a", "b"}


def test_usage_summary_by_hand():
    u = summarize(torch.tensor([5.0, 5.0, 0.0, 0.0]), torch.tensor([2.5, 2.5, 0.0, 0.0]), ess=10.0, tokens=5)
    assert u["fraction"] == [0.5, 0.5, 0.0, 0.0]
    assert math.isclose(u["entropy"], math.log(2) / math.log(4), rel_tol=1e-6)
    assert math.isclose(u["cv"], 1.0, rel_tol=1e-6)  # std 0.25 / mean 0.25
    assert u["weight"] == [0.5, 0.5, 0.0, 0.0] and u["ess"] == 2.0


# ---- errors before compute ------------------------------------------------------------------


@pytest.mark.parametrize("argv, error, words", [
    (["--tasks", "sst2,nope"], DataError, "unknown GLUE task"),
    (["--tasks", "sst2", "--experts", "2", "--k", "3"], ConfigError, "k=3"),
    (["--tasks", "sst2", "--method", "remix", "--experts", "1", "--k", "2"], ConfigError, "k=2"),
    (["--tasks", "sst2", "--method", "remix", "--experts", "2", "--k", "2"], ConfigError, "always selects"),
    (["--tasks", "sst2", "--method", "remix", "--samples", "1"], ConfigError, "samples"),
    (["--tasks", "sst2", "--method", "moe"], ConfigError, "unknown mixture method"),
    (["--tasks", "sst2", "--method", "lora", "--samples", "4"], ConfigError, "router options"),
    (["--tasks", "sst2,sst2"], ConfigError, "named twice"),
])
def test_bad_input_fails_before_any_model_loads(monkeypatch, tmp_path, argv, error, words):
    def no_compute(*a, **k):
        raise AssertionError("built a model for a bad config")

    monkeypatch.setattr(mixture, "build", no_compute)
    with pytest.raises(error, match=words):
        cli(["mixture", *argv, "--out", str(tmp_path / "out")])


def test_yaml_config_and_flags(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("tasks: [SST-2, mrpc]\nmethod: remix\nexperts: 4\nlr: 1e-3\n")
    p = Parser(prog="lorabench")
    mixture.add_parser(p.add_subparsers(dest="command"))
    cfg = mixture.config_from(p.parse_args(["mixture", "--config", str(path), "--k", "1"]))
    assert (cfg.tasks, cfg.method, cfg.k, cfg.lr) == (["sst2", "mrpc"], "remix", 1, 1e-3)
    path.write_text("tasks: [sst2]\nexpert: 4\n")
    with pytest.raises(ConfigError, match="no setting 'expert'"):
        mixture.config_from(p.parse_args(["mixture", "--config", str(path)]))


# ---- real model, real data ------------------------------------------------------------------


@needs_glue
def test_end_to_end_remix_writes_per_task_metrics_and_usage(tmp_path):
    out = tmp_path / "remix"
    assert cli(["mixture", "--tasks", "sst2,mrpc", "--method", "remix", "--samples", "2", *TINY,
                "--data-dir", str(GLUE), "--out", str(out), "--quiet"]) == 0
    [path] = out.glob("mixture-*.json")  # one file per run id
    record = json.loads(path.read_text())
    assert path.name == f"mixture-{record['run_id']}.json"
    assert record["schema"] == "lorabench-mixture" and record["schema_version"] == 1
    assert set(record["tasks"]) == {"sst2", "mrpc"}
    assert 0 <= record["tasks"]["mrpc"]["dev"]["validation"]["f1"] <= 1
    assert record["tasks"]["sst2"]["train_batches"] == 2 and record["steps"] == 4
    usage = record["usage"]
    assert set(usage["per_task"]) == {"sst2", "mrpc"} and len(usage["per_block"]) == 2
    assert math.isclose(sum(usage["overall"]["fraction"]), 1.0, abs_tol=1e-4)
    assert math.isclose(usage["overall"]["ess"], 2.0, rel_tol=1e-4)  # equal weights 1/k, k = 2
    assert len(record["targets"]) == 8  # q, k, v, o of 2 layers
    assert "remix (E=4, k=2" in (out / "mixture.md").read_text()
    assert cli(["mixture", "--table", str(path), "--out", str(tmp_path)]) == 0
    assert "sst2 accuracy" in (tmp_path / "table.md").read_text()


@needs_glue
def test_frozen_experts_stay_unchanged_and_only_the_router_and_heads_train(tmp_path):
    dirs = []
    for seed in (1, 2):  # two "pre-trained" LoRA adapters on the same 2-layer base
        model, _ = models.load_model("minilm", "sst2", layers=2, pooling="mean")
        inject.apply(model, "lora", targets=["query", "key", "value", "attention.output.dense"], r=4, alpha=8.0)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad and p.ndim == 2:
                    p.normal_(std=0.02)
        dirs.append(str(save_adapter(model, tmp_path / f"adapter-{seed}")))
    cfg = MixtureConfig(tasks=["sst2", "mrpc"], method="lora_mixer", layers=2, k=1, experts_from=dirs,
                        train_limit=32, eval_limit=32, max_length=32, batch_size=16, lr=1e-2,
                        data_dir=str(GLUE)).check()
    assert cfg.experts == 2
    built = build(cfg, read_experts(dirs), progress=False)
    layer = dict(built.model.named_modules())["bert.encoder.layer.1.attention.self.value"]
    before = {n: t.detach().clone() for n, t in built.model.named_parameters()}
    fit(built.model, built.train, built.dev, cfg, progress=False)
    after = dict(built.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith(("routers.", "heads.")) for n in moved)
    assert any(n.startswith("routers.") for n in moved)
    assert not layer.adapter.lora_A.requires_grad
    expected_A = read_adapter_tensors(dirs[1])["bert.encoder.layer.1.attention.self.value.adapter.lora_A"]
    torch.testing.assert_close(layer.adapter.lora_A[1], expected_A)
