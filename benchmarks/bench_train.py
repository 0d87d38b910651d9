"""Training and inference speed: the reference configuration against pamc's fast path (not a test).

    python benchmarks/bench_train.py [--device auto] [--model resnet50] [--size 448] [--steps 30]
                                     [--batch-sizes 16,64] [--compile default:16,reduce-overhead:16]
                                     [--e2e --images 2048 --workers 12]
    python benchmarks/bench_train.py --quick        # CPU: scene-cnn at 64 px, a few steps, no compile

Every row runs pamc's own training loop (`Run.epoch_loop`: label lookup, flips, autocast,
loss, backward, optimiser step; LL-R from epoch 2 by default) on a `CamClassifier` with the
1x1-conv CAM head, BoostLU (alpha 5) and global average pooling:

* reference: fp32, NCHW, `torch.optim.Adam` defaults, batch 16, PyTorch's default backend flags
  (cudnn.benchmark off, TF32 matmul off) -- the published configuration;
* fast: bf16 autocast + channels_last + fused Adam with the engine's flags (cudnn.benchmark,
  TF32), at each `--batch-sizes`; the same at alpha 1 gives BoostLU's cost;
* compile: the fast path under `torch.compile` (MODE:BATCH pairs; modes default,
  reduce-overhead (CUDA graphs), max-autotune), printed last as it takes longest.

Images are synthetic uint8 batches already on the device (a dataset with a `take` method, which
the engine's loader uses directly), so these rows measure the model step alone; each row warms
up (autotuning, compilation, graph capture) on a first short epoch and times a second.
Inference runs `engine.predict` (eager: predict unwraps compiled models) at `--infer-batch`.

`--e2e` adds data through the engine's loader: a synthetic VOC-like JPEG set (see bench_data.py)
read as `ImageFiles` (decode + resize in W workers) and as a `CachedImages` uint8 memmap built
once by `build_image_cache` (its build time is printed), with pinned memory on CUDA.  Each epoch
starts fresh loader workers, as the engine does, and that start-up is included.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from pamc.config import TrainConfig, make_config
from pamc.data import DatasetBundle, Split
from pamc.distributed import GlobalBatches
from pamc.engine import Run
from pamc.runtime import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import make_jpegs  # noqa: E402  (the shared synthetic JPEG set)


@dataclass(frozen=True)
class Setting:
    name: str
    batch: int
    amp: str = "bf16"
    channels_last: str = "on"
    fused_adam: str = "on"
    compile: str = "off"
    alpha: float = 5.0
    reference: bool = False  # PyTorch's default backend flags instead of the engine's

    def describe(self) -> list[str]:
        return [self.name, str(self.batch), "bf16 autocast" if self.amp == "bf16" else "fp32",
                "channels_last" if self.channels_last == "on" else "NCHW",
                "fused" if self.fused_adam == "on" else "default", self.compile, f"{self.alpha:g}"]


REFERENCE = Setting("reference", 16, amp="off", channels_last="off", fused_adam="off", reference=True)


class DeviceImages(Dataset):
    """`n` images served from a pool of random uint8 images resident on the device.

    The engine's loader calls `take` for whole batches when a dataset has it, so the loop runs
    without data cost; index i is pool image i mod pool size.
    """

    def __init__(self, n: int, pool: torch.Tensor):
        self.n, self.pool = n, pool

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pool[i % len(self.pool)]

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return self.pool[index.to(self.pool.device) % len(self.pool)]


def random_labels(n: int, classes: int, seed: int) -> np.ndarray:
    """Full 0/1 labels with about 1.5 positives per image and at least one (as VOC)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.5 / classes).astype(np.float32)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1.0
    return labels


def bundle(train_images: Dataset, classes: int, pool: torch.Tensor) -> DatasetBundle:
    n = len(train_images)
    small = Split(DeviceImages(2, pool), random_labels(2, classes, 1))
    return DatasetBundle("synthetic", [f"class_{c}" for c in range(classes)],
                         Split(train_images, random_labels(n, classes, 0)), small, small)


