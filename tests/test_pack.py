"""Packed training (``lorabench.pack``): K runs over one frozen base equal their unpacked twins.

A mixed pack (lora, pissa, lora_plus, lora_fa; different lr, seed, r, alpha, init and batch size)
trains step for step as the four runs do alone: fp32 on CPU, 2-layer MiniLM, the model's dropout
on and LoRA dropout on two of them (a packed run draws exactly its unpacked masks: ``pack.noise``);
losses agree within 1e-6 relative (the packed products sum in another order), dev metrics
exactly. The packed layers give the same outputs and
gradients as each run's own model; the sweep groups runs into packs and says why others train
alone; a SIGKILLed packed sweep resumes without losing or repeating a run.
"""

from __future__ import annotations

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

F_DROPOUT = torch.nn.functional.dropout

from lorabench import commands as cli
from lorabench import models, sweep
from lorabench.config import RunConfig
from lorabench.pack import plan as packing
from lorabench.pack.model import PackedModel, share_frozen
from lorabench.pack.run import execute_pack
from lorabench.run import execute, load

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
pytestmark = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
BASE = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 48, "eval_limit": 24, "max_length": 24,
        "epochs": 1, "batch_size": 12, "log_every": 1, "model_dropout": 0.0, "data_dir": str(GLUE), "quiet": True,
        "precision": "fp32"}
MIXED = [{"variant": "lora", "lr": 1e-3, "seed": 0},
         {"variant": "pissa", "lr": 5e-4, "seed": 1, "r": 4},
         {"variant": "lora_plus", "lr": 3e-4, "seed": 2, "alpha": 16},
         {"variant": "lora_fa", "lr": 1e-3, "seed": 3, "batch_size": 8}]
DROPOUT = [{"model_dropout": 0.1, "options": {"dropout": 0.1}}, {"model_dropout": 0.1}, {"model_dropout": 0.1},
           {"model_dropout": 0.1, "options": {"dropout": 0.05}}]


def config(out: Path, **kw) -> RunConfig:
    return RunConfig.from_dict(BASE | kw | {"out": str(out)})


def test_a_mixed_pack_with_dropout_trains_step_for_step_as_its_runs_alone(tmp_path):
    runs = [m | d for m, d in zip(MIXED, DROPOUT)]
    packed = execute_pack([config(tmp_path / "packed", **m) for m in runs])
    alone = [execute(config(tmp_path / "alone", **m), progress=False) for m in runs]
    for p, a in zip(packed, alone):
        assert p["run_id"] == a["run_id"] and p["status"] == a["status"] == "ok"
        steps = [s for s, _ in a["train_loss"]]
        assert [s for s, _ in p["train_loss"]] == steps and len(steps) >= 4
        for (_, lp), (_, la) in zip(p["train_loss"], a["train_loss"]):
            assert abs(lp - la) <= 1e-6 * abs(la), (p["variant"], lp, la)
        assert p["best"] == a["best"] and p["final"] == a["final"]  # the same dev predictions' metrics
        assert p["packed"]["size"] == 4 and len(p["packed_with"]) == 3 and p["run_id"] not in p["packed_with"]
        assert p["packed"]["wall_s"] >= p["time"]["train_s"] > 0
        assert p["params"] == a["params"] and p["data"] == a["data"]
    assert len({p["best"]["metrics"]["validation"]["accuracy"] for p in packed} | {0.0}) >= 2  # runs that differ


#: Variants whose layer output is a low-rank product with per-run scalings (VeRA, LoRA-XS, NLoRA,
#: Uni-LoRA), a column scaling of one (DoRA, with and without its dropout), or nothing (head).
OTHERS = [{"variant": "dora", "lr": 1e-3, "seed": 0, "options": {"dropout": 0.1}},
          {"variant": "dora", "lr": 1e-3, "seed": 4}, {"variant": "vera", "lr": 1e-2, "seed": 1},
          {"variant": "head", "lr": 1e-2, "seed": 2}, {"variant": "lora_xs", "lr": 1e-3, "seed": 3, "batch_size": 8},
          {"variant": "uni_lora", "lr": 1e-3, "seed": 5}, {"variant": "nlora", "lr": 1e-3, "seed": 6}]


