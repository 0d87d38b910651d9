"""`pamc presets` and `pamc list`: what is in the box."""
from __future__ import annotations

import argparse

from .base import command


def presets_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", metavar="NAME", help="print the resolved settings of one preset (its base: chain applied)")


@command("presets", "list the named presets", presets_arguments)
def presets(args: argparse.Namespace) -> int:
    from ...config import preset_descriptions, resolve

    if args.show:
        import yaml

        print(yaml.safe_dump(resolve(preset=args.show).to_dict(), sort_keys=False), end="")
        return 0
    for name, text in preset_descriptions().items():
        print(f"{name:32s} {text}")
    return 0


@command("list", "list backbones, losses, BoostLU forms, datasets and presets")
def listing(args: argparse.Namespace) -> int:
    from ... import activation, losses
    from ...config import preset_descriptions
    from ...data import LOADERS
    from ...models import BACKBONES

    print("backbones:", ", ".join(BACKBONES.names()))
    for prefix, text in BACKBONES.families().items():
        print(f"           {prefix}:NAME  {text}")
    print("losses:   ", ", ".join(losses.names()))
    print("forms:    ", ", ".join(activation.form_text(name) for name in activation.names()),
          "(of BoostLU; activation: NAME[:KEY=VALUE], defaults shown)")
    print("datasets: ", ", ".join(LOADERS.names()))
    print("presets:  ", ", ".join(preset_descriptions()))
    return 0
