"""``lorabench report DIR``: tables and plots from a results folder (``lorabench.report``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import METRIC_FROM
from ..errors import ConfigError
from ..report import __doc__ as _report_doc
from ..report import write_report
from ..results import load_results

REPORT_DOC = (_report_doc or "").split("\n\n")[0]


def cmd_report(args: argparse.Namespace) -> int:
    if not Path(args.results).is_dir():
        raise ConfigError(f"results folder {args.results!r} does not exist; pass the --out folder of a sweep")
    if not any(True for _ in load_results(args.results, warn=False)):
        raise ConfigError(f"no lorabench results (run-*.json) in {args.results}; pass the --out folder of a "
                          "sweep or of `lorabench train`")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder; pass a folder for the report")
    write_report(args.results, args.out, html=args.html, metric_from=args.metric_from, plots=not args.no_plots)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="tables and plots from a results folder",
                              description=REPORT_DOC)
    p.add_argument("results", help="folder with run-*.json results (searched recursively)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report)")
    p.add_argument("--html", action="store_true", help="also write one self-contained report.html")
    p.add_argument("--metric-from", choices=METRIC_FROM, default="best",
                   help="dev metric of a run: its best evaluation (default) or its last")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=cmd_report)
    return p
