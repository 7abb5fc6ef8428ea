"""What the files on disk say is true: ``sweep.json`` states whether its sweep is running, was
interrupted or finished (and what a null status means then), and a result written by a newer
lorabench (a ``schema_version`` this one does not know) is refused, not read as version 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lorabench import results
from lorabench.sweep import local
from lorabench.sweep.plan import plan

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"


def _sweep(out: Path):
    spec = {"base": {"train_limit": 8}, "variants": {"lora": {"lr": [1.0e-3, 2.0e-3, 3.0e-3]}}}
    return plan(spec, name="m", out=str(out))


def test_sweep_json_says_interrupted_when_ctrl_c_stops_the_sweep(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "out")
    seen = []

    def fake_run_unit(unit, out, poll=None):
        (run,) = unit
        seen.append(json.loads((out / "sweep.json").read_text())["state"])
        if len(seen) == 2:
            raise KeyboardInterrupt
        results.write_json_atomic(results.result_path(out, run.run_id), {"fake": True})
        return {run.run_id: "ok"}, out / "log"

    monkeypatch.setattr(local, "run_unit", fake_run_unit)
    with pytest.raises(KeyboardInterrupt):
        local.run_sweep(sweep, quiet=True)
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert seen == ["running", "running"]  # while it runs (and what a SIGKILL leaves behind)
    assert manifest["state"] == "interrupted" and "rerun the same command to resume" in manifest["note"]
    assert [r["status"] for r in manifest["runs"]] == ["ok", None, None]


def test_sweep_json_says_finished_when_nothing_is_left(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "out")
    monkeypatch.setattr(local, "run_unit", lambda unit, out, poll=None: ({r.run_id: "ok" for r in unit}, out / "log"))
    local.run_sweep(sweep, quiet=True)
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["state"] == "finished"


def test_a_result_of_a_newer_schema_version_is_refused(tmp_path):
    src = sorted(FIXTURES.glob("run-*.json"))[0]
    data = json.loads(src.read_text())
    assert results.validate(data) is None
    for version, ok in ((1, True), (99, False), ("1", False), (None, False)):
        assert (results.validate({**data, "schema_version": version}) is None) is ok, version
    assert "upgrade lorabench" in results.validate({**data, "schema_version": 99})
    missing = {k: v for k, v in data.items() if k not in ("seed", "task")}
    assert "missing keys task, seed" in results.validate(missing)
    shutil.copy(src, tmp_path / src.name)
    (tmp_path / "run-newer.json").write_text(json.dumps({**data, "run_id": "abc", "schema_version": 99}))
    with pytest.warns(UserWarning, match="schema_version 99"):
        loaded = list(results.load_results(tmp_path))
    assert [p.name for p, _ in loaded] == [src.name]
