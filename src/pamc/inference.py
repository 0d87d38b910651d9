"""Using trained checkpoints: evaluate on a dataset split at one or more BoostLU alphas, and
predict labels for image files."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoint import load_model
from .config import TrainConfig
from .engine import Runtime, load_bundle, observe, predict, split_map
from .errors import PamcError
from .metrics import average_precision

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def runtime(device: str = "auto") -> Runtime:
    return Runtime.from_config(TrainConfig(device=device))


def checkpoint_data(meta: dict, data: Optional[dict] = None):
    """The user's `data`, or the dataset recorded in the checkpoint (checked to be the same one)."""
    if data:
        return load_bundle(data)
    if not meta.get("data"):
        raise PamcError("say which data to use: --data name=prepared --data path=DIR (or a scenes spec)")
    bundle = load_bundle(meta["data"])
    if meta.get("dataset") and bundle.name != meta["dataset"]:
        raise PamcError(f"the checkpoint was trained on {meta['dataset']!r}, but its recorded data settings give "
                        f"{bundle.name!r} (it was trained on a dataset passed in Python); pass --data")
    return bundle


def load_split(split: str, data: Optional[dict] = None, checkpoint: Optional[str] = None):
    """A split of `data`, or of the dataset the checkpoint was trained on.

    Where the split carries no observed labels, they are drawn with the checkpoint's observation
    protocol, so validation "with observed labels only" sees what training saw.
    """
    if split not in ("train", "val", "test"):
        raise PamcError(f"unknown split {split!r}; valid: train, val, test")
    meta = {}
    if checkpoint is not None:
        from .checkpoint import read_meta, resolve_checkpoint

        meta = read_meta(resolve_checkpoint(checkpoint))
    part = getattr(checkpoint_data(meta, data), split)
    if part.observed is None and part.full is not None:
        part.observed = observe(part, meta.get("observation", "auto"), meta.get("observation_seed", 1200))
    return part


def evaluate_checkpoint(checkpoint: str, split: str = "test", alphas: Optional[Sequence[float]] = None,
                        data: Optional[dict] = None, device: str = "auto", per_class_csv: Optional[str] = None,
                        model=None, meta: Optional[dict] = None) -> dict:
    """mAP of a checkpoint on a split of its dataset (or `data`), for each evaluation alpha.

    Returns {"rows": [{"alpha": a, "map": m}, ...], "split": ..., "dataset": ...}; with
    `per_class_csv`, per-class AP for every alpha is written there.
    """
    if model is None:
        model, meta = load_model(checkpoint)
    rt = runtime(device)
    model = model.to(rt.device)
    if split not in ("train", "val", "test"):
        raise PamcError(f"unknown split {split!r}; valid: train, val, test")
    bundle = checkpoint_data(meta, data)
    part = getattr(bundle, split)
    targets = part.full if part.full is not None else part.observed
    if targets is None:
        raise PamcError(f"the {split} split has no labels to evaluate against")
    if bundle.num_classes != meta["num_classes"]:
        raise PamcError(f"the checkpoint has {meta['num_classes']} classes, the data {bundle.num_classes}; evaluate on the data it was trained for")
    alphas = list(alphas or [meta.get("eval_alpha", meta.get("alpha", 1.0))])
    rows, per_class = [], {}
    for alpha in alphas:
        scores = predict(model, part.images, rt, alpha=alpha)
        rows.append({"alpha": float(alpha), "map": split_map(scores, targets)})
        if per_class_csv and part.full is not None:
            per_class[alpha] = average_precision(scores, part.full) * 100
    if per_class_csv and per_class:
        with open(per_class_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class"] + [f"ap_alpha_{a:g}" for a in per_class])
            for c, name in enumerate(meta.get("class_names") or bundle.class_names):
                w.writerow([name] + [f"{per_class[a][c]:.4f}" for a in per_class])
    return {"rows": rows, "split": split, "dataset": bundle.name}


def image_paths(inputs: Sequence[str]) -> list[Path]:
    """Files given directly, plus the images inside any folders given (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise PamcError(f"image or folder {p} not found")
    if not paths:
        raise PamcError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(inputs)}")
    return paths


def predict_images(checkpoint: str, inputs: Sequence[str], out_csv: Optional[str] = None,
                   alpha: Optional[float] = None, threshold: float = 0.5, device: str = "auto",
                   image_size: Optional[int] = None) -> tuple[list[Path], torch.Tensor, list[str]]:
    """Per-class probabilities for image files; optionally a CSV with scores and predicted labels."""
    from .data.images import ImageFiles

    model, meta = load_model(checkpoint)
    rt = runtime(device)
    model = model.to(rt.device)
    paths = image_paths(inputs)
    size = int(image_size or meta.get("image_size") or 448)
    images = ImageFiles([str(p) for p in paths], root=".", size=size)  # paths are absolute or relative to the cwd
    scores = predict(model, images, rt, alpha=meta.get("eval_alpha") if alpha is None else alpha)
    names = list(meta.get("class_names") or [f"class_{c}" for c in range(meta["num_classes"])])
    if out_csv:
        with open(out_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"] + names + ["predicted"])
            for p, row in zip(paths, scores.numpy()):
                labels = [n for n, s in zip(names, row) if s >= threshold]
                w.writerow([str(p)] + [f"{s:.6f}" for s in row] + [";".join(labels)])
    return paths, scores, names


