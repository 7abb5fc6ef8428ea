"""``jobs: N``: a sweep runs N processes (runs or packs) at a time, the CPU threads split between
them; a failure or Ctrl-C in one stops every child; the plan says when there are fewer processes
than jobs; Ray refuses it (it schedules its own)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from lorabench import commands as cli
from lorabench.commands.sweep import backend_runner, sweep_from_args
from lorabench.errors import SweepError
from lorabench.sweep import local
from lorabench.sweep.plan import plan

SPEC = {"base": {"train_limit": 8}, "variants": {"lora": {"lr": [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3]}}}


def test_jobs_is_read_checked_and_noted_before_anything_runs(tmp_path):
    assert plan(SPEC, out=str(tmp_path)).jobs == 1
    assert plan(SPEC | {"jobs": 2}, out=str(tmp_path)).jobs == 2
    assert plan(SPEC | {"jobs": 2}, {"jobs": 3}, out=str(tmp_path)).jobs == 3  # the flag wins
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(SweepError, match="jobs must be a positive integer"):
            plan(SPEC | {"jobs": bad}, out=str(tmp_path))
    packed = plan(SPEC | {"jobs": 2, "pack": 4}, out=str(tmp_path))  # 4 runs in one pack: one process
    assert any("jobs 2: the sweep has 1 process to run" in n and "lower pack" in n for n in packed.notes)
    assert not any(n.startswith("jobs") for n in plan(SPEC | {"jobs": 2, "pack": 2}, out=str(tmp_path)).notes)


def test_the_jobs_flag_reaches_the_plan_and_ray_refuses_it(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: {train_limit: 8}\nvariants: {lora: {lr: [1.0e-3, 2.0e-3]}}\n")
    args = cli.build_parser().parse_args(["sweep", str(path), "--jobs", "2", "--out", str(tmp_path / "o")])
    sweep = sweep_from_args(args, args.config)
    assert sweep.jobs == 2
    args.backend = "ray"
    with pytest.raises(SweepError, match="Ray schedules its own"):
        backend_runner(args, sweep)


def test_threads_are_split_between_jobs_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert local.threads_per_job(1) == {}
    assert local.threads_per_job(2) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert local.threads_per_job(16)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert local.threads_per_job(2) == {}


def test_units_run_two_at_a_time_each_with_its_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    sweep = plan(SPEC | {"jobs": 2}, out=str(tmp_path / "out"))
    spans, envs = [], []

    def fake_run_unit(unit, out, poll=None, env=None, stop=None):
        t0 = time.perf_counter()
        time.sleep(0.4)
        spans.append((t0, time.perf_counter()))
        envs.append(env)
        return {r.run_id: "ok" for r in unit}, out / "log"

    monkeypatch.setattr(local, "run_unit", fake_run_unit)
    statuses = local.run_sweep(sweep, quiet=True)
    assert sorted(statuses.values()) == ["ok"] * 4
    spans.sort()
    overlaps = sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert overlaps >= 2  # 4 units, 2 at a time: two pairs ran together
    assert all(e and int(e["OMP_NUM_THREADS"]) >= 1 for e in envs)


def test_a_failing_job_stops_the_others_children(tmp_path, monkeypatch):
    sweep = plan(SPEC | {"jobs": 2}, out=str(tmp_path / "out"))
    stopped = threading.Event()

    def fake_run_unit(unit, out, poll=None, env=None, stop=None):
        if unit[0].run_id == sweep.runs[0].run_id:
            time.sleep(0.2)
            raise RuntimeError("the sweep itself failed")
        while not stop.is_set():  # a long run: only the stop event ends it
            time.sleep(0.05)
        stopped.set()
        raise local.Stopped()

    monkeypatch.setattr(local, "run_unit", fake_run_unit)
    with pytest.raises(RuntimeError, match="the sweep itself failed"):
        local.run_sweep(sweep, quiet=True)
    assert stopped.is_set()


def test_run_logged_stops_its_child_when_told(tmp_path):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.perf_counter()
    with pytest.raises(local.Stopped):
        local.run_logged([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "x.log", stop=stop)
    assert time.perf_counter() - t0 < 20  # terminated, not waited for


def test_quick_preset_uses_both_cores_in_two_packs():
    from lorabench.sweep.plan import find_sweep_file, read_yaml

    quick = plan(read_yaml(find_sweep_file("quick")), name="quick", out="unused")
    units = local.packing.group(quick.runs, quick.pack)[0]
    assert len(quick.runs) == 18 and quick.jobs == 2 and [len(u) for u in units] == [9, 9]
