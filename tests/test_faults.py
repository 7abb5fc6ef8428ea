"""Surviving faults: CUDA out of memory (retried with half the micro-batch), a diverged run in
a sweep, Ctrl-C in ``lorabench train`` and in a sweep, and results that cannot be written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import lorabench
from lorabench import commands as cli
from lorabench import results, sweep
from lorabench.config import RunConfig
from lorabench.errors import ConfigError
from lorabench.data import get_task
from lorabench.measure import halve_micro_batch

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
VOCAB, LENGTH = 64, 8


# ---- CUDA out of memory -----------------------------------------------------------------------
def test_halving_policy_keeps_the_effective_batch_down_to_one_example():
    chain, step = [], (32, 1)
    while step is not None:
        chain.append(step)
        step = halve_micro_batch(step[0], 32, 1)
    assert chain == [(32, 1), (16, 2), (8, 4), (4, 8), (2, 16), (1, 32)]
    assert halve_micro_batch(24, 24, 2) == (12, 4) and halve_micro_batch(3, 24, 2) == (1, 48)
    assert halve_micro_batch(1, 24, 1) is None


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=0,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    lorabench.apply(model, "lora", "all-linear")
    return model


def synthetic(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, LENGTH), generator=g)
    labels = (ids[:, 0] >= VOCAB // 2).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def fake_load(model_factory):
    """Stands in for ``run.load``: a tiny BERT and synthetic loaders (16 per batch, 4 batches)."""
    def load(cfg):
        collate = torch.utils.data.default_collate
        train = DataLoader(synthetic(64, 0), batch_size=cfg.batch_size, collate_fn=collate)
        dev = DataLoader(synthetic(32, 1), batch_size=32, collate_fn=collate)
        return get_task("sst2"), model_factory(), None, train, {"validation": dev}
    return load


def oom_on_calls(model, calls: set[int] | None):
    """Make ``model``'s forward raise CUDA OOM on the given call numbers (1-based; None: always)."""
    forward, count = model.forward, [0]

    def flaky(*args, **kwargs):
        count[0] += 1
        if calls is None or count[0] in calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, **kwargs)

    model.forward = flaky
    return model


CFG = {"epochs": 1, "batch_size": 16, "grad_accum": 2, "lr": 1e-3, "quiet": True, "targets": "all-linear"}


def test_oom_mid_step_retries_with_half_the_micro_batch_and_trains_the_same(tmp_path, monkeypatch):
    import lorabench.run as run

    models = []
    monkeypatch.setattr(run, "load", fake_load(lambda: models.append(tiny_bert()) or models[-1]))
    plain = run.execute(RunConfig.from_dict(CFG | {"out": str(tmp_path / "plain")}), progress=False)
    # the second forward of the first step fails: the first one's gradient is already accumulated
    monkeypatch.setattr(run, "load", fake_load(lambda: models.append(oom_on_calls(tiny_bert(), {2})) or models[-1]))
    with pytest.warns(UserWarning, match="CUDA out of memory at step 1; retrying with micro-batch 8 x 4"):
        hit = run.execute(RunConfig.from_dict(CFG | {"out": str(tmp_path / "hit")}), progress=False)
    assert hit["status"] == "ok" and hit["steps"]["done"] == plain["steps"]["done"] == 2
    assert plain["memory"]["oom_retries"] == 0 and plain["memory"]["micro_batch_size"] == 16
    assert hit["memory"]["micro_batch_size"] == 8 and hit["memory"]["grad_accum_steps"] == 4
    assert hit["memory"]["oom_retries"] == 1 and hit["time"]["examples"] == plain["time"]["examples"] == 64
    saved = json.loads(results.result_path(tmp_path / "hit", hit["run_id"]).read_text())
    assert {k: saved["memory"][k] for k in ("micro_batch_size", "grad_accum_steps", "oom_retries")} == \
        {"micro_batch_size": 8, "grad_accum_steps": 4, "oom_retries": 1}
    # the same update as without the error: the half-accumulated gradient was thrown away
    for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert plain["train_loss"][-1][1] == pytest.approx(hit["train_loss"][-1][1], rel=1e-5)


def test_oom_at_one_example_gives_status_oom(tmp_path, monkeypatch):
    import lorabench.run as run

    monkeypatch.setattr(run, "load", fake_load(lambda: oom_on_calls(tiny_bert(), None)))
    with pytest.warns(UserWarning, match="retrying"), pytest.raises(run.RunFailed, match="oom: CUDA out of memory"):
        run.execute(RunConfig.from_dict(CFG | {"out": str(tmp_path)}), progress=False)
    (path,) = tmp_path.glob("run-*.json")
    r = json.loads(path.read_text())
    assert results.validate(r) is None and r["status"] == "oom" and "micro-batch of 1 example" in r["error"]
    assert r["memory"]["oom_retries"] == 4 and r["memory"]["micro_batch_size"] == 1  # 16 -> 8 -> 4 -> 2 -> 1
    assert r["steps"]["done"] == 0


