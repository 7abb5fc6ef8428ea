"""The data a run reads is part of its run id and of its result (issue 13, item 1).

A truncated, edited or replaced split file gives another run id (so a sweep rerun on other data
runs again); the same files under another path give the same id. The result records the checksums
and what was selected (counts, a hash of the texts and labels). The report refuses two results
that claim one id but record different data, flags reruns that measured different things, and
still reads schema-1 results (written before the data was part of the id).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import ids, provenance, report, results, sweep
from lorabench.config import RunConfig
from lorabench.data.fingerprint import file_sha256, short
from lorabench.errors import DataError, ReportError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
T = ["--model", "minilm", "--layers", "2", "--train-limit", "64", "--epochs", "1", "--max-length", "32",
     "--eval-limit", "64", "--quiet"]


def sst2_copy(root: Path, train_rows: int | None = None) -> Path:
    """A GLUE folder holding SST-2's real train and dev files (train cut to ``train_rows`` rows)."""
    (root / "SST-2").mkdir(parents=True)
    shutil.copy(GLUE / "SST-2" / "dev.tsv", root / "SST-2" / "dev.tsv")
    lines = (GLUE / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "SST-2" / "train.tsv").write_text("".join(lines if train_rows is None else lines[:train_rows + 1]),
                                              encoding="utf-8")
    return root


@needs_glue
def test_the_run_id_follows_the_bytes_of_the_files_not_their_path(tmp_path):
    same = RunConfig.from_dict({"data_dir": str(sst2_copy(tmp_path / "a"))})
    before = same.run_id()
    assert before == RunConfig.from_dict({"data_dir": str(GLUE)}).run_id()
    assert same.data_fingerprint() == {"source": "folder", "files": {
        "train": file_sha256(GLUE / "SST-2/train.tsv"), "validation": file_sha256(GLUE / "SST-2/dev.tsv")}}
    ten = RunConfig.from_dict({"data_dir": str(sst2_copy(tmp_path / "b", train_rows=10))})
    assert ten.run_id() != before and ten.resolved() == same.resolved()  # only the data differs
    dev = tmp_path / "a" / "SST-2" / "dev.tsv"
    dev.write_text(dev.read_text().replace("\t1\n", "\t0\n", 1))  # one flipped dev label
    assert same.run_id() != before  # hashed again: edited in the same clock tick, same size
    (tmp_path / "b" / "SST-2" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"missing GLUE file .*SST-2/dev\.tsv"):
        ten.run_id()


def test_hub_data_is_named_by_dataset_config_and_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./glue_data, no ../shared/data/glue: MNLI comes from the hub
    monkeypatch.delenv("LORABENCH_GLUE_DIR", raising=False)
    latest = RunConfig.from_dict({"task": "mnli"})
    pinned = RunConfig.from_dict({"task": "mnli", "data_revision": "bcd7d7"})
    assert latest.data_fingerprint() == {"source": "hub", "dataset": "nyu-mll/glue", "config": "mnli", "revision": None}
    assert pinned.data_fingerprint()["revision"] == "bcd7d7" and pinned.run_id() != latest.run_id()
    assert short(latest.data_fingerprint()) == "hub:nyu-mll/glue@latest"
    with pytest.raises(DataError, match="pass one of them"):
        RunConfig.from_dict({"data_revision": "main", "data_dir": str(tmp_path)}).run_id()


@needs_glue
def test_a_ten_row_train_file_trains_on_ten_and_the_result_says_so(tmp_path, capsys):
    small = sst2_copy(tmp_path / "ten", train_rows=10)
    with pytest.warns(UserWarning, match="train has 10 examples .*fewer than --train-limit 64"):
        assert cli.main(["train", *T, "--data-dir", str(small), "--out", str(tmp_path / "out")]) == 0
    (path,) = (tmp_path / "out").glob("run-*.json")
    r = json.loads(path.read_text())
    assert r["schema_version"] == results.SCHEMA_VERSION and r["kind"] == "run" and r["config"]["train_limit"] == 64
    assert r["data"]["examples"]["train"]["count"] == 10 and r["data"]["examples"]["validation"]["count"] == 64
    assert r["data"]["files"]["train"] == file_sha256(small / "SST-2/train.tsv")
    full = RunConfig.from_dict({"model": "minilm", "layers": 2, "train_limit": 64, "epochs": 1, "max_length": 32,
                                "eval_limit": 64, "data_dir": str(GLUE)})
    assert r["run_id"] == results.expected_id(r) != full.run_id()


