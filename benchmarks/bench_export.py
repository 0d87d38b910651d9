"""onnxruntime against PyTorch CPU inference of the same exported checkpoint, in images per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py [--threads 1] [--batch 16] [--seconds 2] [--rounds 7]

For each backbone (random weights; the speed does not depend on them) a checkpoint is saved,
exported with `pamc export`'s code, and both runtimes score the same batches, alternating in
short rounds so that load on a shared machine hits both alike; the rates are medians over the
rounds, the ratio (onnxruntime / PyTorch) the median of the rounds' ratios.
Both use `--threads` intra-op threads.  PyTorch runs `CamClassifier` in eval mode under
`torch.inference_mode` in float32 (the exported graph's precision).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pamc.checkpoint import CheckpointMeta, save_model
from pamc.export import export_onnx
from pamc.models import CamClassifier

CASES = [("scene-cnn", 64), ("resnet18", 224), ("resnet50", 224)]


def rate(run, batch: int, seconds: float) -> float:
    """Images per second of `run()` (one batch per call), over about `seconds`."""
    run()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="per runtime and round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.rounds} alternating rounds of {args.seconds:g} s each\n")
    print("| backbone | input | PyTorch img/s | onnxruntime img/s | ratio ort / torch (median of rounds) |\n|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, size in CASES:
            torch.manual_seed(0)
            model = CamClassifier(backbone, 20, alpha=5.0).eval()
            folder = Path(tmp) / backbone
            save_model(folder, model, CheckpointMeta(backbone=backbone, num_classes=20, alpha=5.0, image_size=size))
            path = export_onnx(folder, Path(tmp) / f"{backbone}.onnx")
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
            xt = torch.from_numpy(x)

            def run_torch():
                with torch.inference_mode():
                    torch.sigmoid(model(xt))

            def run_ort():
                session.run(None, {"images": x})

            torch_rates, ort_rates = [], []
            for _ in range(args.rounds):
                torch_rates.append(rate(run_torch, args.batch, args.seconds))
                ort_rates.append(rate(run_ort, args.batch, args.seconds))
            t, o = float(np.median(torch_rates)), float(np.median(ort_rates))
            ratio = float(np.median(np.array(ort_rates) / np.array(torch_rates)))
            print(f"| {backbone} | {size} px | {t:.1f} | {o:.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
