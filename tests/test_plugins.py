"""A variant written outside lorabench: found in every process (--plugin, sweep key plugins:, entry
points), recorded in the result, checked by ``check-variant``, started by ``new-variant``."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import plugins, results
from lorabench.adapters import registry
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.report import build_report

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


@pytest.fixture(autouse=True)
def clean_registry():
    """Plugins register into this process's registry: forget them after each test."""
    classes, loaded, modules = dict(registry.VARIANTS.classes), dict(plugins.LOADED), set(sys.modules)
    entry_points = plugins._ENTRY_POINTS_LOADED
    yield
    registry.VARIANTS.classes.clear()
    registry.VARIANTS.classes.update(classes)
    plugins.LOADED.clear()
    plugins.LOADED.update(loaded)
    plugins._ENTRY_POINTS_LOADED = entry_points
    for name in set(sys.modules) - modules:
        if name.startswith("lorabench_plugin_") or name.startswith("my_variants"):
            del sys.modules[name]


def new_variant(tmp_path: Path, name: str = "my_lora") -> Path:
    path = tmp_path / "elsewhere" / f"{name}.py"  # not on the package path
    path.parent.mkdir(exist_ok=True)
    assert cli.main(["new-variant", name, "--out", str(path)]) == 0
    return path


def test_the_starting_file_passes_the_contract_as_written(tmp_path, capsys):
    path = new_variant(tmp_path)
    capsys.readouterr()
    assert cli.main(["check-variant", "my_lora", "--plugin", str(path)]) == 0
    out = capsys.readouterr().out
    assert "8 of 8 properties hold" in out and "FAIL" not in out
    for prop in ("identity at init", "only declared tensors", "trainable count", "merge = adapted",
                 "unmerge restores", "save / load", "bf16 autocast", "packs"):
        assert prop in out
    assert cli.main(["new-variant", "my_lora", "--out", str(path)]) == 2  # never over an existing file


# Three deliberately broken variants: each must fail, naming the property.
BROKEN = {
    "identity at init": ("self.lora_B = nn.Parameter(torch.zeros(out_features, opts.r))",
                         "self.lora_B = nn.Parameter(torch.randn(out_features, opts.r))"),
    "merge = adapted": ("return self.scale * self.lora_B @ self.lora_A",
                        "return 2 * self.scale * self.lora_B @ self.lora_A"),
    "only declared tensors": ("        return opts.r * (in_features + out_features)\n",
                              "        return opts.r * (in_features + out_features)\n\n"
                              "    def on_step(self, step, total):\n"
                              "        with torch.no_grad():\n"
                              "            self.frozen_gate.add_(1.0)  # a frozen tensor that trains\n"),
}


@pytest.mark.parametrize("prop", sorted(BROKEN))
def test_check_variant_names_the_broken_property(prop, tmp_path, capsys):
    path = new_variant(tmp_path, "broken")
    old, new = BROKEN[prop]
    text = path.read_text()
    assert old in text
    text = text.replace(old, new)
    if prop == "only declared tensors":
        text = text.replace("nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))",
                            "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))\n"
                            "        self.frozen_gate = nn.Parameter(torch.zeros(1), requires_grad=False)")
    path.write_text(text)
    capsys.readouterr()
    assert cli.main(["check-variant", "broken", "--plugin", str(path)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("FAIL")]
    assert any(prop in line for line in lines), lines


def test_a_plugin_that_takes_a_built_in_name_is_refused(tmp_path):
    path = new_variant(tmp_path, "my_lora")
    path.write_text(path.read_text().replace('@register("my_lora")', '@register("lora")'))
    with pytest.raises(ConfigError, match="registered twice"):
        RunConfig.from_dict({"variant": "lora", "plugins": [str(path)]})


def test_an_installed_entry_point_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_variants.py").write_text(new_variant(tmp_path, "ep_lora").read_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("ep_lora", "my_variants", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == plugins.ENTRY_POINT_GROUP else [])
    plugins._ENTRY_POINTS_LOADED = False
    cfg = RunConfig.from_dict({"variant": "ep_lora"})
    assert cfg.variant == "ep_lora"
    [record] = plugins.records(cfg.plugins)
    assert record["entry_point"] == "ep_lora" and record["module"] == "my_variants"


@needs_glue
def test_a_plugin_goes_through_a_sweep_and_the_report(tmp_path):
    path = new_variant(tmp_path)
    sweep = {"name": "mine", "base": {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 32, "eval_limit": 32,
                                      "max_length": 16, "batch_size": 16, "epochs": 1, "data_dir": str(GLUE),
                                      "plugins": [str(path)]},
             "seeds": [0], "variants": {"my_lora": {"lr": 2e-3}, "lora": {"lr": 2e-3}}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(tmp_path / "mine.yaml"), "--out", str(out), "--pack", "1", "--quiet"]) == 0
    found = {r["variant"]: r for _, r in results.load_results(out)}
    assert set(found) == {"my_lora", "lora"} and all(r["status"] == "ok" for r in found.values())
    [record] = found["my_lora"]["plugins"]  # the result says which code made it
    assert record["file"] == str(path.resolve()) and record["variants"] == ["my_lora"]
    assert record["sha256"] == "sha256:" + __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert {k[2] for k in build_report(out).best} == {"my_lora", "lora"}
    assert json.loads((out / "sweep.json").read_text())  # the sweep's own record stays readable
