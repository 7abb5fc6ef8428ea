"""The Ray sweep backend: a 2-run sweep on a local Ray, a rerun that skips both, and the
one-line error without Ray, and a run killed inside a Ray worker then resumed (Ray is in the
``test`` extra, so CI runs them all against a real local Ray)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import yaml

from lorabench import commands as cli
from lorabench import results, sweep
from lorabench.config import RunConfig

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TINY = {"model": "minilm", "layers": 2, "task": "sst2", "eval_limit": 32, "max_length": 32, "batch_size": 16}


def write_sweep(tmp_path: Path) -> Path:
    spec = {"name": "ray", "base": TINY, "variants": {"lora": {"lr": [1e-3]}, "dora": {"lr": [1e-3]}}}
    path = tmp_path / "ray.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def argv(path: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(path), "--backend", "ray", "--out", str(out), "--model", "minilm", "--layers", "2",
            "--train-limit", "64", "--epochs", "1", "--data-dir", str(GLUE), *extra]


def test_without_ray_the_backend_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "out"
    assert cli.main(argv(write_sweep(tmp_path), out)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["error: the ray backend needs Ray: pip install 'lorabench[ray]'"]
    assert not out.exists()  # nothing planned was run or written
    # the local backend does not need Ray, and --address without --backend ray is a mistake
    assert cli.main(["sweep", str(write_sweep(tmp_path)), "--address", "auto", "--out", str(out)]) == 2
    assert "--address only applies to --backend ray" in capsys.readouterr().err
    assert not out.exists()


class FakeRay(types.ModuleType):
    """Just enough of Ray to see what the backend asks for; tasks "finish" ok without running."""

    def __init__(self, gpus: float):
        super().__init__("ray")
        self.gpus, self.options, self.submitted = gpus, [], []
        self.exceptions = types.SimpleNamespace(RayError=RuntimeError)

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.gpus} if self.gpus else {"CPU": 8.0}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kwargs):
                fake.options.append(kwargs)
                return self

            def remote(self, *args):
                fake.submitted.append((fn, args))
                return len(fake.submitted)

        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:1], refs[1:]

    def get(self, ref):
        return "ok", "log"

    def cancel(self, ref, force=False):
        raise AssertionError("nothing is cancelled when every task finishes")


@pytest.mark.parametrize("gpus, expected", [(0, 0), (2.0, 1)])
def test_task_resources_and_portable_paths(tmp_path, monkeypatch, capsys, gpus, expected):
    from lorabench.sweep import ray as sweep_ray

    fake = FakeRay(gpus)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    path = write_sweep(tmp_path)
    sst2 = tmp_path / "glue" / "SST-2"  # relative flags: resolved against this working directory
    sst2.mkdir(parents=True)  # the run ids hash these files (the sweep reads no more than that here)
    for name in ("train.tsv", "dev.tsv"):
        (sst2 / name).write_text("sentence\tlabel\ngood\t1\n")
    assert cli.main(["sweep", path.name, "--backend", "ray", "--cpus-per-run", "3", "--out", "rel",
                     "--data-dir", "glue", "--quiet"]) == 0
    assert fake.options == [{"num_cpus": 3, "num_gpus": expected, "max_retries": 0}]
    planned = [r.run_id for r in sweep.load_sweep(path, {"out": "rel", "data_dir": "glue"}).runs]
    assert [args[1] for _, args in fake.submitted] == planned
    for fn, (config, rid, out) in fake.submitted:
        assert fn is sweep_ray.run_task and out == str(tmp_path / "rel")  # a worker's cwd is not ours
        assert config["out"] == out and config["data_dir"] == str(tmp_path / "glue") and config["quiet"] is True
        assert RunConfig.from_dict(config).run_id() == rid  # the same run, the same id
    assert "2 ok" in capsys.readouterr().out


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if not (GLUE / "SST-2").is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one start per module: it is slow
    yield ray
    ray.shutdown()


def test_two_runs_as_ray_tasks_then_a_rerun_skips_both(local_ray, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_sweep(tmp_path)
    assert cli.main(argv(path, out, "--quiet")) == 0
    printed = capsys.readouterr()
    planned = [r.run_id for r in sweep.load_sweep(path, {"out": str(out), "model": "minilm", "layers": 2,
                                                        "train_limit": 64, "epochs": 1, "data_dir": str(GLUE)}).runs]
    assert len(planned) == 2
    files = sorted(out.glob("run-*.json"))
    assert [p.name for p in files] == sorted(f"run-{rid}.json" for rid in planned)  # the local backend's ids
    for p in files:
        r = json.loads(p.read_text())
        assert results.validate(r) is None and r["status"] == "ok", r.get("error")
        assert r["config"]["train_limit"] == 64 and r["history"] and r["paths"]["out"] == str(out)
        assert r["paths"]["data_dir"] == str(GLUE)
    assert printed.err.count("[") == 0  # --quiet: no progress, and no failure lines
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["run_ids"] == planned and {r["status"] for r in manifest["runs"]} == {"ok"}
    for rid in planned:  # each task ran the run in its own process, logged like the local backend
        assert (out / "logs" / f"run-{rid}.log").is_file() and (out / "configs" / f"run-{rid}.yaml").is_file()

    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    assert cli.main(argv(path, out)) == 0  # resume: nothing to run
    text = capsys.readouterr().out
    assert "[2/2] 2 done, 0 to run" in text
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    assert after == before  # no new files, the same JSONs untouched


def test_a_failing_task_is_recorded_and_reported_with_progress(local_ray, tmp_path, capsys):
    out = tmp_path / "out"
    spec = {"base": TINY, "variants": {"lora": {"lr": [1e-3], "targets": [["no_such_layer"]]}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(argv(path, out)) == 1  # a run failed: exit 1, as the local backend
    captured = capsys.readouterr()
    assert "[0/1] 0 done, 1 to run as Ray tasks" in captured.out
    assert "[1/1] error:" in captured.err and "lora" in captured.err
    [result] = out.glob("run-*.json")
    r = json.loads(result.read_text())
    assert results.validate(r) is None and r["status"] == "error" and "no_such_layer" in r["error"]
    assert "1 error" in captured.out


def _run_processes(out: Path) -> list[int]:
    """Pids of the run processes (``python -m lorabench.run``) of the sweep writing into ``out``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lorabench.run" in args and any(str(out).encode() in a for a in args):
            found.append(int(cmdline.parent.name))
    return found


