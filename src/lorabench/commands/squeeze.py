"""``lorabench squeeze DIR --rank r``: a saved LoRA-family adapter compressed to a plain rank-r LoRA.

Checked before anything is read or computed: ``--rank`` is a positive integer, and ``--out`` is a
new or empty folder that can be written; a folder that already holds an adapter (or any file) is
refused, never replaced (the input adapter folder itself is refused by ``ranks.squeeze_adapter_dir``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..outputs import check_output_folder
from ..ranks import squeeze_adapter_dir


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "squeeze", help="compress a saved LoRA-family adapter to a lower rank (LoRA-Squeeze, RSVD)",
        description="Write the best rank-r approximation of a saved LoRA-family adapter as a plain LoRA "
                    "(LoRA-Squeeze, arXiv 2602.10993). Needs only the adapter folder, not the base model.",
    )
    p.add_argument("directory", help="adapter folder (lorabench_adapter.json + .safetensors)")
    p.add_argument("--rank", type=int, required=True, help="target rank r (at most the adapter's rank)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder, new or empty (never replaced) [DIRECTORY-r{rank}]")
    p.add_argument("--niter", type=int, default=2, help="RSVD power iterations, 0 = exact SVD [2]")
    p.add_argument("--oversample", type=int, default=10, help="RSVD extra probes [10]")
    p.set_defaults(func=cmd_squeeze)
    return p


def _unused(folder: Path) -> Path:
    """``folder``, or the first ``folder-2``, ``folder-3`` ... that does not exist yet."""
    k, candidate = 2, folder
    while candidate.exists():
        candidate, k = folder.with_name(f"{folder.name}-{k}"), k + 1
    return candidate


def check_out(directory: str, rank: int, out: str | None) -> None:
    """``--rank`` and ``--out`` of a squeeze, before any file is read (see the module docstring)."""
    if rank < 1:
        raise ConfigError(f"--rank must be a positive integer, got {rank}; e.g. --rank 4 (at most the adapter's rank)")
    src = Path(directory)
    dest = Path(out) if out is not None else src.with_name(f"{src.name}-r{rank}")
    if dest.resolve() == src.resolve() or src.resolve() in dest.resolve().parents:
        return  # squeeze_adapter_dir refuses it, naming the input
    if dest.is_dir():
        held = sorted(p.name for p in dest.iterdir())
        if held:
            what = (f"the adapter {dest / 'lorabench_adapter.json'}" if "lorabench_adapter.json" in held
                    else f"{len(held)} file(s) ({held[0]}{', ...' if len(held) > 1 else ''})")
            raise ConfigError(f"--out {dest} already holds {what}, and squeeze never replaces files; pass a new or "
                              f"empty folder, e.g. --out {_unused(dest)}")
    check_output_folder(dest, "--out")


def cmd_squeeze(args: argparse.Namespace) -> int:
    check_out(args.directory, args.rank, args.out)
    out = squeeze_adapter_dir(args.directory, args.rank, args.out, niter=args.niter, oversample=args.oversample)
    print(f"squeezed {args.directory} to a rank-{args.rank} LoRA: {out}")
    return 0
