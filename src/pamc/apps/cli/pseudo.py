"""`pamc pseudo-label`: vision-language scores of a dataset's training images, for VLPL and AEVLP."""
from __future__ import annotations

import argparse
import json

from ...errors import PamcError
from .base import command, key_values


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", metavar="KEY=VALUE", required=True,
                   help="the dataset, as for training: path=data/voc (a prepared folder), or name=scenes ...")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--open-clip", metavar="ARCH", help="open_clip architecture (built-in name or model-config "
                     ".json); with --checkpoint FILE")
    src.add_argument("--hf", metavar="FOLDER", help="a local Hugging Face CLIPModel folder (transformers)")
    src.add_argument("--stand-in", action="store_true", help="the scenes: the scene backbone pretrained on single "
                     "objects with its object classifier, in place of CLIP")
    src.add_argument("--scores", metavar="FILE", help="your own scores (.npy, N x C or N x V x C): check them "
                     "against the dataset and report their pseudo-labels' quality")
    p.add_argument("--checkpoint", metavar="FILE", help="open_clip weights (a local file)")
    p.add_argument("--template", default="a photo of a {}.", help="prompt template, {} = the class name")
    p.add_argument("--class-names", metavar="FILE", help="names for the prompts: .txt one per class in "
                   "classes.txt order, or .json/.yaml {dataset class: name}")
    p.add_argument("--grid", type=int, help="g: the global view plus g x g tiles (0: global only; default 4 as "
                   "AEVLP, CUB 5; the stand-in 2, as `--scores stand-in`)")
    p.add_argument("--temperature", type=float, help="T of softmax(cos / T) (CLIP default 0.01, CUB 0.1; "
                   "stand-in default 1 on its classifier's logits)")
    p.add_argument("--normalization", default="model", choices=["model", "imagenet"],
                   help="the scorer's own image statistics, or ImageNet's as the references feed CLIP")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", help="root folder of stored scores (default: DATA/vl-scores, or the cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def _data(items: list[str]) -> dict:
    data = key_values(items, "--data")
    if "name" not in data:
        if "path" not in data:
            raise PamcError("--data needs path=PREPARED_FOLDER or name=scenes")
        data["name"] = "prepared"
    return data


@command("pseudo-label", "score every training image with a local CLIP (or the scenes' stand-in) for VLPL / AEVLP",
         arguments)
def pseudo_label(args: argparse.Namespace) -> int:
    from ...vlscores import check_score_file, score_training_images

    data = _data(args.data)
    if args.checkpoint and not args.open_clip:
        raise PamcError("--checkpoint goes with --open-clip ARCH")
    if args.scores:
        result = check_score_file(data, args.scores)
    else:
        from ...vlscores import STAND_IN_GRID

        scorer = "open_clip" if args.open_clip else "transformers" if args.hf else "stand-in"
        grid = args.grid if args.grid is not None else STAND_IN_GRID if scorer == "stand-in" else 4
        result = score_training_images(data, scorer, arch=args.open_clip, checkpoint=args.checkpoint, model=args.hf,
                                       template=args.template, class_names=args.class_names, grid=grid,
                                       temperature=args.temperature, normalization=args.normalization,
                                       batch_size=args.batch_size, out=args.out, device=args.device,
                                       progress=not args.no_progress)
    print(f"scores: {result['path']}  ({' x '.join(map(str, result['shape']))}: images x views x classes)")
    for rule, q in result["quality"].items():
        fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"  {rule}: precision {fmt(q['precision'])}, recall {fmt(q['recall'])} of the unobserved positives, "
              f"{q['pseudo_positives_per_image']:.2f} pseudo-positives per image")
    print(f"train with: pamc train --preset ... --scores {result['path']}")
    if result.get("seconds") is not None:
        print(json.dumps({"seconds": round(result["seconds"], 3)}))
    return 0
