"""``lorabench merge`` refuses bad input before it computes or writes anything (exit 2, one
``error: ...`` line): non-finite weights, one adapter twice, a task name that would leave --out,
missing dev data, an --out holding another merge, an unwritable --out. Adapters: the random tiny
LoRAs of ``test_merge.saved`` (conftest's tiny BERT), so no test here trains or evaluates.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorabench import commands as cli
from lorabench.errors import AdapterFileError, VariantError
from lorabench.merging import concat, merge_adapters
from lorabench.merging import merge as merge_module
from test_merge import saved


@pytest.fixture
def runs(tmp_path):
    """Three adapters (sst2, rte, cola) in tmp/runs, each beside its run JSON."""
    (tmp_path / "runs").mkdir()
    return [saved(tmp_path / "runs", seed, task)[0] for seed, task in ((1, "sst2"), (2, "rte"), (3, "cola"))]


def refused(capsys, argv: list, *fragments: str) -> str:
    """Run ``lorabench ARGV``: exit 2 and exactly one stderr line ``error: ...`` holding ``fragments``."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def no_compute(monkeypatch):
    """Any merge math fails the test: every check must come before it."""
    monkeypatch.setattr(concat.Concat, "merge_layer", classmethod(lambda cls, *a: pytest.fail("merged before checks")))


def merge(adapters, out, *flags) -> list:
    return [str(x) for x in ("merge", *adapters, "--method", "concat", "--out", out, *flags)]


@pytest.mark.parametrize("bad", ["nan", "inf"])  # (argparse reads "-inf" as a flag)
def test_non_finite_weights_are_refused_before_any_adapter_loads(runs, tmp_path, capsys, monkeypatch, bad):
    a, b, _ = runs
    out = tmp_path / "out"
    with pytest.raises(VariantError, match="--weights must be finite"):
        merge_adapters([a, b], "linear", weights=[float(bad), 1.0])
    monkeypatch.setattr(merge_module, "read_source", lambda d: pytest.fail(f"read {d} before checking --weights"))
    refused(capsys, merge([a, b], out, "--weights", bad, "1", "--no-eval"), "--weights", "finite")
    assert not out.exists()


def test_one_adapter_twice_is_refused_by_folder_or_content(runs, tmp_path, capsys, monkeypatch):
    a, b, _ = runs
    with pytest.raises(AdapterFileError, match="passed twice"):
        merge_adapters([a, b, a], "concat")
    out = tmp_path / "out"
    no_compute(monkeypatch)
    refused(capsys, merge([a, b, a], out, "--no-eval"), f"adapter {a} is passed twice")
    same = tmp_path / "runs" / ".." / "runs" / a.name  # another spelling of the same folder
    refused(capsys, merge([a, same], out, "--no-eval"), "passed twice", str(a))
    (tmp_path / "copy").mkdir()
    copy = shutil.copytree(a, tmp_path / "copy" / "run-9-adapter")  # the same adapter in another folder
    shutil.copy(a.parent / "run-1.json", tmp_path / "copy" / "run-9.json")
    refused(capsys, merge([a, b, copy], out, "--no-eval"), f"adapter {copy} is the same adapter as {a}")
    assert not out.exists()


def test_an_out_holding_another_merge_is_refused_and_the_same_merge_reruns(runs, tmp_path, capsys):
    a, b, c = runs
    out = tmp_path / "out"
    assert cli.main(merge([a, b], out, "--no-eval")) == 0
    first = (out / "merge.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["merge.json", "rte", "sst2"]
    capsys.readouterr()
    for other in (merge([a, c], out, "--no-eval"),  # other adapters
                  merge([a, b], out, "--no-eval", "--weights", "1", "2"),  # other options
                  ["merge", str(a), str(b), "--method", "linear", "--out", str(out), "--no-eval"]):  # another method
        refused(capsys, other, f"--out {out} already holds another merge's files", "new or empty --out")
    assert sorted(p.name for p in out.iterdir()) == ["merge.json", "rte", "sst2"]
    assert (out / "merge.json").read_bytes() == first
    assert len(json.loads(first)["key"]) == 16
    assert cli.main(merge([a, b], out, "--no-eval")) == 0  # the very same merge: rewritten in place
    assert sorted(p.name for p in out.iterdir()) == ["merge.json", "rte", "sst2"]
    (out / "notes.txt").write_text("mine")
    refused(capsys, merge([a, b], out, "--no-eval"), "and others (notes.txt)")
    stray = tmp_path / "stray"  # task folders with no merge.json: not this merge's
    shutil.copytree(out / "sst2", stray / "sst2")
    refused(capsys, merge([a, b], stray, "--no-eval"), "files that are not this merge's")


def test_a_task_that_would_leave_out_is_refused(runs, tmp_path, capsys):
    a, b, _ = runs
    (tmp_path / "runs" / "run-2.json").write_text(json.dumps({"task": "../../x", "run_id": "2"}))
    out = tmp_path / "deep" / "a" / "out"
    refused(capsys, merge([a, b], out, "--no-eval"), "'../../x' cannot be a file or folder name", "run-2.json")
    assert not (tmp_path / "deep").exists() and not (tmp_path / "x").exists()
    with pytest.raises(Exception, match="cannot be a file or folder name"):
        merge_adapters([a, b], "concat")


def missing_rte(tmp_path: Path) -> Path:
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\n")
    (glue / "RTE").mkdir()
    return glue


@pytest.mark.parametrize("case, flags, fragments", [
    ("no-data-dir", lambda tmp: ["--data-dir", tmp / "nope"], ("--data-dir", "is not a directory")),
    ("no-dev-file", lambda tmp: ["--data-dir", missing_rte(tmp)], ("missing GLUE file", "RTE", "dev.tsv")),
    ("unknown-task", None, ("unknown GLUE task 'imdb'",)),
])
def test_missing_data_is_refused_before_anything_is_written(runs, tmp_path, capsys, monkeypatch, case, flags,
                                                              fragments):
    a, b, _ = runs
    if case == "unknown-task":
        (tmp_path / "runs" / "run-2.json").write_text(json.dumps({"task": "imdb", "run_id": "2"}))
    out = tmp_path / "out"
    no_compute(monkeypatch)
    refused(capsys, merge([a, b], out, *(flags(tmp_path) if flags else [])), *fragments)
    assert not out.exists()


def test_an_unwritable_out_or_an_input_as_out_is_refused_before_compute(runs, tmp_path, capsys, monkeypatch):
    a, b, _ = runs
    (tmp_path / "file").write_text("not a folder")
    no_compute(monkeypatch)
    refused(capsys, merge([a, b], tmp_path / "file" / "out", "--no-eval"), "cannot write in", "--out")
    refused(capsys, merge([a, b], tmp_path / "file", "--no-eval"), "is a file, not a folder")
    before = sorted(p.name for p in a.iterdir())
    refused(capsys, merge([a, b], a, "--no-eval"), f"--out {a} would write over the input")
    assert sorted(p.name for p in a.iterdir()) == before
