"""The user's own data: a folder of images and a label table, as CSV or JSON lines.

CSV: a header `image,<class>,<class>,...`; the first column holds image paths relative to the
folder, every other column one class.  JSON lines: one object per image,
``{"image": "a.jpg", "labels": {"cat": 1, "dog": 0}}``; the classes are the sorted union of the
names used, and a class an image does not mention (or gives as null) is unobserved for it.

Values: **1 = positive, 0 or -1 = negative (checked absent), empty = unobserved** (1.0 / 0.0 /
-1.0 and JSON true / false are accepted too).  0 means negative because that is what it means in
an ordinary 0/1 table: a complete 0/1 table is a fully labelled dataset, from which pamc can
simulate any observation (single positive, a fraction).  Only a table with empty cells holds
partial labels, which are then used as given.  (Internally pamc stores observed labels as
1 / 0 unobserved / -1; the reader converts.)

`labels` defaults to the only .csv / .jsonl file in the folder.  `test_labels` (same format) gives
the test set (its columns matched by class name; classes it omits are unobserved); without it
`prepare` carves the test set out of the labelled images.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import PamcError
from .base import READERS, SourceData, SourceSplit, few

FORMATS = (".csv", ".jsonl")


def _value(cell) -> float:
    """pamc's observed value (1, -1, 0 unobserved) of a table cell, NaN if it is not a label."""
    if cell is None or (isinstance(cell, str) and not cell.strip()):
        return 0.0
    try:
        number = float(cell)
    except (TypeError, ValueError):
        return math.nan
    return {1.0: 1.0, 0.0: -1.0, -1.0: -1.0}.get(number, math.nan)


def _read_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        records = list(csv.reader(f))
    if not records or len(records[0]) < 2:
        raise PamcError(f"{path}: the header must be 'image' followed by one column per class")
    header = [name.strip() for name in records[0]]
    names = header[1:]
    for line_no, record in enumerate(records[1:], 2):
        if len(record) != len(header):
            raise PamcError(f"{path}:{line_no}: {len(record)} cells, but the header has {len(header)} columns")
    cells = np.array([[c.strip() for c in r[1:]] for r in records[1:]], dtype=str).reshape(-1, len(names))
    unique, inverse = np.unique(cells, return_inverse=True)
    mapped = np.array([_value(u) for u in unique], dtype=np.float32)
    if np.isnan(mapped).any():
        row, col = np.argwhere(np.isnan(mapped[inverse].reshape(cells.shape)))[0]
        raise PamcError(f"{path}:{row + 2}: column {names[col]!r}: {str(cells[row, col])!r} is not 1, 0, -1 or empty")
    return [r[0].strip() for r in records[1:]], names, mapped[inverse].reshape(cells.shape)


def _read_jsonl(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise PamcError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            if not (isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("labels"), dict)):
                raise PamcError(f"{path}:{line_no}: expected {{\"image\": \"<path>\", \"labels\": {{\"<class>\": 1, ...}}}}")
            entries.append((line_no, entry))
    names = sorted({name for _, entry in entries for name in entry["labels"]})
    column = {name: c for c, name in enumerate(names)}
    matrix = np.zeros((len(entries), len(names)), dtype=np.float32)
    for row, (line_no, entry) in enumerate(entries):
        for name, cell in entry["labels"].items():
            value = _value(cell)
            if math.isnan(value):
                raise PamcError(f"{path}:{line_no}: class {name!r}: {cell!r} is not 1, 0, -1 or null")
            matrix[row, column[name]] = value
    return [entry["image"].strip() for _, entry in entries], names, matrix


def read_table(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(image paths, class names, observed matrix with 1 / -1 / 0 unobserved) from a CSV or JSONL file."""
    if path.suffix.lower() not in FORMATS:
        raise PamcError(f"{path}: label files must be .csv or .jsonl")
    if not path.is_file():
        raise PamcError(f"label file {path} not found")
    paths, names, matrix = (_read_csv if path.suffix.lower() == ".csv" else _read_jsonl)(path)
    if not paths:
        raise PamcError(f"{path} lists no images")
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise PamcError(f"{path}: class names must be non-empty and distinct")
    if any(not p for p in paths):
        raise PamcError(f"{path}: every image needs a path")
    duplicates = [p for p, n in Counter(paths).items() if n > 1]
    if duplicates:
        raise PamcError(f"{path}: {len(duplicates)} images listed more than once: {few(duplicates)}; keep one line each")
    return paths, names, matrix


def _split(paths: list[str], matrix: np.ndarray) -> SourceSplit:
    """Full 0/1 labels when every cell is observed, else the observed labels as given."""
    if (matrix != 0).all():
        return SourceSplit(paths, full=(matrix == 1).astype(np.uint8))
    return SourceSplit(paths, observed=matrix)


def _locate(root: Path, labels: Optional[str | Path]) -> Path:
    if labels is None:
        found = sorted(p for p in root.iterdir() if p.suffix.lower() in FORMATS and p.is_file()) if root.is_dir() else []
        if len(found) != 1:
            what = f"found {', '.join(p.name for p in found)}" if found else "found none"
            raise PamcError(f"pass labels=<file>: pamc looks for exactly one .csv or .jsonl in {root} ({what})")
        return found[0]
    path = Path(labels)
    return path if path.is_file() or not (root / path).is_file() else root / path


@READERS.register("own")
def read_own(root: str | Path, labels: Optional[str | Path] = None, test_labels: Optional[str | Path] = None) -> SourceData:
    """`root`: the image folder; `labels` / `test_labels`: label tables (relative paths may be in `root`)."""
    root = Path(root)
    if not root.is_dir():
        raise PamcError(f"image folder {root} not found")
    paths, names, matrix = read_table(_locate(root, labels))
    test = None
    if test_labels is not None:
        test_paths, test_names, test_matrix = read_table(_locate(root, test_labels))
        unknown = sorted(set(test_names) - set(names))
        if unknown:
            raise PamcError(f"the test labels use classes the training labels lack: {few(unknown)}")
        aligned = np.zeros((len(test_paths), len(names)), dtype=np.float32)  # classes it omits: unobserved
        aligned[:, [names.index(n) for n in test_names]] = test_matrix
        test = _split(test_paths, aligned)
    return SourceData("own", root, names, train=_split(paths, matrix), test=test)
