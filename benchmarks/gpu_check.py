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
6. ``packing``: not implemented in lorabench yet; reported as skipped.

The JSON (``gpu_check.json``) and the table (``gpu_check.txt``) are rewritten after every
check, so a run cut short still leaves what it measured; each lorabench run's own result JSON
is kept under ``runs/``. Statuses: ok, fail (ran, a target was missed), error, skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

T0 = time.perf_counter()  #: the time limit counts from here (imports and fixtures included)
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

#: Token lengths of SST-2 training prompts ("Review: ...\nSentiment (positive or negative):"),
#: the 0th, 5th, ..., 100th percentiles over its 67,349 examples (SmolLM2 tokenizer; mean 21.3).
SST2_PROMPT_TOKENS = (11, 12, 12, 13, 13, 14, 15, 15, 16, 17, 18, 19, 21, 22, 24, 26, 28, 31, 35, 41, 78)
REFERENCE_S = 4959.0  #: 20,000 examples of the seed setting on an RTX 2070
TARGET_S = 120.0  #: ... and the target on one H200
PROJECT_EXAMPLES = 20_000
PEFT_VARIANTS = ("lora", "dora", "vera", "pissa")
SECTIONS = ("variants", "seed000", "seed000_nf4", "peft_step_time", "oom_retry", "packing")
GiB = 2**30

LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256)
#: Model shapes per mode. "tinyllama" is TinyLlama-1.1B's; "oom" is sized so that a 1024-example
#: micro-batch of 128 tokens needs ~20 GB of activations against a 4 GiB cap (fits at ~128).
SHAPES = {
    "full": {
        "variants": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048),
        "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
        "oom": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048),
        # all-MiniLM-L6-v2's shape, as benchmarks/step_time.py measures on CPU
        "peft": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
                     vocab_size=30522, max_position_embeddings=512),
    },
    "tiny": {
        "variants": LLAMA_TINY,
        "tinyllama": LLAMA_TINY,
        "oom": LLAMA_TINY,
        "peft": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=1024, max_position_embeddings=256),
    },
}
#: Run sizes per mode: examples in the synthetic files, seed-setting steps, OOM-check batch, ...
SIZES = {
    "full": dict(train=2048, dev=64, seed_steps=10, eval_every=2, variant_batch=8, oom_batch=1024,
                 oom_cap=4 * GiB, oom_cap_examples=200, peft_steps=20, peft_warmup=3, peft_batch=32, peft_seq=128),
    "tiny": dict(train=256, dev=32, seed_steps=4, eval_every=2, variant_batch=4, oom_batch=16,
                 oom_cap_examples=5, peft_steps=2, peft_warmup=1, peft_batch=4, peft_seq=16),
}
WORDS = 500  #: synthetic vocabulary: w0 .. w499