def test_dora_vera_head_and_other_products_pack_and_equal_their_twins(tmp_path):
    runs = [m | {"model_dropout": 0.1} for m in OTHERS]
    packed = execute_pack([config(tmp_path / "packed", **m) for m in runs])
    alone = [execute(config(tmp_path / "alone", **m), progress=False) for m in runs]
    for p, a in zip(packed, alone):
        assert p["status"] == a["status"] == "ok" and p["packed"]["size"] == len(runs)
        assert len(p["train_loss"]) == len(a["train_loss"]) >= 4
        for (_, lp), (_, la) in zip(p["train_loss"], a["train_loss"]):
            assert abs(lp - la) <= 1e-6 * abs(la), (p["config"]["variant"], lp, la)
        assert p["best"] == a["best"] and p["final"] == a["final"]


def test_packed_layers_give_each_run_its_own_outputs_and_gradients(tmp_path):
    cfgs = [config(tmp_path, **m) for m in MIXED]
    loaded = [load(c) for c in cfgs]
    runs = [model for _, model, _, _, _ in loaded]
    for m in runs:  # B != 0, so every adapter changes the output
        for p in m.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
    batches = [next(iter(train_loader)) for _, _, _, train_loader, _ in loaded]  # 12, 12, 12 and 8 rows
    expected = []
    for m, b in zip(runs, batches):
        m.train()
        out = m(**b)
        out.loss.backward()
        expected.append((out.logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad},
                         float(out.loss)))
        m.zero_grad()
    shared, tokenizer = models.load_model("minilm", "sst2", layers=2, dropout=0.0)
    for m in runs:
        share_frozen(m, shared)
    packed = PackedModel(shared, runs, [c.seed for c in cfgs], tokenizer.pad_token_id).train()
    with torch.no_grad():
        logits, _, seg = packed([0, 1, 2, 3], batches)
    means = packed.backward([0, 1, 2, 3], batches, [1.0] * 4)  # chunked by length, one backward each
    for (want, grads, loss), got, m, mean in zip(expected, logits.split(seg.rows), runs, means):
        assert abs(mean - loss) <= 1e-5 * abs(loss)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for n, p in m.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    base = {id(p) for n, p in shared.named_parameters() if ".adapters." not in n and ".heads." not in n}
    for m in runs:  # one frozen base in memory: every run's frozen base tensor is the shared one
        frozen = [p for n, p in m.named_parameters() if not p.requires_grad and ".adapter." not in n]
        assert frozen and all(id(p) in base for p in frozen)


