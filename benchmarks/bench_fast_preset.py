"""Does the fast preset change the result?  Test mAP of the exact protocol against the fast path
on the embedded scenes, over several seeds (a measurement, not a test).

    python benchmarks/bench_fast_preset.py [--method ll-r] [--alpha 5] [--seeds 0 1 2]

exact: fp32, NCHW, batch 16 (the paper's protocol), lr and head x10 as the demo.
fast, batch 16: bf16 autocast + channels_last, nothing else changed.
fast, batch --fast-batch (default 64): the same with the learning rate scaled by the square-root
       and by the linear rule, the same epochs (so 4x fewer optimiser steps).
Prints a markdown table with the mean +- std over seeds and each variant's difference of the
means against the seed spread.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time

import torch

import pamc
from pamc.data.scenes import make_scenes
from pamc.apps.demo import base_config, scene_settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="ll-r")
    p.add_argument("--alpha", type=float, default=5.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fast-batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    data = scene_settings("digits", quick=False)
    bundle = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    base = {**base_config(data, False, args.device), "method": args.method, "alpha": args.alpha,
            "eval_alpha": args.alpha, "epochs": args.epochs}
    variants = {
        "exact (fp32, batch 16)": {"batch_size": 16, "amp": "off", "channels_last": "off"},
        "fast, batch 16 (bf16 + channels_last)": {"batch_size": 16, "amp": "bf16", "channels_last": "on"},
    }
    big = args.fast_batch
    for rule, factor in (("sqrt", math.sqrt(big / 16)), ("linear", big / 16)):
        variants[f"fast, batch {big}, lr x{factor:g} ({rule} rule)"] = {
            "batch_size": big, "amp": "bf16", "channels_last": "on", "lr": base["lr"] * factor}
    maps: dict[str, list[float]] = {name: [] for name in variants}
    seconds: dict[str, float] = {name: 0.0 for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, change in variants.items():
                t0 = time.perf_counter()
                result = pamc.train({**base, **change, "seed": seed, "out": f"{tmp}/{len(maps[name])}-{name[:4]}"}, bundle=bundle)
                seconds[name] += time.perf_counter() - t0
                maps[name].append(result.test_map)
                print(f"{name}, seed {seed}: test mAP {result.test_map:.2f}", flush=True)
    print(f"\n{args.method} alpha {args.alpha:g}, {args.epochs} epochs, digits scenes; "
          f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| variant | test mAP (mean +- std) | per seed | seconds per run |\n|---|---:|---|---:|")
    for name, values in maps.items():
        print(f"| {name} | {statistics.fmean(values):.2f} +- {statistics.pstdev(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} | {seconds[name] / len(values):.0f} |")
    exact = maps[next(iter(maps))]
    for name, values in list(maps.items())[1:]:
        print(f"{name}: difference of means {statistics.fmean(values) - statistics.fmean(exact):+.2f} "
              f"(seed std {statistics.pstdev(exact):.2f} / {statistics.pstdev(values):.2f})")

if __name__ == "__main__":
    main()
