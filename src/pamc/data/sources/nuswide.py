"""NUS-WIDE (81 concepts), from either of the two sources the literature uses (spec 1.1, 7.15).

* ``variant="formatted"`` - the files Cole et al. distribute for the subset they re-crawled from
  Flickr in 2020, used by [C], [L] and BoostLU [B]: `formatted_{train,val}_images.npy` (paths under
  `Flickr/`) and `formatted_{train,val}_labels.npy` (0/1), taken as they are.  The files carry no
  class names: pamc reads them from `Concepts81.txt` when it lies under the root (assuming Cole's
  columns follow it, which is not documented), else names the classes `concept_00` ... `concept_80`.
* ``variant="official"`` - the official release (the EM paper [E] uses it): `ImageList/
  {Train,Test}Imagelist.txt`, `Concepts81.txt` and `TrainTestLabels/Labels_<concept>_{Train,Test}.txt`
  (one 0/1 per image list line).  Images with none of the 81 concepts are dropped (as for VOC and
  COCO: single-positive observation needs a positive); list order is kept; paths use "/".

``variant="auto"`` picks the formatted files when `formatted_train_images.npy` is in the root.
NUS numbers from [E] and from [C]/[L]/[B] are therefore not on the same images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import PamcError
from .base import READERS, SourceData, SourceSplit, find_path, read_lines

CONCEPTS = ["ConceptsList/Concepts81.txt", "Concepts81.txt", "NUS-WIDE/ConceptsList/Concepts81.txt"]
VARIANTS = ("auto", "formatted", "official")


def _read_formatted(root: Path) -> SourceData:
    splits = {}
    for split in ("train", "val"):
        paths_file = find_path(root, [f"formatted_{split}_images.npy"], "Cole et al.'s NUS-WIDE files")
        labels_file = find_path(root, [f"formatted_{split}_labels.npy"], "Cole et al.'s NUS-WIDE files")
        paths = [str(p).replace("\\", "/") for p in np.load(paths_file, allow_pickle=False)]
        labels = np.load(labels_file, allow_pickle=False)
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise PamcError(f"{labels_file} must be an images x 81 matrix of 0/1")
        splits[split] = SourceSplit(paths, full=labels.astype(np.uint8))
    num_classes = splits["train"].full.shape[1]
    concepts = next((root / c for c in CONCEPTS if (root / c).is_file()), None)
    names = read_lines(concepts) if concepts else [f"concept_{i:02d}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise PamcError(f"{concepts} lists {len(names)} concepts but the label files have {num_classes} columns")
    notes = ["NUS-WIDE: Cole et al.'s re-crawled subset (formatted files)"]
    if not concepts:
        notes.append("class names unknown: put Concepts81.txt in the root to name them")
    return SourceData("nuswide", root / "Flickr", names, train=splits["train"], test=splits["val"], notes=notes)


def _read_official(root: Path) -> SourceData:
    hint = "point at the NUS-WIDE folder holding ImageList/, ConceptsList/ and Groundtruth/ (or use variant='formatted')"
    names = read_lines(find_path(root, CONCEPTS, "Concepts81.txt", hint))
    labels_dir = find_path(root, ["Groundtruth/TrainTestLabels", "TrainTestLabels"], "the TrainTestLabels folder", hint)
    splits, dropped = {}, []
    for split, tag in (("train", "Train"), ("test", "Test")):
        image_list = find_path(root, [f"ImageList/{tag}Imagelist.txt", f"{tag}Imagelist.txt"], f"{tag}Imagelist.txt", hint)
        paths = [line.replace("\\", "/") for line in read_lines(image_list)]
        full = np.zeros((len(paths), len(names)), dtype=np.uint8)
        for c, name in enumerate(names):
            labels_file = labels_dir / f"Labels_{name}_{tag}.txt"
            if not labels_file.is_file():
                raise PamcError(f"{labels_file} not found; the NUS-WIDE ground truth is incomplete")
            column = read_lines(labels_file)
            if len(column) != len(paths) or not set(column) <= {"0", "1"}:
                raise PamcError(f"{labels_file} must hold one 0/1 per line of {image_list.name} ({len(paths)} lines)")
            full[:, c] = np.asarray(column) == "1"
        keep = full.any(axis=1)
        splits[split] = SourceSplit([p for p, k in zip(paths, keep) if k], full=full[keep])
        dropped.append(f"{int((~keep).sum())} of {len(paths)} {split}")
    note = f"NUS-WIDE official release; images without any concept dropped: {', '.join(dropped)}"
    return SourceData("nuswide", root / "Flickr", names, train=splits["train"], test=splits["test"], notes=[note])


@READERS.register("nuswide")
def read_nuswide(root: str | Path, variant: str = "auto") -> SourceData:
    root = Path(root)
    if variant not in VARIANTS:
        raise PamcError(f"NUS-WIDE variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    if variant == "auto":
        variant = "formatted" if (root / "formatted_train_images.npy").is_file() else "official"
    return _read_formatted(root) if variant == "formatted" else _read_official(root)
