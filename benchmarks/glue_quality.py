"""GLUE quality and speed of MiniLM (LoRA, or full fine-tuning where it scores higher) vs targets.

    python benchmarks/glue_quality.py [--tasks sst2,cola,mrpc,rte,stsb] [--data-dir DIR] [--out DIR]
    python benchmarks/glue_quality.py --tasks rte --train-limit 64 --epochs 1   # a smoke run
    python benchmarks/glue_quality.py --tasks sst2 --precision fp32             # exact fp32 instead
    python benchmarks/glue_quality.py --model mpnet --out runs/glue-mpnet       # MPNet-base (hours on CPU)

One real run per task with the hyperparameters below (the best each task has had so far on a
2-core CPU), then a table: the task's GLUE metric (best dev evaluation) against its target, the
training time and the time per full epoch (train_s / epochs, evaluation excluded) against the
SST-2 target. SST-2 runs in the setting its target names (LoRA r=8 on query,value); the other
tasks use what scored best: LoRA for CoLA and STS-B, full fine-tuning for MRPC and RTE (0.826
and 0.628 after 8 epochs at 5e-5, against LoRA's 0.806 and 0.542). Runs are plain ``lorabench
train`` runs: each writes its JSON into ``--out``, and a rerun reuses a finished result (same
config, same run id) instead of training again.

Runs use bf16 autocast on a CPU with native bf16 and fp32 elsewhere (emulated bf16, on a CPU
without AVX512-BF16 or AMX, is several times slower than fp32). With ``--precision bf16`` on a CPU
with AVX512-BF16, SST-2 trains at ~3,450 tokens/s instead of fp32's ~2,250, ~4.3 min per epoch on
2 cores instead of ~6.6, with the same dev accuracy within noise: 0.881 vs 0.883. Full runs take
hours on 2 CPU cores. The figures measured so far and what was tried are in the closing notes of the
GLUE-pipeline issue.

The targets sit at or above what all-MiniLM-L6-v2 itself can reach: full fine-tuning of it
(every weight trained, bf16, 2 cores) tops out at SST-2 0.893 (1 and 2 epochs), CoLA MCC 0.301
(10 epochs at 1e-4) and MRPC 0.826 (8 epochs at 5e-5), so LoRA is not expected to meet those
three on this model. ``--model roberta-base`` (hub, with internet; learning rates tuned on
MiniLM, so expect to lower them) is the encoder the targets were set for.
"""

from __future__ import annotations

import argparse
import json
import os

QV8 = {"variant": "lora", "r": 8, "alpha": 8, "targets": ["query", "value"]}
ALL16 = {"variant": "lora", "r": 16, "alpha": 16, "targets": "all-linear"}
FULL = {"variant": "full"}  # every weight trained
#: task -> (run settings, primary metric, target). MiniLM = all-MiniLM-L6-v2; dynamic padding with
#: length-grouped batches; pooling "auto" = mean, as the checkpoint declares.
TASKS: dict[str, tuple[dict, str, float]] = {
    "sst2": ({**QV8, "pooling": "auto", "lr": 2e-3, "epochs": 1.5, "batch_size": 32, "eval_every": 350},
             "accuracy", 0.90),
    "cola": ({**ALL16, "pooling": "auto", "lr": 1e-3, "epochs": 10, "batch_size": 32}, "mcc", 0.40),
    "mrpc": ({**FULL, "pooling": "cls", "lr": 5e-5, "epochs": 8, "batch_size": 16}, "accuracy", 0.85),
    "rte": ({**FULL, "pooling": "auto", "lr": 5e-5, "epochs": 8, "batch_size": 16}, "accuracy", 0.62),
    "stsb": ({**QV8, "pooling": "cls", "lr": 1e-3, "epochs": 5, "batch_size": 16}, "pearson", 0.85),
}
#: ``--model mpnet`` (all-mpnet-base-v2, 12 x 768, mean pooling): LoRA r=8 alpha=8 on MPNet's q,v
#: everywhere, the issue's targets; SST-2 on a seeded 20,000-example subset (the Better Call LoRA
#: study's size), 1 epoch; the other tasks on their full training sets. lr 1e-3 with batch 16
#: (a probe on 2,000 SST-2 examples: 0.900 at 2e-3; the longer runs take a step down).
MPNET_QV8 = {"variant": "lora", "r": 8, "alpha": 8, "pooling": "auto", "batch_size": 16, "lr": 1e-3}
MPNET_TASKS: dict[str, tuple[dict, str, float]] = {
    "sst2": ({**MPNET_QV8, "train_limit": 20000, "epochs": 1, "eval_every": 250}, "accuracy", 0.93),
    "cola": ({**MPNET_QV8, "epochs": 3}, "mcc", 0.45),
    "mrpc": ({**MPNET_QV8, "epochs": 8}, "accuracy", 0.87),  # 0.8775 (3 epochs: 0.853)
    "rte": ({**MPNET_QV8, "epochs": 8, "max_length": 256}, "accuracy", 0.70),  # 0.729 (4: 0.693)
    "stsb": ({**MPNET_QV8, "epochs": 4}, "pearson", 0.88),  # 2 epochs (fp32): 0.865
}
EPOCH_TARGET_MIN = {"sst2": 6.0}  # minutes per epoch on 2 cores with dynamic padding (MiniLM)


