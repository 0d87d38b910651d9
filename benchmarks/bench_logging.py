"""Step time with logging on and off (tiny scenes, CPU; not a test).

    python benchmarks/bench_logging.py [--repeats R] [--epochs E] [--threads T] [--augment]

Modes, alternated round by round so that a drifting load on a shared machine hits all alike:

    off              tensorboard off (metrics.jsonl/.csv are per epoch: always on)
    tensorboard      TensorBoard hook, per-step scalars flushed every 20 steps (the default)
    tensorboard/1    the same with log_every 1: a host sync every step (what the design avoids;
                     on a CPU a sync is nearly free, on a GPU it stalls the launch queue)
    ckpt/10          default logging plus a resumable checkpoint every 10 steps
    augment          (--augment) RandAugment + Cutout per image, logging off

A sample is one epoch's `train_seconds / steps` (ms per step) from metrics.jsonl, for every epoch
after the first (the first pays one-off set-up).  Prints a markdown table (mean +- std and median over
the samples; the median resists the spikes of a shared machine) and the machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import pamc
from pamc.data.scenes import make_scenes

DATA = {"name": "scenes", "source": "digits", "n_train": 512, "n_val": 32, "n_test": 32, "canvas": 32,
        "object_scale": [10, 14], "seed": 0}
MODES = {"off": {"tensorboard": "off"}, "tensorboard": {"tensorboard": "on"},
         "tensorboard/1": {"tensorboard": "on", "log_every": 1},
         "ckpt/10": {"tensorboard": "on", "checkpoint_every_steps": 10}}


def samples(bundle, settings: dict, epochs: int, out: Path) -> list[float]:
    config = {"data": DATA, "method": "ll-r", "alpha": 5.0, "epochs": epochs, "batch_size": 16, "lr": 1e-4,
              "device": "cpu", "num_workers": 0, "progress": False, "out": str(out), "overwrite": True, **settings}
    result = pamc.train(config, bundle=bundle)
    steps = -(-DATA["n_train"] // 16)
    lines = [json.loads(x) for x in (result.out / "metrics.jsonl").read_text().splitlines()]
    return [1000 * line["train_seconds"] / steps for line in lines[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--augment", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = dict(MODES)
    if args.augment:
        modes["augment"] = {"tensorboard": "off", "augment": "randaugment+cutout"}
    bundle = make_scenes(**{k: v for k, v in DATA.items() if k != "name"})
    results: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for mode in order:
                results[mode] += samples(bundle, modes[mode], args.epochs, Path(tmp) / mode.replace("/", "-"))
    print(f"tiny scenes ({DATA['n_train']} images of {DATA['canvas']} px, batch 16, scene-cnn, LL-R + BoostLU), "
          f"{platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}; "
          f"{len(results['off'])} samples per mode\n")
    median_base = statistics.median(results["off"])
    print("| mode | ms / step, mean +- std | median | median vs off |\n|---|---:|---:|---:|")
    for mode, values in results.items():
        mean, median = statistics.fmean(values), statistics.median(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {mode} | {mean:.2f} +- {spread:.2f} | {median:.2f} | {100 * (median / median_base - 1):+.1f} % |")


if __name__ == "__main__":
    main()
