"""``lorabench check-variant NAME [--plugin FILE] [--opt KEY=VALUE]``: run the variant contract
(``lorabench.contract``) on a 2-layer MiniLM and print one line per property with its measured
error; exit 1 on any failure.

    lorabench new-variant my_lora --out my_lora.py
    lorabench check-variant my_lora --plugin my_lora.py
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import plugins
from ..adapters import registry
from ..adapters.conv import ConvVariant
from ..contract import run_contract
from .args import parse_opts


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("check-variant", help="run the variant contract on a built-in or plugin variant",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the variant's registered name")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a .py file or module that defines the variant (repeatable)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="a variant option, e.g. --opt r=4")
    p.add_argument("--targets", default=None, help="layers to adapt (default: the architecture's, query,value)")
    p.set_defaults(func=cmd_check_variant)
    return p


def cmd_check_variant(args: argparse.Namespace) -> int:
    plugins.load_all(args.plugin)
    cls = registry.get(args.name)  # an unknown name lists the known ones (exit 2)
    opts = parse_opts(args.opt)
    cls.make_options(**opts)  # bad options are a bad input, before the model loads
    checks = run_contract(args.name, opts, args.targets)
    print(f"contract of {args.name} ({cls.__module__}) on {'a tiny CNN' if issubclass(cls, ConvVariant) else 'a 2-layer MiniLM'}:")
    for c in checks:
        print("  " + c.line())
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"{len(checks) - len(failed)} of {len(checks)} properties hold" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
