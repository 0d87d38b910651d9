"""Using trained checkpoints: evaluate on a dataset split at one or more BoostLU alphas, tune
per-class decision thresholds, and predict labels for image files and folders."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .activation import alpha_value, check_alpha, describe_alpha
from .checkpoint import CheckpointMeta, load_model, read_meta, resolve_checkpoint, write_meta
from .data import load_bundle
from .errors import PamcError
from .reference import REFERENCE_SEED
from .labels import observe
from .files import write_json
from .metrics import average_precision, predicted_labels, split_map, standard_metrics
from .models import eval_mode
from .runtime import Runtime, auto_workers, predict
from .thresholds import KEY, resolve_threshold, tune_thresholds

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


def calibrate(checkpoint: str, split: str = "val", alpha: Optional[float] = None, data: Optional[dict] = None,
              device: str = "auto", store: bool = True) -> dict:
    """Tune the checkpoint's per-class thresholds on `split` at `alpha` (default: its evaluation
    alpha) and, with `store`, write them into its model.json.  Returns the stored entry."""
    import datetime

    folder = resolve_checkpoint(checkpoint)
    model, meta = load_model(folder)
    part = load_split(split, data, str(folder))
    partial = part.full is None
    labels = part.observed if partial else part.full
    if labels is None:
        raise PamcError(f"the {split} split has no labels to choose thresholds on; pass --data with labels")
    alpha = meta.test_alpha if alpha is None else check_alpha(alpha)
    rt = Runtime.create(device)
    scores = predict(model.to(rt.device), part.images, rt, alpha=alpha)
    entry = {**tune_thresholds(scores.numpy(), np.asarray(labels), partial), "alpha": alpha_value(alpha), "split": split,
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if store:
        meta.extra[KEY] = entry
        write_meta(folder, meta)
    return entry


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise PamcError(f"unknown split {split!r}; valid: train, val, test")


def evaluate_checkpoint(checkpoint: str, split: str = "test", alphas: Optional[Sequence[float]] = None,
                        data: Optional[dict] = None, device: str = "auto", per_class_csv: Optional[str] = None,
                        model=None, meta: Optional[CheckpointMeta] = None, out: Optional[str] = None,
                        threshold=0.5) -> dict:
    """mAP and the standard multi-label metrics of a checkpoint on a split of its dataset (or
    `data`), for each evaluation alpha.

    Returns {"rows": [{"alpha": a, "map": m, "CP": .., ..., "OF1@3": ..}, ...], "split": ...,
    "dataset": ...}; with `per_class_csv`, per-class AP for every alpha is written there; with
    `out` (.json or .csv), the rows.  `threshold` decides CP ... OF1: a number, "auto" (the
    checkpoint's calibrated per-class thresholds) or a file (`pamc.thresholds.resolve_threshold`).
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
        decision = resolve_threshold(threshold, meta, alpha)
        scores = predict(model, part.images, rt, alpha=alpha, num_workers=auto_workers())
        rows.append({"alpha": alpha_value(alpha), "map": split_map(scores, targets),
                     "threshold": "per-class" if isinstance(decision, np.ndarray) else float(decision),
                     **standard_metrics(scores, targets, threshold=decision)})
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


class _Readable(Dataset):
    """Image files resized to one size; an unreadable one gives its reason instead of an image."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from .data.images import load_image

        try:
            return i, load_image(self.paths[i], self.size), ""
        except PamcError as exc:
            return i, None, str(exc)


def _collate(items):
    return items  # images may be missing (unreadable files); stacked by the consumer


@dataclass
class Predictions:
    """What `predict_images` did: the images scored (in order), their scores where kept, the
    unreadable files with their reasons, and the decision rule used."""

    paths: list[Path]
    scores: Optional[torch.Tensor]
    names: list[str]
    skipped: dict[str, str]
    threshold: float | list[float]
    top_k: Optional[int]


class _RowWriter:
    """Streams prediction rows to CSV (image, one column per class, predicted) or JSON lines."""

    def __init__(self, path: str, names: list[str]):
        if not path.endswith((".csv", ".jsonl")):
            raise PamcError(f"--out {path}: write .csv or .jsonl")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.names, self.jsonl = names, path.endswith(".jsonl")
        self.file = open(path, "w", newline="")
        self.csv = None if self.jsonl else csv.writer(self.file)
        if self.csv:
            self.csv.writerow(["image"] + names + ["predicted"])

    def write(self, paths, scores: np.ndarray, predicted: np.ndarray) -> None:
        for p, row, chosen in zip(paths, scores, predicted):
            labels = [n for n, keep in zip(self.names, chosen) if keep]
            if self.jsonl:
                record = {"image": str(p), "scores": {n: round(float(v), 6) for n, v in zip(self.names, row)},
                          "predicted": labels}
                self.file.write(json.dumps(record) + "\n")
            else:
                self.csv.writerow([str(p)] + [f"{v:.6f}" for v in row] + [";".join(labels)])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def predict_images(checkpoint: str, inputs: Sequence[str], out: Optional[str] = None, alpha: Optional[float] = None,
                   threshold=None, top_k: Optional[int] = None, device: str = "auto", image_size: Optional[int] = None,
                   batch_size: int = 64, num_workers: int = 0, progress: bool = False) -> Predictions:
    """Per-class probabilities and predicted labels for image files and folders of any size.

    Images are decoded, resized and scored batch by batch; with `out` (.csv or .jsonl) every batch
    is written as soon as it is scored (scores are then not kept in memory), else the scores are
    returned.  Unreadable files are skipped and listed in `Predictions.skipped`.  `threshold`:
    see `pamc.thresholds.resolve_threshold` (None: the calibrated thresholds, else 0.5)."""
    from tqdm.auto import tqdm
    from torch.utils.data import DataLoader

    model, meta = load_model(checkpoint)
    if top_k is not None and int(top_k) < 1:
        raise PamcError(f"--top-k must be >= 1 (got {top_k})")
    alpha = meta.test_alpha if alpha is None else check_alpha(alpha)
    decision = resolve_threshold(threshold, meta, alpha)
    rt = Runtime.create(device)
    model = model.to(rt.device)
    paths = image_paths(inputs)
    names = list(meta.class_names or [f"class_{c}" for c in range(meta.num_classes)])
    writer = _RowWriter(out, names) if out else None
    loader = DataLoader(_Readable(paths, int(image_size or meta.image_size or 448)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    kept, parts, skipped = [], [], {}
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, mininterval=1.0)
    try:
        with eval_mode(model), torch.no_grad():
            for items in loader:
                good = [(i, image) for i, image, reason in items if image is not None]
                skipped.update({str(paths[i]): reason for i, image, reason in items if image is None})
                if good:
                    x = torch.stack([image for _, image in good])
                    with rt.autocast():
                        scores = torch.sigmoid(model(rt.prepare(x), alpha=alpha).float()).cpu()
                    batch_paths = [paths[i] for i, _ in good]
                    kept += batch_paths
                    if writer:
                        writer.write(batch_paths, scores.numpy(), predicted_labels(scores.numpy(), decision, top_k))
                    else:
                        parts.append(scores)
                bar.update(len(items))
    finally:
        bar.close()
        if writer:
            writer.close()
    scores = None if writer else (torch.cat(parts) if parts else torch.zeros(0, meta.num_classes))
    rule = decision.tolist() if isinstance(decision, np.ndarray) else float(decision)
    return Predictions(kept, scores, names, skipped, rule, top_k)
