"""Guards of ``lorabench eval`` and ``lorabench squeeze``, each found by a user probe.

- ``eval --json`` never writes an input (an adapter's own ``lorabench_adapter.json``), and its
  output is checked before the evaluation: a missing folder is created (as ``--out`` folders are),
  an unwritable one is refused before any compute.
- an adapter holding a NaN or infinite tensor (lorabench's format or PEFT's) is refused at load,
  naming the file and the tensor, never scored.
- an adapter whose run recorded another task is refused by ``eval --task`` (naming both and
  ``--task``); ``--cross-task`` evaluates it anyway and marks its row.
- ``squeeze --out`` never replaces an existing adapter (or any file); ``--rank 0`` names ``--rank``.

Bad input exits 2 with one stderr line ``error: ...`` and writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorabench
from lorabench import commands as cli

from helpers_cli import refused
from lorabench.checkpoint import read_adapter_config
from lorabench.errors import AdapterFileError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
FAST = ("--data-dir", str(GLUE), "--eval-limit", "8", "--max-length", "32", "--batch-size", "8")


def _fresh(task: str = "sst2", pooling: str | None = None):
    from lorabench.models import load_model

    return load_model("minilm", task, layers=2, **({"pooling": pooling} if pooling else {}))[0]


def _minilm(task: str = "sst2", pooling: str | None = None):
    return lorabench.apply(_fresh(task, pooling), "lora", r=4)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter saved from a 2-layer MiniLM with an SST-2 head (untrained)."""
    return lorabench.save_adapter(_minilm(), tmp_path_factory.mktemp("adapter") / "a")


@pytest.fixture(scope="module")
def run_adapter(tmp_path_factory) -> Path:
    """An SST-2 adapter saved by a real run: its task is recorded in run-<id>.json beside it."""
    from lorabench.config import RunConfig
    from lorabench.run import execute

    if not (GLUE / "SST-2").is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    out = tmp_path_factory.mktemp("run")
    r = execute(RunConfig.from_dict({"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 16, "eval_limit": 8,
                                     "max_length": 32, "epochs": 1, "batch_size": 8, "data_dir": str(GLUE),
                                     "quiet": True, "save_adapter": True, "out": str(out)}), progress=False)
    assert json.loads((out / f"run-{r['run_id']}.json").read_text())["task"] == "sst2"
    return out / f"run-{r['run_id']}-adapter"


def files_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}




def no_compute(monkeypatch, where: str = "lorabench.commands.eval.evaluate_adapters") -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the evaluation ran before the bad input was refused")
    monkeypatch.setattr(where, fail)


# ---------------------------------------------------------------- 1, 2: eval --json


def test_eval_json_never_overwrites_the_adapters_own_config(adapter, tmp_path, capsys, monkeypatch):
    copy = shutil.copytree(adapter, tmp_path / "a")
    before = files_under(tmp_path)
    no_compute(monkeypatch)
    refused(["eval", str(copy), "--task", "sst2", *FAST, "--json", str(copy / "lorabench_adapter.json")], capsys,
            "--json", "would write over the input", "pass another --json")
    refused(["eval", str(copy), "--task", "sst2", *FAST, "--json", str(copy / "rows.json")], capsys,
            "would write over the input")  # nor a new file inside an adapter folder
    assert files_under(tmp_path) == before
    assert read_adapter_config(copy)["variant"] == "lora"


