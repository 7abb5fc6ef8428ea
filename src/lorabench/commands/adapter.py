"""``lorabench adapter DIR``: show a saved adapter, and check that it loads onto a base model.

    lorabench adapter runs/quick/run-1a2b3c4d5e6f-adapter
    lorabench adapter runs/quick/run-1a2b3c4d5e6f-adapter --model minilm --task sst2

Reads only ``lorabench_adapter.json`` and ``lorabench_adapter.safetensors`` (never a pickle), and
refuses a file holding a NaN or infinite tensor, naming it (a diverged or damaged adapter).
With ``--model`` it loads that base (with the task's head) and applies the adapter through
``load_adapter``, which refuses other base weights (fingerprint), missing layers and tensors of
the wrong shape, each with a one-line error naming the fix (exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..checkpoint import load_adapter, read_adapter_config, read_adapter_tensors
from ..choices import HEADS
from .. import models
from ..units import format_bytes


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("adapter", help="show a saved adapter; with --model, check that it loads onto it",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="adapter folder (lorabench_adapter.json + .safetensors)")
    p.add_argument("--model", default=None, help="base model to load it onto: alias, hub id or folder")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers (as in training)")
    p.add_argument("--task", default="sst2", help="GLUE task of the head it was trained with [sst2]")
    p.add_argument("--head", choices=HEADS, default="cls", help="head it was trained with [cls]")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own Python code")
    p.set_defaults(func=cmd_adapter)
    return p


def cmd_adapter(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    config = read_adapter_config(directory)
    tensors = read_adapter_tensors(directory)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    options = ", ".join(f"{k}={v!r}" for k, v in (config.get("options") or {}).items())
    print(f"adapter {directory}: variant {config.get('variant')} ({options})")
    print(f"  {len(config.get('targets') or [])} adapted layers, {len(tensors)} tensors "
          f"({sum(t.numel() for t in tensors.values()):,} values, {format_bytes(size)}); "
          f"trained on {config.get('base_model')} ({config.get('model_class')}), "
          f"lorabench {config.get('lorabench_version')}")
    if args.model is None:
        return 0
    if not args.debug:
        models.quiet_transformers()  # no loading report: the one line below (or the error) says what matters
    # The pooling it was trained with ("lm" heads and adapters saved before pooling existed: "cls").
    pooling = "mean" if config.get("pooling") == "mean" else "cls"
    model, _ = models.load_model(args.model, args.task, head=args.head, layers=args.layers, pooling=pooling,
                          trust_remote_code=args.trust_remote_code)
    load_adapter(model, directory)
    print(f"  loads onto {args.model} ({args.task}, head {args.head}): ok")
    return 0
