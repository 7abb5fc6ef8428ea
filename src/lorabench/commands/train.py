"""``lorabench train``: one model, one GLUE task, one variant -> one result JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import RunConfig
from ..distributed import is_main
from ..models import quiet_transformers
from ..results import result_path
from .. import run
from ..units import format_bytes
from .args import add_config_flags, config_from_args


def add_parser(subparsers: Any, config_cls: type = RunConfig) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="fine-tune one model on one GLUE task with one variant",
        description="Fine-tune one model on one GLUE task with one variant and write one result JSON. "
                    "Flags override the --config file; unset flags keep the RunConfig defaults.",
        argument_default=argparse.SUPPRESS,  # only the flags given reach the config
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of RunConfig fields (flags override it)")
    add_config_flags(p, config_cls)
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if not args.debug:
        quiet_transformers()
    result = run.execute(cfg, progress=not cfg.quiet)
    if not is_main():  # under accelerate launch: rank 0 speaks for the run
        return 0 if result["status"] == "ok" else 1
    print(summary(result, result_path(cfg.out, result["run_id"])))
    if result["status"] != "ok":
        print(f"error: run {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    return 0


def summary(result: dict, path) -> str:
    """A few lines: run id and status, best dev metrics, time, memory, where the JSON is."""
    lines = [f"run {result['run_id']}: {result['status']}  {result['model']} / {result['task']} / "
             f"{result.get('method') or result['variant']}"
             f"  (trainable {result['params']['trainable']:,} of {result['params']['total']:,} parameters)"]
    best = result.get("best")
    if best:
        for split, metrics in best["metrics"].items():
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
            lines.append(f"best dev (step {best['step']}, epoch {best['epoch']:g}): {split}  {shown}")
    t, m = result["time"], result["memory"]
    peak = m.get("peak_allocated_bytes") if m.get("device") == "cuda" else m.get("peak_rss_bytes")
    what = "peak CUDA allocated" if m.get("device") == "cuda" else "peak RSS"
    rates = (f" ({t['examples_per_s']:.0f} examples/s, {t['tokens_per_s']:.0f} tokens/s)"
             if t.get("examples_per_s") is not None and t.get("tokens_per_s") is not None else "")
    lines.append(f"train {t['train_s']:.1f} s{rates}, eval {t['eval_s']:.1f} s, {what} {format_bytes(peak)}")
    lines.append(f"result: {path}")
    return "\n".join(lines)
