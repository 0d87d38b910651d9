"""Data pipeline speed alone: decoding JPEGs against reading pamc's uint8 image cache (not a test).

    python benchmarks/bench_data.py [--images 1024] [--size 448] [--workers 1,4,8,16] [--device auto]
    python benchmarks/bench_data.py --quick          # 128 images, 1-2 workers

A synthetic VOC-like JPEG set is generated first (500 px on the long side, VOC's usual shapes,
smooth colour fields with grain, quality 90, about 60-70 KB each).  Then images/s of:

* PIL decode + convert("RGB") + resize to S x S (bilinear, antialiased), one process: the
  reference pipeline's per-core rate;
* pamc's `load_image` (torchvision/libjpeg-turbo decode + antialiased resize), one process;
* `ImageFiles` through the engine's loader (`image_batches`: DataLoader, batches of 64 in a
  shuffled order, W worker processes, pinned memory on CUDA), worker start-up included as in
  every training epoch;
* `CachedImages` (the uint8 memmap built by `build_image_cache`) through the same loader;
* whole shuffled batches read from the memmap in the main process (one fancy index per batch);
* nvJPEG on the GPU (CUDA only): `torchvision.io.decode_jpeg(list_of_byte_tensors,
  device="cuda")` per batch, then an antialiased resize of each image on the GPU.

The cache is read with a warm page cache (it was just written); from a cold disk its rate is the
disk's sequential/random read speed divided by S*S*3 bytes per image.  The cache costs
N x 3 x S x S bytes of disk (and of page cache to stay fast), printed per dataset at the end:
VOC 5,717 official train images at 448 px = 3.4 GB; COCO 82,081 = 49.4 GB.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pamc.data.images import CachedImages, ImageFiles, build_image_cache, load_image
from pamc.data.loading import image_batches
from pamc.distributed import Dist, GlobalBatches

#: official training images per dataset (spec section 1; NUS-WIDE: the official release's train
#: split, the re-crawled subset used by most papers is smaller)
DATASET_SIZES = {"VOC 2012": 5_717, "COCO 2014": 82_081, "CUB-200-2011": 5_994, "NUS-WIDE (official)": 161_789}
#: VOC's common image shapes (width, height)
VOC_SHAPES = [(500, 375), (375, 500), (500, 333), (500, 500), (333, 500), (500, 281)]
BATCH = 64


def _write_jpeg(job: tuple[Path, int]) -> Path:
    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = VOC_SHAPES[seed % len(VOC_SHAPES)]
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    image += rng.normal(0.0, 8.0, (h, w, 1))  # film-like grain keeps the JPEG from being trivially small
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def make_jpegs(folder: Path, count: int, workers: int | None = None) -> list[str]:
    """`count` synthetic VOC-sized JPEGs in `folder` (deterministic); returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{i:06d}.jpg", i) for i in range(count)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(_write_jpeg, jobs, chunksize=16))
    return [p.name for p, _ in jobs]


def workers_label(w: int) -> str:
    return f"{w} worker" + ("s" if w != 1 else "")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pil_reference(folder: Path, names: list[str], size: int) -> None:
    for name in names:
        with Image.open(folder / name) as image:
            image.convert("RGB").resize((size, size), Image.BILINEAR)  # PIL's bilinear is antialiased


def pamc_decode(folder: Path, names: list[str], size: int) -> None:
    for name in names:
        load_image(folder / name, size)


def through_loader(dataset, workers: int, pin: bool) -> int:
    """Every image once, in the engine's shuffled batches, through `image_batches`."""
    batches = [index for index, _ in GlobalBatches(len(dataset), BATCH, 0, Dist())]
    return sum(len(x) for x in image_batches(dataset, batches, workers, pin))


def memmap_batches(cache: CachedImages) -> int:
    images = np.load(cache.path, mmap_mode="r")
    seen = 0
    for index, _ in GlobalBatches(len(cache), BATCH, 0, Dist()):
        seen += len(torch.from_numpy(images[np.sort(index.numpy())]))
    return seen


def nvjpeg(folder: Path, names: list[str], size: int, device: torch.device) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as TF

    for start in range(0, len(names), BATCH):
        data = [read_file(str(folder / n)) for n in names[start:start + BATCH]]
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        torch.stack([TF.resize(image, [size, size], antialias=True) for image in decoded])