def set_reference_flags() -> None:
    """PyTorch's defaults, which the reference code ran with (Runtime sets the engine's)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


def make_run(s: Setting, args, data: DatasetBundle, workers: int = 0) -> Run:
    cfg = make_config({**TrainConfig().to_dict(), "data": {"name": "synthetic"}, "backbone": args.model,
                       "alpha": s.alpha, "method": args.method, "epochs": 2, "batch_size": s.batch,
                       "device": args.device, "amp": s.amp, "channels_last": s.channels_last,
                       "fused_adam": s.fused_adam, "compile": s.compile, "num_workers": workers,
                       "eval_batch_size": args.infer_batch, "out": str(args.workdir / "run"),
                       "overwrite": True, "progress": False})
    run = Run(cfg, data)
    if s.reference:
        set_reference_flags()
    return run


def sync(run: Run) -> None:
    if run.rt.device.type == "cuda":
        torch.cuda.synchronize(run.rt.device)


def epoch_rate(run: Run, images: int, epoch: int) -> float:
    """Images/s of one epoch over the first `images` training images."""
    run.batches = GlobalBatches(images, run.cfg.batch_size, run.cfg.seed, run.rt.dist)
    sync(run)
    start = time.perf_counter()
    run.epoch_loop(epoch)
    sync(run)
    return images / (time.perf_counter() - start)


def release() -> None:
    """Free the last setting's memory; the caller has dropped its `Run`."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # a fresh compilation per setting (no shape specialisation carried over)


def train_rate(s: Setting, args, pool: torch.Tensor, infer: bool = False) -> tuple[float, float, Optional[float]]:
    """(train images/s, peak GPU GB, inference images/s if `infer`) for one setting."""
    warm_steps = max(args.warmup, 3 if s.compile != "off" else 1)
    n = max(warm_steps, args.steps) * s.batch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = make_run(s, args, bundle(DeviceImages(n, pool), args.classes, pool))
    try:
        epoch_rate(run, warm_steps * s.batch, epoch=1)
        train = epoch_rate(run, args.steps * s.batch, epoch=2)
        peak = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else float("nan")
        inference = None
        if infer:
            images = DeviceImages(args.infer_images, pool)
            predict(run.net, DeviceImages(args.infer_batch, pool), run.rt, batch_size=args.infer_batch)  # warm-up
            sync(run)
            start = time.perf_counter()
            predict(run.net, images, run.rt, batch_size=args.infer_batch)
            inference = len(images) / (time.perf_counter() - start)
        return train, peak, inference
    finally:
        del run
        release()


def e2e_rates(args, fast: Setting, pool: torch.Tensor) -> list[tuple[str, float]]:
    from pamc.data.images import CachedImages, ImageFiles, build_image_cache

    work = args.workdir / "e2e"
    start = time.perf_counter()
    names = make_jpegs(work / "jpeg", args.images)
    files = ImageFiles(names, work / "jpeg", size=args.size)
    made = time.perf_counter() - start
    start = time.perf_counter()
    build_image_cache(files, work / "cache.npy", workers=args.workers)
    built = time.perf_counter() - start
    print(f"{len(files)} synthetic VOC-like JPEGs made in {made:.1f} s; uint8 cache built once in {built:.1f} s "
          f"({len(files) / built:.0f} img/s with {args.workers} workers, "
          f"{os.path.getsize(work / 'cache.npy') / 1e6:,.0f} MB)\n")
    out = []
    for name, images in (("CachedImages (uint8 memmap)", CachedImages(work / "cache.npy")), ("ImageFiles (JPEG decode)", files)):
        run = make_run(fast, args, bundle(images, args.classes, pool), workers=args.workers)
        try:
            epoch_rate(run, 2 * fast.batch, epoch=1)  # warm-up: autotuning for this batch shape
            out.append((name, epoch_rate(run, len(images) - len(images) % fast.batch, epoch=2)))
        finally:
            del run
            release()
    return out


def table(header: list[str]) -> None:
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)


