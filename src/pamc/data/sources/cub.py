"""CUB-200-2011 with its 312 binary attributes as classes (spec 1.1, Cole et al.'s format_cub.py).

Labels are the `is_present` column of `attributes/image_attribute_labels.txt` (certainty ignored).
Only the first three fields of each line are read: a few lines of the real file carry an extra
field, which breaks a strict five-column parser.  Image order is that of `images.txt`; the
official split (`train_test_split.txt`, 1 = train) gives 5,994 train / 5,794 test images; paths
are `images/<file>` under the CUB_200_2011 folder.  Class names come from `attributes.txt`, which
the archive puts beside the CUB_200_2011 folder (also looked for inside it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import PamcError
from .base import READERS, SourceData, SourceSplit, find_path, parse_int, read_lines


def _id_table(path: Path, min_fields: int) -> list[list[str]]:
    rows = [line.split() for line in read_lines(path)]
    for line_no, fields in enumerate(rows, 1):
        if len(fields) < min_fields:
            raise PamcError(f"{path}:{line_no}: expected at least {min_fields} fields, got {' '.join(fields)!r}")
    return rows


@READERS.register("cub")
def read_cub(root: str | Path) -> SourceData:
    """`root`: the folder CUB_200_2011.tgz was extracted into, or the CUB_200_2011 folder itself."""
    root = Path(root)
    hint = "point at the folder where CUB_200_2011.tgz was extracted"
    cub = find_path(root, ["CUB_200_2011/CUB_200_2011", "CUB_200_2011", "."], "the CUB_200_2011 folder")
    images_file = find_path(cub, ["images.txt"], "CUB images.txt", hint)
    names = [" ".join(f[1:]) for f in _id_table(
        find_path(cub, ["../attributes.txt", "attributes.txt", "attributes/attributes.txt"], "CUB attributes.txt", hint), 2)]
    images = _id_table(images_file, 2)
    row_of = {image_id: r for r, (image_id, *_) in enumerate(images)}
    is_train = {f[0]: f[1] for f in _id_table(find_path(cub, ["train_test_split.txt"], "CUB train_test_split.txt", hint), 2)}
    labels_file = find_path(cub, ["attributes/image_attribute_labels.txt"], "CUB image_attribute_labels.txt", hint)

    full = np.zeros((len(images), len(names)), dtype=np.uint8)
    present = np.zeros(full.shape, dtype=bool)
    for line_no, line in enumerate(read_lines(labels_file), 1):
        fields = line.split()
        if len(fields) < 3 or fields[2] not in ("0", "1") or fields[0] not in row_of:
            raise PamcError(f"{labels_file}:{line_no}: expected '<image id> <attribute id> <0|1> ...', got {line!r}")
        attribute = parse_int(fields[1], labels_file, line_no)
        if not 1 <= attribute <= len(names):
            raise PamcError(f"{labels_file}:{line_no}: attribute id {attribute} outside 1..{len(names)}")
        full[row_of[fields[0]], attribute - 1] = fields[2] == "1"
        present[row_of[fields[0]], attribute - 1] = True

    split = np.array([is_train.get(image_id) for image_id, *_ in images])
    if not np.isin(split, ["0", "1"]).all():
        raise PamcError("train_test_split.txt must give 0 or 1 for every image of images.txt")
    paths = np.array([f"images/{' '.join(rest)}" for _, *rest in images])
    notes = []
    if not present.all():
        notes.append(f"CUB: {int((~present).sum())} (image, attribute) pairs have no line; taken as absent")
    return SourceData("cub", cub, names,
                      train=SourceSplit(paths[split == "1"].tolist(), full=full[split == "1"]),
                      test=SourceSplit(paths[split == "0"].tolist(), full=full[split == "0"]), notes=notes)
