"""``lorabench segment --arm A... [--r R...]``: the U-Net transfer study, one result JSON per arm and rank.

    lorabench segment --arm scratch full lora dora cp_lora --r 4 8 --epochs 10 --out runs/segment
    lorabench segment --arm lora --r 4 --data-dir my_cells/ --scenario targets=decoder --scenario base=32

A U-Net pretrained on synthetic membranes (``lorabench.segmentation``; cached, trained on first use)
is transferred to an image/mask folder (``--data-dir``, default the ISBI 2012 membranes; task
``membrane``) by each arm: ``scratch`` (a fresh U-Net), ``full`` (every weight), ``decoder`` (the
encoder frozen) or a conv adapter variant (``lora`` = LoRA-C, ``dora`` = DoRA-C, ``cp_lora`` =
CP-LoRA) at each rank of ``--r``. Dice (primary) and IoU per test image, averaged.

Each (arm, rank) is a run of kind ``segment`` (``lorabench.kinds``; the same as ``lorabench train
--kind segment --task membrane --scenario arm=A --scenario r=R``, or a sweep block ``{kind: segment,
scenario: {...}}``): OUT/run-<id>.json is its envelope, with the source model, zero-shot Dice and
split under ``details``. The other settings (base, depth, patch, patches_per_image, train_images,
test_images, targets, foreground, loss, source_*) go in ``--scenario KEY=VALUE``. OUT/segment.md:
the table of every segment run in OUT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import results, run
from ..config import RunConfig
from ..errors import UsageError
from ..kinds import REFUSES
from ..segmentation.settings import PLAIN_ARMS
from .args import add_config_flags, config_from_args, ints, names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("segment", help="U-Net transfer: scratch, full, decoder or conv adapters (Dice, IoU)",
                              description=__doc__.split("\n\n")[0], argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("segmentation")
    g.add_argument("--arm", dest="arms", type=names, nargs="+", metavar="ARM",
                   help=f"{', '.join(PLAIN_ARMS)}, or an adapter variant (lora, dora, cp_lora)")
    g.add_argument("--r", dest="ranks", type=ints, nargs="+", default=[[4]], metavar="R", help="adapter ranks (adapter arms) [4]")
    g.add_argument("--table", metavar="DIR", help="only write DIR/segment.md, the table of the segment runs in DIR "
                   "(a sweep's folder too), and print it")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of RunConfig fields (flags override it)")
    add_config_flags(p, exclude=("variant", "kind", "r", "alpha", "model", *REFUSES["segment"]))
    p.set_defaults(func=cmd_segment)
    return p


def run_configs(args: argparse.Namespace) -> list[RunConfig]:
    """One ``kind: segment`` config per (arm, rank), every one validated before any training."""
    arms = list(dict.fromkeys(a for group in args.arms for a in group))
    ranks = list(dict.fromkeys(r for group in args.ranks for r in group))
    configs = []
    for arm in arms:
        for r in ([None] if arm in PLAIN_ARMS else ranks):
            extra = [f"arm={arm}"] + ([f"r={r}"] if r is not None else [])
            ns = argparse.Namespace(**vars(args))
            ns.scenario = list(getattr(args, "scenario", None) or []) + extra
            ns.kind = "segment"
            if not hasattr(ns, "task"):
                ns.task = "membrane"
            configs.append(config_from_args(ns))
    return configs


def cmd_segment(args: argparse.Namespace) -> int:
    if getattr(args, "table", None):
        print(write_table(Path(args.table)))
        return 0
    if not getattr(args, "arms", None):
        raise UsageError("give --arm ARM... (scratch, full, decoder, lora, dora, cp_lora), or --table DIR")
    configs = run_configs(args)
    out = Path(configs[0].out)
    failed = run.execute_each(configs, lambda cfg, result: row(result), debug=getattr(args, "debug", False))
    write_table(out)
    return 1 if failed else 0


def write_table(out: Path) -> str:
    """OUT/segment.md: one row per segment run in OUT (method, seed, status, test Dice and IoU, the
    source model's zero-shot Dice, trainable parameters, training seconds); returns the table."""
    runs = sorted((r for _, r in results.load_results(out) if r.get("kind") == "segment"),
                  key=lambda r: (r["method"], r["seed"]))
    lines = ["| method | seed | status | dice | iou | zero-shot dice | trainable | train s |", "|---|---|---|---|---|---|---|---|"]
    lines += [row(r, table=True) for r in runs]
    text = "\n".join(lines) + "\n"
    (out / "segment.md").write_text(text)
    return text


def row(result: dict, table: bool = False) -> str:
    test = (result.get("final") or {}).get("metrics", {}).get("test") or {}
    zero = ((result.get("details") or {}).get("zero_shot") or {}).get("dice")
    cells = [result["method"], str(result["seed"]), result["status"], _f(test.get("dice")), _f(test.get("iou")),
             _f(zero), f"{result['params']['trainable'] or 0:,}", f"{result['time'].get('train_s') or 0:.1f}"]
    if table:
        return "| " + " | ".join(cells) + " |"
    return (f"{cells[0]} seed {cells[1]}: {cells[2]}, dice {cells[3]}, iou {cells[4]} (zero-shot {cells[5]}), "
            f"{cells[6]} trainable, {cells[7]} s")


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"
