"""Using trained checkpoints: evaluate on a dataset split at one or more BoostLU alphas, and
predict labels for image files."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import torch

from .activation import alpha_value, describe_alpha
from .checkpoint import CheckpointMeta, load_model, read_meta, resolve_checkpoint
from .data import load_bundle
from .errors import PamcError
from .reference import REFERENCE_SEED
from .labels import observe
from .files import write_json
from .metrics import average_precision, split_map, standard_metrics
from .runtime import Runtime, predict

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def checkpoint_data(meta: Optional[CheckpointMeta], data: Optional[dict] = None):
    """The user's `data`, or the dataset recorded in the checkpoint (checked to be the same one)."""
    if data:
        return load_bundle(data)
    if meta is None or not meta.data:
        raise PamcError("say which data to use: --data name=prepared --data path=DIR (or a scenes spec)")
    bundle = load_bundle(meta.data)
    if meta.dataset and bundle.name != meta.dataset:
        raise PamcError(f"the checkpoint was trained on {meta.dataset!r}, but its recorded data settings give "
                        f"{bundle.name!r} (it was trained on a dataset passed in Python); pass --data")
    return bundle


def load_split(split: str, data: Optional[dict] = None, checkpoint: Optional[str] = None):
    """A split of `data`, or of the dataset the checkpoint was trained on.

    Where the split carries no observed labels, they are drawn with the checkpoint's observation
    protocol, so validation "with observed labels only" sees what training saw.
    """
    check_split(split)
    meta = read_meta(resolve_checkpoint(checkpoint)) if checkpoint is not None else None
    part = getattr(checkpoint_data(meta, data), split)
    if part.observed is None and part.full is not None:
        part.observed = observe(part.full, None, meta.observation if meta else "auto",
                                meta.observation_seed if meta else REFERENCE_SEED, what=f"the {split} split")
    return part


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise PamcError(f"unknown split {split!r}; valid: train, val, test")


def evaluate_checkpoint(checkpoint: str, split: str = "test", alphas: Optional[Sequence[float]] = None,
                        data: Optional[dict] = None, device: str = "auto", per_class_csv: Optional[str] = None,
                        model=None, meta: Optional[CheckpointMeta] = None, out: Optional[str] = None) -> dict:
    """mAP and the standard multi-label metrics of a checkpoint on a split of its dataset (or
    `data`), for each evaluation alpha.

    Returns {"rows": [{"alpha": a, "map": m, "CP": .., ..., "OF1@3": ..}, ...], "split": ...,
    "dataset": ...}; with `per_class_csv`, per-class AP for every alpha is written there; with
    `out` (.json or .csv), the rows.
    """
    check_split(split)
    if out:
        check_rows_path(out)  # before the slow part
    if model is None:
        model, meta = load_model(checkpoint)
    rt = Runtime.create(device)
    model = model.to(rt.device)
    bundle = checkpoint_data(meta, data)
    part = getattr(bundle, split)
    targets = part.full if part.full is not None else part.observed
    if targets is None:
        raise PamcError(f"the {split} split has no labels to evaluate against")
    if bundle.num_classes != meta.num_classes:
        raise PamcError(f"the checkpoint has {meta.num_classes} classes, the data {bundle.num_classes}; "
                        "evaluate on the data it was trained for")
    alphas = list(alphas or [meta.test_alpha])
    rows, per_class = [], {}
    for alpha in alphas:
        scores = predict(model, part.images, rt, alpha=alpha)
        rows.append({"alpha": alpha_value(alpha), "map": split_map(scores, targets), **standard_metrics(scores, targets)})
        if per_class_csv and part.full is not None:
            per_class[describe_alpha(alpha)] = average_precision(scores, part.full) * 100
    if per_class_csv and per_class:
        with open(per_class_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class"] + [f"ap_alpha_{a}" for a in per_class])
            for c, name in enumerate(meta.class_names or bundle.class_names):
                w.writerow([name] + [f"{per_class[a][c]:.4f}" for a in per_class])
    result = {"rows": rows, "split": split, "dataset": bundle.name}
    if out:
        write_rows(out, result)
    return result


def write_rows(path: str, result: dict) -> None:
    """The evaluation rows as JSON (everything) or CSV (one line per alpha), by the file's suffix."""
    check_rows_path(path)
    if path.endswith(".json"):
        write_json(path, result)
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
            w.writeheader()
            w.writerows(result["rows"])


def check_rows_path(path: str) -> None:
    if not path.endswith((".json", ".csv")):
        raise PamcError(f"--out {path}: write .json or .csv")


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
    rt = Runtime.create(device)
    model = model.to(rt.device)
    paths = image_paths(inputs)
    size = int(image_size or meta.image_size or 448)
    images = ImageFiles([str(p) for p in paths], root=".", size=size)  # paths are absolute or relative to the cwd
    scores = predict(model, images, rt, alpha=meta.test_alpha if alpha is None else alpha)
    names = list(meta.class_names or [f"class_{c}" for c in range(meta.num_classes)])
    if out_csv:
        with open(out_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image"] + names + ["predicted"])
            for p, row in zip(paths, scores.numpy()):
                labels = [n for n, s in zip(names, row) if s >= threshold]
                w.writerow([str(p)] + [f"{s:.6f}" for s in row] + [";".join(labels)])
    return paths, scores, names


