"""The ``lorabench`` command: one module per subcommand, listed in ``SUBCOMMANDS``.

Each module's ``add_parser`` adds its subparser and sets ``func`` (args -> exit code). Exit
codes: 0 ok, 1 a run failed or diverged (its result JSON says why), 2 bad input, 130 Ctrl-C.
Errors print one line ``error: ...`` on stderr; ``--debug`` (anywhere on the command line)
shows the traceback instead.
"""

from __future__ import annotations

import sys
import warnings

from .._version import __version__
from ..errors import INPUT_ERRORS
from . import (adapter, check_variant, eval, federate, merge, mixture, new_variant, prune, report, squeeze, sweep,
               train, transfer, variants)
from . import segment
from .args import Parser

#: One builder per subcommand, in the order ``lorabench --help`` lists them.
SUBCOMMANDS = [train.add_parser, variants.add_parser, sweep.add_sweep_parser, sweep.add_bench_parser,
               report.add_parser, adapter.add_parser, eval.add_parser, merge.add_parser, mixture.add_parser,
               federate.add_parser, prune.add_parser, transfer.add_parser, squeeze.add_parser,
               check_variant.add_parser, new_variant.add_parser]
SUBCOMMANDS.insert(SUBCOMMANDS.index(prune.add_parser) + 1, segment.add_parser)


def build_parser() -> Parser:
    parser = Parser(prog="lorabench", description="Fine-tune transformers with LoRA and its variants; benchmark them on GLUE.")
    parser.add_argument("--version", action="version", version=f"lorabench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors (any position)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere: move it before the subcommand, where the parser knows it
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    format_warning = warnings.formatwarning
    if not debug:  # "warning: message" on one line, not the file, line and source of the call
        warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lorabench variants | head`
        sys.stdout = None
        return 0
    except Exception as e:
        if debug:
            raise
        code = 2 if isinstance(e, INPUT_ERRORS) else 1
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if code == 1 and type(e).__name__ != "RunFailed":
            message = f"{type(e).__name__}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = format_warning
