"""``lorabench transfer METHOD --out DIR [options]``: move what an adapter learned to another base
model (or another place in one model), and compare it with training there directly.

    lorabench transfer trans_lora --source minilm --target mpnet --target-layers 2 --out runs/transfer/tl
    lorabench transfer organ --model smollm2-135m --positions 1 15 30 --out runs/transfer/organ

One subcommand per registered method (``lorabench.transfer``), its flags generated from the
method's ``Options`` dataclass (default and help line of each field). DIR/transfer.json holds the
result (schema "lorabench-transfer", ``lorabench.transfer.record``), DIR/transfer.md its table,
where an arm whose training diverged shows its status, never a number (exit status 1 then);
trans_lora also writes DIR/synthetic.json (seeds, every synthetic input with its p(real), kept
flag and teacher logits) and DIR/target-adapter/; organ writes DIR/organ-at-<P>/ (organ.safetensors
+ organ.json) per position.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from .. import models, results
from ..errors import ConfigError
from ..transfer import organ_method, trans_lora  # noqa: F401  (register the methods)
from ..transfer.record import finish, write
from ..transfer.registry import get, names


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("transfer", help="transfer an adapter across base models (trans_lora) or transplant "
                                               "trained layers (organ); compare with direct training",
                              description=__doc__.split("\n\n")[0])
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in names():
        cls = get(name)
        sub = methods.add_parser(name, help=cls.description, description=cls.description)
        add_option_flags(sub, cls.Options)
        sub.add_argument("--out", required=True, metavar="DIR", help="folder for transfer.json and the files")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.set_defaults(func=cmd_transfer)
    return p


def _scalar(hint: Any) -> tuple[type, bool]:
    """(the type one value parses as, whether the flag takes a list)."""
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # int | None -> int
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], True
    return kind, False


def add_option_flags(parser: argparse.ArgumentParser, options: type) -> None:
    """``--field-name`` per field of ``options``, with its type and ``[default]`` in the help."""
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        kind, many = _scalar(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, []) else f" [{default}]"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, nargs="+" if many else None,
                            default=argparse.SUPPRESS, help=f.metadata.get("help", "") + shown)


def cmd_transfer(args: argparse.Namespace) -> int:
    if not getattr(args, "debug", False):
        models.quiet_transformers()
    cls = get(args.method)
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    try:
        opts = cls.Options(**{k: v for k, v in vars(args).items() if k in fields})
    except TypeError as e:  # a wrong type from the Python API reaches here, not from the CLI
        raise ConfigError(f"bad options for {cls.name}: {e}") from None
    out = Path(args.out)
    results.check_writable(out)
    record = finish(cls.run(opts, out, progress=not args.quiet))
    path, md = write(record, out)
    print(md)
    print(f"result: {path}")
    bad = {name: arm for name, arm in record["arms"].items() if arm.get("status", "ok") != "ok"}
    for name, arm in bad.items():  # as lorabench train: a diverged run is an error, its record still written
        print(f"error: arm {name} {arm['status']}: {arm.get('error')}", file=sys.stderr)
    return 1 if bad else 0
