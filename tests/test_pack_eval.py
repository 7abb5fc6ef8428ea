"""``lorabench eval``: N saved adapters of one base in one pass equal N single evaluations.

Three adapters are trained (2-layer MiniLM, a few steps): two LoRA-family ones that share the
pass and a DoRA one that is evaluated alone in the same call. Each row must equal what
``train.evaluate`` gives on that adapter's own model. Adapters of another base are refused
before the dev set is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import Accelerator

from lorabench import commands as cli
from lorabench import models
from lorabench.checkpoint import load_adapter
from lorabench.config import RunConfig
from lorabench.data import build_loaders, get_task
from lorabench.errors import AdapterFileError
from lorabench.pack.eval import evaluate_adapters
from lorabench.run import execute
from lorabench.train import evaluate

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
pytestmark = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 32, "eval_limit": 16, "max_length": 32,
        "epochs": 1, "batch_size": 8, "lr": 5e-3, "data_dir": str(GLUE), "quiet": True, "save_adapter": True}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("adapters")
    dirs = []
    for kw in ({"variant": "lora", "seed": 0}, {"variant": "pissa", "seed": 1, "r": 4}, {"variant": "dora", "seed": 2},
               {"variant": "dylora", "seed": 3}):
        r = execute(RunConfig.from_dict(TINY | kw | {"out": str(out)}), progress=False)
        dirs.append(out / f"run-{r['run_id']}-adapter")
    return dirs


def test_one_pass_equals_one_evaluation_per_adapter(adapters):
    rows = evaluate_adapters(adapters, "sst2", data_dir=str(GLUE), eval_limit=64, max_length=32, batch_size=16)
    assert [r["packed"] for r in rows] == [True, True, True, False]  # DoRA packs (a column scaling), DyLoRA not
    assert [r["variant"] for r in rows] == ["lora", "pissa", "dora", "dylora"]
    task = get_task("sst2")
    for row, directory in zip(rows, adapters):
        model, tokenizer = models.load_model("minilm", task, layers=2)
        load_adapter(model, directory)
        _, dev = build_loaders(task, tokenizer, data_dir=str(GLUE), max_length=32, batch_size=16, eval_limit=64,
                               train_limit=8, progress=False)
        assert row["metrics"] == evaluate(model, dev, task, Accelerator(cpu=True)), row["adapter"]
    assert len({r["metrics"]["validation"]["accuracy"] for r in rows} | {-1.0}) >= 2


def test_the_command_prints_a_row_per_adapter_and_writes_json(adapters, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert cli.main(["eval", *map(str, adapters[:2]), "--task", "sst2", "--data-dir", str(GLUE), "--eval-limit", "16",
                     "--max-length", "32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and all(str(d) in printed for d in adapters[:2])
    assert [r["adapter"] for r in json.loads(out.read_text())] == [str(d) for d in adapters[:2]]


def test_adapters_of_another_base_are_refused_before_any_example(adapters, tmp_path, capsys):
    one = execute(RunConfig.from_dict(TINY | {"layers": 1, "out": str(tmp_path)}), progress=False)
    other = tmp_path / f"run-{one['run_id']}-adapter"
    with pytest.raises(AdapterFileError, match="one call evaluates adapters of one base"):
        evaluate_adapters([adapters[0], other], "sst2", data_dir=str(GLUE))
    assert cli.main(["eval", str(adapters[0]), str(other), "--task", "sst2", "--data-dir", str(GLUE)]) == 2
    assert "1 layers" in capsys.readouterr().err


def test_dev_rows_regroup_by_length_each_row_once_cut_after_its_padding():
    import torch

    from lorabench.pack.model import by_length, right_padded

    lengths = [[3, 7, 1, 5], [2, 6, 4], [6, 2]]  # batches padded to 7, 6 and 6 tokens
    batches = []
    for i, ls in enumerate(lengths):
        width = max(ls)
        mask = torch.tensor([[1] * n + [0] * (width - n) for n in ls])
        ids = (torch.arange(len(ls) * width).view(len(ls), width) + 100 * i + 1) * mask - (1 - mask)  # pad: -1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(ls))})
    assert all(right_padded(b) for b in batches)
    assert not right_padded({"attention_mask": torch.tensor([[0, 1, 1]])})  # left padding: not regrouped
    groups = by_length(batches, 3, pad_id=-1)
    where = [w for _, ws in groups for w in ws]
    assert sorted(where) == sorted((i, r) for i, ls in enumerate(lengths) for r in range(len(ls)))
    got = [lengths[i][r] for i, r in where]
    assert got == sorted(got, reverse=True)  # longest first
    for inputs, ws in groups:
        longest = max(lengths[i][r] for i, r in ws)
        assert inputs["input_ids"].shape == (len(ws), longest)  # cut to the group's longest row
        for row, mask, (i, r) in zip(inputs["input_ids"], inputs["attention_mask"], ws):
            n = lengths[i][r]
            assert torch.equal(row[:n], batches[i]["input_ids"][r][:n])  # its real tokens, as they were
            assert (row[n:] == -1).all() and mask.sum() == n  # then padding, whatever its batch's width