def test_a_killed_worker_run_is_recorded_and_a_resume_finishes_it(local_ray, tmp_path, capsys):
    import os
    import signal
    import threading
    import time

    out = tmp_path / "out"
    spec = {"base": TINY, "variants": {"lora": {"lr": [5e-4, 1e-3, 2e-3]}}}
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(spec))
    killed: list[int] = []

    def kill_the_first_run() -> None:  # a run process inside a Ray worker, SIGKILLed mid-run
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for pid in _run_processes(out):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_run)
    killer.start()
    assert cli.main(argv(path, out, "--quiet")) == 1  # one run failed
    killer.join()
    assert killed, "no run process was seen"
    statuses = sorted(json.loads(p.read_text())["status"] for p in out.glob("run-*.json"))
    assert statuses == ["error", "ok", "ok"]
    [failed] = [json.loads(p.read_text()) for p in out.glob("run-*.json") if json.loads(p.read_text())["status"] != "ok"]
    assert "killed by SIGKILL" in failed["error"] and results.validate(failed) is None
    assert cli.main(argv(path, out, "--quiet", "--retry-failed")) == 0  # the resume reruns it alone
    assert sorted(json.loads(p.read_text())["status"] for p in out.glob("run-*.json")) == ["ok", "ok", "ok"]
    assert len(list(out.glob("run-*.json"))) == 3


def test_a_plugin_variant_runs_as_a_ray_task(local_ray, tmp_path):
    """A variant from a file outside lorabench (a temp folder): each Ray task's run process loads it
    from the run's config, and the result records the file it came from."""
    from lorabench import plugins
    from lorabench.adapters import registry

    classes, loaded = dict(registry.VARIANTS.classes), dict(plugins.LOADED)
    try:
        plugin = tmp_path / "elsewhere" / "my_lora.py"
        plugin.parent.mkdir()
        assert cli.main(["new-variant", "my_lora", "--out", str(plugin)]) == 0
        spec = {"name": "rayplug", "base": {**TINY, "plugins": [str(plugin)]},
                "variants": {"my_lora": {"lr": [1e-3]}, "lora": {"lr": [1e-3]}}}
        path = tmp_path / "plug.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        out = tmp_path / "out"
        assert cli.main(argv(path, out, "--quiet")) == 0
        found = {r["variant"]: r for r in (json.loads(p.read_text()) for p in out.glob("run-*.json"))}
        assert set(found) == {"my_lora", "lora"} and all(r["status"] == "ok" for r in found.values())
        assert found["my_lora"]["plugins"][0]["file"] == str(plugin.resolve())
    finally:  # the plugin registered into this process too (the plan validated its config)
        registry.VARIANTS.classes.clear()
        registry.VARIANTS.classes.update(classes)
        plugins.LOADED.clear()
        plugins.LOADED.update(loaded)
