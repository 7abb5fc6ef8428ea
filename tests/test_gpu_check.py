"""benchmarks/gpu_check.py in its tiny CPU mode: every section runs through the real run path and
lands in the JSON with sensible figures; the CUDA out-of-memory retry is exercised by a simulated
OOM (a forward hook), so the halving 16 -> 8 -> 4 is checked here without a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from lorabench.adapters.conv import linear_variants

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["variants", "seed000", "seed000_nf4", "peft_step_time", "oom_retry", "packing"]


def run_check(out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out), *flags],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    report = json.loads((out / "gpu_check.json").read_text())
    return done, report


def has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def test_tiny_cpu_mode_fills_every_section(tmp_path):
    # fp32: the check's own logic, independent of bf16 support in the variants
    done, report = run_check(tmp_path, "--precision", "fp32")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = report["sections"]
    assert list(s) == SECTIONS
    assert report["meta"]["tiny"] is True and report["meta"]["device"] == "cpu"
    bnb = has_bitsandbytes()

    # 1. every registered variant: one step and one evaluation (qlora only with bitsandbytes)
    rows = {r["variant"]: r for r in s["variants"]["rows"]}
    assert sorted(rows) == sorted(linear_variants())  # cp_lora: conv only
    for name, r in rows.items():
        if name == "qlora" and not bnb:
            assert r["status"] == "skipped" and r["reason"].startswith("no bitsandbytes")
            continue
        assert r["status"] == "ok", (name, r.get("error"))
        assert r["steps"] == 1 and math.isfinite(r["train_loss"]) and 0 <= r["accuracy"] <= 1

    # 2. the seed setting: planner figures, CUDA peaks None on CPU with the reason, a projection
    seed = s["seed000"]
    assert seed["status"] == "ok" and seed["run_status"] == "ok" and seed["steps"] == 4
    assert seed["micro_batch_size"] == 16 and seed["grad_accum_steps"] == 1 and seed["budget_bytes"] == 8 * 2**30
    assert seed["peak_allocated_bytes"] is None and seed["peak_reserved_bytes"] is None
    assert seed["under_budget"] is None and "CPU" in seed["memory_note"]
    assert seed["step_s"] > 0 and seed["projected_s"] == seed["step_s"] * 1250
    assert seed["meets_target"] is None and seed["target_s"] == 120 and seed["reference_rtx2070_s"] == 4959
    assert 10 < seed["tokens_per_example"] < 40  # SST-2-like prompt lengths (mean 21 tokens)

    # 3. NF4 under 2GiB: runs where bitsandbytes is installed, else skipped with the reason
    nf4 = s["seed000_nf4"]
    if bnb:
        assert nf4["status"] == "ok" and nf4["quantize"] == "nf4" and nf4["budget_bytes"] == 2 * 2**30
        assert nf4["step_s"] > 0
    else:
        assert nf4["status"] == "skipped" and nf4["reason"].startswith("no bitsandbytes")

    # 4. lorabench vs PEFT with step_time.py's measurement
    peft = {r["variant"]: r for r in s["peft_step_time"]["rows"]}
    assert list(peft) == ["lora", "dora", "vera", "pissa"]
    for name, r in peft.items():
        assert r["status"] == "ok", (name, r.get("error"))
        assert r["lorabench_ms"] > 0 and r["peft_ms"] > 0 and r["floor_ms"] > 0 and r["ratio"] > 0
        assert "meets_target" not in r  # timings of a tiny model are not judged

    # 5. OOM retry: 16 examples OOM, then 8 OOM, then 4 fit; the effective batch stays 16
    oom = s["oom_retry"]
    assert oom["status"] == "ok" and oom["run_status"] == "ok" and oom["simulated_cap_examples"] == 5
    assert oom["oom_retries"] == 2 and oom["micro_batch_chain"] == [16, 8, 4]
    assert oom["micro_batch_size"] == 4 and oom["grad_accum_steps"] == 4 and oom["examples"] == 16
    assert any("retrying with micro-batch 8 x 2" in w for w in oom["retry_warnings"])
    assert any("retrying with micro-batch 4 x 4" in w for w in oom["retry_warnings"])

    assert s["packing"]["status"] == "skipped" and "not measured on a GPU" in s["packing"]["reason"]
    table = (tmp_path / "gpu_check.txt").read_text()
    assert all(name in table for name in SECTIONS) and table in done.stdout
    assert len(list((tmp_path / "runs").glob("run-*.json"))) >= len(rows)


def test_without_bitsandbytes_nf4_and_qlora_are_skipped(tmp_path):
    done, report = run_check(tmp_path, "--no-bnb", "--sections", "variants,seed000_nf4", "--variants", "qlora,lora")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = report["sections"]
    assert list(s) == ["variants", "seed000_nf4"]
    rows = {r["variant"]: r for r in s["variants"]["rows"]}
    assert rows["lora"]["status"] == "ok"
    assert rows["qlora"]["status"] == "skipped" and rows["qlora"]["reason"].startswith("no bitsandbytes")
    assert s["seed000_nf4"]["status"] == "skipped" and s["seed000_nf4"]["reason"].startswith("no bitsandbytes")
