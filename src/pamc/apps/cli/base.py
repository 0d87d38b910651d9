"""What every command shares: the registry of commands and the flags several of them take.

A command is a handler with its arguments beside it:

    def arguments(p): p.add_argument(...)

    @command("name", "one-line help", arguments)
    def name(args) -> int: ...

Handlers import the library inside the function, so `pamc --help` starts without torch.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from ...errors import PamcError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None):
    """Register the decorated handler as `pamc NAME`, with `arguments` adding its flags."""
    def register(run: Callable[[argparse.Namespace], int]):
        if name in COMMANDS:
            raise ValueError(f"two commands are called {name!r}")
        COMMANDS[name] = Command(name, help, arguments or (lambda p: None), run)
        return run
    return register


def key_values(items: Optional[list[str]], flag: str) -> dict:
    """KEY=VALUE flags as a mapping, each value parsed as YAML would (numbers, lists, booleans)."""
    from ...config import parse_value

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PamcError(f"{flag} expects KEY=VALUE (got {item!r})")
        out[key.strip()] = parse_value(value)
    return out


def add_data_flags(p: argparse.ArgumentParser, split: str, what: str) -> None:
    """Which images a checkpoint command reads: a split of the checkpoint's data, or other data."""
    p.add_argument("--split", default=split, choices=["train", "val", "test"])
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help=f"{what} (default: the training data)")
    p.add_argument("--device", default="auto")


def unicode_output() -> bool:
    """Whether stdout can print "±" (tables fall back to "+-" where it cannot)."""
    try:
        "±".encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False
