"""Engine speed on the scene benchmark (scene-cnn, 64 px, CPU) and the cost of BoostLU (not a test).

    python benchmarks/bench_engine.py [--quick] [--repeats R] [--threads T]

Training: `pamc.train` (AN loss, batch 16) at alpha 1 and at alpha 5, the two alternating so that a
drifting load on a shared machine hits both alike; the samples are the engine's own
`train_images_per_s` of every epoch after the first (the first pays one-off kernel set-up).
Inference: `pamc.runtime.predict` of the trained model on the test scenes, again alternating the
alphas, after one warm-up pass.  BoostLU is one element-wise op on a C x 8 x 8 map per image,
against a CNN forward/backward, so alpha 5 is expected to match alpha 1 within the noise.
Prints a markdown table (mean +- std over the samples) with the machine it ran on.  On a busy
shared CPU pass --threads 1: spinning OpenMP threads then make 2-thread numbers several times
slower and too noisy to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pamc
from pamc.checkpoint import load_model
from pamc.data.scenes import make_scenes
from pamc.runtime import Runtime, predict

ALPHAS = (1.0, 5.0)


def alternating(repeats: int) -> list[float]:
    """1, 5, 5, 1, 1, 5, ...: each alpha runs first equally often."""
    return [a for r in range(repeats) for a in (ALPHAS if r % 2 == 0 else ALPHAS[::-1])]


def train_samples(data: dict, bundle, alpha: float, epochs: int, out: Path) -> tuple[list[float], Path]:
    config = {"data": data, "backbone": "scene-cnn", "method": "an", "alpha": alpha, "epochs": epochs,
              "batch_size": 16, "lr": 1e-4, "device": "cpu", "num_workers": 0, "progress": False,
              "out": str(out), "overwrite": True}
    result = pamc.train(config, bundle=bundle)
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    return [line["train_images_per_s"] for line in lines[1:]], result.out


def inference_sample(model, images, rt, alpha: float, batch_size: int) -> float:
    start = time.perf_counter()
    predict(model, images, rt, alpha=alpha, batch_size=batch_size)
    return len(images) / (time.perf_counter() - start)


def summary(samples: list[float]) -> str:
    spread = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return f"{statistics.fmean(samples):.0f} +- {spread:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenes and repeats (about a minute)")
    parser.add_argument("--repeats", type=int, help="training runs per alpha (default 4, quick 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 4)
    sizes = {"n_train": 320, "n_val": 64, "n_test": 512} if args.quick else {"n_train": 1000, "n_val": 200, "n_test": 2000}
    epochs = 3
    data = {"name": "scenes", "source": "digits", "canvas": 64, **sizes}
    bundle = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    load = os.getloadavg()[0]

    train = {a: [] for a in ALPHAS}
    with tempfile.TemporaryDirectory() as tmp:
        for n, alpha in enumerate(alternating(repeats)):
            samples, out = train_samples(data, bundle, alpha, epochs, Path(tmp) / f"run{n}")
            train[alpha] += samples
        model, _ = load_model(out)
    rt = Runtime.create("cpu")
    infer = {a: [] for a in ALPHAS}
    inference_sample(model, bundle.test.images, rt, 1.0, 128)  # warm-up
    for alpha in alternating(repeats * 2):
        infer[alpha].append(inference_sample(model, bundle.test.images, rt, alpha, 128))

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print(f"scenes: digits, 64 px, {len(bundle.train)} train / {len(bundle.test)} test images, {bundle.num_classes} "
          f"classes; scene-cnn (CAM 8 x 8); {repeats} training runs of {epochs} epochs per alpha, batch 16\n")
    print("| images/s (CPU) | alpha 1 | alpha 5 (BoostLU) | alpha 5 / alpha 1 | samples per alpha |")
    print("|---|---:|---:|---:|---:|")
    for name, samples, what in (("training (engine, epochs 2+)", train, "epochs"),
                                ("inference (predict, batch 128)", infer, "passes")):
        ratio = statistics.fmean(samples[5.0]) / statistics.fmean(samples[1.0])
        print(f"| {name} | {summary(samples[1.0])} | {summary(samples[5.0])} | {ratio:.3f} | "
              f"{len(samples[1.0])} {what} |")


if __name__ == "__main__":
    main()
