"""Readers of the benchmark datasets in their official layouts, and of the user's own data.

Each reader turns a download into a `SourceData`: per official split, image paths relative to an
image root and a label matrix (full 0/1, or observed 1 / 0 / -1 where the dataset is only
partially labelled).  `pamc.data.prepared.prepare` turns that into pamc's one on-disk format.
One module per dataset: voc, coco, nuswide, cub, openimages, own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import PamcError
from ...registry import check_keywords
from ...sparse_labels import SparseLabels
from .base import BENCHMARK_FACTS, READERS, SourceData, SourceSplit, find_missing, few


def read_source(dataset: str, root: str | Path, **options: Any) -> SourceData:
    """Read dataset `dataset` (voc, coco, nuswide, cub, openimages, own) from `root`."""
    reader = READERS.get(dataset)
    check_keywords(reader, options, f"dataset {dataset!r}", "option", exclude=("root",))
    if not Path(root).exists():
        raise PamcError(f"dataset folder {root} not found")
    return reader(root, **options)


def label_counts(split: SourceSplit) -> dict[str, np.ndarray]:
    """Per class: positives, negatives, unobserved; per image: positives."""
    n = len(split)
    if split.full is not None:
        positives = split.full.sum(axis=0, dtype=np.int64)
        return {"positives": positives, "negatives": n - positives, "unobserved": np.zeros_like(positives),
                "row_positives": split.full.sum(axis=1, dtype=np.int64)}
    if isinstance(split.observed, SparseLabels):
        positives, negatives = split.observed.class_counts()
        row_positives = split.observed.row_counts()[0]
    else:
        positives = (split.observed == 1).sum(axis=0)
        negatives = (split.observed < 0).sum(axis=0)
        row_positives = (split.observed == 1).sum(axis=1)
    return {"positives": positives, "negatives": negatives, "unobserved": n - positives - negatives,
            "row_positives": row_positives}


def describe(source: SourceData, check_images: bool = True) -> dict:
    """Counts to check a dataset before training: per split, images, labels per class, images
    without a positive and (with `check_images`) image files that are missing."""
    splits = {}
    for name, split in source.splits().items():
        counts = label_counts(split)
        entry = {
            "images": len(split),
            "labels": "full" if split.full is not None else "observed",
            "images_without_positive": int((counts["row_positives"] == 0).sum()),
            "mean_positives_per_image": float(counts["row_positives"].mean()) if len(split) else 0.0,
            "per_class": [{"class": c, "positives": int(p), "negatives": int(q), "unobserved": int(u)}
                          for c, p, q, u in zip(source.class_names, counts["positives"], counts["negatives"],
                                                counts["unobserved"])],
        }
        if check_images:
            missing = find_missing(source.image_root, split.paths)
            entry.update(missing_images=len(missing), missing_examples=missing[:5])
        splits[name] = entry
    return {"dataset": source.name, "image_root": str(source.image_root), "num_classes": len(source.class_names),
            "splits": splits, "notes": list(source.notes)}


def format_description(summary: dict, max_classes: int = 20) -> str:
    """`describe`'s summary as readable lines (the per-class table cut after `max_classes`)."""
    lines = [f"{summary['dataset']}: {summary['num_classes']} classes, images under {summary['image_root']}"]
    lines += [f"  note: {note}" for note in summary["notes"]]
    for name, split in summary["splits"].items():
        missing = f", {split['missing_images']:,} image files missing ({few(split['missing_examples'])})" \
            if split.get("missing_images") else ""
        lines.append(f"  {name}: {split['images']:,} images, {split['labels']} labels, "
                     f"{split['mean_positives_per_image']:.2f} positives per image, "
                     f"{split['images_without_positive']:,} without a positive{missing}")
    lines.append("  class: " + " | ".join(f"{name} +/-/?" for name in summary["splits"]))
    classes = list(zip(*(s["per_class"] for s in summary["splits"].values())))
    for entries in classes[:max_classes]:
        counts = " | ".join(f"{e['positives']}/{e['negatives']}/{e['unobserved']}" for e in entries)
        lines.append(f"  {entries[0]['class']}: {counts}")
    if len(classes) > max_classes:
        lines.append(f"  ... {len(classes) - max_classes} more classes")
    return "\n".join(lines)


from . import coco, cub, nuswide, openimages, own, voc  # noqa: E402,F401  (registration)

__all__ = ["BENCHMARK_FACTS", "READERS", "SourceData", "SourceSplit", "describe", "format_description",
           "label_counts", "read_source"]