def test_eval_json_to_an_unwritable_place_is_refused_before_the_evaluation(adapter, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    before = files_under(tmp_path)
    no_compute(monkeypatch)
    refused(["eval", str(adapter), "--task", "sst2", *FAST, "--json", str(tmp_path / "a-file" / "rows.json")], capsys,
            "--json", "is a file, not a folder")
    (tmp_path / "folder").mkdir()
    refused(["eval", str(adapter), "--task", "sst2", *FAST, "--json", str(tmp_path / "folder")], capsys,
            "--json", "is a folder; pass a file name")
    assert files_under(tmp_path) == before


@needs_glue
def test_eval_json_into_a_missing_folder_creates_it(adapter, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "rows.json"
    assert cli.main(["eval", str(adapter), "--task", "sst2", *FAST, "--json", str(out)]) == 0, capsys.readouterr().err
    (row,) = json.loads(out.read_text())
    assert row["adapter"] == str(adapter) and row["cross_task"] is False and row["trained_task"] is None


# ---------------------------------------------------------------- 3: non-finite tensors


def poisoned(folder: Path, dest: Path, file: str, suffix: str, value: float) -> tuple[Path, str]:
    """A copy of ``folder`` whose first tensor named ``*suffix`` in ``file`` is all ``value``; (copy, name)."""
    copy = shutil.copytree(folder, dest)
    tensors = load_file(str(copy / file))
    key = sorted(k for k in tensors if k.endswith(suffix))[0]
    tensors[key] = torch.full_like(tensors[key], value)
    save_file(tensors, str(copy / file), metadata={"format": "pt"})
    return copy, key


@needs_glue
def test_eval_refuses_a_peft_adapter_with_nan_lora_b(tmp_path, capsys, monkeypatch):
    lorabench.export_peft(_minilm(pooling="cls"), tmp_path / "peft")
    folder, key = poisoned(tmp_path / "peft", tmp_path / "nan", "adapter_model.safetensors", "lora_B.weight",
                           float("nan"))
    before = files_under(tmp_path)
    refused(["eval", str(folder), "--task", "sst2", "--layers", "2", *FAST], capsys,
            str(folder / "adapter_model.safetensors"), repr(key), "NaN")
    assert files_under(tmp_path) == before
    with pytest.raises(AdapterFileError, match="NaN values"):
        lorabench.load_peft(_fresh(pooling="cls"), folder)


@needs_glue
def test_eval_and_adapter_refuse_our_adapter_with_an_infinite_tensor(adapter, tmp_path, capsys):
    folder, key = poisoned(adapter, tmp_path / "inf", "lorabench_adapter.safetensors", "lora_A", float("inf"))
    weights = str(folder / "lorabench_adapter.safetensors")
    refused(["eval", str(folder), "--task", "sst2", *FAST], capsys, weights, repr(key), "infinite", "train it again")
    refused(["adapter", str(folder), "--model", "minilm", "--layers", "2"], capsys, weights, repr(key))
    with pytest.raises(AdapterFileError, match="infinite values"):
        lorabench.load_adapter(_fresh(), folder)


# ---------------------------------------------------------------- 4: the task an adapter was trained for


def test_eval_refuses_an_adapter_of_another_task(run_adapter, tmp_path, capsys, monkeypatch):
    no_compute(monkeypatch, "lorabench.models.load_model")  # refused before any model is loaded
    refused(["eval", str(run_adapter), "--task", "rte", *FAST, "--json", str(tmp_path / "rows.json")], capsys,
            str(run_adapter), "trained on sst2", "--task asks for rte", "pass --task sst2", "--cross-task")
    assert not (tmp_path / "rows.json").exists()


def test_eval_cross_task_evaluates_and_marks_the_row(run_adapter, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert cli.main(["eval", str(run_adapter), "--task", "rte", *FAST, "--cross-task", "--json", str(out)]) == 0
    assert "(trained on sst2)" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["trained_task"] == "sst2" and row["cross_task"] is True
    # its own task, however spelled, is no cross-task evaluation
    assert cli.main(["eval", str(run_adapter), "--task", "SST-2", *FAST, "--json", str(out)]) == 0
    assert "trained on" not in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["trained_task"] == "sst2" and row["cross_task"] is False


def test_the_recorded_task_is_read_beside_the_adapter_and_compared_by_name(tmp_path):
    from lorabench.data import get_task
    from lorabench.errors import ConfigError
    from lorabench.pack.eval import check_tasks

    dirs = []
    for rid, task in (("a1", "SST-2"), ("b2", "sst5"), ("c3", None)):
        (tmp_path / f"run-{rid}-adapter").mkdir()
        if task is not None:
            (tmp_path / f"run-{rid}.json").write_text(json.dumps({"task": task}))
        dirs.append(tmp_path / f"run-{rid}-adapter")
    sst5 = get_task(str(Path(__file__).resolve().parents[1] / "configs" / "tasks" / "sst5.yaml"))
    assert check_tasks([dirs[0], dirs[2]], get_task("sst2"), False) == ["SST-2", None]  # a GLUE spelling; unknown
    assert check_tasks(dirs[1:], sst5, False) == ["sst5", None]  # a task file's name
    with pytest.raises(ConfigError, match="trained on sst5 .* --task asks for sst2: .* pass --task sst5"):
        check_tasks(dirs, get_task("sst2"), False)
    assert check_tasks(dirs, get_task("sst2"), True) == ["SST-2", "sst5", None]


# ---------------------------------------------------------------- 5, 6: squeeze


@pytest.fixture(scope="module")
def mrpc_adapter(tmp_path_factory) -> Path:
    return lorabench.save_adapter(_minilm("mrpc"), tmp_path_factory.mktemp("mrpc") / "mrpc-adapter")


def test_squeeze_never_replaces_another_adapter(adapter, mrpc_adapter, tmp_path, capsys):
    other = shutil.copytree(mrpc_adapter, tmp_path / "mrpc-adapter")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("mine")
    before = files_under(tmp_path)
    refused(["squeeze", str(adapter), "--rank", "2", "--out", str(other)], capsys,
            f"--out {other} already holds the adapter", "never replaces", "pass a new or empty folder",
            f"--out {tmp_path / 'mrpc-adapter-2'}")
    refused(["squeeze", str(adapter), "--rank", "2", "--out", str(tmp_path / "notes")], capsys,
            "already holds 1 file(s) (readme.txt)", "pass a new or empty folder")
    assert files_under(tmp_path) == before
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert cli.main(["squeeze", str(adapter), "--rank", "2", "--out", str(tmp_path / "empty")]) == 0
    assert read_adapter_config(tmp_path / "empty")["options"]["r"] == 2


def test_squeeze_rank_zero_names_the_flag(adapter, tmp_path, capsys):
    before = files_under(adapter.parent)
    for rank in ("0", "-3"):
        refused(["squeeze", str(adapter), "--rank", rank, "--out", str(tmp_path / "out")], capsys,
                f"--rank must be a positive integer, got {rank}", "e.g. --rank 4")
    assert files_under(adapter.parent) == before and not (tmp_path / "out").exists()
