"""`pamc table`: the paper-style table of many runs."""
from __future__ import annotations

import argparse
import os
import sys

from .base import command, unicode_output


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders, folders holding runs (searched recursively), or quoted globs "
                   "('runs/*/seed-*')")
    p.add_argument("--format", default="terminal", choices=["terminal", "markdown", "csv", "latex"],
                   help="terminal: aligned text, the best cells bold (ANSI on a terminal, else **x**)")
    p.add_argument("--metric", default="test_map", help="any numeric key of results.json, dotted for nested ones "
                   "(test_metrics.OF1); default test_map")
    p.add_argument("--best", default="max", choices=["max", "min", "none"], help="which cell of a column is bold")


@command("table", "the paper-style table of many runs: mean +- std over seeds, per method and dataset", arguments)
def table(args: argparse.Namespace) -> int:
    from ..table import collect, render

    result = collect(args.runs, metric=args.metric, best=args.best)
    color = args.format == "terminal" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render(result, args.format, color=color, unicode=unicode_output()), end="")
    return 0
