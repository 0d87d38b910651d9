"""The `pamc` command line: argument parsing only; every command calls the Python API.

Each command lives in the module of its family (`train`, `evaluate`, `explain`, `review`, `data`, `demo`,
`table`, `listing`), its arguments beside its handler, registered with `base.command`; a new
command is a new module named in `COMMAND_MODULES`.

Errors the user can fix (PamcError) print as one line and exit with status 2; warnings print as
one line each (`pamc: warning: ...`).  A training run stopped by SIGTERM / SIGINT / SIGUSR1 writes
a resumable checkpoint, says how to continue and exits with status 75 (EX_TEMPFAIL,
`pamc.preemption.EXIT_PREEMPTED`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Optional

from ...errors import PamcError
from .base import COMMANDS

#: the modules that register commands, in the order `pamc --help` lists them
COMMAND_MODULES = ("train", "evaluate", "demo", "explain", "review", "data", "table", "listing")


def build_parser() -> argparse.ArgumentParser:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    parser = argparse.ArgumentParser(prog="pamc", description="Partially annotated multi-label classification with BoostLU.")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        cmd.arguments(sub.add_parser(cmd.name, help=cmd.help))
    return parser


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as the user reads them: one line, no source file or line of pamc's code.  (It
    formats rather than shows, so code that records warnings -- `catch_warnings` -- still does.)"""
    return f"pamc: warning: {str(message).strip()}\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.formatwarning
    warnings.formatwarning = one_line_warning
    try:
        return COMMANDS[args.command].run(args)
    except PamcError as exc:  # a preempted run (pamc.preemption.Preempted) exits 75 = EX_TEMPFAIL: rerun it
        code = getattr(exc, "exit_code", 2)
        print(f"pamc: {'error: ' if code == 2 else ''}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("pamc: interrupted; `pamc train --resume RUN` continues a training run", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous
