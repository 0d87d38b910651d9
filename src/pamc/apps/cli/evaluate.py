"""`pamc eval` and `pamc predict`: a trained model on labelled data, or on any images."""
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
                              per_class_csv=args.per_class_csv, model=model, meta=meta, out=args.out)
    print(f"{out['dataset']} {out['split']} (metrics in %; CP ... OF1 at score >= 0.5, @3: also among an image's top 3):")
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
    p.add_argument("images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", help="CSV to write (image, one score per class, predicted labels)")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the checkpoint's evaluation alpha)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--image-size", type=int, help="resize to this square size (default: the training size)")
    p.add_argument("--device", default="auto")


@command("predict", "per-class scores for image files or folders", predict_arguments)
def predict(args: argparse.Namespace) -> int:
    from ...inference import predict_images

    paths, scores, names = predict_images(args.checkpoint, args.images, out_csv=args.out, alpha=args.alpha,
                                          threshold=args.threshold, device=args.device, image_size=args.image_size)
    if not args.out:
        for p, row in zip(paths, scores.tolist()):
            top = sorted(zip(row, names), reverse=True)[:3]
            print(f"{p}: " + ", ".join(f"{n} {s:.3f}" for s, n in top))
    else:
        print(f"scores for {len(paths)} images written to {args.out}")
    return 0
