"""`pamc train`: one run, a sweep of seeds, or the continuation of an interrupted run."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from ...errors import PamcError
from .base import command, key_values, unicode_output


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size ...); mappings take KEY=VALUE (--data source=fashion)."""
    from ...config import TrainConfig, setting_notes

    notes = {name: note.replace("%", "%%") for name, note in setting_notes().items()}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "preset":  # recorded by `--preset NAME` itself (config.resolve)
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("data", "loss"):
            p.add_argument(flag, action="append", metavar="KEY=VALUE", dest=f"cfg_{f.name}",
                           help=f"set a {f.name} parameter (repeatable)")
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=f"cfg_{f.name}",
                           help=notes.get(f.name))
        else:
            p.add_argument(flag, default=None, dest=f"cfg_{f.name}", metavar=f.name.upper(), help=notes.get(f.name))


def config_overrides(args: argparse.Namespace) -> dict:
    from ...config import parse_value

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


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument("--preset", help="named preset (see `pamc presets`)")
    p.add_argument("--resume", metavar="RUN|auto", help="continue the interrupted run in this folder (its saved "
                   "config.yaml, with any flags given on top); auto: resume the --out folder if it holds a "
                   "checkpoint, else start it (for job scripts rerun after a preemption)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="K", help="train each seed in turn into OUT/seed-K, "
                   "then print their table")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any setting, dotted for mappings (data.source=fashion)")
    add_config_flags(p)


@command("train", "train a model (YAML config, preset and/or flags)", arguments)
def train(args: argparse.Namespace) -> int:
    from ...activation import describe_alpha
    from ...config import resolve
    from ...engine import train

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
    print(f"test mAP {r['test_map']:.2f} (alpha {describe_alpha(r['eval_alpha'])}, best val epoch {r['best_epoch']}, "
          f"val mAP {r['val_map']:.2f}); run folder {result.out}")
    return 0


def _train_seeds(config, seeds: list[int], resume) -> int:
    from ..sweep import train_seeds
    from ..table import collect, render

    sweep = train_seeds(config, seeds, resume=resume)
    print()
    print(render(collect([sweep.out]), "terminal", color=sys.stdout.isatty(), unicode=unicode_output()), end="")
    if sweep.failed:
        print(f"pamc: error: {len(sweep.failed)} of {len(seeds)} seeds failed: "
              + ", ".join(str(s) for s in sweep.failed), file=sys.stderr)
        return 1
    return 0