def cache_cost_rows(size: int) -> list[str]:
    per_image = 3 * size * size
    rows = [f"| dataset | train images | uint8 cache at {size} px | at 224 px |", "|---|---:|---:|---:|"]
    for name, n in DATASET_SIZES.items():
        rows.append(f"| {name} | {n:,} | {n * per_image / 1e9:.1f} GB | {n * 3 * 224 * 224 / 1e9:.1f} GB |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="synthetic JPEGs to generate")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--workers", default=None, help="comma-separated loader worker counts (default: 1,4,8,16 up to the CPU count)")
    p.add_argument("--single", type=int, default=200, help="images timed in the one-process rows")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (nvJPEG row only on CUDA)")
    p.add_argument("--workdir", default=None, help="where the JPEGs and the cache go (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="128 images, at most 2 workers")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*deprecated.*")  # torchvision 0.29 flags its image io
    cores = os.cpu_count() or 1
    if args.quick:
        args.images, args.single = min(args.images, 128), min(args.single, 64)
    workers = [int(w) for w in args.workers.split(",")] if args.workers else \
        sorted({w for w in (1, 4, 8, 16) if w <= cores} | {min(cores, 2 if args.quick else 16)})
    if args.quick:
        workers = [w for w in workers if w <= 2]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible; use --device cpu")
    torch.set_num_threads(1)  # per-core rows; loader workers run one thread each anyway

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pamc-bench-data-"))
    try:
        folder = work / "jpeg"
        start = time.perf_counter()
        names = make_jpegs(folder, args.images)
        made = time.perf_counter() - start
        mean_kb = np.mean([(folder / n).stat().st_size for n in names]) / 1e3
        files = ImageFiles(names, folder, size=args.size)
        build_workers = max(workers)
        build = timed(lambda: build_image_cache(files, work / "cache.npy", workers=build_workers))
        cache = CachedImages(work / "cache.npy")
        few = names[:args.single]

        rows = [("PIL decode + resize (reference)", "1 process", rate(len(few), timed(lambda: pil_reference(folder, few, args.size)))),
                ("pamc load_image (PIL decode + tensor resize)", "1 process", rate(len(few), timed(lambda: pamc_decode(folder, few, args.size))))]
        for w in workers:
            rows.append(("ImageFiles via image_batches", workers_label(w), rate(len(files), timed(lambda: through_loader(files, w, cuda)))))
        for w in workers:
            rows.append(("CachedImages via image_batches", workers_label(w), rate(len(cache), timed(lambda: through_loader(cache, w, cuda)))))
        rows.append(("memmap whole-batch reads", "1 process", rate(len(cache), timed(lambda: memmap_batches(cache)))))
        if cuda:
            nvjpeg(folder, names[:BATCH], args.size, device)  # warm-up: nvJPEG handles, kernels
            rows.append(("nvJPEG decode_jpeg(list, device=cuda) + GPU resize", "1 process",
                         rate(len(names), timed(lambda: nvjpeg(folder, names, args.size, device)))))

        gpu = torch.cuda.get_device_name(device) if cuda else "none"
        print(f"\n## Data pipeline: {args.images} synthetic JPEGs (mean {mean_kb:.0f} KB) -> uint8 {args.size} px\n")
        print(f"torch {torch.__version__}, {cores} CPU cores ({platform.processor() or platform.machine()}), GPU {gpu}; "
              f"JPEGs generated in {made:.1f} s; cache built in {build:.1f} s with {build_workers} workers "
              f"({rate(len(files), build):.0f} img/s, {os.path.getsize(work / 'cache.npy') / 1e6:.0f} MB)\n")
        print("| pipeline | processes | images/s |\n|---|---|---:|")
        for name, how, value in rows:
            print(f"| {name} | {how} | {value:,.0f} |")
        print("\nuint8 cache disk/RAM cost (N x 3 x S x S bytes):\n")
        print("\n".join(cache_cost_rows(args.size)))
        print("\nOpenImages (millions of images) needs terabytes at 448 px: read its JPEGs instead.")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
