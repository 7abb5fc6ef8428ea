"""Data-parallel training: the config field, the launch, and what the ranks agree on.

The end-to-end test trains a 2-layer MiniLM on SST-2 once in one process and once in two
(spawned, CPU, gloo) with the same global batch and seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lorabench
from lorabench import distributed, inject, results
from lorabench.config import ConfigError, RunConfig
from lorabench.measure import combine_ranks

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


# ---- config and launch bookkeeping ------------------------------------------------------------
def test_num_processes_is_hashed_only_when_above_one():
    one, two = RunConfig(), RunConfig(num_processes=2)
    assert "num_processes" not in one.resolved()  # single-process run ids stay what they were
    assert two.resolved()["num_processes"] == 2 and two.run_id() != one.run_id()
    assert RunConfig.from_dict(two.to_dict()).run_id() == two.run_id()  # round-trips (the ranks re-read it)


@pytest.mark.parametrize("field, size, fix", [("batch_size", 30, "e.g. 32"), ("eval_batch_size", 62, "e.g. 64")])
def test_batch_not_divisible_by_processes_is_a_clear_error(field, size, fix):
    with pytest.raises(ConfigError, match=rf"{field} {size} is not divisible by num_processes 4.*multiple of 4, {fix}"):
        RunConfig(num_processes=4, **{field: size})
    with pytest.raises(ConfigError, match="num_processes must be >= 1"):
        RunConfig(num_processes=0)


def test_a_launcher_sets_the_number_of_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cfg = distributed.for_this_launch(RunConfig())
    assert cfg.num_processes == 2 and not distributed.needs_launch(cfg) and not distributed.is_main()
    assert distributed.for_this_launch(RunConfig(num_processes=2)).num_processes == 2
    with pytest.raises(ConfigError, match="num_processes is 4 but the launcher started 2 processes"):
        distributed.for_this_launch(RunConfig(num_processes=4))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.needs_launch(RunConfig(num_processes=2)) and not distributed.needs_launch(RunConfig())


def test_rank_environment_is_torchruns():
    from lorabench.launch import rank_env

    env = rank_env(1, 2, 12345)
    assert env["RANK"] == env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "12345"


def test_combine_ranks_sums_counts_and_takes_the_slowest_and_largest():
    ranks = [{"examples": 128, "tokens": 1000, "loop_s": 4.0, "prepare_s": 0.5, "eval_s": 1.0,
              "peak_allocated_bytes": 7, "peak_reserved_bytes": 9, "peak_rss_bytes": 100},
             {"examples": 128, "tokens": 1200, "loop_s": 5.0, "prepare_s": 0.25, "eval_s": 2.0,
              "peak_allocated_bytes": 8, "peak_reserved_bytes": 8, "peak_rss_bytes": 90}]
    time, memory = combine_ranks(ranks)
    assert time["examples"] == 256 and time["tokens"] == 2200
    assert time["train_s"] == 5.25 and time["eval_s"] == 2.0
    assert time["examples_per_s"] == 256 / 5.0 and time["tokens_per_s"] == 2200 / 5.0
    assert memory == {"peak_allocated_bytes": 8, "peak_reserved_bytes": 9, "peak_rss_bytes": 100}
    _, cpu = combine_ranks([{**r, "peak_allocated_bytes": None, "peak_reserved_bytes": None} for r in ranks])
    assert cpu["peak_allocated_bytes"] is None and cpu["peak_rss_bytes"] == 100


# ---- find_unused_parameters: the probe ---------------------------------------------------------
@pytest.mark.parametrize("variant, options", [("lora", {}), ("dylora", {"r": 4}), ("full", {})])
def test_probe_finds_no_unused_parameter_for_frozen_bases_and_dylora(bert, batch, variant, options):
    lorabench.apply(bert, variant, ["query", "value"], **options)
    bert.train()
    if variant == "dylora":  # a step that trains rank 2 of 4: components 3 and 4 are not in the graph
        for _, layer in lorabench.inject.adapted_layers(bert):
            layer.adapter.train_rank = 2
    assert distributed.unused_parameters(bert, batch) == []  # rows of a used parameter get a zero gradient
    assert all(p.grad is None for p in bert.parameters())


def test_probe_names_an_unused_parameter_and_leaves_no_trace(bert, batch):
    lorabench.apply(bert, "lora", ["query", "value"])
    bert.extra = torch.nn.Parameter(torch.ones(3))  # trainable, never used by forward
    bert.register_buffer("counter", torch.zeros(1))
    bert.eval()
    rng = torch.get_rng_state()
    assert distributed.unused_parameters(bert, batch) == ["extra"]
    assert torch.equal(torch.get_rng_state(), rng) and not bert.training
    assert all(p.grad is None for p in bert.parameters()) and bert.counter.item() == 0


def test_adapter_checksum_sees_every_trained_tensor(bert):
    lorabench.apply(bert, "lora", ["query", "value"])
    before = distributed.checksum(inject.adapter_tensors(bert))
    assert before == distributed.checksum(inject.adapter_tensors(bert)) and len(before) == 16
    with torch.no_grad():
        bert.classifier.bias[0] += 1e-6  # the head is trained too
    assert distributed.checksum(inject.adapter_tensors(bert)) != before


# ---- end to end: 1 process vs 2 processes ------------------------------------------------------
FLAGS = ["--model", "minilm", "--layers", "2", "--task", "sst2", "--train-limit", "256", "--epochs", "1",
         "--data-dir", str(GLUE), "--eval-limit", "256", "--max-length", "64", "--log-every", "1", "--quiet"]


@needs_glue
def test_two_processes_match_one_process(tmp_path):
    from lorabench.commands import main
    from lorabench.data import get_task
    from lorabench.models import load_model

    assert main(["train", *FLAGS, "--out", str(tmp_path / "one")]) == 0
    assert main(["train", *FLAGS, "--out", str(tmp_path / "two"), "--num-processes", "2", "--save-adapter"]) == 0
    (one_path,) = (tmp_path / "one").glob("*.json")
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len([n for n in written if n.endswith(".json")]) == 1, written  # rank 0 alone writes
    assert not [n for n in written if n.startswith(".")], written  # no temp files
    one = json.loads(one_path.read_text())
    two = json.loads(next((tmp_path / "two").glob("*.json")).read_text())
    assert results.validate(two) is None and two["status"] == "ok"
    assert two["config"]["num_processes"] == 2 and "num_processes" not in one["config"]
    assert two["run_id"] != one["run_id"] and two["run_id"] == results.expected_id(two)

    # the same global batch (32, split 16 + 16), the same steps and the same examples
    assert two["steps"] == one["steps"] and two["steps"]["done"] == 8
    assert two["memory"]["micro_batch_size"] == 16 and one["memory"]["micro_batch_size"] == 32
    assert one["time"]["examples"] == two["time"]["examples"] == 256  # summed over the ranks
    assert two["time"]["tokens"] == one["time"]["tokens"]  # the very same examples
    ranks = two["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and [r["examples"] for r in ranks] == [128, 128]
    assert two["memory"]["peak_rss_bytes"] == max(r["peak_rss_bytes"] for r in ranks)
    assert two["distributed"]["backend"] == "gloo" and two["distributed"]["find_unused_parameters"] is False

    # the same training, up to dropout masks: the loss at every step and the dev metric
    assert [s for s, _ in two["train_loss"]] == list(range(1, 9))
    assert [x for _, x in two["train_loss"]] == pytest.approx([x for _, x in one["train_loss"]], abs=0.02)
    acc = [r["best"]["metrics"]["validation"]["accuracy"] for r in (one, two)]
    assert abs(acc[0] - acc[1]) <= 0.02, acc
    assert len(two["history"]) == len(one["history"]) == 1

    # every rank trained the same adapter, and it is the one saved
    assert two["distributed"]["in_sync"] and ranks[0]["adapter_sha256"] == ranks[1]["adapter_sha256"]
    model, _ = load_model("minilm", get_task("sst2"), layers=2)
    lorabench.load_adapter(model, tmp_path / "two" / f"run-{two['run_id']}-adapter")
    assert distributed.checksum(inject.adapter_tensors(model)) == ranks[0]["adapter_sha256"]


@needs_glue
def test_bad_input_in_the_ranks_is_one_error_and_no_result(tmp_path, capsys):
    from lorabench.commands import main

    flags = ["--model", "minilm", "--layers", "2", "--train-limit", "32", "--data-dir", str(GLUE), "--quiet"]
    rc = main(["train", *flags, "--out", str(tmp_path), "--num-processes", "2", "--targets", "no_such_layer"])
    assert rc == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "no_such_layer" in err[0] and "candidate names" in err[0], err
    assert not list(tmp_path.glob("*.json"))