# ---- small helpers ------------------------------------------------------------------------------
def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def gib(n: int | float | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def error_info(e: BaseException) -> dict[str, str]:
    """The error as one line plus the tail of its traceback (what a remote run needs to debug)."""
    text = f"{type(e).__name__}: {e}".strip()
    return {"error": text.splitlines()[0][:500] if text else type(e).__name__,
            "traceback": "".join(traceback.format_exception(e))[-3000:]}


@contextlib.contextmanager
def captured_warnings(into: list[str]):
    """Record the distinct warning messages raised inside (they go into the JSON, not stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                msg = f"{w.category.__name__}: {w.message}"[:300]
                if msg not in into:
                    into.append(msg)


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def install_bitsandbytes(path: str | None, work: Path) -> str:
    """Put bitsandbytes on sys.path from ``path``: a wheel (pip-installed into a temporary target)
    or a folder that holds the ``bitsandbytes`` package (or is it). Returns what was done."""
    if path is None:
        return "not given"
    src = Path(path).expanduser().resolve()
    if src.is_dir():
        site = src.parent if (src / "__init__.py").is_file() and src.name == "bitsandbytes" else src
        if not (site / "bitsandbytes" / "__init__.py").is_file():
            raise FileNotFoundError(f"{src} holds no bitsandbytes package")
        sys.path.insert(0, str(site))
        return f"folder {site}"
    if not src.is_file():
        raise FileNotFoundError(f"--bnb-wheel {path}: no such file or folder")
    target = work / "bnb-site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target),
           str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {src.name} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    sys.path.insert(0, str(target))
    return f"wheel {src.name} -> {target}"


def bitsandbytes_status() -> tuple[bool, str]:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        return False, f"no bitsandbytes ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    where = Path(bitsandbytes.__file__).resolve().parent.parent
    return True, f"bitsandbytes {getattr(bitsandbytes, '__version__', '?')} ({where})"


# ---- fixtures: tokenizer, synthetic SST-2, model folders --------------------------------------
class Fixtures:
    """Everything the checks load from disk, built in ``work`` (a temporary folder)."""

    def __init__(self, work: Path, mode: str, device: str):
        self.work, self.mode, self.device = work, mode, device
        self.shapes, self.sizes = SHAPES[mode], SIZES[mode]
        self.tokenizer = self._tokenizer()
        self.template_tokens = self._template_tokens()
        self.glue = self._glue(work / "glue", long=False)
        self.glue_long = None  # for the OOM check, built on demand
        self._dirs: dict[str, Path] = {}

    def _tokenizer(self):
        """A word-level tokenizer over w0..w499, the prompt's words and Llama's special tokens."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from lorabench.data.prompts import PROMPTS

        pre = pre_tokenizers.Whitespace()
        words = ["<unk>", "<s>", "</s>", "Answer"]
        for prompt in PROMPTS.values():
            for text in (prompt.template.replace("{a}", " ").replace("{b}", " "), *prompt.words):
                words += [w for w, _ in pre.pre_tokenize_str(text)]
        words += [f"w{i}" for i in range(WORDS)]
        vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre
        tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      model_input_names=["input_ids", "attention_mask"])
        assert len(tok) <= min(s["vocab_size"] for s in self.shapes.values()), "tokenizer larger than a model vocab"
        return tok

    def _template_tokens(self) -> int:
        from lorabench.data import Example, get_task
        from lorabench.data.prompts import prompt_format_fn

        text, _ = prompt_format_fn(get_task("sst2"))(Example("", None, 0))
        return len(self.tokenizer(text)["input_ids"])

    def _sentence(self, rng: random.Random, long: bool) -> str:
        if long:  # longer than any max length: every example is truncated to max_length tokens
            n = 300
        else:  # inverse CDF of the SST-2 prompt lengths, minus the template's own tokens
            q = SST2_PROMPT_TOKENS
            u = rng.random() * (len(q) - 1)
            i = min(int(u), len(q) - 2)
            n = max(1, round(q[i] + (u - i) * (q[i + 1] - q[i])) - self.template_tokens)
        return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(n))

    def _glue(self, root: Path, long: bool) -> Path:
        rng = random.Random(0)
        folder = root / "SST-2"
        folder.mkdir(parents=True, exist_ok=True)
        for name, n in (("train.tsv", self.sizes["train"]), ("dev.tsv", self.sizes["dev"])):
            rows = [f"{self._sentence(rng, long)}\t{rng.randrange(2)}" for _ in range(n)]
            (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
        return root

    def long_glue(self) -> Path:
        if self.glue_long is None:
            self.glue_long = self._glue(self.work / "glue-long", long=True)
        return self.glue_long

    def model_dir(self, kind: str) -> Path:
        """A folder with a random-init model of shape ``kind`` and the tokenizer (built once)."""
        if kind in self._dirs:
            return self._dirs[kind]
        import torch

        path = self.work / f"model-{kind}"
        shape = self.shapes[kind]
        torch.manual_seed(0)
        # initialised on the GPU when there is one (TinyLlama's 1.1B weights in seconds), saved in bf16
        where = "cuda" if self.device == "cuda" else "cpu"
        if kind == "peft":
            from transformers import BertConfig, BertForSequenceClassification

            config = BertConfig(**shape, num_labels=2)
            with torch.device(where):
                model = BertForSequenceClassification(config)
        else:
            from transformers import AutoModelForCausalLM, LlamaConfig

            tok = self.tokenizer
            config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 tie_word_embeddings=False)
            with torch.device(where):
                model = AutoModelForCausalLM.from_config(config)
            model.to(torch.bfloat16)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        del model
        free_cuda()
        self._dirs[kind] = path
        return path

    def cleanup_model(self, kind: str) -> None:
        path = self._dirs.pop(kind, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


# ---- the checks ----------------------------------------------------------------------------------
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

        names = lorabench.variants()
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
        return {"status": "skipped", "reason": "packing: not implemented in lorabench"}


@contextlib.contextmanager
def simulated_oom(cap: int):
    """Every ``nn.Embedding`` forward on more than ``cap`` rows raises CUDA out of memory (CPU check)."""
    import torch

    def hook(module, inputs):
        if isinstance(module, torch.nn.Embedding) and inputs and torch.is_tensor(inputs[0]) \
                and inputs[0].ndim == 2 and inputs[0].shape[0] > cap:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (simulated: {inputs[0].shape[0]} examples > cap of {cap})")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def first_metric(r: dict) -> tuple[str | None, float | None]:
    final = r.get("final") or {}
    metrics = final.get("metrics") or {}
    for split in metrics.values():
        key = r.get("primary_metric")
        if key in split:
            return key, split[key]
    return None, None


def small_rank(variant: str) -> int | None:
    """8 for variants whose default rank is above 16 (QLoRA, MiSS: r = 64), which the small check
    models' narrowest layers (the KV projections) cannot hold; else the variant's default."""
    import dataclasses

    import lorabench

    default = {f.name: f.default for f in dataclasses.fields(lorabench.adapters.get(variant).Options)}.get("r")
    return 8 if isinstance(default, int) and default > 16 else None


def variant_row(r: dict) -> dict:
    """One variant's row from its lorabench result."""
    key, value = first_metric(r)
    loss = r["train_loss"][-1][1] if r.get("train_loss") else None
    row = {"status": "ok" if r["status"] == "ok" and r["steps"]["done"] >= 1 and r.get("final") else "error",
           "run_status": r["status"], "steps": r["steps"]["done"], "train_loss": loss, key or "metric": value,
           "trainable": r["params"]["trainable"], "precision": r["env"].get("precision"),
           "peak_allocated_bytes": r["memory"].get("peak_allocated_bytes")}
    if r.get("error"):
        row["error"] = r["error"]
        if r.get("traceback"):
            row["traceback"] = r["traceback"]
    elif row["status"] != "ok":
        row["error"] = f"run status {r['status']}, {r['steps']['done']} step(s), final {r.get('final')}"
    return row


def seed_figures(r: dict, batch: int, cuda: bool) -> dict:
    """Planner, memory and time figures of a seed-setting run.

    Step time: between the first and the last evaluation, from each evaluation's ``train_s``
    (the training clock, evaluation excluded), so the first steps' CUDA warm-up is left out.
    """
    mem, tm = r["memory"], r["time"]
    hist = [h for h in r.get("history", []) if h.get("train_s") is not None]
    step_s = None
    if len(hist) >= 2 and hist[-1]["step"] > hist[0]["step"]:
        step_s = (hist[-1]["train_s"] - hist[0]["train_s"]) / (hist[-1]["step"] - hist[0]["step"])
    done = r["steps"]["done"]
    out = {
        "status": "ok" if r["status"] == "ok" else "error",
        "run_status": r["status"], "run_error": r.get("error"), "steps": done,
        "micro_batch_size": mem.get("micro_batch_size"), "grad_accum_steps": mem.get("grad_accum_steps"),
        "oom_retries": mem.get("oom_retries"),
        "peak_allocated_bytes": mem.get("peak_allocated_bytes"), "peak_reserved_bytes": mem.get("peak_reserved_bytes"),
        "budget_bytes": mem.get("budget_bytes"), "peak_rss_bytes": mem.get("peak_rss_bytes"),
        "step_s": step_s, "step_s_incl_warmup": tm["train_s"] / done if done else None,
        "examples_per_s": tm.get("examples_per_s"), "tokens_per_example": (tm.get("tokens", 0) / tm["examples"])
        if tm.get("examples") else None,
        "projected_s": step_s * math.ceil(PROJECT_EXAMPLES / batch) if step_s is not None else None,
        "projected_examples": PROJECT_EXAMPLES, "reference_rtx2070_s": REFERENCE_S, "target_s": TARGET_S,
        "projection_note": f"step_s x ceil({PROJECT_EXAMPLES} / {batch}) optimizer steps: training only "
                           "(no model loading, no evaluation)",
        "prepare_s": tm.get("prepare_s"), "eval_s": tm.get("eval_s"), "trainable": r["params"]["trainable"],
    }
    if cuda:
        peak, budget = out["peak_reserved_bytes"], out["budget_bytes"]
        out["under_budget"] = None if peak is None or budget is None else peak <= budget
    else:
        out["under_budget"] = None
        out["memory_note"] = "CPU: no CUDA allocator, so no CUDA peaks; the budget is recorded but not enforced"
    if r.get("error"):
        out["error"] = r["error"]
        out["traceback"] = r.get("traceback")
    return out


# ---- the table -------------------------------------------------------------------------------
def _ms(x):
    return "n/a" if x is None else f"{1e3 * x:.0f} ms"


def _figures(name: str, s: dict) -> str:
    if s["status"] in ("error", "skipped") and name != "variants":
        return (s.get("error") or s.get("reason") or "")[:160]
    if name == "variants":
        c = s["counts"]
        return f"{c['ok']} ok, {c['error']} error, {c['skipped']} skipped of {len(s['rows'])}"
    if name.startswith("seed000"):
        budget = "" if s.get("under_budget") is None else (" <= " if s["under_budget"] else " > ")
        budget = f"{budget}budget {gib(s['budget_bytes'])}" if budget else f"(budget {gib(s['budget_bytes'])})"
        proj = "n/a" if s.get("projected_s") is None else f"{s['projected_s']:.0f} s"
        text = (f"micro {s['micro_batch_size']} x {s['grad_accum_steps']}; peak alloc {gib(s['peak_allocated_bytes'])}, "
                f"reserved {gib(s['peak_reserved_bytes'])} {budget}; step {_ms(s['step_s'])}; 20k ex {proj}")
        if name == "seed000":
            judged = s.get("target_note") or ("target met" if s.get("meets_target") else "target MISSED")
            text += f" (target <= {TARGET_S:.0f} s, {judged}; RTX 2070 {REFERENCE_S:.0f} s)"
        return text + (f"; {s['run_error']}" if s.get("run_error") else "")
    if name == "peft_step_time":
        return f"{sum(r['status'] == 'ok' for r in s['rows'])} of {len(s['rows'])} measured (rows below)"
    if name == "oom_retry":
        chain = " -> ".join(map(str, s.get("micro_batch_chain", [])))
        return (f"micro {chain} ({s['oom_retries']} retries), accum {s['grad_accum_steps']}, "
                f"run {s['run_status']}, {s['examples']} examples")
    return s.get("reason", "")


def render_section(name: str, s: dict) -> str:
    lines = [f"{name:<22} {s['status']:<8} {_figures(name, s)}"]
    if name == "variants" and "rows" in s:
        for r in s["rows"]:
            if r["status"] == "ok":
                metric = next((k for k in r if k in ("accuracy", "mcc", "pearson", "metric")), None)
                val = r.get(metric)
                text = (f"loss {r['train_loss']:.4f}, {metric} {val:.3f}" if isinstance(val, float)
                        and isinstance(r.get("train_loss"), float) else f"steps {r['steps']}")
                text += f", {r['seconds']:.1f} s"
            else:
                text = (r.get("error") or r.get("reason") or "")[:140]
            lines.append(f"  {r['variant']:<20} {r['status']:<8} {text}")
    if name == "peft_step_time" and "rows" in s:
        for r in s["rows"]:
            if r["status"] == "ok":
                judged = "" if "meets_target" not in r else ("  target met" if r["meets_target"] else "  target MISSED")
                text = (f"lorabench {r['lorabench_ms']:.2f} ms, PEFT {r['peft_ms']:.2f} ms, floor {r['floor_ms']:.2f} ms,"
                        f" ratio {r['ratio']:.2f}, overhead ours {100 * r['lorabench_overhead']:.0f}% / PEFT "
                        f"{100 * r['peft_overhead']:.0f}%{judged}")
            else:
                text = r.get("error", "")[:140]
            lines.append(f"  {r['variant']:<20} {r['status']:<8} {text}")
    return "\n".join(lines)


def render(report: dict) -> str:
    m = report["meta"]
    head = (f"lorabench GPU check ({'tiny' if m.get('tiny') else 'full'}) on {m.get('device_name')}: torch {m.get('torch')}, "
            f"transformers {m.get('transformers')}, peft {m.get('peft')}, {m.get('bitsandbytes')}; "
            f"{m.get('elapsed_s', 0):.0f} s")
    rule = "-" * 100
    body = [render_section(name, s) for name, s in report["sections"].items()]
    return "\n".join([head, f"{'check':<22} {'status':<8} figures", rule, *body, rule])


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.txt and runs/")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default) or cpu (hides any GPU from this process)")
    p.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true",
                   help="tiny configs (2 layers, hidden 64): the same code paths in seconds")
    p.add_argument("--bnb-wheel", default=None,
                   help="a bitsandbytes wheel (pip-installed into a temporary folder) or a folder holding the "
                        "bitsandbytes package; without it, bitsandbytes is used only if importable")
    p.add_argument("--no-bnb", action="store_true", help="act as if bitsandbytes were missing (NF4 and qlora skipped)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--variants", default=None, help="comma-separated subset of variants for the variants check")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--time-limit", type=float, default=450.0,
                   help="seconds after which the remaining checks are skipped (default 450; 0: none)")
    p.add_argument("--work", default=None, help="folder for the temporary models and data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    args.time_limit = args.time_limit or None
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


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
