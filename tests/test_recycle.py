"""Recycling LoRAs with adaptive merging (``merging.adaptive``, kind ``recycle``): the merged update is
the linear merge with learned weights, learning moves the coefficients and lowers the loss, the
controls are what they claim, and the target's own adapter never enters the pool.

The pool: random LoRAs (r 4, query + value) on 1-layer MiniLM saved with ``lorabench.save_adapter``
beside a minimal run JSON naming their task (mrpc, cola and sst2, the target's own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_pool import save_random_lora

from lorabench import models, results, run
from lorabench.config import RunConfig
from lorabench.data import get_task
from lorabench.errors import ConfigError
from lorabench.merging import merge_adapters, read_source
from lorabench.merging.adaptive import (
    attach,
    learned_weights,
    merged_factors,
    pooled_layers,
    random_like,
)
from lorabench.merging.recycle import read_pool
from lorabench.transfer.loop import train

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TASKS = ("mrpc", "cola", "sst2")


def tiny(task: str = "sst2", seed: int = 0):
    torch.manual_seed(seed)
    return models.load_model("minilm", get_task(task), layers=1)[0]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    for i, task in enumerate(TASKS):
        save_random_lora(root, task, task, model_seed=0, factor_seed=i, result={"task": task, "run_id": task})
    return root


def others(pool: Path) -> list[Path]:
    return [pool / f"run-{t}-adapter" for t in TASKS if t != "sst2"]


def test_uniform_is_the_linear_merge_of_the_pool(pool):
    sources, dropped = read_pool([str(pool)], "sst2", hold_out=True)
    assert [s.task for s in sources] == ["cola", "mrpc"] and dropped == [str(pool / "run-sst2-adapter")]
    model = tiny()
    shared = attach(model, [s.factors for s in sources], per_layer=False, activation="linear", init=[0.5, 0.5],
                    trainable=False)
    assert len(shared) == 1 and len(pooled_layers(model)) == 2  # one coefficient vector for every layer
    linear = merge_adapters([s.directory for s in sources], "linear")  # the existing method, w = 1/2 each
    ours = merged_factors(model)
    assert ours.keys() == linear.factors.keys()
    x = torch.randn(5, 384)
    for name, layer in pooled_layers(model).items():
        B, A = linear.factors[name]
        torch.testing.assert_close(ours[name][0] @ ours[name][1], B @ A, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(layer(x), layer.base(x) + x @ (B @ A).T, atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad is False for layer in pooled_layers(model).values() for p in [layer.coefficients])


def test_learning_moves_the_coefficients_and_lowers_the_training_loss(pool):
    sources, _ = read_pool([str(d) for d in others(pool)], "sst2", hold_out=False)
    model = tiny()
    coefs = attach(model, [s.factors for s in sources], per_layer=True, activation="leaky_relu", init="zero")
    assert len(coefs) == 2 * 1 and all(c.shape == (2,) for c in coefs)  # query + value of 1 layer, K = 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("coefficients" in n or n.startswith(("head", "classifier")) for n in trainable)
    for p in model.parameters():  # coefficients alone: the loss can only fall through them
        p.requires_grad_(any(p is c for c in coefs))
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 5000, (8, 12), generator=g),
             "attention_mask": torch.ones(8, 12, dtype=torch.long), "labels": torch.tensor([0, 1] * 4)}
    out = train(model, lambda e: [batch] * 10, [{"params": coefs}], lr=5e-2, epochs=1, warmup_ratio=0.0,
                progress=False)
    assert out["status"] == "ok" and out["last_loss"] < out["first_loss"]
    weights = learned_weights(model)
    assert len(weights) == 2 and any(abs(w) > 1e-3 for ws in weights.values() for w in ws)
    frozen = [read_source(d).factors for d in others(pool)]  # the pool's factors did not move
    for name, layer in pooled_layers(model).items():
        torch.testing.assert_close(layer.lora_A, torch.cat([f[name][1] for f in frozen]))


def test_random_pool_has_the_pools_shapes_and_scale_seeded(pool):
    sources, _ = read_pool([str(d) for d in others(pool)], "sst2", hold_out=False)
    real = [s.factors for s in sources]
    a = random_like(real, torch.Generator().manual_seed(0))
    b = random_like(real, torch.Generator().manual_seed(0))
    c = random_like(real, torch.Generator().manual_seed(1))
    for k, f in enumerate(real):
        for name, (B, A) in f.items():
            rB, rA = a[k][name]
            assert rB.shape == B.shape and rA.shape == A.shape and rB.abs().min() >= 0 and rA.std() > 0
            assert rB.std() > 0 and not torch.equal(rB, B)
            assert torch.equal(rB, b[k][name][0]) and not torch.equal(rB, c[k][name][0])
    for name in real[0]:  # the pool's spread of A (and B), measured over all its adapters
        std_a = torch.cat([f[name][1] for f in real]).std()
        got = torch.cat([f[name][1] for f in a]).std()
        assert abs(got - std_a) / std_a < 0.1


def cfg_of(folder: Path, tmp: Path, **scenario) -> RunConfig:
    return RunConfig.from_dict({
        "kind": "recycle", "model": "minilm", "layers": 1, "task": "sst2", "eval_limit": 16, "max_length": 32,
        "batch_size": 8, "data_dir": str(GLUE), "quiet": True, "out": str(tmp),
        "scenario": {"pool": [str(folder)], "hold_out_target": True, "n_examples": 16, "steps": 3, **scenario}})


def test_the_target_task_in_the_pool_is_refused_before_compute(pool, tmp_path):
    with pytest.raises(ConfigError, match="hold_out_target=true"):
        run.execute(cfg_of(pool, tmp_path, hold_out_target=False), progress=False)
    assert not list(tmp_path.glob("run-*.json"))
    with pytest.raises(ConfigError, match="--layers 1"):  # a pool of another architecture
        run.execute(RunConfig.from_dict({**cfg_of(pool, tmp_path).to_dict(), "layers": 2}), progress=False)
    for bad, needle in (({"arm": "oracle"}, "arm must be one of"), ({"pool": []}, "needs scenario.pool"),
                        ({"n_examples": 0}, "positive integer")):
        with pytest.raises(ConfigError, match=needle):
            cfg_of(pool, tmp_path, **bad)
    with pytest.raises(ConfigError, match="train_limit"):
        RunConfig.from_dict({**cfg_of(pool, tmp_path).to_dict(), "train_limit": 10})


@needs_glue
@pytest.mark.parametrize("arm", ["adaptive", "uniform", "best_single", "random_pool", "fresh"])
def test_every_arm_runs_end_to_end_into_an_ok_envelope(pool, tmp_path, arm):
    cfg = cfg_of(pool, tmp_path, arm=arm)
    result = run.execute(cfg, progress=False)
    saved = json.loads(results.result_path(tmp_path, result["run_id"]).read_text())
    assert saved["status"] == "ok" and saved["kind"] == "recycle" and saved["method"] == f"recycle:{arm} n16"
    assert results.validate(saved) is None and saved["metric"]["reported_on"] == "validation"
    d = saved["details"]
    assert d["held_out"] == [str(pool / "run-sst2-adapter")] and {p["task"] for p in d["pool"]} == {"mrpc", "cola"}
    assert d["n_examples"] == 16 and saved["data"]["examples"]["train"]["count"] == 16
    assert saved["time"]["train_s"] > 0 and saved["memory"]["peak_rss_bytes"] > 0
    assert 0.0 <= saved["final"]["metrics"]["validation"]["accuracy"] <= 1.0
    if arm in ("adaptive", "random_pool"):
        assert any(w != 0 for ws in d["weights"].values() for w in ws)  # learned from 0
    if arm == "uniform":
        assert all(ws == [0.5, 0.5] for ws in d["weights"].values())
    if arm == "best_single":
        assert d["selected_on"] == "train" and len(d["candidates"]) == 2
        assert d["selected"] == min(d["candidates"], key=lambda c: c["train_loss"])["adapter"]
    if arm == "fresh":
        assert d["rank"] == 4 and saved["params"]["trainable"] > 2 * 4 * 2 * 384
