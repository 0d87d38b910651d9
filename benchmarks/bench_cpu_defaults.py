"""Does CPU-aware auto (bf16 + channels_last on a CPU with native bf16) change what the demo
measures?  The demo's rows with amp off (fp32) and with auto, same seeds, side by side (not a test).

    python benchmarks/bench_cpu_defaults.py [--quick] [--seeds 0 1 2] [--out DIR]

Prints test mAP mean +- std over seeds per row and setting, the difference of the means in
standard errors of the difference (as `pamc demo --grid` reads its cells), and the time per run.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from pamc.apps.demo import cell, demo_rows, prepare_demo, spread, train_rows, verdict
from pamc.runtime import native_bf16

SETTINGS = {"fp32 (amp off)": {"amp": "off"}, "auto": {}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the quick demo's scenes and rows")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    rows = demo_rows(args.quick, all_methods=False)
    maps, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in SETTINGS.items():
            out = Path(args.out or tmp) / name.split()[0]
            out_dir, _, bundle, base = prepare_demo("digits", str(out), args.quick, "cpu", True, None, None, settings)
            start = time.perf_counter()
            runs = train_rows(rows, args.seeds, base, bundle, out_dir)
            seconds[name] = (time.perf_counter() - start) / (len(rows) * len(args.seeds))
            maps[name] = {label: [r.test_map for r in results] for label, results in runs.items()}
    fp32, auto = SETTINGS
    print(f"\nnative bf16: {native_bf16() or 'no'}; seeds {args.seeds}; {'quick' if args.quick else 'default'} demo rows\n")
    print(f"| row | {fp32} | {auto} | difference (in s.e.) |\n|---|---:|---:|---|")
    for label in maps[fp32]:
        a, b = cell(label, maps[fp32][label]), cell(label, maps[auto][label])
        se = math.sqrt((spread(a) ** 2 + spread(b) ** 2) / a.n) if a.n > 1 else math.nan
        ratio = (b.mean - a.mean) / se if se > 0 else math.nan
        print(f"| {label} | {a.mean:.2f} +- {spread(a):.2f} | {b.mean:.2f} +- {spread(b):.2f} | "
              f"{b.mean - a.mean:+.2f} ({ratio:+.1f}): {verdict(ratio).replace('helps', 'higher').replace('hurts', 'lower')} |")
    print(f"\nseconds per run: {fp32} {seconds[fp32]:.1f}, {auto} {seconds[auto]:.1f} "
          f"({seconds[fp32] / seconds[auto]:.2f}x)")
    print(f"mean over rows: {fp32} {statistics.fmean(statistics.fmean(v) for v in maps[fp32].values()):.2f}, "
          f"{auto} {statistics.fmean(statistics.fmean(v) for v in maps[auto].values()):.2f}")


if __name__ == "__main__":
    main()
