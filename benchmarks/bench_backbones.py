"""Per-step training time of each backbone family as a pamc `CamClassifier` (not a test).

    python benchmarks/bench_backbones.py [--batch 8] [--size 128] [--steps 5] [--warmup 2] [--threads 2]
    python benchmarks/bench_backbones.py --backbones timm:convnext_tiny,resnet50 --device cuda
    python benchmarks/bench_backbones.py --backbones scene-cnn,timm:tf_efficientnet_lite0 --size 64 --batch 16 \
        --layouts nchw,channels_last       # the memory layouts side by side (`pamc demo` uses channels_last)
    python benchmarks/bench_backbones.py --backbones scene-cnn,resnet18,timm:tf_efficientnet_lite0 \
        --layouts channels_last --precisions fp32,bf16   # what CPU-aware `auto` weighs (pamc.runtime)

One step = forward (CAM head, BoostLU alpha 5, GAP), the AN loss (BCE on the logits), backward,
Adam step and zero_grad, on a random B x 3 x S x S batch; random weights (the speed does not
depend on them).  All models are built first and their steps timed round robin, so load from
other processes on a shared machine slows every backbone alike.  Reported: the median wall time
and process CPU time of `--steps` timed steps after `--warmup` untimed ones (with one thread the
CPU time is robust to a busy machine), images/s from the wall time, and the parameter count.  On
CPU it runs in float32, on CUDA with bf16 autocast, unless `--precisions` names them (fp32 and/or
bf16, each a row); in each of `--layouts` (default: contiguous NCHW on CPU and channels_last on
CUDA).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

DEFAULT = ("scene-cnn,resnet18,resnet50,timm:resnet50,timm:efficientnet_lite0,timm:tf_efficientnet_lite0,"
           "timm:convnext_tiny,timm:vit_small_patch16_224")


class Bench:
    """One backbone's model, optimiser and batch; `step()` times one training step."""

    def __init__(self, name: str, batch: int, size: int, device: torch.device, layout: str, precision: str):
        from pamc.models import CamClassifier

        torch.manual_seed(0)
        self.name, self.layout, self.device, self.cuda = name, layout, device, device.type == "cuda"
        self.precision = precision
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model = CamClassifier(name, 20, alpha=5.0).to(device, memory_format=fmt).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        self.y = (torch.rand(batch, 20, device=device) < 0.1).float()
        self.wall, self.cpu = [], []

    def step(self, record: bool = True) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(self.x)
        F.binary_cross_entropy_with_logits(logits.float(), self.y).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        if record:
            self.wall.append(time.perf_counter() - wall)
            self.cpu.append(time.process_time() - cpu)

    def row(self) -> str:
        with torch.no_grad():
            h, w = self.model.cams(self.x[:1]).shape[-2:]
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        wall, cpu = statistics.median(self.wall), statistics.median(self.cpu)
        return (f"| {self.name} | {self.layout} | {self.precision} | {params:.1f} | {h}x{w} | {1000 * wall:.0f} | {1000 * cpu:.0f} | "
                f"{len(self.x) / wall:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=DEFAULT)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layouts", default=None, help="nchw and/or channels_last, comma-separated "
                                                    "(default: nchw on CPU, channels_last on CUDA)")
    p.add_argument("--precisions", default=None, help="fp32 and/or bf16 (autocast), comma-separated "
                                                       "(default: fp32 on CPU, bf16 on CUDA)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {device}; "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, median of {args.steps} steps after {args.warmup}")
    layouts = (args.layouts or ("channels_last" if device.type == "cuda" else "nchw")).split(",")
    if set(layouts) - {"nchw", "channels_last"}:
        p.error(f"--layouts takes nchw and/or channels_last (got {args.layouts})")
    precisions = (args.precisions or ("bf16" if device.type == "cuda" else "fp32")).split(",")
    if set(precisions) - {"fp32", "bf16"}:
        p.error(f"--precisions takes fp32 and/or bf16 (got {args.precisions})")
    print("| backbone | layout | precision | params (M) | CAM | ms / step (wall) | ms / step (CPU time) | images / s |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")
    benches = [Bench(name.strip(), args.batch, args.size, device, layout, precision)
               for name in args.backbones.split(",") for layout in layouts for precision in precisions]
    for bench in benches:
        for _ in range(args.warmup):
            bench.step(record=False)
    for _ in range(args.steps):  # round robin: a busy machine slows every backbone alike
        for bench in benches:
            bench.step()
    for bench in benches:
        print(bench.row(), flush=True)

if __name__ == "__main__":
    main()
