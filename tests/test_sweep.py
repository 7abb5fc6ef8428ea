"""Sweeps: expansion and validation, dry run, kill -9 and resume, failing runs.

The runs use the real executor in subprocesses: a 2-layer MiniLM, 128 training examples,
32 tokens, 64 dev examples.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lorabench.pack import plan as packing
from lorabench import commands as cli
from lorabench import results, sweep
from lorabench.sweep import SweepError
from lorabench.sweep.plan import data_problems

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TINY = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 128, "eval_limit": 64, "max_length": 32,
        "epochs": 1, "batch_size": 32, "data_dir": str(GLUE)}


def write(tmp_path: Path, spec: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def result_files(out: Path) -> list[Path]:
    return sorted(out.glob("run-*.json"))


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


# ---------------------------------------------------------------- expansion and validation (no runs)


def test_expansion_order_precedence_and_overrides(tmp_path):
    spec = {
        "name": "grid",
        "base": TINY | {"lr": 1e-4, "epochs": 1},
        "tasks": ["sst2", "RTE"],
        "seeds": [0, 1],
        "task_overrides": {"rte": {"epochs": 2, "lr": 3e-4}},
        "variants": {"lora": {"lr": ["5e-4", 1e-3], "r": [4, 8]}, "dora": None,
                     "lora_plus": {"options": {"lr_ratio": [4, 16]}}},
    }
    s = sweep.load_sweep(write(tmp_path, spec), {"train_limit": 64}, out=str(tmp_path / "out"))
    # 2 seeds x 2 tasks x (4 lora + 1 dora + 2 lora_plus)
    assert len(s.runs) == 28 and len({r.run_id for r in s.runs}) == 28
    first = s.runs[:7]  # seed 0, sst2 first: every configuration at the first seed comes first
    assert {(r.config.seed, r.config.task) for r in first} == {(0, "sst2")}
    assert [r.config.variant for r in first] == ["lora"] * 4 + ["dora"] + ["lora_plus"] * 2
    lora = [r.config for r in first[:4]]
    assert [(c.lr, c.variant_options()["r"]) for c in lora] == [(5e-4, 4), (5e-4, 8), (1e-3, 4), (1e-3, 8)]
    rte = [r.config for r in s.runs if r.config.task == "rte"]
    assert all(c.epochs == 2 for c in rte)  # task override beats base
    assert {c.lr for c in rte if c.variant == "dora"} == {3e-4}  # ... and the variant grid beats it
    assert {c.lr for c in rte if c.variant == "lora"} == {5e-4, 1e-3}
    assert {c.variant_options()["lr_ratio"] for c in rte if c.variant == "lora_plus"} == {4.0, 16.0}
    assert all(r.config.train_limit == 64 and r.config.out == str(tmp_path / "out") for r in s.runs)  # CLI wins
    assert all(r.run_id == results.run_id(r.config.resolved(), r.config.data_fingerprint()) for r in s.runs)
    assert any("unequal tuning budget" in n for n in s.notes)
    # CLI axes replace the file's
    s2 = sweep.load_sweep(write(tmp_path, spec), {"seeds": [5]}, only_variants=["dora"], only_tasks=["rte"])
    assert [(r.config.seed, r.config.task, r.config.variant) for r in s2.runs] == [(5, "rte", "dora")]


@pytest.mark.parametrize("spec, where, bad, valid", [
    ({"variants": {"lora": {"lr": [1e-3]}}, "seed": [0]}, "sweep file", "seed", "seeds"),
    ({"variants": {"lora": {"lrr": [1e-3]}}}, "variants.lora", "lrr", "lr"),
    ({"base": {"epoch": 1}, "variants": {"lora": None}}, "base", "epoch", "epochs"),
    ({"tasks": ["sst2"], "task_overrides": {"rte": {"lr": 1e-3}}, "variants": {"lora": None}},
     "task_overrides", "rte", "sst2"),
    ({"variants": {"lora": {"seed": [0, 1]}}}, "variants.lora", "seed", "lr"),
])
def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path, spec, where, bad, valid):
    with pytest.raises(SweepError) as e:
        sweep.load_sweep(write(tmp_path, spec))
    msg = str(e.value)
    assert msg.startswith(where) and repr(bad) in msg and "valid keys:" in msg and valid in msg.split("valid keys:")[1]


def test_empty_grid_and_bad_values_are_errors_before_anything_runs(tmp_path):
    with pytest.raises(SweepError, match=r"variants\.lora\.lr is an empty list"):
        sweep.load_sweep(write(tmp_path, {"variants": {"lora": {"lr": []}}}))
    with pytest.raises(SweepError, match=r"variants\.lora_plus\.options\.lr_ratio is an empty list"):
        sweep.load_sweep(write(tmp_path, {"variants": {"lora_plus": {"options": {"lr_ratio": []}}}}))
    with pytest.raises(SweepError, match="seeds is an empty list"):
        sweep.load_sweep(write(tmp_path, {"seeds": [], "variants": {"lora": None}}))
    # RunConfig validation of every expanded run, with where it came from
    with pytest.raises(SweepError, match=r"variants\.lora .*seed 1.*lr must be > 0"):
        sweep.load_sweep(write(tmp_path, {"seeds": [1], "variants": {"lora": {"lr": [1e-3, -1.0]}}}))
    with pytest.raises(SweepError, match="unknown variant 'nope'"):
        sweep.load_sweep(write(tmp_path, {"variants": {"lora": None, "nope": None}}))
    with pytest.raises(SweepError, match="not found"):
        sweep.load_sweep(tmp_path / "missing.yaml")


def test_optional_variant_is_skipped_with_a_note(tmp_path):
    s = sweep.load_sweep(write(tmp_path, {"base": TINY, "variants": {"lora": None, "qlora_x": {"optional": True}}}))
    assert [r.config.variant for r in s.runs] == ["lora"]
    assert any("qlora_x" in n and "unknown variant" in n for n in s.notes)


def test_cli_bad_sweep_file_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, {"variants": {"lora": {"lrr": [1e-3]}}})
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'lrr'" in err and err.startswith("error:")


def test_presets_expand_offline(tmp_path):
    for name in ("quick", "better-call-lora", "lora-roberta-glue", "rank-ablation", "peft-methods", "zoo", "fair"):
        path = sweep.find_sweep_file(name)
        assert path.parent == sweep.presets_dir()
        s = sweep.load_sweep(name, {"model": "minilm" if name != "better-call-lora" else "smollm2-135m"})
        assert s.runs and s.name == name
    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    for f in repo_configs.glob("*.yaml"):  # configs/ holds the same files as the package
        assert f.read_text() == (sweep.presets_dir() / f.name).read_text()
    from lorabench import adapters, quant

    from lorabench.adapters.conv import ConvVariant

    zoo = sweep.load_sweep("zoo")  # every registered variant, the LoRA structure under every rule but allora's own
    optional = set() if quant.available() else {"qlora"}  # skipped with a note without bitsandbytes
    conv_only = {n for n in adapters.names() if issubclass(adapters.get(n), ConvVariant)}  # the U-Net study's
    assert conv_only == {"cp_lora"}
    assert {r.config.variant for r in zoo.runs} | optional == set(adapters.names()) - conv_only
    assert sorted(r.config.options["optimizer"] for r in zoo.runs if r.config.variant == "lora") == sorted(
        ["adamw", "lora_pro", "altlora", "stable"])
    quick = sweep.load_sweep("quick")  # the main job: 6 methods x 3 seeds, two packs of 9 at once
    assert sorted(r.config.variant for r in quick.runs) == sorted(
        [v for v in ("lora", "pissa", "lora_plus", "dora", "vera", "head") for _ in range(3)])
    assert quick.pack == 9 and quick.jobs == 2 and {r.config.seed for r in quick.runs} == {0, 1, 2}
    units, notes = packing.group(quick.runs, quick.pack)
    assert [len(u) for u in units] == [9, 9] and not notes  # every method of the main job packs
    glue = sweep.load_sweep("lora-roberta-glue")
    sst2 = [r.config for r in glue.runs if r.config.task == "sst2" and r.config.variant == "lora"]
    assert {(c.lr, c.epochs, c.batch_size, c.max_length) for c in sst2} == {(5e-4, 60.0, 16, 512)}
    ranks = {r.config.variant_options()["r"] for r in sweep.load_sweep("rank-ablation").runs}
    assert ranks == {1, 2, 4, 8, 16, 32, 64}


def test_dry_run_runs_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    path = write(tmp_path, {"base": TINY, "seeds": [0, 1], "variants": {"lora": {"lr": [1e-3]}, "dora": None}})
    assert cli.main(["sweep", str(path), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    planned = sweep.load_sweep(path, {"out": str(out)}).runs
    for run in planned:
        assert run.run_id in text
    assert "estimated time" in text
    assert not out.exists()


# ---------------------------------------------------------------- real runs


def statuses(out: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["status"] for p in result_files(out)}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the run processes through /proc (Linux)")
def test_killed_run_and_sigkilled_sweep_then_resume(tmp_path):
    out = tmp_path / "out"
    spec = {"name": "kill", "base": TINY, "seeds": [0, 1], "variants": {"lora": {"lr": [1e-3]}, "dora": {"lr": [1e-3]}}}
    path = write(tmp_path, spec)
    planned = [r.run_id for r in sweep.load_sweep(path, {"out": str(out)}).runs]
    assert len(planned) == 4
    first = f"run-{planned[0]}.json"
    proc = subprocess.Popen([sys.executable, "-m", "lorabench", "sweep", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # 1. the first run's process is killed while the sweep lives: the sweep records an error, goes on
        deadline = time.time() + 120
        while not children_of(proc.pid) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(children_of(proc.pid)[0], signal.SIGKILL)
        # 2. the sweep itself is SIGKILLed once another run has finished
        deadline, kids = time.time() + 240, set()
        while "ok" not in statuses(out).values() and time.time() < deadline and proc.poll() is None:
            kids |= set(children_of(proc.pid))
            time.sleep(0.2)
        assert "ok" in statuses(out).values(), "no run finished in time"
        kids |= set(children_of(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10  # the run process in flight dies with its sweep
    while any(alive(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(k) for k in kids)
    for p in out.rglob("*.json"):  # nothing truncated
        assert json.loads(p.read_text())
    done = statuses(out)
    assert done[first] == "error" and sorted(done.values()) == ["error", "ok"]  # nothing for the one in flight
    error = json.loads((out / first).read_text())
    assert results.validate(error) is None and "killed by SIGKILL" in error["error"]
    stamps = {p: p.stat().st_mtime_ns for p in result_files(out)}

    # 3. resume: the missing runs run, the finished ones and the failed one are skipped
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 1  # the failed run is still failed
    assert sorted(statuses(out).values()) == ["error", "ok", "ok", "ok"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # 4. --retry-failed reruns only the failed one
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet", "--retry-failed"]) == 0
    files = result_files(out)
    assert sorted(p.name for p in files) == sorted(f"run-{rid}.json" for rid in planned)  # none lost, none twice
    for p in files:
        r = json.loads(p.read_text())
        assert r["status"] == "ok" and results.validate(r) is None and p.name == f"run-{r['run_id']}.json"
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != first)
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["run_ids"] == planned and {r["status"] for r in manifest["runs"]} == {"ok"}
    assert not list(out.glob(".*.tmp"))
    # a measured throughput now drives the estimate
    rates = sweep.measured_rates(out)
    assert ("tokens", "minilm", 2) in rates
    cfg = sweep.load_sweep(path, {"out": str(out)}).runs[0].config
    assert sweep.estimate_seconds(cfg, rates) != sweep.estimate_seconds(cfg, {})


def test_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "out"
    # targets that match no layer of the model: only the run itself can find out (after loading it)
    spec = {"base": TINY, "variants": {"lora": {"lr": [1e-3], "targets": [["no_such_layer"], ["query", "value"]]}}}
    path = write(tmp_path, spec)
    bad, good = sweep.load_sweep(path, {"out": str(out)}).runs
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 1  # not every run is ok
    failed = json.loads(results.result_path(out, bad.run_id).read_text())
    assert results.validate(failed) is None
    assert failed["status"] == "error" and "no_such_layer" in failed["error"] and failed["run_id"] == bad.run_id
    assert json.loads(results.result_path(out, good.run_id).read_text())["status"] == "ok"
    assert "1 error, 1 ok" in capsys.readouterr().out


def test_a_sweep_with_no_glue_data_anywhere_stops_before_any_run(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b"  # no glue_data/ here and no shared/data/glue beside its parent
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("LORABENCH_GLUE_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # and the hub cannot be read without `datasets`
    spec = {"base": {k: v for k, v in TINY.items() if k != "data_dir"}, "variants": {"lora": {"lr": [1e-3]}}}
    path = write(tmp_path, spec)
    planned = sweep.load_sweep(path, {"out": str(tmp_path / "out")})  # a plan reads no data
    (problem,) = data_problems(planned)
    assert re.search(r"task sst2: no GLUE data found.*pip install datasets.*--data-dir", problem)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no GLUE data found" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_sweep_naming_a_model_that_cannot_load_stops_before_any_run(tmp_path, capsys):
    spec = {"base": TINY, "variants": {"lora": {"lr": [1e-3]},
                                      "tl": {"kind": "transfer", "scenario": {"method": "trans_lora", "source": str(
                                          tmp_path / "no-such-model")}}}}
    path = write(tmp_path, spec)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"model {tmp_path / 'no-such-model'}: model folder" in err and "does not exist" in err
    assert not list((tmp_path / "out").glob("run-*.json"))  # no run started, no error results written


def test_the_estimate_carries_a_rate_to_another_task_by_tokens():
    from lorabench.config import RunConfig
    from lorabench.data.glue import get_task

    sst2, rte = (RunConfig(task=t, max_length=128, train_limit=1000, eval_limit=10, epochs=1) for t in ("sst2", "rte"))
    load = sweep.estimate_seconds(RunConfig(task="sst2", train_limit=1, eval_limit=1, epochs=1e-9), {})
    ratio = (sweep.estimate_seconds(rte, {}) - load) / (sweep.estimate_seconds(sst2, {}) - load)
    assert ratio == pytest.approx(get_task("rte").mean_tokens / get_task("sst2").mean_tokens, rel=0.05)
    measured = {("tokens", "minilm", None): 1400.0}  # SST-2 runs measured 1,400 tokens/s on this machine
    per_example = 1000 / (1400.0 / get_task("rte").mean_tokens)
    assert sweep.estimate_seconds(rte, measured) == pytest.approx(10.0 + per_example, rel=0.05)
    capped = RunConfig(task="rte", max_length=32, train_limit=1000, eval_limit=10, epochs=1)
    assert sweep.estimate_seconds(capped, measured) < sweep.estimate_seconds(rte, measured)  # truncated rows cost less