# ---- results that cannot be written -----------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_disk_full_leaves_no_partial_file_and_names_the_folder(tmp_path, monkeypatch, broken):
    target = tmp_path / "run-abc.json"
    results.write_json_atomic(target, {"old": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, broken, full)
    with pytest.raises(results.ResultWriteError) as e:
        results.write_json_atomic(target, {"new": 2})
    message = str(e.value)
    assert str(tmp_path) in message and "No space left on device" in message and "--out" in message
    assert "\n" not in message and isinstance(e.value, OSError)
    assert leftovers(tmp_path) == ["run-abc.json"]  # no temp file
    assert json.loads(target.read_text()) == {"old": 1}  # the old result is untouched


def test_results_and_adapters_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import lorabench
    from conftest import build_model

    old = os.umask(0o022)
    try:
        path = results.write_json_atomic(tmp_path / "run-abc.json", {"a": 1})
        assert path.stat().st_mode & 0o777 == 0o644  # readable by the team sharing the folder
        lorabench.save_adapter(lorabench.apply(build_model("bert"), "lora", r=2), tmp_path / "adapter")
        assert {f.stat().st_mode & 0o777 for f in (tmp_path / "adapter").iterdir()} == {0o644}
        os.umask(0o077)
        assert results.write_json_atomic(tmp_path / "run-def.json", {"a": 1}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(results.ResultWriteError, match=f"cannot write run-abc.json in {folder}"):
            results.write_json_atomic(folder / "run-abc.json", {"x": 1})
        with pytest.raises(ConfigError, match="make the folder writable"):  # before compute: a bad input
            results.check_writable(folder)
    finally:
        folder.chmod(0o755)
    assert leftovers(folder) == []


def test_unwritable_out_folder_fails_before_training(tmp_path, monkeypatch, capsys):
    import lorabench.run as run

    def must_not_load(cfg):
        raise AssertionError("the run loaded its model although it could not write its result")

    monkeypatch.setattr(run, "load", must_not_load)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = cli.main(["train", "--out", str(blocker / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1  # a bad input, refused before compute
    assert err[0].startswith("error: cannot write in ") and str(blocker / "runs") in err[0]
    assert "pass another --out" in err[0]


# ---- Ctrl-C --------------------------------------------------------------------------------------
def wait_for(proc: subprocess.Popen, text: bytes, timeout: float = 240) -> bytes:
    """Read ``proc``'s stderr until ``text`` shows up (tqdm writes without newlines)."""
    seen, deadline = b"", time.time() + timeout
    while text not in seen:
        assert time.time() < deadline and proc.poll() is None, seen[-2000:]
        chunk = os.read(proc.stderr.fileno(), 4096)
        seen += chunk
    return seen


@needs_glue
def test_ctrl_c_during_train_exits_130_without_a_result(tmp_path):
    out = tmp_path / "out"
    flags = ["--model", "minilm", "--layers", "2", "--train-limit", "256", "--eval-limit", "32", "--max-length", "32",
             "--epochs", "50", "--batch-size", "8", "--data-dir", str(GLUE), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "lorabench", "train", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(proc, b"step/s")  # the progress bar: training has started
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert stderr.decode().rstrip().endswith("error: interrupted")
    assert b"result:" not in stdout
    assert not list(out.glob("*.json")) and not list(out.glob(".*"))  # no result, no temp file


@needs_glue
def test_sweep_goes_on_after_a_diverged_run_and_resumes_after_ctrl_c(tmp_path):
    out = tmp_path / "out"
    tiny = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 64, "eval_limit": 32, "max_length": 32,
            "epochs": 1, "batch_size": 16, "data_dir": str(GLUE)}
    spec = {"name": "faults", "base": tiny, "variants": {"full": {"lr": [1e30, 1e-4]}}}  # 1e30: NaN by step 3
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    bad, good = (r.run_id for r in sweep.load_sweep(path, {"out": str(out)}).runs)
    proc = subprocess.Popen([sys.executable, "-m", "lorabench", "sweep", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240  # the diverged run is recorded and the sweep starts the next one
        while not (out / "logs" / f"run-{good}.log").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert results.result_path(out, bad).exists() and proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    diverged = json.loads(results.result_path(out, bad).read_text())
    assert diverged["status"] == "diverged" and "lower the learning rate" in diverged["error"]
    assert not results.result_path(out, good).exists()  # the interrupted run left nothing
    stamp = results.result_path(out, bad).stat().st_mtime_ns

    # a rerun continues: it runs only the interrupted run; the diverged one is a result, kept
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 1  # not every run is ok
    assert json.loads(results.result_path(out, good).read_text())["status"] == "ok"
    assert results.result_path(out, bad).stat().st_mtime_ns == stamp
    assert not list(out.glob(".*.tmp"))
