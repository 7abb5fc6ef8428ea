"""GPU acceptance check (issue 19): one invocation, a table on stdout and the same as JSON.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu-check                 # one GPU, <= 8 min
    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu-check --bnb-wheel bitsandbytes-0.50.2-....whl
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gpu-check      # same code paths, seconds

Needs torch, transformers, accelerate and peft; nothing from the hub and no lorabench install
(the repository's ``src/`` is put on ``sys.path``). Models are built from configs with random
weights and saved with a small word-level tokenizer into a temporary folder, next to a synthetic
SST-2 folder (``train.tsv``/``dev.tsv``), so every check but the PEFT comparison goes through
lorabench's own run path (``RunConfig`` -> ``lorabench.run.execute``: load, adapt, fit, evaluate).
The synthetic prompts have the token lengths of SST-2's training prompts (quantiles measured
with the SmolLM2 BPE tokenizer: mean 21 tokens), so step times stand for the real task.

Checks (each guarded: a failure is recorded with its message and the next check runs):

1. ``variants``: every registered variant, one training step + one evaluation, bf16, on a
   small Llama with a classification head (qlora only with bitsandbytes).
2. ``seed000``: the seed study's setting on a TinyLlama-shaped Llama (22 layers, hidden 2048,
   intermediate 5632, 32 heads, 4 KV heads, vocab 32000): head lm, LoRA r=8 on q_proj,v_proj,
   max length 128, effective batch 16, memory budget 8GiB, gradient checkpointing. Reports the
   micro-batch the planner chose, peak allocated / reserved CUDA memory (pass: reserved <=
   budget), the step time (from the evaluations' ``train_s`` marks, so the first steps' warm-up
   is left out) and the projected time for 20,000 examples (target <= 120 s; RTX 2070: 4,959 s).
3. ``seed000_nf4``: the same under a 2GiB budget with the frozen weights in NF4 (bitsandbytes).
4. ``peft_step_time``: lorabench vs PEFT step time for lora, dora, vera, pissa with
   ``benchmarks/step_time.py``'s measurement, on the device, fp32 weights under bf16 autocast.
5. ``oom_retry``: a micro-batch far too large under a CUDA memory cap (no budget): the step runs
   out of memory, the micro-batch is halved until it fits, and the run finishes with the same
   effective batch. On CPU a forward hook raises the CUDA out-of-memory error instead.
6. ``packing``: not measured on a GPU yet (on a CPU: benchmarks/pack_speed.py, bench_speed.py);
   reported as skipped.

The JSON (``gpu_check.json``) and the table (``gpu_check.txt``) are rewritten after every
check, so a run cut short still leaves what it measured; each lorabench run's own result JSON
is kept under ``runs/``. Statuses: ok, fail (ran, a target was missed), error, skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

T0 = time.perf_counter()  #: the time limit counts from here (imports and fixtures included)
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

sys.path.insert(0, str(HERE))  # the sibling modules below
from gpu_fixtures import (  # noqa: E402
    PEFT_VARIANTS, Fixtures, bitsandbytes_status, captured_warnings, error_info, free_cuda, install_bitsandbytes,
    now, parse_args, simulated_oom,
)
from gpu_report import TARGET_S, render, render_section, seed_figures, small_rank, variant_row  # noqa: E402

class Check:
    """Runs the sections and keeps the report (written after every section)."""

    def __init__(self, args, fx: Fixtures, out: Path, meta: dict):
        self.args, self.fx, self.out = args, fx, out
        self.tiny = args.tiny
        self.cuda = args.device == "cuda"
        self.precision = args.precision
        self.report: dict[str, Any] = {"schema": "lorabench-gpu-check", "schema_version": 1, "meta": meta,
                                       "sections": {}}
        self.runs = out / "runs"
        self.started = T0

    # -- bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_time(self) -> bool:
        return self.args.time_limit is not None and self.elapsed() > self.args.time_limit

    def save(self) -> None:
        self.report["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        self.report["meta"]["finished_at"] = now()
        tmp = self.out / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / "gpu_check.json")
        (self.out / "gpu_check.txt").write_text(render(self.report) + "\n")

    def section(self, name: str, fn: Callable[[], dict]) -> dict:
        t0 = time.perf_counter()
        if self.over_time():
            result = {"status": "skipped", "reason": f"time limit {self.args.time_limit:.0f} s reached"}
        else:
            notes: list[str] = []
            try:
                with captured_warnings(notes):
                    result = fn()
            except Exception as e:  # one failing check never stops the others
                result = {"status": "error", **error_info(e)}
            if notes:
                result.setdefault("warnings", notes[:20])
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.report["sections"][name] = result
        free_cuda()
        self.save()
        print(render_section(name, result), flush=True)
        return result

    def config(self, **fields):
        from lorabench.config import RunConfig

        base = dict(task="sst2", data_dir=str(self.fx.glue), out=str(self.runs), quiet=True, seed=0,
                    precision=self.precision, max_length=128, epochs=1, warmup_ratio=0.0)
        return RunConfig.from_dict(base | fields)

    def execute(self, cfg) -> dict:
        """``lorabench.run.execute``; an "oom"/"error" run's result is returned, not raised, with the
        traceback of what crashed it under ``"traceback"`` (the result itself keeps the message only)."""
        from lorabench import run

        try:
            return run.execute(cfg, progress=False)
        except run.RunFailed as e:
            cause = e.__cause__ or e
            return {**e.result, "traceback": "".join(traceback.format_exception(cause))[-3000:]}

    # -- 1. every variant
    def variants(self) -> dict:
        import lorabench

        from lorabench.adapters.conv import linear_variants

        names = linear_variants()  # on a transformer: the conv-only ones (CP-LoRA) run in the U-Net study
        if self.args.variants:
            wanted = self.args.variants.split(",")
            names = [n for n in names if n in wanted]
        have_bnb, bnb_note = bitsandbytes_status()
        model = str(self.fx.model_dir("variants"))
        batch = self.fx.sizes["variant_batch"]
        rows = []
        for name in names:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"variant": name}
            if self.over_time():
                row.update(status="skipped", reason="time limit reached")
            elif name == "qlora" and not have_bnb:
                row.update(status="skipped", reason=bnb_note)
            else:
                notes: list[str] = []
                try:
                    with captured_warnings(notes):
                        cfg = self.config(model=model, variant=name, head="cls", batch_size=batch,
                                          eval_batch_size=batch, train_limit=batch, eval_limit=batch,
                                          r=small_rank(name))
                        r = self.execute(cfg)
                    row.update(variant_row(r))
                except Exception as e:
                    row.update(status="error", **error_info(e))
                if notes:
                    row["warnings"] = notes[:5]
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(f"  variant {name:<16} {row['status']:<8} {row.get('error') or row.get('reason') or ''}"[:200],
                  flush=True)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "skipped")}
        status = "ok" if counts["error"] == 0 else "fail"
        return {"status": status, "model": self.fx.shapes["variants"], "head": "cls", "precision": self.precision,
                "batch_size": batch, "counts": counts, "registered": lorabench.variants(), "rows": rows}

    # -- 2./3. the seed setting
    def seed_setting(self, budget: str, quantize: str | None) -> dict:
        if quantize is not None:
            have_bnb, note = bitsandbytes_status()
            if not have_bnb:
                return {"status": "skipped", "reason": note}
        steps, every = self.fx.sizes["seed_steps"], self.fx.sizes["eval_every"]
        batch = 16
        model = str(self.fx.model_dir("tinyllama"))
        cfg = self.config(model=model, head="lm", variant="lora", r=8, targets=["q_proj", "v_proj"],
                          batch_size=batch, grad_accum=1, memory_budget=budget, grad_checkpointing=True,
                          quantize=quantize, train_limit=batch * steps, eval_every=every, eval_limit=16,
                          eval_batch_size=16, weight_decay=0.0)
        r = self.execute(cfg)
        out = seed_figures(r, batch, cuda=self.cuda)
        out.update(model=self.fx.shapes["tinyllama"], budget=budget, quantize=quantize, grad_checkpointing=True,
                   head="lm", targets=["q_proj", "v_proj"], r=8, max_length=128, effective_batch=batch)
        if out["status"] == "ok" and quantize is None and not self.tiny:
            target_met = out["projected_s"] is not None and out["projected_s"] <= TARGET_S
            out["meets_target"] = target_met
            if not target_met:
                out["status"] = "fail"
        elif quantize is None:
            out["meets_target"] = None
            out["target_note"] = "not judged: tiny config" if self.tiny else "not judged: the run failed"
        if out["status"] == "ok" and out.get("under_budget") is False:
            out["status"] = "fail"
        return out

    # -- 4. lorabench vs PEFT
    def peft_step_time(self) -> dict:
        import torch

        import step_time

        sizes = self.fx.sizes
        path = str(self.fx.model_dir("peft"))
        device = "cuda" if self.cuda else "cpu"
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        vocab = self.fx.shapes["peft"]["vocab_size"]
        g = torch.Generator().manual_seed(0)
        b, t = sizes["peft_batch"], sizes["peft_seq"]
        batch = {"input_ids": torch.randint(min(1000, vocab // 2), vocab, (b, t), generator=g),
                 "attention_mask": torch.ones(b, t, dtype=torch.long),
                 "labels": torch.randint(0, 2, (b,), generator=g)}
        batch = {k: v.to(device) for k, v in batch.items()}
        step_time.ADAMW.clear()
        step_time.ADAMW["foreach"] = True
        rows = []
        for variant in PEFT_VARIANTS:
            row: dict[str, Any] = {"variant": variant}
            try:
                times = step_time.measure(path, variant, batch, sizes["peft_steps"], sizes["peft_warmup"], "wall",
                                          device=device, amp=amp)
                ours, theirs, floor = (statistics.median(times[k]) for k in ("lorabench", "peft", "floor"))
                over_ours = step_time.paired(times["lorabench"], times["floor"]) - 1
                over_peft = step_time.paired(times["peft"], times["floor"]) - 1
                ratio = step_time.paired(times["lorabench"], times["peft"])
                row.update(status="ok", lorabench_ms=round(ours, 3), peft_ms=round(theirs, 3),
                           floor_ms=round(floor, 3), ratio=round(ratio, 3),
                           lorabench_overhead=round(over_ours, 3), peft_overhead=round(over_peft, 3))
                if not self.tiny:
                    row["meets_target"] = ratio <= 1.0 and (variant not in ("dora", "vera") or over_peft <= 0
                                                            or over_ours <= 0.5 * over_peft)
            except Exception as e:
                row.update(status="error", **error_info(e))
            free_cuda()
            rows.append(row)
        status = "ok"
        if any(r["status"] == "error" for r in rows) or any(r.get("meets_target") is False for r in rows):
            status = "fail"
        return {"status": status, "model": "all-MiniLM-L6-v2 shape" if not self.tiny else self.fx.shapes["peft"],
                "batch": [b, t], "precision": f"fp32 weights, {self.precision} autocast" if amp else "fp32",
                "steps": sizes["peft_steps"], "warmup": sizes["peft_warmup"],
                "targets": "ratio <= 1.00 for every variant; dora, vera: our overhead over the floor <= half PEFT's"
                           + (" (not judged: tiny config)" if self.tiny else ""),
                "rows": rows}

    # -- 5. OOM retry
    def oom_retry(self) -> dict:
        import torch

        batch = self.fx.sizes["oom_batch"]
        model = str(self.fx.model_dir("oom"))
        real = self.cuda and not self.tiny  # a tiny model never fills a real cap: simulate it there too
        eval_batch = 16 if real else self.fx.sizes["oom_cap_examples"] - 1  # evaluation never retries
        cfg = self.config(model=model, head="cls", variant="lora", data_dir=str(self.fx.long_glue()),
                          batch_size=batch, eval_batch_size=eval_batch, train_limit=batch, eval_limit=16)
        notes: list[str] = []
        info: dict[str, Any] = {"batch_size": batch, "max_length": 128, "model": self.fx.shapes["oom"]}
        if real:
            cap = self.fx.sizes["oom_cap"]
            total = torch.cuda.get_device_properties(0).total_memory
            free_cuda()
            info.update(how="torch.cuda.set_per_process_memory_fraction", memory_cap_bytes=cap,
                        device_total_bytes=total)
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
            guard = contextlib.nullcontext()
        else:
            cap = self.fx.sizes["oom_cap_examples"]
            info.update(how=f"simulated: a forward hook raises torch.cuda.OutOfMemoryError for more than "
                            f"{cap} examples per forward", simulated_cap_examples=cap)
            guard = simulated_oom(cap)
        try:
            with guard, captured_warnings(notes):
                r = self.execute(cfg)
        finally:
            if real:
                torch.cuda.set_per_process_memory_fraction(1.0, 0)
        mem = r["memory"]
        retries, micro, accum = mem["oom_retries"], mem["micro_batch_size"], mem["grad_accum_steps"]
        info.update(run_status=r["status"], run_error=r.get("error"), oom_retries=retries, micro_batch_size=micro,
                    grad_accum_steps=accum, examples=r["time"].get("examples"), steps=r["steps"]["done"],
                    peak_allocated_bytes=mem.get("peak_allocated_bytes"),
                    peak_reserved_bytes=mem.get("peak_reserved_bytes"),
                    retry_warnings=[n for n in notes if "out of memory" in n])
        if r.get("traceback"):
            info["traceback"] = r["traceback"]
        chain = [batch >> i for i in range(retries + 1)]
        info["micro_batch_chain"] = chain
        ok = (r["status"] == "ok" and retries >= 1 and micro == chain[-1] and accum * micro == batch
              and info["examples"] == batch)
        info["status"] = "ok" if ok else "fail"
        if not ok:
            info["reason"] = ("no out-of-memory error happened (raise the batch or lower the cap)" if retries == 0
                              else "the run did not finish with the halved micro-batch and the same effective batch")
        return info

    def packing(self) -> dict:
        return {"status": "skipped", "reason": "packing: not measured on a GPU yet (CPU figures: "
                "benchmarks/pack_speed.py, benchmarks/bench_speed.py)"}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: lorabench trains on CUDA when it sees one
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for path in (str(HERE), str(SRC)):  # lorabench from this checkout, step_time.py beside this file
        if path not in sys.path:
            sys.path.insert(0, path)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).expanduser().resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LORABENCH_CACHE"] = str(work / "cache")  # the tokenized data stays in the temp folder

    bnb_setup = "disabled (--no-bnb)"
    if args.no_bnb:
        sys.modules["bitsandbytes"] = None  # import bitsandbytes raises ImportError
    else:
        try:
            bnb_setup = install_bitsandbytes(args.bnb_wheel, work)
        except Exception as e:
            bnb_setup = f"failed: {type(e).__name__}: {e}"

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device; use --device cpu (with --tiny for a quick run)",
              file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    import lorabench
    from lorabench.measure import device_name, git_revision, package_version

    _, bnb_note = bitsandbytes_status()
    meta = {"started_at": now(), "tiny": args.tiny, "device": args.device,
            "device_name": device_name(torch.device(args.device)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "accelerate": package_version("accelerate"), "peft": package_version("peft"),
            "bitsandbytes": bnb_note, "bitsandbytes_setup": bnb_setup, "lorabench": lorabench.__version__,
            "lorabench_src": str(Path(lorabench.__file__).resolve().parent), "git_rev": git_revision(HERE),
            "python": platform.python_version(), "argv": sys.argv[1:] if argv is None else list(argv),
            "work": str(work), "time_limit_s": args.time_limit}
    if args.device == "cuda":
        meta["device_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
    fx = Fixtures(work, "tiny" if args.tiny else "full", args.device)
    check = Check(args, fx, out, meta)
    wanted = args.sections.split(",")
    print(f"lorabench GPU check: {meta['device_name']}, torch {meta['torch']}, {bnb_note}; writing {out}", flush=True)
    plan = [("variants", check.variants),
            ("seed000", lambda: check.seed_setting("8GiB", None)),
            ("seed000_nf4", lambda: check.seed_setting("2GiB", "nf4")),
            ("peft_step_time", check.peft_step_time),
            ("oom_retry", check.oom_retry),
            ("packing", check.packing)]
    try:
        for name, fn in plan:
            if name in wanted:
                check.section(name, fn)
                if name == "seed000_nf4" or (name == "seed000" and "seed000_nf4" not in wanted):
                    fx.cleanup_model("tinyllama")  # 2 GiB on disk
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(check.report))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.txt'}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in check.report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
