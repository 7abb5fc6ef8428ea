"""K runs packed over one frozen base vs the same K runs one after another, in one invocation.

    python benchmarks/pack_speed.py [--k 8] [--train-limit 2000] [--max-length 64] [--data-dir DIR]

Runs: LoRA r=8 on MiniLM (all 6 layers), SST-2, ``--train-limit`` training examples, 1 epoch,
batch 16; the K runs are ``K/2`` learning rates x 2 seeds (the grid a fair table needs). Both ways
run as a sweep would run them, each in a fresh process (``python -m lorabench.run`` per run,
``python -m lorabench.pack`` for the pack), so loading the model and the data is counted, and a
process's peak RSS is its own. Printed: wall time of each way, the ratio, peak RSS of the pack
vs the largest single run's, and the dev accuracy of every run both ways (the same up to
dropout: a packed run draws its dropout masks from its own generator over the pack's padded
length, so it is an equally valid but different draw).

Then ``--adapters N`` saved LoRA adapters (r=8 on q,v with random factors, so each changes the
output) are evaluated on the SST-2 dev set by one ``lorabench eval`` process vs N of them, one
adapter each, and the rows are checked to agree.

Target (issue 20, 2 CPU cores): packed >= 1.5x faster, peak RSS <= 1.5x one run's; the same speed
target for the adapters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lorabench.config import RunConfig  # noqa: E402
from lorabench.launch import child_env  # noqa: E402


def configs(args, out: Path) -> list[RunConfig]:
    lrs = [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2][: max(1, args.k // 2)]
    seeds = [0, 1][: max(1, args.k // len(lrs))]
    base = {"model": "minilm", "task": "sst2", "variant": "lora", "r": 8, "alpha": 8, "epochs": 1,
            "batch_size": 16, "train_limit": args.train_limit, "eval_limit": args.eval_limit,
            "max_length": args.max_length, "precision": "fp32", "data_dir": args.data_dir, "quiet": True,
            "out": str(out)}
    return [RunConfig.from_dict(base | {"lr": lr, "seed": s}) for s in seeds for lr in lrs][: args.k]


def timed(cmd: list[str]) -> float:
    """Wall seconds of one process."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=child_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def write(cfg: RunConfig, folder: Path) -> Path:
    path = folder / f"{cfg.run_id()}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def result(out: Path, cfg: RunConfig) -> dict:
    return json.loads((out / f"run-{cfg.run_id()}.json").read_text())


def accuracy(out: Path, cfg: RunConfig) -> float:
    return result(out, cfg)["best"]["metrics"]["validation"]["accuracy"]


def save_adapters(n: int, folder: Path) -> list[Path]:
    """``n`` LoRA adapters of MiniLM for SST-2 with random A and B (seeds 0..n-1)."""
    import torch

    import lorabench
    from lorabench import models

    models.quiet_transformers()
    dirs = []
    for seed in range(n):
        torch.manual_seed(seed)
        model, _ = models.load_model("minilm", "sst2")
        lorabench.apply(model, "lora", r=8, alpha=8)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        dirs.append(lorabench.save_adapter(model, folder / f"adapter-{seed}"))
    return dirs


def eval_speed(args, tmp: Path) -> None:
    dirs = save_adapters(args.adapters, tmp / "adapters")
    flags = ["--task", "sst2", "--data-dir", args.data_dir, "--max-length", str(args.max_length),
             "--eval-limit", str(args.eval_limit)]
    cmd = [sys.executable, "-m", "lorabench", "eval"]
    one_s = timed([*cmd, *map(str, dirs), *flags, "--json", str(tmp / "all.json")])
    each_s = sum(timed([*cmd, str(d), *flags, "--json", str(tmp / f"one-{i}.json")]) for i, d in enumerate(dirs))
    together = [r["metrics"] for r in json.loads((tmp / "all.json").read_text())]
    alone = [json.loads((tmp / f"one-{i}.json").read_text())[0]["metrics"] for i in range(len(dirs))]
    print(f"\n{len(dirs)} adapters, SST-2 dev ({args.eval_limit} examples): one `lorabench eval` {one_s:.1f} s, "
          f"{len(dirs)} separate ones {each_s:.1f} s, speed-up {each_s / one_s:.2f}x; rows equal: {together == alone}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--eval-limit", type=int, default=872)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    p.add_argument("--adapters", type=int, default=16, help="adapters for the lorabench eval comparison (0: skip)")
    p.add_argument("--no-training", action="store_true", help="only the lorabench eval comparison")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_training:
            train_speed(args, tmp)
        if args.adapters:
            eval_speed(args, tmp)


def train_speed(args, tmp: Path) -> None:
    packed_out, alone_out = tmp / "packed", tmp / "alone"
    packed, alone = configs(args, packed_out), configs(args, alone_out)
    pairs = [str(a) for c in packed for a in (write(c, tmp), c.run_id())]
    pack_s = timed([sys.executable, "-m", "lorabench.pack", *pairs])
    alone_s = sum(timed([sys.executable, "-m", "lorabench.run", str(write(c, tmp)), c.run_id()]) for c in alone)
    # each result records its own process's peak RSS (getrusage of that process)
    pack_rss = max(result(packed_out, c)["memory"]["peak_rss_bytes"] for c in packed)
    one_rss = max(result(alone_out, c)["memory"]["peak_rss_bytes"] for c in alone)
    print(f"K = {len(packed)} LoRA runs, MiniLM, SST-2 {args.train_limit} examples x 1 epoch, "
          f"max length {args.max_length}, batch 16, fp32")
    print(f"| way | wall s | peak RSS MiB |\n|---|---|---|\n| packed (one process) | {pack_s:.1f} | "
          f"{pack_rss / 2**20:.0f} |\n| one after another | {alone_s:.1f} | {one_rss / 2**20:.0f} (largest run) |")
    print(f"speed-up {alone_s / pack_s:.2f}x (target >= 1.5x); peak RSS {pack_rss / one_rss:.2f}x one run's "
          "(target <= 1.5x)")
    print("| lr | seed | dev acc packed | dev acc alone |\n|---|---|---|---|")
    for c, a in zip(packed, alone):
        print(f"| {c.lr:g} | {c.seed} | {accuracy(packed_out, c):.4f} | {accuracy(alone_out, a):.4f} |")


if __name__ == "__main__":
    main()
