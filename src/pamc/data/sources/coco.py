"""MS-COCO 2014 image-level labels from instance annotations (spec 1.1, Cole et al.'s format_coco.py).

Class index = position of the category in the json `categories` list (ids 1..90 with gaps ->
0..79); an image is kept only if it has an instance annotation (82,081 train / 40,137 val);
image ids are sorted as strings, so 100 comes before 99; paths are
`<split>2014/COCO_<split>2014_<12-digit id>.jpg` under the root.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import PamcError
from .base import READERS, SourceData, SourceSplit, find_path


def _load(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise PamcError(f"cannot read {path}: {exc}; re-download annotations_trainval2014.zip") from None
    if not isinstance(data, dict) or "categories" not in data or "annotations" not in data:
        raise PamcError(f"{path} is not a COCO instances file (needs 'categories' and 'annotations')")
    return data


def _read_split(annotations: Path, split: str) -> tuple[list[str], SourceSplit]:
    data = _load(annotations / f"instances_{split}2014.json")
    names = [c["name"] for c in data["categories"]]
    index = {c["id"]: i for i, c in enumerate(data["categories"])}
    try:
        pairs = [(str(a["image_id"]), index[a["category_id"]]) for a in data["annotations"]]
    except KeyError as exc:
        raise PamcError(f"instances_{split}2014.json: an annotation has an unknown category id "
                        f"or lacks a field ({exc})") from None
    ids = sorted({image_id for image_id, _ in pairs})
    row = {image_id: r for r, image_id in enumerate(ids)}
    full = np.zeros((len(ids), len(names)), dtype=np.uint8)
    if pairs:
        rows, cols = zip(*((row[image_id], c) for image_id, c in pairs))
        full[list(rows), list(cols)] = 1
    paths = [f"{split}2014/COCO_{split}2014_{int(image_id):012d}.jpg" for image_id in ids]
    return names, SourceSplit(paths, full=full)


@READERS.register("coco")
def read_coco(root: str | Path) -> SourceData:
    """`root`: the folder holding annotations/, train2014/ and val2014/."""
    root = Path(root)
    annotations = find_path(root, ["annotations"], "the COCO annotations folder",
                            "point at the folder where annotations_trainval2014.zip was extracted")
    names, train = _read_split(annotations, "train")
    test_names, test = _read_split(annotations, "val")
    if test_names != names:
        raise PamcError("instances_train2014.json and instances_val2014.json list different categories")
    return SourceData("coco", root, names, train=train, test=test)
