"""``lorabench squeeze DIR --rank r``: a saved LoRA-family adapter compressed to a plain rank-r LoRA."""

from __future__ import annotations

import argparse
from typing import Any

from ..ranks import squeeze_adapter_dir


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "squeeze", help="compress a saved LoRA-family adapter to a lower rank (LoRA-Squeeze, RSVD)",
        description="Write the best rank-r approximation of a saved LoRA-family adapter as a plain LoRA "
                    "(LoRA-Squeeze, arXiv 2602.10993). Needs only the adapter folder, not the base model.",
    )
    p.add_argument("directory", help="adapter folder (lorabench_adapter.json + .safetensors)")
    p.add_argument("--rank", type=int, required=True, help="target rank r (at most the adapter's rank)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder [DIRECTORY-r{rank}]")
    p.add_argument("--niter", type=int, default=2, help="RSVD power iterations, 0 = exact SVD [2]")
    p.add_argument("--oversample", type=int, default=10, help="RSVD extra probes [10]")
    p.set_defaults(func=cmd_squeeze)
    return p


def cmd_squeeze(args: argparse.Namespace) -> int:
    out = squeeze_adapter_dir(args.directory, args.rank, args.out, niter=args.niter, oversample=args.oversample)
    print(f"squeezed {args.directory} to a rank-{args.rank} LoRA: {out}")
    return 0
