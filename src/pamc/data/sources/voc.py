"""PASCAL VOC 2012 classification labels (spec 1.1), as Cole et al.'s format_pascal.py reads them.

`ImageSets/Main/<class>_{train,val}.txt` hold one "<image id> <flag>" line per image; flag 1 is a
positive, 0 (difficult) and -1 are negatives.  An image is listed only if it has a positive
(every VOC classification image does); ids are sorted; paths are `JPEGImages/<id>.jpg` under the
VOC2012 folder.  Official train 5,717 images, official val (pamc's test set) 5,823.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import PamcError
from .base import READERS, SourceData, SourceSplit, find_path, read_lines

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
           "train", "tvmonitor"]


def _read_split(main: Path, split: str) -> SourceSplit:
    positives: dict[str, list[int]] = {}
    for c, name in enumerate(CLASSES):
        path = main / f"{name}_{split}.txt"
        if not path.is_file():
            raise PamcError(f"{path} not found; the VOC2012 devkit is incomplete (download VOCtrainval_11-May-2012.tar)")
        for line_no, line in enumerate(read_lines(path), 1):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                raise PamcError(f"{path}:{line_no}: expected '<image id> <1|0|-1>', got {line!r}")
            if fields[1] == "1":
                positives.setdefault(fields[0], []).append(c)
    ids = sorted(positives)
    full = np.zeros((len(ids), len(CLASSES)), dtype=np.uint8)
    for row, image_id in enumerate(ids):
        full[row, positives[image_id]] = 1
    return SourceSplit([f"JPEGImages/{image_id}.jpg" for image_id in ids], full=full)


@READERS.register("voc")
def read_voc(root: str | Path) -> SourceData:
    """`root`: the folder holding VOCdevkit, the VOCdevkit folder, or VOC2012 itself."""
    root = Path(root)
    voc2012 = find_path(root, ["VOCdevkit/VOC2012", "VOC2012", "."], "the VOC2012 folder")
    main = find_path(voc2012, ["ImageSets/Main"], "VOC2012/ImageSets/Main",
                     "point at the folder that holds VOCdevkit (from VOCtrainval_11-May-2012.tar)")
    return SourceData("voc", voc2012, list(CLASSES), train=_read_split(main, "train"), test=_read_split(main, "val"))
