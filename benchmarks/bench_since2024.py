"""IGNORE, VLPL and AEVLP on the quick demo's scenes, next to LL-R + BoostLU and GR (docs/state-of-the-art.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_since2024.py --out bench-sota --seeds 0 1 2 [--amp off]

Every method of spec since-2024 is trained without BoostLU, with it at inference only and with it
in training and inference (alpha 5), beside LL-R + BoostLU and GR, on the scenes of
`pamc demo --quick` (1000 / 200 / 400 images, 4 epochs, the pretrained scene backbone).  VLPL
and AEVLP take their pseudo-labels from the scenes' stand-in for CLIP (the scene backbone
pretrained on single objects with its object classifier: global view + 2 x 2 tiles), not CLIP.

It also measures, in this one process, what the scorer costs when its scores are computed once
(pamc) against recomputed on every training step (the references): the same scorer, the same
views, on the training set once versus on every batch of every epoch (with the batch's flips).

Runs already finished under --out are read back, so an interrupted benchmark continues.
Writes OUT/results.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pamc
from pamc.apps.demo import BOOST, CORE_ROWS, GRID_VARIANTS, base_config, baseline_rows, scene_settings
from pamc.data import load_bundle
from pamc.vlscores import STAND_IN_GRID, compute_scores, dataset_identity, scene_scorer, score_batch


def rows():
    base = {r.slug: r for r in CORE_ROWS + baseline_rows()}
    out = [(f"{base[s].label}, {name}", base[s], a, e) for s in ("ignore", "vlpl", "aevlp") for name, a, e in GRID_VARIANTS]
    out.append(("LL-R + BoostLU", base["ll-r-boost"], BOOST, BOOST))
    out.append(("GR", base["gr"], 1.0, 1.0))
    return out


def train_all(out: Path, seeds: list[int], amp: str) -> dict:
    data = scene_settings("digits", quick=True)
    base = {**base_config(data, quick=True, device="cpu"), "amp": amp}
    table = {}
    for label, row, alpha, eval_alpha in rows():
        for seed in seeds:
            folder = out / row.slug / f"a{alpha:g}-e{eval_alpha:g}" / f"seed-{seed}"
            results_file = folder / "results.json"
            if results_file.is_file():
                results = json.loads(results_file.read_text())
            else:
                start = time.perf_counter()
                config = {**base, "method": row.method, "alpha": alpha, "eval_alpha": eval_alpha, "loss": dict(row.loss),
                          **row.settings, "seed": seed, "out": str(folder)}
                results = pamc.train(config).results
                results["bench_seconds"] = time.perf_counter() - start
                results_file.write_text(json.dumps(results, indent=1))
            table.setdefault(label, []).append(results)
            print(f"{label:45s} seed {seed}: test mAP {results['test_map']:.2f}", flush=True)
    return table


def scoring_costs(epochs: int, batch_size: int) -> dict:
    """Seconds the stand-in scorer takes to score the training set once (pamc), and on every batch of
    every epoch as the references do (flipped at random, like the training views)."""
    data = scene_settings("digits", quick=True)
    bundle = load_bundle(data)
    scorer = scene_scorer(data)
    images = bundle.train.images
    identity = dataset_identity(data, bundle.class_names, None, len(images))
    score_batch(images.take(torch.arange(32)), scorer, STAND_IN_GRID)  # warm-up: neither timing pays for the first call

    def once() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            compute_scores(images, scorer, tmp, identity, STAND_IN_GRID, batch_size=batch_size, progress=False)
            return time.perf_counter() - start

    before = once()
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        for index in torch.split(torch.randperm(len(images), generator=g), batch_size):
            x = images.take(index)
            flips = torch.rand(len(index), generator=g) < 0.5
            score_batch(torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x), scorer, STAND_IN_GRID)
    every_step = time.perf_counter() - start
    after = once()  # once before and once after: the machine is shared, its load drifts
    return {"once_s": (before + after) / 2, "once_before_s": before, "once_after_s": after,
            "every_step_s": every_step, "epochs": epochs, "batch_size": batch_size, "images": len(images),
            "views_per_image": 1 + STAND_IN_GRID ** 2}


def summary(table: dict) -> list[dict]:
    out = []
    for label, runs in table.items():
        maps = [r["test_map"] for r in runs]
        row = {"row": label, "n": len(maps), "mean": statistics.fmean(maps),
               "std": statistics.stdev(maps) if len(maps) > 1 else None,
               "train_s": statistics.fmean(r.get("bench_seconds", float("nan")) for r in runs)}
        quality = [r["pseudo_labels"] for r in runs if "pseudo_labels" in r]
        if quality:
            row["precision"] = statistics.fmean(q["precision"] for q in quality)
            row["recall"] = statistics.fmean(q["recall"] for q in quality)
            row["pseudo_per_image"] = statistics.fmean(q["pseudo_positives_per_image"] for q in quality)
        out.append(row)
    return out


def markdown(rows_: list[dict], costs: dict) -> str:
    lines = ["| method | test mAP (mean ± std) | n | pseudo-positive precision | recall | per image | train s/run |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows_:
        std = f" ± {r['std']:.2f}" if r["std"] is not None else ""
        q = (f"{100 * r['precision']:.1f}% | {100 * r['recall']:.1f}% | {r['pseudo_per_image']:.2f}"
             if "precision" in r else "- | - | -")
        lines.append(f"| {r['row']} | {r['mean']:.2f}{std} | {r['n']} | {q} | {r['train_s']:.0f} |")
    lines += ["", f"scorer: once {costs['once_s']:.2f} s, every step {costs['every_step_s']:.2f} s "
              f"({costs['epochs']} epochs, batch {costs['batch_size']}, {costs['images']} images x "
              f"{costs['views_per_image']} views): ratio {costs['every_step_s'] / costs['once_s']:.2f}"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-sota")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--costs-only", action="store_true", help="measure only the scoring costs")
    p.add_argument("--amp", default="off", help="training precision: off (fp32, as docs/state-of-the-art.md "
                   "measured) or auto (bf16 autocast on CPUs with native bf16)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(scene_settings("digits", quick=True), quick=True, device="cpu")
    costs = scoring_costs(base["epochs"], base["batch_size"])
    print(json.dumps(costs), flush=True)
    table = {} if args.costs_only else train_all(out, args.seeds, args.amp)
    rows_ = summary(table)
    record = {"rows": rows_, "scoring": costs, "seeds": args.seeds, "amp": args.amp, "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(markdown(rows_, costs))


if __name__ == "__main__":
    main()