def row(cells: list[str]) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def parse_compile(text: str) -> list[tuple[str, int]]:
    if text in ("", "none", "off"):
        return []
    pairs = []
    for item in text.split(","):
        mode, _, batch = item.partition(":")
        pairs.append((mode.strip(), int(batch or 64)))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--model", default="resnet50", help="backbone name (resnet50, scene-cnn, ...)")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--method", default="ll-r", help="loss; LL-R selects large losses from epoch 2")
    p.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps per setting (at least 3 when compiled)")
    p.add_argument("--batch-sizes", default="16,64", help="batches of the fast path")
    p.add_argument("--compile", default=None, help="MODE:BATCH pairs, or none (default: default:16,reduce-overhead:16; --quick: none)")
    p.add_argument("--infer-batch", type=int, default=128)
    p.add_argument("--infer-images", type=int, default=1024)
    p.add_argument("--e2e", action="store_true", help="also train from JPEG files and from the uint8 cache")
    p.add_argument("--images", type=int, default=2048, help="synthetic JPEGs for --e2e")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1), help="loader workers for --e2e")
    p.add_argument("--e2e-batch", type=int, default=64)
    p.add_argument("--workdir", default=None, help="folder for run folders and the --e2e JPEGs and cache (default: temporary, removed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: scene-cnn, 64 px, few steps, no compile")
    args = p.parse_args()
    if args.e2e and args.images < args.e2e_batch:
        p.error(f"--images must be at least --e2e-batch ({args.e2e_batch})")
    if args.quick:
        args.device, args.model, args.size = "cpu", "scene-cnn", 64
        args.steps, args.warmup, args.infer_images = 12, 2, 256
        args.threads = args.threads or 1
        args.compile = args.compile or "none"
        args.images, args.workers = min(args.images, 256), min(args.workers, 2)
    args.compile = args.compile or "default:16,reduce-overhead:16"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    warnings.filterwarnings("ignore", message=".*deprecated.*")  # torchvision 0.29 flags its image io
    if args.threads:
        torch.set_num_threads(args.threads)
    keep = args.workdir is not None
    args.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pamc-bench-train-"))
    try:
        measure(args)
    finally:
        if not keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


def measure(args) -> None:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible; use --device cpu")
    pool = torch.randint(0, 256, (256, 3, args.size, args.size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)

    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"\n## Training / inference speed: {args.model} at {args.size} px, {args.classes} classes, {args.method}\n")
    print(f"device {name}; torch {torch.__version__}" + (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else "")
          + f"; {torch.get_num_threads()} CPU threads; {args.steps} timed steps after {args.warmup} warm-up steps per row\n")
    table(["setting", "batch", "precision", "layout", "Adam", "compile", "alpha", "train img/s", "vs reference", "peak GPU GB"])
    batches = [int(b) for b in args.batch_sizes.split(",")]
    fast = [Setting("fast", b) for b in batches]
    settings = [REFERENCE, *fast, replace(fast[-1], name="fast, BoostLU off", alpha=1.0)]
    rates, inference = {}, {}
    for s in settings:
        infer = s in (REFERENCE, fast[-1])
        rates[s], peak, inference[s] = train_rate(s, args, pool, infer=infer)
        row(s.describe() + [f"{rates[s]:,.0f}", f"{rates[s] / rates[REFERENCE]:.2f}x", f"{peak:.1f}" if cuda else "-"])
    boost = fast[-1]
    cost = rates[settings[-1]] / rates[boost] - 1
    print(f"\nBoostLU (alpha 5 vs 1, fast path, batch {boost.batch}): {rates[boost]:,.0f} vs "
          f"{rates[settings[-1]]:,.0f} img/s, i.e. {100 * cost:+.1f}% time for BoostLU\n")

    print(f"### Inference (engine.predict, batch {args.infer_batch}, {args.infer_images} images)\n")
    table(["setting", "precision", "layout", "img/s", "vs reference"])
    for s in (REFERENCE, boost):
        row([s.name, s.describe()[2], s.describe()[3], f"{inference[s]:,.0f}", f"{inference[s] / inference[REFERENCE]:.2f}x"])

    if args.e2e:
        e2e_fast = Setting("fast", args.e2e_batch)
        model_only = rates.get(e2e_fast)
        print(f"\n### End to end: fast path, batch {args.e2e_batch}, {args.workers} loader workers"
              + (", pinned memory" if cuda else "") + "\n")
        results = e2e_rates(args, e2e_fast, pool)
        table(["images from", "train img/s (epoch, workers' start-up included)", "model alone (above)"])
        for source, value in results:
            row([source, f"{value:,.0f}", f"{model_only:,.0f}" if model_only else "-"])

    compiled = parse_compile(args.compile)
    if compiled:
        print("\n### torch.compile (fast path)\n")
        table(["setting", "batch", "compile", "train img/s", "vs eager fast", "vs reference"])
        for mode, batch in compiled:
            s = Setting("fast", batch, compile=mode)
            eager = rates.get(Setting("fast", batch))
            try:
                value = train_rate(s, args, pool)[0]
            except Exception as exc:  # a backend the machine lacks (Triton, a compiler): report and go on
                row(["fast", str(batch), mode, f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}", "-", "-"])
                continue
            row(["fast", str(batch), mode, f"{value:,.0f}", f"{value / eager:.2f}x" if eager else "-",
                 f"{value / rates[REFERENCE]:.2f}x"])


if __name__ == "__main__":
    main()
