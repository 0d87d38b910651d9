"""`pamc eval`, `predict`, `calibrate` and `export`: a trained model on labelled data, on any images, its decision thresholds, and the model as ONNX."""
from __future__ import annotations

import argparse

from ...errors import PamcError
from .base import add_data_flags, command, key_values


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="run folder (uses best/) or checkpoint folder")
    p.add_argument("--torchvision", metavar="ARCH=WEIGHTS", help="evaluate a torchvision classifier from a weights file, "
                   "converted to CAM form (post-hoc BoostLU; needs --data)")
    p.add_argument("--boost-alpha", type=float, help="BoostLU alpha for --torchvision models")
    p.add_argument("--boost-form", metavar="FORM", help="form of BoostLU for --torchvision models: NAME[:KEY=VALUE,...] "
                   "(`pamc list`; default boostlu)")
    p.add_argument("--alpha", type=float, nargs="+", help="evaluation alphas (default: the checkpoint's)")
    p.add_argument("--per-class-csv", help="write per-class AP here")
    p.add_argument("--out", help="write every metric per alpha here (.json or .csv)")
    p.add_argument("--threshold", default="0.5", help="decides CP ... OF1: a number, auto (the thresholds "
                   "stored by `pamc calibrate`) or a file of per-class thresholds (.csv class,threshold or .json)")
    add_data_flags(p, "test", "evaluate on other data")


