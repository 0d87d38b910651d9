"""`pamc grid SPEC.yaml --out DIR`: a grid of runs, here or on Slurm; `pamc grid status DIR`."""
from __future__ import annotations

import argparse
import sys

from ...errors import PamcError
from .base import command, key_values, unicode_output

#: resource flags of --launcher slurm, each a submitit parameter (see `pamc.apps.grid.executor_parameters`)
RESOURCES = {"partition": str, "timeout_min": int, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": float,
             "array_parallelism": int}


def arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Expand a grid spec (YAML: base/config, settings, presets, methods, boostlu, datasets, seeds, "
                     "grid, slurm; see docs/cluster.md) into run folders DIR/runs/NAME and train them. Rerunning "
                     "the same command skips finished runs and resumes the others. `pamc grid status DIR` shows "
                     "where every run stands; `pamc table DIR` tables the results.")
    p.add_argument("spec", metavar="SPEC.yaml|status", help="the grid spec, or `status` to show a grid's runs")
    p.add_argument("folder", nargs="?", metavar="DIR", help="(status) the grid's --out folder")
    p.add_argument("--out", help="the grid's folder (runs in DIR/runs/NAME)")
    p.add_argument("--workers", type=int, default=1, help="local: runs trained at once, one process each (default 1)")
    p.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                   help="local: --workers processes here; slurm: one job array through submitit; submitit-local: "
                   "the Slurm jobs run here through submitit's LocalExecutor (a check before submitting)")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the jobs to end (default: return once submitted)")
    for name, kind in RESOURCES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, dest=f"res_{name}", metavar=name.upper(),
                       help=f"slurm: {name} (overrides the spec's slurm: {name})")
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE", help="slurm: any other submitit parameter "
                   "(constraint=a100, qos=high, additional_parameters={...}); repeatable")


@command("grid", "a grid of runs (presets x methods x BoostLU x datasets x seeds) here or on Slurm; `grid status DIR`",
         arguments)
def grid(args: argparse.Namespace) -> int:
    from ..grid import expand, grid_status, load_spec, render_status, run_grid, spec_slurm

    if args.spec == "status":
        if not args.folder:
            raise PamcError("pamc grid status needs the grid's folder: pamc grid status DIR")
        print(render_status(grid_status(args.folder)), end="")
        return 0
    if args.folder:
        raise PamcError(f"unexpected argument {args.folder!r}; the grid's folder is --out DIR")
    if not args.out:
        raise PamcError("pamc grid needs --out DIR (the grid's folder; rerun with the same DIR to continue)")
    spec = load_spec(args.spec)
    slurm = {**spec_slurm(spec), **key_values(args.slurm, "--slurm"),
             **{k[4:]: v for k, v in vars(args).items() if k.startswith("res_") and v is not None}}
    report = run_grid(expand(spec), args.out, workers=args.workers, launcher=args.launcher, slurm=slurm,
                      wait=args.launcher != "slurm" or args.wait)
    if report.jobs and not report.outcomes:
        return 0
    return _summary(report)


def _summary(report) -> int:
    from ..grid import RUNS
    from ..table import collect, render

    failed, preempted = report.count("failed"), report.count("preempted")
    if report.count("finished") or report.count("skipped"):
        print()
        print(render(collect([report.out / RUNS]), "terminal", color=sys.stdout.isatty(), unicode=unicode_output()),
              end="")
    if failed:
        print(f"pamc: error: {failed} run(s) failed; `pamc grid status {report.out}` says why", file=sys.stderr)
        return 1
    if preempted:
        print(f"pamc: {preempted} run(s) preempted; rerun the same command to continue", file=sys.stderr)
        return 75
    return 0
