"""The ``merge`` kind (``merging.recipe``): a pool of per-task LoRAs merged and one task evaluated as a
run. Its merged metric is what ``lorabench merge`` and ``lorabench eval`` measure for the same pool,
its ``own`` is the task's adapter, the run's seed picks the pool's adapters, and every setting a merge
cannot honour is refused before compute.

The pool: random LoRAs (r 4, query + value) on 1-layer MiniLM saved with ``lorabench.save_adapter``
beside a minimal run JSON naming their task and seed (mrpc, cola and sst2; sst2 at seeds 0 and 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_pool import save_random_lora

from lorabench import results, run
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.merging import merge_adapters
from lorabench.merging.write import write_merged
from lorabench.pack.eval import evaluate_adapters

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
ADAPTERS = (("mrpc", 0), ("cola", 0), ("sst2", 0), ("sst2", 1))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    for i, (task, seed) in enumerate(ADAPTERS):
        name = f"{task}-{seed}"
        save_random_lora(root, name, task, model_seed=seed, factor_seed=i,
                         result={"task": task, "run_id": name, "config": {"seed": seed}})
    return root


def cfg_of(pool: Path, tmp: Path, **over) -> RunConfig:
    scenario = {"pool": [str(pool)], "method": "ties", **over.pop("scenario", {})}
    return RunConfig.from_dict({"kind": "merge", "model": "minilm", "layers": 1, "task": "mrpc", "eval_limit": 24,
                                "max_length": 32, "data_dir": str(GLUE), "quiet": True, "out": str(tmp),
                                "scenario": scenario, **over})


def test_a_merge_config_resolves_and_refuses_what_it_cannot_honour(pool, tmp_path):
    cfg = cfg_of(pool, tmp_path)
    assert cfg.variant == "lora" and cfg.scenario["density"] == 0.2  # TIES' default density, in the run id
    assert cfg.method() == "merge:ties@0.2"
    assert cfg_of(pool, tmp_path, scenario={"method": "linear", "weights": "0.5,0.5,1"}).method() == \
        "merge:linear weighted"
    assert cfg.run_id({}) != cfg_of(pool, tmp_path, scenario={"density": 0.5}).run_id({})
    for over, needle in (({"lr": 1e-3}, "--lr"), ({"epochs": 2}, "--epochs"), ({"r": 4}, "--r"),
                         ({"scenario": {"method": "avg"}}, "unknown merge"),
                         ({"scenario": {"method": "linear", "density": 0.3}}, "takes no scenario density"),
                         ({"scenario": {"density": 0}}, "density must be in"), ({"variant": "dora"}, "sets variant")):
        with pytest.raises(ConfigError, match=needle):
            cfg_of(pool, tmp_path, **over)


@needs_glue
def test_the_task_weights_and_seed_are_checked_before_compute(pool, tmp_path):
    for over, needle in (({"task": "rte"}, "task rte has no adapter"), ({"seed": 2}, "seeds 0, 1"),
                         ({"scenario": {"method": "linear", "weights": [1, 1]}}, "2 values for the pool's 3")):
        with pytest.raises(ConfigError, match=needle):
            run.execute(cfg_of(pool, tmp_path, **over), progress=False)
    assert not list(tmp_path.glob("run-*.json"))


@needs_glue
@pytest.mark.parametrize("seed", [0, 1])
def test_the_merged_metric_is_what_merge_and_eval_measure(pool, tmp_path, seed):
    result = run.execute(cfg_of(pool, tmp_path / "runs", seed=seed, save_adapter=True), progress=False)
    saved = json.loads(results.result_path(tmp_path / "runs", result["run_id"]).read_text())
    assert saved["status"] == "ok" and saved["kind"] == "merge" and results.validate(saved) is None
    d = saved["details"]
    assert [(s["task"], s["seed"]) for s in d["sources"]] == [("cola", 0), ("mrpc", 0), ("sst2", seed)]
    # the same merge through the merge command's path, evaluated by lorabench eval's
    folders = [pool / f"run-{t}-{s}-adapter" for t, s in (("cola", 0), ("mrpc", 0), ("sst2", seed))]
    merged = write_merged(merge_adapters(folders, "ties", density=0.2), tmp_path / "ref")
    own, ref = evaluate_adapters([folders[1], merged["mrpc"]], "mrpc", data_dir=str(GLUE), eval_limit=24,
                                 max_length=32)
    split = "validation"
    assert saved["best"]["metrics"][split] == pytest.approx(ref["metrics"][split], abs=1e-6)
    assert d["own"][split] == pytest.approx(own["metrics"][split], abs=1e-6)
    # the adapter the run saved is that merge
    again = evaluate_adapters([tmp_path / "runs" / f"run-{result['run_id']}-adapter"], "mrpc", data_dir=str(GLUE),
                              eval_limit=24, max_length=32)[0]
    assert again["metrics"][split] == pytest.approx(ref["metrics"][split], abs=1e-6)
    assert saved["adapter_bytes"] > 0 and saved["params"]["trainable"] == 0
    assert saved["time"]["eval_s"] > 0 and saved["memory"]["peak_rss_bytes"] > 0


@needs_glue
def test_a_pool_of_another_architecture_is_refused(pool, tmp_path):
    with pytest.raises(ConfigError, match="--layers 1"):
        run.execute(cfg_of(pool, tmp_path, layers=2), progress=False)
    assert not list(tmp_path.glob("run-*.json"))


@needs_glue
def test_a_merge_evaluates_under_the_runs_precision(pool, tmp_path, monkeypatch):
    from lorabench.training import evaluate as evaluation

    seen, real = [], evaluation.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real(device, dtype)

    monkeypatch.setattr(evaluation, "autocast", spy)
    result = run.execute(cfg_of(pool, tmp_path, precision="bf16"), progress=False)
    assert result["status"] == "ok" and result["env"]["precision"] == "bf16"
    assert seen and all(d == torch.bfloat16 for d in seen)