@needs_glue
def test_a_sweep_planned_on_other_data_plans_other_runs(tmp_path):
    spec = {"base": {"model": "minilm", "layers": 2, "train_limit": 64}, "tasks": ["sst2"], "seeds": [0, 1],
            "variants": {"lora": {"lr": [5e-4, 1e-3]}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    on_full = {r.run_id for r in sweep.load_sweep(path, {"data_dir": str(GLUE), "out": str(tmp_path / "o")}).runs}
    ten = sst2_copy(tmp_path / "ten", train_rows=10)
    on_ten = {r.run_id for r in sweep.load_sweep(path, {"data_dir": str(ten), "out": str(tmp_path / "o")}).runs}
    assert len(on_full) == len(on_ten) == 4 and not on_full & on_ten  # nothing found done: all four run again


# ---- the report ---------------------------------------------------------------------------------
DATA_A = {"source": "folder", "files": {"train": "sha256:" + "a" * 64, "validation": "sha256:" + "b" * 64}}
DATA_B = {"source": "folder", "files": {"train": "sha256:" + "c" * 64, "validation": "sha256:" + "b" * 64}}


def fake_result(data: dict, accuracy: float, *, seed: int = 0, finished: str = "2026-12-01T10:00:00+00:00") -> dict:
    config = RunConfig.from_dict({"seed": seed}).resolved()
    r = results.new_result(ids.run_id(config, data), config, data=data, primary_metric="accuracy", env={},
                           started_at=finished, status="ok")
    r["best"] = r["final"] = {"step": 4, "epoch": 1.0, "metrics": {"validation": {"accuracy": accuracy}}}
    r["data"]["examples"] = {"train": {"count": 64, "sha256": "sha256:" + "d" * 64}}
    r["finished_at"] = finished
    return json.loads(json.dumps(r))  # as it is read back from disk


def put(folder: Path, r: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return results.write_json_atomic(results.result_path(folder, r["run_id"]), r)


def test_two_results_under_one_id_with_different_data_are_refused(tmp_path, capsys):
    a = fake_result(DATA_A, 0.80)
    forged = {**fake_result(DATA_B, 0.70), "run_id": a["run_id"]}  # another program, or a hand edit
    first, second = put(tmp_path / "x", a), put(tmp_path / "y", forged)
    with pytest.raises(ReportError) as e:
        report.build_report(tmp_path)
    assert str(first) in str(e.value) and str(second) in str(e.value) and "different data" in str(e.value)
    assert cli.main(["report", str(tmp_path), "--no-plots"]) == 2
    assert "move one of them out" in capsys.readouterr().err


def test_copies_count_once_and_reruns_that_disagree_are_flagged(tmp_path):
    a = fake_result(DATA_A, 0.80)
    put(tmp_path / "x", a)
    put(tmp_path / "copy", a)
    rep = report.build_report(tmp_path)
    assert len(rep.runs) == 1 and rep.notes == []
    put(tmp_path / "rerun", fake_result(DATA_A, 0.75, finished="2026-12-01T11:00:00+00:00"))
    with pytest.warns(UserWarning, match="measured different things"):
        rep = report.build_report(tmp_path)
    assert len(rep.runs) == 1 and rep.runs[0].metric == 0.75  # the one finished last
    assert "measured different things" in report.markdown(rep, tmp_path)


def test_an_edited_id_and_mixed_data_versions_are_flagged(tmp_path):
    put(tmp_path, fake_result(DATA_A, 0.80))
    put(tmp_path, fake_result(DATA_B, 0.60))
    edited = fake_result(DATA_A, 0.90, seed=1)
    edited["config"]["lr"] = 1.0  # its id no longer matches its config
    put(tmp_path, edited)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = report.build_report(tmp_path)
    text = " ".join(str(w.message) for w in caught)
    assert "is not the one its config and data give" in text
    assert "sst2: the runs read 2 data versions" in text
    assert {r.flat["data"] for r in rep.runs} == {short(DATA_A), short(DATA_B)}
    assert len({c.key for c in rep.configs}) == 3  # the same config on other data is another configuration


def test_schema_1_results_are_still_read_and_schema_2_needs_its_data(tmp_path):
    old = fake_result(DATA_A, 0.80)
    old.update(schema_version=1, run_id=ids.run_id(old["config"]))
    del old["data"]
    assert results.validate(old) is None and results.expected_id(old) == old["run_id"]
    put(tmp_path, old)
    (run,) = report.load_runs(tmp_path)
    assert run.flat["data"] == "unrecorded" and run.metric == 0.80
    new = fake_result(DATA_A, 0.80)
    del new["data"]
    assert "no data object" in results.validate(new)


@needs_glue
def test_a_run_whose_data_changed_after_planning_is_refused(tmp_path):
    from lorabench import run as run_module

    folder = sst2_copy(tmp_path / "glue", train_rows=20)
    cfg = RunConfig.from_dict({"model": "minilm", "layers": 2, "data_dir": str(folder), "out": str(tmp_path / "o")})
    planned = cfg.run_id()
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    (folder / "SST-2" / "train.tsv").write_text("sentence\tlabel\nanother text\t1\n")
    assert run_module.main([str(cfg_path), planned, "--report", str(tmp_path / "rep.json")]) == 2
    error = json.loads((tmp_path / "rep.json").read_text())["error"]
    assert f"the caller planned {planned}" in error and "changed since the run was planned" in error
    assert not (tmp_path / "o").exists()


def test_a_result_written_for_a_dead_run_records_its_data(tmp_path):
    cfg = RunConfig.from_dict({"data_dir": str(tmp_path / "gone")})
    r = results.failure_result(cfg, "0123456789ab", "killed", results.now())
    assert r["data"]["source"] == "unreadable" and "is not a directory" in r["data"]["error"]
    assert results.validate(json.loads(json.dumps(r))) is None and provenance.measured(r)
