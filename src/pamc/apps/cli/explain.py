"""`pamc explain`, `compare-explanations`, `view` and `tune-alpha`: what a model looks at."""
from __future__ import annotations

import argparse
from pathlib import Path

from .base import add_data_flags, command, key_values


def _split(args: argparse.Namespace, checkpoint: str):
    from ...inference import load_split

    return load_split(args.split, key_values(args.data, "--data"), checkpoint)


def explain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="*", help="image files/folders (default: --split of the checkpoint's data)")
    p.add_argument("--out", required=True)
    add_data_flags(p, "test", "draw images of other data")
    p.add_argument("--max-images", type=int, default=8)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--classes", nargs="+", help="class names to draw instead of the top-k")
    p.add_argument("--boosted", action="store_true", help="draw BoostLU-boosted CAMs")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the checkpoint's)")
    p.add_argument("--vmax", type=float, help="fix the colour scale (to compare runs)")
    p.add_argument("--signed", action="store_true", help="show negative attributions too")


@command("explain", "CAM overlays (absolute attribution units) for images or a dataset split", explain_arguments)
def explain(args: argparse.Namespace) -> int:
    from ...explain import explain_command

    images = args.images or _split(args, args.checkpoint)
    written = explain_command(args.checkpoint, images, args.out, top_k=args.top_k, classes=args.classes,
                              boosted=args.boosted, alpha=args.alpha, device=args.device, vmax=args.vmax,
                              signed=args.signed, max_images=args.max_images)
    print(f"wrote {len(written) - 1} overlays and {written[-1]}")
    return 0


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="the full-label reference first, then partial-label models")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", nargs="+", help="a name per checkpoint")
    p.add_argument("--boost-alpha", type=float, help="also compare the partial models with BoostLU(alpha)")
    add_data_flags(p, "test", "compare on other data")
    p.add_argument("--max-images", type=int, default=200)


@command("compare-explanations", "measure how the CAMs of two or more checkpoints differ", compare_arguments)
def compare(args: argparse.Namespace) -> int:
    from ...explain import compare_explanations

    compare_explanations(args.checkpoints, _split(args, args.checkpoints[0]), args.out, labels=args.labels,
                         boosted_alpha=args.boost_alpha, max_images=args.max_images, device=args.device)
    print(f"wrote {Path(args.out) / 'report.md'} (and report.html, summary.json, figures)")
    return 0


def view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="run folders; the first one's scores pick the classes shown")
    p.add_argument("--out", default="view.html", help="the HTML file to write")
    p.add_argument("--labels", nargs="+", help="a name per checkpoint")
    p.add_argument("--images", nargs="+", help="image files/folders (default: --split of the first checkpoint's data)")
    add_data_flags(p, "test", "view images of other data")
    p.add_argument("--max-images", type=int, default=24)
    p.add_argument("--top-k", type=int, default=3, help="per image: its ground-truth classes and the first model's top k")
    p.add_argument("--classes", nargs="+", help="class names to show for every image instead")


@command("view", "one self-contained HTML page comparing checkpoints' CAMs, with a BoostLU alpha slider",
         view_arguments)
def view(args: argparse.Namespace) -> int:
    from ...explain import write_view

    images = args.images or _split(args, args.checkpoints[0])
    out = write_view(args.checkpoints, images, args.out, labels=args.labels, classes=args.classes, top_k=args.top_k,
                     max_images=args.max_images, split_name=None if args.images else args.split, device=args.device)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, self-contained: open it in a browser)")
    return 0


def tune_alpha_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[1, 1.5, 2, 3, 4, 5, 6, 8, 10])
    p.add_argument("--mode", default="observed", choices=["full", "observed"],
                   help="select with full validation labels or only the observed partial ones (realistic)")
    add_data_flags(p, "val", "tune on other data")
    p.add_argument("--per-class", action="store_true", help="tune one alpha per class (each class's best AP)")
    p.add_argument("--activation", metavar="FORM", help="the form of BoostLU to tune, NAME[:KEY=VALUE,...] (`pamc list`; "
                   "default: the checkpoint's; another form only for a model trained at alpha 1)")
    p.add_argument("--store", action="store_true", help="save the best alpha (and --activation) as the checkpoint's evaluation alpha")


@command("tune-alpha", "sweep the evaluation alpha on validation", tune_alpha_arguments)
def tune_alpha(args: argparse.Namespace) -> int:
    from ...activation import describe_alpha
    from ...explain import tune_alpha_command

    result = tune_alpha_command(args.checkpoint, _split(args, args.checkpoint), args.out, alphas=args.alphas,
                                mode=args.mode, store=args.store, device=args.device, per_class=args.per_class,
                                form=args.activation)
    print(f"{result['form']}\n| alpha | mAP ({args.mode} {args.split} labels) |\n|---:|---:|")
    for row in result["table"]:
        print(f"| {row['alpha']:g} | {row['map']:.2f} |")
    print(f"best alpha {describe_alpha(result['best_alpha'])}" + (f", stored in {result['stored_in']}" if args.store else ""))
    if args.per_class:
        print(f"mAP {result['best_map']:.2f} with per-class alpha, {result['shared_map']:.2f} with the best shared "
              f"alpha {result['shared_alpha']:g}")
    return 0
