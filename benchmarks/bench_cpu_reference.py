"""pamc on the CPU against the reference pipeline, side by side in one run, as whole processes (not a test).

    python benchmarks/bench_cpu_reference.py [--images 320] [--size 224] [--epochs 3] [--repeats 3]
    python benchmarks/bench_cpu_reference.py --quick     # 96 images, 2 epochs, 1 repeat

It writes synthetic VOC-sized JPEG files (`bench_data.make_jpegs`) and a label table, prepares
them with `pamc prepare own` (single positive), and trains ResNet-18 at S px, batch 16, AN, for E
epochs, each configuration a whole process, the configurations interleaved and repeated R times
(median reported):

* `pamc train` with its defaults (what a user gets with no speed flags on this machine);
* `pamc train --amp off --channels-last off --num-workers 4`: the defaults before CPU-aware auto;
* `pamc train --data cache=DIR`: the uint8 image cache, read in the main process by whole batches;
* a reference-style loop written here, as the paper's reference code trains: PIL decode, Resize,
  RandomHorizontalFlip, ToTensor, Normalize in 2 DataLoader workers, torchvision ResNet-18 with a
  GAP + linear head, fp32, NCHW, Adam, BCE on the assumed-negative targets, then a validation pass.

Per configuration: seconds per epoch (training + validation + checkpoint; from pamc's
`epoch_seconds`, and timed the same way in the reference loop), the training loop's images/s, and
both as a ratio to the reference loop.  Then the data pipeline alone (images/s of one pass over
the training images, no model): the reference DataLoader, pamc's file loader, pamc's cache.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import make_jpegs  # noqa: E402

CLASSES = 20
BATCH = 16


def labels_table(folder: Path, names: list[str], seed: int = 0) -> Path:
    """Full 0/1 labels (1-3 positives per image) as the CSV `pamc prepare own` reads."""
    rng = np.random.default_rng(seed)
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image"] + [f"c{k}" for k in range(CLASSES)])
        for name in names:
            row = np.zeros(CLASSES, dtype=int)
            row[rng.choice(CLASSES, size=rng.integers(1, 4), replace=False)] = 1
            w.writerow([f"images/{name}"] + row.tolist())
    return path


def pamc(*args: str) -> list[str]:
    return [sys.executable, "-m", "pamc", *args]


def train_command(prepared: Path, out: Path, args, *extra: str) -> list[str]:
    return pamc("train", "--data", "name=prepared", "--data", f"path={prepared}", "--data", f"image_size={args.size}",
                "--backbone", "resnet18", "--method", "an", "--epochs", str(args.epochs), "--batch-size", str(BATCH),
                "--lr", "1e-4", "--device", "cpu", "--no-progress", "--tensorboard", "off", "--out", str(out),
                "--overwrite", *extra)


def pamc_run(command: list[str], out: Path) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = lines[1:] or lines  # the first epoch also pays for start-up (workers, allocator, oneDNN)
    return {"epoch_s": statistics.median(r["epoch_seconds"] for r in later),
            "train_img_s": statistics.median(r["train_images_per_s"] for r in later),
            "runtime": json.loads((out / "results.json").read_text()).get("runtime", {})}


# ----------------------------------------------------------------------------- the reference-style loop


def reference_transform(size: int, train: bool):
    from torchvision import transforms as T

    steps = [T.Resize((size, size))] + ([T.RandomHorizontalFlip()] if train else [])
    return T.Compose(steps + [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


class ReferenceImages(torch.utils.data.Dataset):
    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform):
        self.root, self.paths, self.labels, self.transform = root, paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as image:
            return self.transform(image.convert("RGB")), torch.from_numpy(self.labels[i])


def read_prepared(prepared: Path, split: str) -> tuple[Path, list[str], np.ndarray]:
    """The images and observed labels of a split that `pamc prepare` wrote (its documented format)."""
    root = Path(json.loads((prepared / "meta.json").read_text())["image_root"])
    paths = (prepared / f"images_{split}.txt").read_text().splitlines()
    labels = np.load(prepared / f"observed_{split}.npy").astype(np.float32)
    return root, paths, labels


def reference_loop(prepared: Path, size: int, epochs: int, out: Path) -> None:
    """Trains as the reference code does and writes per-epoch times to `out` (JSON lines)."""
    import torchvision

    torch.manual_seed(0)
    loaders = {}
    for split, train in (("train", True), ("val", False)):
        root, paths, labels = read_prepared(prepared, split)
        loaders[split] = torch.utils.data.DataLoader(ReferenceImages(root, paths, labels, reference_transform(size, train)),
                                                     batch_size=BATCH, shuffle=train, num_workers=2, drop_last=train)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    records = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        seen = 0
        for x, y in loaders["train"]:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), (y == 1).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(x)
        trained = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            for x, _ in loaders["val"]:
                torch.sigmoid(model(x))
        torch.save(model.state_dict(), out.with_suffix(".pt"))
        records.append({"epoch": epoch, "epoch_seconds": time.perf_counter() - start,
                        "train_images_per_s": seen / trained})
    out.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def reference_run(prepared: Path, args, out: Path) -> dict:
    command = [sys.executable, __file__, "--reference-loop", str(prepared), "--size", str(args.size),
               "--epochs", str(args.epochs), "--record", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the reference loop failed:\n{done.stderr[-2000:]}")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    later = lines[1:] or lines
    return {"epoch_s": statistics.median(r["epoch_seconds"] for r in later),
            "train_img_s": statistics.median(r["train_images_per_s"] for r in later)}


# ----------------------------------------------------------------------------- the data pipeline alone


def pipeline_rates(prepared: Path, size: int, cache: Path) -> list[tuple[str, float]]:
    from pamc.data import load_bundle
    from pamc.data.loading import image_batches
    from pamc.distributed import Dist, GlobalBatches
    from pamc.runtime import auto_workers

    root, paths, labels = read_prepared(prepared, "train")
    rows = []
    loader = torch.utils.data.DataLoader(ReferenceImages(root, paths, labels, reference_transform(size, True)),
                                         batch_size=BATCH, shuffle=True, num_workers=2)
    start = time.perf_counter()
    seen = sum(len(x) for x, _ in loader)
    rows.append(("reference: PIL + torchvision transforms, 2 DataLoader workers", seen / (time.perf_counter() - start)))
    for name, data in (("pamc: JPEG files, auto workers", {"name": "prepared", "path": str(prepared), "image_size": size}),
                       ("pamc: uint8 cache, whole batches in the main process",
                        {"name": "prepared", "path": str(prepared), "image_size": size, "cache": str(cache)})):
        images = load_bundle(data).train.images
        batches = [index for index, _ in GlobalBatches(len(images), BATCH, 0, Dist())]
        start = time.perf_counter()
        seen = sum(len(x) for x in image_batches(images, batches, auto_workers()))
        rows.append((name, seen / (time.perf_counter() - start)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reference-loop", metavar="PREPARED", help=argparse.SUPPRESS)
    p.add_argument("--record", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_loop:
        return reference_loop(Path(args.reference_loop), args.size, args.epochs, Path(args.record))
    if args.quick:
        args.images, args.epochs, args.repeats = 96, 2, 1
    from pamc.runtime import available_cores, native_bf16

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = make_jpegs(tmp / "own" / "images", args.images)
        labels_table(tmp / "own", names)
        prepared, cache = tmp / "prepared", tmp / "cache"
        subprocess.run(pamc("prepare", "own", "--root", str(tmp / "own"), "--out", str(prepared), "--observation",
                            "single-positive"), check=True, capture_output=True)
        configs = {
            "pamc train (defaults)": lambda out: pamc_run(train_command(prepared, out, args), out),
            "pamc train, previous defaults (fp32, NCHW, 4 workers)": lambda out: pamc_run(
                train_command(prepared, out, args, "--amp", "off", "--channels-last", "off", "--num-workers", "4"), out),
            "pamc train --data cache=DIR": lambda out: pamc_run(
                train_command(prepared, out, args, "--data", f"cache={cache}"), out),
            "reference-style loop": lambda out: reference_run(prepared, args, out),
        }
        results: dict[str, list[dict]] = {name: [] for name in configs}
        for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits every row
            for k, (name, run) in enumerate(configs.items()):
                results[name].append(run(tmp / f"run-{k}-{repeat}"))
        pipeline = pipeline_rates(prepared, args.size, cache)
        trained = len(read_prepared(prepared, "train")[1])

    ref = {key: statistics.median(r[key] for r in results["reference-style loop"]) for key in ("epoch_s", "train_img_s")}
    print(f"\n### ResNet-18 at {args.size} px, batch {BATCH}, AN, {args.images} JPEGs ({trained} in the training split), "
          f"{args.epochs} epochs; "
          f"median of {args.repeats} whole processes each (epochs after the first)\n")
    print(f"Machine: {platform.machine()} {platform.processor() or ''}, {available_cores()} cores available, "
          f"native bf16: {native_bf16() or 'no'}, torch {torch.__version__}\n")
    print("| configuration | s / epoch | x reference | training loop images/s | x reference | amp, layout |")
    print("|---|---:|---:|---:|---:|---|")
    for name, runs in results.items():
        epoch_s = statistics.median(r["epoch_s"] for r in runs)
        img_s = statistics.median(r["train_img_s"] for r in runs)
        rt = runs[0].get("runtime") or {"amp": "off", "channels_last": "off"}
        print(f"| {name} | {epoch_s:.2f} | {ref['epoch_s'] / epoch_s:.2f} | {img_s:.1f} | {img_s / ref['train_img_s']:.2f} | "
              f"{rt['amp']}, {'channels_last' if rt['channels_last'] == 'on' else 'NCHW'} |")
    print("\n### The data pipeline alone (one pass over the training images, no model)\n")
    print("| pipeline | images/s |\n|---|---:|")
    for name, rate in pipeline:
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
