"""The run config (``lorabench.config``): validation, one test per error, each naming the valid
choices or the flag to fix; the resolved config and run id, stable and normalised, round-tripping
through YAML; and ``load_yaml``'s errors."""

from __future__ import annotations

import pytest

from lorabench import results
from lorabench.config import ConfigError, RunConfig, load_yaml

# ---- config validation: one test per error ------------------------------------------------
def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'; valid keys: model, .*\blr\b"):
        RunConfig.from_dict({"learning_rate": 1e-3})


def test_config_lr_must_be_positive():
    with pytest.raises(ConfigError, match=r"lr must be > 0.*--lr"):
        RunConfig.from_dict({"lr": 0})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        RunConfig.from_dict({"lr": -1e-4})


def test_config_max_length_zero():
    with pytest.raises(ConfigError, match=r"max_length must be > 0.*--max-length"):
        RunConfig.from_dict({"max_length": 0})


def test_config_bad_memory_budget():
    with pytest.raises(ConfigError, match=r"memory_budget '8 bananas' is not a size; write e.g. 8GiB"):
        RunConfig.from_dict({"memory_budget": "8 bananas"})


def test_config_unknown_variant_option_names_valid_options():
    with pytest.raises(ConfigError, match=r"has no option 'rank'.*options are: r, alpha"):
        RunConfig.from_dict({"variant": "lora", "options": {"rank": 8}})
    with pytest.raises(ConfigError, match="r must be a positive integer"):
        RunConfig.from_dict({"variant": "lora", "r": 0})


def test_config_unknown_task_lists_tasks():
    with pytest.raises(ConfigError, match=r"unknown GLUE task 'imdb'.*SST-2"):
        RunConfig.from_dict({"task": "imdb"})


def test_config_other_errors():
    cases = {
        "unknown variant 'nope'": {"variant": "nope"},
        "epochs must be > 0": {"epochs": 0},
        "batch_size must be >= 1": {"batch_size": 0},
        "batch_size must be an integer": {"batch_size": 1.5},
        "head must be one of cls, lm": {"head": "mlm"},
        "quiet must be true or false": {"quiet": "yes"},
        "r is given twice": {"r": 4, "options": {"r": 8}},
        "precision must be one of": {"precision": "fp8"},
    }
    for message, data in cases.items():
        with pytest.raises(ConfigError, match=message):
            RunConfig.from_dict(data)


def test_config_resolved_is_stable_and_normalised(tmp_path):
    a = RunConfig.from_dict({"r": 16, "alpha": 32, "lr": "5e-4", "targets": "query,value",
                             "memory_budget": "1GiB", "out": "x", "quiet": True, "variant": "LoRA", "task": "SST-2"})
    b = RunConfig.from_dict({"options": {"r": 16.0, "alpha": 32.0}, "lr": 0.0005, "targets": ["query", "value"],
                             "memory_budget": 2**30, "out": "y", "data_dir": "/elsewhere"})
    assert a.resolved() == b.resolved()
    assert a.run_id() == results.run_id(a.resolved(), a.data_fingerprint())  # b reads another folder
    r = a.resolved()
    assert r["variant"] == "lora" and r["task"] == "sst2"
    assert r["options"] == {"r": 16, "alpha": 32.0, "dropout": 0.0, "init": "kaiming", "rslora": False, "svd_niter": 0,
                            "optimizer": "adamw", "lr_ratio": 16.0, "eta": 2.0, "shrink_ratio": 5e-4, "alt_beta": 0.9,
                            "alt_schedule": "both", "alt_update": "momentum", "pro_moments": "full"}
    assert "out" not in r and "quiet" not in r and "r" not in r
    assert RunConfig.from_dict({"seed": 1}).run_id() != RunConfig.from_dict({"seed": 2}).run_id()
    # a config round-trips through YAML (what `lorabench sweep` hands each run)
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(a.to_dict()))
    assert RunConfig.from_dict(load_yaml(path)).run_id() == a.run_id()
    assert RunConfig.from_dict({"targets": "all-linear"}).targets == "all-linear"
    assert RunConfig.from_dict({"targets": r".*\.(query|value)"}).targets == r".*\.(query|value)"


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)