def test_the_plan_packs_what_shares_a_base_and_says_why_the_rest_trains_alone(tmp_path):
    spec = {"base": BASE, "seeds": [0, 1], "variants": {"lora": {"lr": [1e-3, 5e-4]}, "pissa": {"lr": [1e-3]},
                                                        "adalora": {"lr": [1e-3]}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    s = sweep.load_sweep(path, {"out": str(tmp_path / "o"), "pack": 4})
    assert s.pack == 4
    units, _ = packing.group(s.runs, 4)
    assert sorted(len(u) for u in units) == [1, 1, 2, 4]  # 6 lora/pissa runs: 4 + 2; adalora alone, twice
    assert {u[0].config.variant for u in units if len(u) == 1} == {"adalora"}
    assert any("2 runs train alone: variant adalora: its change to a layer is not a low-rank product" in n
               for n in s.notes)
    assert packing.unpackable(config(tmp_path, memory_budget="4GiB")).startswith("a memory budget")
    with pytest.raises(sweep.SweepError, match="pack must be a positive integer"):
        sweep.load_sweep(path, {"out": str(tmp_path / "o"), "pack": 0})


def test_a_killed_packed_sweep_resumes_without_losing_or_repeating_a_run(tmp_path):
    out = tmp_path / "out"
    tiny = BASE | {"train_limit": 96, "batch_size": 16}
    spec = {"base": tiny, "pack": 2, "variants": {"lora": {"lr": [1e-3], "epochs": [1, 5]}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    short, long = [r.run_id for r in sweep.load_sweep(path, {"out": str(out)}).runs]
    proc = subprocess.Popen([sys.executable, "-m", "lorabench", "sweep", str(path), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # the short run leaves the pack with its result; the sweep is SIGKILLed while the long one trains
        deadline = time.time() + 240
        while not (out / f"run-{short}.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (out / f"run-{short}.json").exists(), "the short run did not finish in time"
        assert not (out / f"run-{long}.json").exists(), "the long run finished before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stamp = (out / f"run-{short}.json").stat().st_mtime_ns
    first = json.loads((out / f"run-{short}.json").read_text())
    assert first["status"] == "ok" and first["packed_with"] == [long]
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / f"run-{short}.json").stat().st_mtime_ns == stamp  # not retrained
    names = sorted(p.name for p in out.glob("run-*.json"))
    assert names == sorted([f"run-{short}.json", f"run-{long}.json"])  # none lost, none twice
    assert json.loads((out / f"run-{long}.json").read_text())["status"] == "ok"


def test_a_diverging_run_leaves_the_pack_and_the_others_train_on(tmp_path):
    steady = {"variant": "lora", "lr": 1e-3, "seed": 0, "grad_accum": 2, "batch_size": 8, "eval_every": 2}
    wild = {"variant": "lora", "lr": 1e4, "seed": 1, "epochs": 3}
    seen = []  # the steps a sweep's bar shows while the pack trains
    packed = execute_pack([config(tmp_path / "packed", **steady), config(tmp_path / "packed", **wild)],
                          progress=lambda done, total: seen.append((done, total)))
    alone = execute(config(tmp_path / "alone", **steady), progress=False)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1] == seen[0][1]
    assert len(seen) >= packed[0]["steps"]["total"]  # one report per step, the diverged run counted as done
    assert packed[1]["status"] == "diverged" and "lower the learning rate" in packed[1]["error"]
    assert packed[1]["steps"]["done"] < packed[1]["steps"]["total"]  # it left the pack early
    assert packed[0]["status"] == alone["status"] == "ok"
    assert [s for s, _ in packed[0]["train_loss"]] == [s for s, _ in alone["train_loss"]]
    for (_, lp), (_, la) in zip(packed[0]["train_loss"], alone["train_loss"]):
        assert abs(lp - la) <= 1e-5 * abs(la)
    assert [h["step"] for h in packed[0]["history"]] == [h["step"] for h in alone["history"]]  # every 2 steps
    assert packed[0]["best"] == alone["best"]


def test_a_pack_with_dropout_and_bf16_trains_and_is_reproducible(tmp_path):
    runs = [{"variant": "lora", "lr": 1e-3, "seed": 0, "model_dropout": 0.1, "opt": 0.1},
            {"variant": "olora", "lr": 1e-3, "seed": 1, "model_dropout": 0.1, "opt": 0.0}]

    def cfgs(out):
        return [RunConfig.from_dict(BASE | {k: v for k, v in r.items() if k != "opt"}
                                    | {"options": {"dropout": r["opt"]}, "precision": "bf16", "out": str(out)})
                for r in runs]

    first, again = execute_pack(cfgs(tmp_path / "a")), execute_pack(cfgs(tmp_path / "b"))
    assert [r["status"] for r in first] == ["ok", "ok"] and first[0]["env"]["precision"] == "bf16"
    assert [r["train_loss"] for r in first] == [r["train_loss"] for r in again]  # per-run generators: the same draw
    assert torch.nn.functional.dropout is F_DROPOUT  # no torch function was replaced


def test_each_run_of_a_pack_logs_its_curve_to_its_tracker(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [{"variant": "lora", "lr": 1e-3, "seed": 0, "log_with": "tensorboard"},
            {"variant": "pissa", "lr": 5e-4, "seed": 1, "log_with": "tensorboard"}]
    packed = execute_pack([config(tmp_path, **m) for m in runs])
    for result in packed:
        [folder] = (tmp_path / "tracking" / "tensorboard" / "lorabench").glob(f"*-{result['run_id']}")
        acc = EventAccumulator(str(folder))
        acc.Reload()
        losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
        assert losses == [(s, pytest.approx(v)) for s, v in result["train_loss"]]  # this run's curve, not its neighbour's
        assert "eval/validation/accuracy" in acc.Tags()["scalars"]
