"""`pamc prepare` and `pamc describe`: a dataset as distributed, in pamc's format."""
from __future__ import annotations

import argparse

from .base import command, key_values


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    from ...reference import REFERENCE_SEED

    p.add_argument("dataset", help="voc | coco | nuswide | cub | openimages | own")
    p.add_argument("--root", required=True, help="the dataset's folder as distributed")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=REFERENCE_SEED)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--observation", default="auto",
                   help="auto (the dataset's default) | as-given | full | single-positive | fraction:P, "
                        "each optionally +false-positive:P or +flip-negative:P (label noise)")
    p.add_argument("--missing", default="fail", choices=["fail", "drop"], help="what to do with missing image files")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader options (own: labels=FILE; nuswide: variant=...)")
    p.add_argument("--overwrite", action="store_true")


@command("prepare", "convert a dataset to pamc's format with the reference protocol", prepare_arguments)
def prepare(args: argparse.Namespace) -> int:
    from ...data.prepared import prepare

    summary = prepare(args.dataset, args.root, args.out, seed=args.seed, val_fraction=args.val_fraction,
                      observation=args.observation, overwrite=args.overwrite, missing=args.missing,
                      **key_values(args.option, "--option"))
    print(summary["message"])
    return 0


def describe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset")
    p.add_argument("--root", required=True)
    p.add_argument("--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-image-check", action="store_true")


@command("describe", "validate a dataset folder and report what it holds", describe_arguments)
def describe(args: argparse.Namespace) -> int:
    from ...data.sources import describe, format_description, read_source

    source = read_source(args.dataset, args.root, **key_values(args.option, "--option"))
    print(format_description(describe(source, check_images=not args.no_image_check)))
    return 0