@command("eval", "mAP of a checkpoint on a split, at one or more BoostLU alphas", eval_arguments)
def evaluate(args: argparse.Namespace) -> int:
    from ...activation import describe_alpha
    from ...inference import evaluate_checkpoint

    data = key_values(args.data, "--data") or None
    model = meta = None
    if args.torchvision:  # post-hoc BoostLU on an existing GAP + linear classifier
        from ...posthoc import torchvision_checkpoint

        if not data:
            raise PamcError("--torchvision needs --data naming the dataset the classifier was trained for")
        model, meta = torchvision_checkpoint(args.torchvision, args.boost_alpha or 1.0, args.boost_form)
    elif args.boost_form:
        raise PamcError("--boost-form applies to --torchvision models; a checkpoint keeps the form it was trained with")
    elif args.checkpoint is None:
        raise PamcError("give a checkpoint (run folder) or --torchvision ARCH=WEIGHTS_FILE")
    alphas = args.alpha or ([args.boost_alpha] if args.boost_alpha else None)
    out = evaluate_checkpoint(args.checkpoint, split=args.split, alphas=alphas, data=data, device=args.device,
                              per_class_csv=args.per_class_csv, model=model, meta=meta, out=args.out,
                              threshold=args.threshold)
    rule = "0.5" if args.threshold == "0.5" else f"the thresholds {args.threshold}"
    print(f"{out['dataset']} {out['split']} (metrics in %; CP ... OF1 at score >= {rule}, @3: also among an image's top 3):")
    keys = ["map", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1@3", "OF1@3"]
    print("| alpha | " + " | ".join("mAP" if k == "map" else k for k in keys) + " |\n|---:|" + "---:|" * len(keys))
    for row in out["rows"]:
        print(f"| {describe_alpha(row['alpha'])} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    if args.out:
        print(f"every metric written to {args.out}")
    if args.per_class_csv:
        print(f"per-class AP written to {args.per_class_csv}")
    return 0


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", help="write rows as they come: .csv (image, one score per class, predicted labels) "
                   "or .jsonl (one JSON object per image)")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the checkpoint's evaluation alpha)")
    p.add_argument("--threshold", help="auto (the thresholds stored by `pamc calibrate`), a number, or a file of "
                   "per-class thresholds (default: the stored thresholds if any, else 0.5)")
    p.add_argument("--top-k", type=int, help="predict at most the K highest-scoring classes of each image")
    p.add_argument("--image-size", type=int, help="resize to this square size (default: the training size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="image-decoding processes (default: the cores available; 0: in the "
                   "main process)")
    p.add_argument("--device", default="auto")


@command("predict", "per-class scores and predicted labels for image files or folders of any size", predict_arguments)
def predict(args: argparse.Namespace) -> int:
    import sys

    from ...inference import predict_images
    from ...runtime import auto_workers

    workers = auto_workers() if args.workers is None else args.workers
    result = predict_images(args.checkpoint, args.images, out=args.out, alpha=args.alpha, threshold=args.threshold,
                            top_k=args.top_k, device=args.device, image_size=args.image_size,
                            batch_size=args.batch_size, num_workers=workers, progress=sys.stderr.isatty())
    if args.out:
        print(f"scores for {len(result.paths)} images written to {args.out}")
    else:
        for p, row in zip(result.paths, result.scores.tolist()):
            top = sorted(zip(row, result.names), reverse=True)[:3]
            print(f"{p}: " + ", ".join(f"{n} {s:.3f}" for s, n in top))
    rule = "per-class thresholds" if isinstance(result.threshold, list) else f"threshold {result.threshold:g}"
    print(f"predicted labels: {rule}" + (f", at most {result.top_k} per image" if result.top_k else ""))
    if result.skipped:
        first = next(iter(result.skipped.values()))
        print(f"pamc: warning: skipped {len(result.skipped)} unreadable image(s); first: {first}", file=sys.stderr)
    return 0


def calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (uses best/) or checkpoint folder")
    p.add_argument("--alpha", type=float, help="BoostLU alpha to tune at (default: the checkpoint's evaluation alpha)")
    p.add_argument("--no-store", action="store_true", help="do not write the thresholds into the checkpoint")
    p.add_argument("--out", help="also write the thresholds here (.csv: class, threshold, f1, fallback)")
    add_data_flags(p, "val", "tune on other data")


@command("calibrate", "per-class decision thresholds tuned on the validation split, stored with the checkpoint",
         calibrate_arguments)
def calibrate(args: argparse.Namespace) -> int:
    from ...activation import describe_alpha
    from ...checkpoint import read_meta, resolve_checkpoint
    from ...inference import calibrate as tune
    from ...thresholds import write_threshold_csv

    entry = tune(args.checkpoint, split=args.split, alpha=args.alpha, data=key_values(args.data, "--data") or None,
                 device=args.device, store=not args.no_store)
    meta = read_meta(resolve_checkpoint(args.checkpoint))
    names = meta.class_names or [f"class_{c}" for c in range(meta.num_classes)]
    values = entry["values"]
    print(f"thresholds for {len(values)} classes on the {entry['split']} split ({entry['labels']} labels, "
          f"alpha {describe_alpha(entry['alpha'])}): min {min(values):.3g}, median {sorted(values)[len(values) // 2]:.3g}, "
          f"max {max(values):.3g}; {len(entry['fallback'])} class(es) without positives got the pooled threshold")
    if not args.no_store:
        print(f"stored in {resolve_checkpoint(args.checkpoint)}/model.json; `pamc predict --threshold auto` uses them")
    if args.out:
        write_threshold_csv(args.out, entry, names)
        print(f"written to {args.out}")
    return 0


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (uses best/) or checkpoint folder")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--cams", action="store_true", help="also output the raw CAMs (B x C x h x w)")
    p.add_argument("--alpha", type=float, help="BoostLU alpha inside the graph (default: the evaluation alpha)")
    p.add_argument("--image-size", type=int, help="the size recorded in the metadata (default: the training size)")


@command("export", "the checkpoint as an ONNX model (alpha, class names and thresholds inside)", export_arguments)
def export(args: argparse.Namespace) -> int:
    from ...optional import available

    if not (available("onnx") and available("onnxscript")):
        raise PamcError("pamc export needs onnx and onnxscript: pip install 'pamc[export]'")
    from ...activation import describe_alpha
    from ...export import export_onnx, read_metadata

    path = export_onnx(args.checkpoint, args.out, cams=args.cams, alpha=args.alpha, image_size=args.image_size)
    info = read_metadata(path)
    print(f"wrote {path}: input images (B x 3 x {info['image_size'][0]} x {info['image_size'][1]}, normalised), "
          f"outputs scores{' and cams' if args.cams else ''}; alpha {describe_alpha(info['alpha'])}, "
          f"{len(info['class_names'])} classes, thresholds {'stored' if info['thresholds'] else 'none (use 0.5)'}")
    return 0