def settings_for(model: str) -> dict[str, tuple[dict, str, float]]:
    return MPNET_TASKS if model == "mpnet" else TASKS
BASE = {"group_by_length": True, "quiet": True}


def run_task(task: str, args: argparse.Namespace) -> dict:
    from lorabench import results
    from lorabench.config import RunConfig
    from lorabench.run import execute

    settings, _, _ = settings_for(args.model)[task]
    fields = {**BASE, **settings, "task": task, "out": args.out, "data_dir": args.data_dir,
              "precision": args.precision, "model": args.model}
    if args.train_limit is not None:
        fields.update(train_limit=args.train_limit, eval_limit=args.train_limit, eval_every=0)
    if args.epochs is not None:
        fields["epochs"] = args.epochs
    cfg = RunConfig.from_dict(fields)
    path = results.result_path(cfg.out, cfg.run_id())
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("status") == "ok":
            print(f"{task}: reusing {path}")
            return result
    print(f"{task}: training {cfg.variant} ({cfg.epochs:g} epochs, lr {cfg.lr:g}, pooling {cfg.pooling}, "
          f"{cfg.precision}) ...", flush=True)
    return execute(cfg, progress=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated [%(default)s]")
    p.add_argument("--data-dir", default=os.environ.get("LORABENCH_GLUE_DIR"), help="GLUE folder [lorabench's search]")
    p.add_argument("--out", default="runs/glue-quality", help="result folder [%(default)s]")
    p.add_argument("--train-limit", type=int, default=None, help="examples per split, for a smoke run")
    p.add_argument("--epochs", type=float, default=None, help="override every task's epochs")
    p.add_argument("--model", default="minilm", help="alias, hub id or folder [%(default)s]")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="autocast on the CPU [bf16 where the CPU has native bf16, else fp32]")
    args = p.parse_args()
    if args.precision is None:
        from lorabench.precision import cpu_has_native_bf16

        args.precision = "bf16" if cpu_has_native_bf16() else "fp32"  # emulated bf16 is several times slower
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")

    from lorabench.models import quiet_transformers

    quiet_transformers()  # no weight-loading report per run: the table says what matters
    rows = []
    for task in tasks:
        result = run_task(task, args)
        _, metric, target = settings_for(args.model)[task]
        value = result["best"]["metrics"]["validation"][metric]
        epochs = result["config"]["epochs"]
        per_epoch = result["time"]["train_s"] / epochs / 60
        epoch_target = EPOCH_TARGET_MIN.get(task) if args.model == "minilm" else None
        rows.append((task, metric, value, target, result["time"]["train_s"], per_epoch, epoch_target,
                     result["time"]["tokens_per_s"]))

    print(f"\n{'task':6} {'metric':9} {'best dev':>8} {'target':>7} {'met':>4}  {'train s':>8} "
          f"{'min/epoch':>9} {'target':>6} {'tok/s':>7}")
    for task, metric, value, target, train_s, per_epoch, epoch_target, tok_s in rows:
        et = f"{epoch_target:.1f}" if epoch_target else "-"
        print(f"{task:6} {metric:9} {value:8.4f} {target:7.2f} {'yes' if value >= target else 'no':>4}  "
              f"{train_s:8.1f} {per_epoch:9.2f} {et:>6} {tok_s:7.0f}")
    if args.train_limit is not None:
        print(f"(smoke run: {args.train_limit} examples per split; the targets are for the full sets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
