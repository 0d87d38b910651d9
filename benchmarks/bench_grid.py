"""What launching costs: a grid of 12 tiny runs trained in one process, by 1 and 2 local workers,
and as a Slurm job array; and a requeue cycle from SIGTERM to the finished run (not a test).

    OMP_NUM_THREADS=1 python benchmarks/bench_grid.py --out /tmp/bench-grid [--skip-slurm]

The grid: methods an, ll-r, ll-ct x BoostLU off/train x seeds 0, 1 on 96/32/32 digit scenes of
32 px, 2 epochs of the scene CNN.  Reported for each launcher: wall time from the command's start
to its end (the `pamc grid ... --wait` command), and the overhead per run: wall time x runs at
once / 12 minus the time a run takes when the 12 train one after another in one process
(`pamc.train`, no new interpreter, data cached) -- the cost of a process (interpreter, torch
import), of submitit and of the scheduler.  Slurm: the one-node cluster of .ci/slurm-up.sh
(2 CPUs, cpus_per_task 1: 2 jobs at once).

The requeue cycle: one run (4 epochs of 40 steps, a checkpoint every 4) submitted to Slurm;
SIGTERM (`scancel --signal=TERM`) once it is inside epoch 2; timed: to the checkpoint (status
preempted), to the requeued job's start (attempt 2), to the end; and the same run uninterrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

TINY = {"name": "scenes", "source": "digits", "n_train": 96, "n_val": 32, "n_test": 32, "canvas": 32,
        "object_scale": [10, 14], "seed": 0}
SETTINGS = {"data": TINY, "epochs": 2, "batch_size": 16, "lr": 1e-4, "device": "cpu", "num_workers": 0,
            "tensorboard": "off"}
GRID = {"settings": SETTINGS, "methods": ["an", "ll-r", "ll-ct"], "boostlu": ["off", "train"], "seeds": [0, 1],
        "slurm": {"cpus_per_task": 1, "timeout_min": 30}}
REQUEUE = {"settings": {**SETTINGS, "data": {**TINY, "n_train": 320}, "epochs": 4, "batch_size": 8,
                        "checkpoint_every_steps": 4, "log_every": 2}, "seeds": [0],
           "slurm": {"cpus_per_task": 1, "timeout_min": 30}}


def pamc(*args: str) -> float:
    """Run `python -m pamc ARGS`; its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pamc", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def in_process(out: Path) -> float:
    """The 12 runs one after another in this process (the scenes built once, before timing)."""
    import pamc as api
    from pamc.apps.grid import expand
    from pamc.data.scenes import make_scenes

    make_scenes(**{k: v for k, v in TINY.items() if k != "name"})
    runs = expand(GRID)
    start = time.perf_counter()
    for run in runs:
        api.train({**run.settings, "out": str(out / run.name)})
    return time.perf_counter() - start


def status(out: Path) -> dict:
    try:
        return json.loads((out / "runs" / "seed-0" / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait(condition, timeout=600.0):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError
        time.sleep(0.05)
    return time.perf_counter()


def requeue_cycle(root: Path) -> dict:
    spec = root / "requeue.yaml"
    spec.write_text(yaml.safe_dump(REQUEUE))
    straight = pamc("grid", str(spec), "--out", str(root / "straight"), "--launcher", "slurm", "--wait")
    out = root / "requeue"
    begin = time.perf_counter()
    grid = subprocess.Popen([sys.executable, "-m", "pamc", "grid", str(spec), "--out", str(out), "--launcher", "slurm",
                             "--wait"], stdout=subprocess.DEVNULL)
    wait(lambda: status(out).get("epoch") == 2 and status(out).get("step"))
    (job,) = [p.name for p in (out / "slurm").iterdir() if "_" not in p.name]
    signalled = time.perf_counter()
    subprocess.run(["scancel", "--signal=TERM", job], check=True)
    checkpointed = wait(lambda: status(out).get("status") == "preempted")
    restarted = wait(lambda: status(out).get("attempts") == 2 and status(out).get("status") == "running")
    grid.wait()
    end = time.perf_counter()
    same = (json.loads((out / "runs/seed-0/results.json").read_text())["test_map"]
            == json.loads((root / "straight/runs/seed-0/results.json").read_text())["test_map"])
    return {"uninterrupted_s": straight, "total_s": end - begin, "to_checkpoint_s": checkpointed - signalled,
            "to_restart_s": restarted - signalled, "restart_to_end_s": end - restarted, "same_test_map": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/bench-grid")
    ap.add_argument("--skip-slurm", action="store_true")
    args = ap.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    spec = root / "grid.yaml"
    spec.write_text(yaml.safe_dump(GRID))
    base = in_process(root / "in-process")
    rows = {"in one process": (base, 1)}
    rows["local, 1 worker"] = (pamc("grid", str(spec), "--out", str(root / "local-1"), "--workers", "1"), 1)
    rows["local, 2 workers"] = (pamc("grid", str(spec), "--out", str(root / "local-2"), "--workers", "2"), 2)
    if not args.skip_slurm:
        rows["Slurm job array"] = (pamc("grid", str(spec), "--out", str(root / "slurm"), "--launcher", "slurm",
                                        "--wait"), 2)
    per_run = base / 12
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print("| launcher | runs at once | wall time | overhead per run |")
    print("|---|---|---|---|")
    for name, (wall, slots) in rows.items():
        overhead = "-" if name == "in one process" else f"{wall * slots / 12 - per_run:.1f} s"
        print(f"| {name} | {slots} | {wall:.1f} s | {overhead} |")
    result = {"rows": {k: {"wall_s": w, "slots": s} for k, (w, s) in rows.items()}, "per_run_in_process_s": per_run}
    if not args.skip_slurm:
        cycle = requeue_cycle(root)
        result["requeue"] = cycle
        print("\nrequeue cycle: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in cycle.items()))
    (root / "bench.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
