"""OpenImages V3 (2017_11) human-verified image-level labels: real partial labels (spec 1.6).

Files (from classes_2017_11 and annotations_human_2017_11, under `2017_11/` in the root or in the
root itself): `classes-trainable.txt` (the 5,000 trainable class ids, in that order; without it
every class of `class-descriptions.csv`), `class-descriptions.csv` (id,name; a name that occurs
twice is disambiguated with its id) and `<split>/annotations-human.csv` for split train,
validation and test (ImageID,Source,LabelName,Confidence).

Encoding: Confidence 1 -> +1 (verified present), 0 -> -1 (verified absent), no row -> 0
(unannotated); a pair listed by several sources is positive if any source says so.  Images are the
ImageIDs with an annotation of a listed class, sorted; paths `<image dir>/<ImageID>.jpg`, where the
image dir is `images_{train,val,test}` (the layout of the LL/BoostLU download scripts) if present,
else `train`, `validation`, `test`.  The labels stay sparse throughout: no dense images x classes
matrix is ever built.  The official validation set is pamc's val set, the official test set its test.
"""
from __future__ import annotations

import csv
from array import array
from pathlib import Path

import numpy as np

from ...errors import PamcError
from ...sparse_labels import SparseLabels
from .base import READERS, SourceData, SourceSplit, find_path, read_lines

SPLITS = {"train": ("train", "images_train"), "val": ("validation", "images_val"), "test": ("test", "images_test")}
CONFIDENCE = {"1": 1, "1.0": 1, "0": -1, "0.0": -1}


def _read_classes(meta: Path) -> tuple[list[str], list[str]]:
    """(class ids, display names) in label-column order."""
    descriptions_file = find_path(meta, ["class-descriptions.csv"], "OpenImages class-descriptions.csv",
                                  "extract classes_2017_11.tar.gz into the root")
    with open(descriptions_file, newline="", encoding="utf-8") as f:
        descriptions = {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2}
    trainable = meta / "classes-trainable.txt"
    ids = read_lines(trainable) if trainable.is_file() else list(descriptions)
    names = [descriptions.get(i, i) for i in ids]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ids, [f"{name} ({i})" if counts[name] > 1 else name for i, name in zip(ids, names)]


def _read_annotations(path: Path, class_index: dict[str, int]) -> tuple[list[str], SparseLabels, int]:
    """(sorted image ids, their sparse labels, rows of classes outside the list)."""
    image_row: dict[str, int] = {}
    rows, cols, values = array("q"), array("q"), array("b")
    outside = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        try:
            image_col, label_col, confidence_col = (header.index(n) for n in ("ImageID", "LabelName", "Confidence"))
        except ValueError:
            raise PamcError(f"{path}: header must name ImageID, LabelName and Confidence (got {','.join(header)!r})") from None
        for line_no, record in enumerate(reader, 2):
            try:
                c = class_index.get(record[label_col])
                if c is None:
                    outside += 1
                    continue
                value = CONFIDENCE[record[confidence_col]]
                rows.append(image_row.setdefault(record[image_col], len(image_row)))
            except (IndexError, KeyError):
                raise PamcError(f"{path}:{line_no}: expected ImageID,Source,LabelName,Confidence with Confidence 0 or 1, "
                                f"got {','.join(record)!r}") from None
            cols.append(c)
            values.append(value)
    ids = sorted(image_row)
    new_row = np.empty(len(ids), dtype=np.int64)
    new_row[[image_row[i] for i in ids]] = np.arange(len(ids))
    labels = SparseLabels.from_coo(new_row[np.asarray(rows)], np.asarray(cols), np.asarray(values),
                                   (len(ids), len(class_index)))
    return ids, labels, outside


@READERS.register("openimages")
def read_openimages(root: str | Path) -> SourceData:
    """`root`: the folder holding 2017_11/ (metadata) and the image folders."""
    root = Path(root)
    meta = root / "2017_11" if (root / "2017_11").is_dir() else root
    class_ids, names = _read_classes(meta)
    class_index = {class_id: c for c, class_id in enumerate(class_ids)}
    splits, notes = {}, []
    for split, (official, image_dir) in SPLITS.items():
        annotations = meta / official / "annotations-human.csv"
        if not annotations.is_file():
            if split == "val":
                notes.append("OpenImages: no validation annotations; val is carved out of train")
                continue
            raise PamcError(f"{annotations} not found; extract annotations_human_2017_11.tar.gz into the root")
        ids, labels, outside = _read_annotations(annotations, class_index)
        folder = image_dir if (root / image_dir).is_dir() else official
        splits[split] = SourceSplit([f"{folder}/{i}.jpg" for i in ids], observed=labels)
        if outside:
            notes.append(f"OpenImages {official}: {outside} annotations of classes outside the {len(names)} used ignored")
    return SourceData("openimages", root, names, train=splits["train"], val=splits.get("val"), test=splits["test"],
                      notes=notes)
