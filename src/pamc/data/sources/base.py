"""What every dataset reader returns, the registry of readers, and shared file helpers."""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ...errors import PamcError
from ...registry import Registry
from ...sparse_labels import SparseLabels

Labels = Union[np.ndarray, SparseLabels]


@dataclass
class SourceSplit:
    """One official split: image paths (relative to the source's image root) and their labels.

    `full` is the 0/1 matrix where the dataset is fully labelled; `observed` holds labels as the
    dataset gives them where it is not (1 / 0 unobserved / -1, dense float32 or `SparseLabels`).
    """

    paths: list[str]
    full: Optional[np.ndarray] = None
    observed: Optional[Labels] = None

    def __post_init__(self) -> None:
        if self.full is None and self.observed is None:
            raise ValueError("a split needs full or observed labels")
        for labels in (self.full, self.observed):
            if labels is not None and labels.shape[0] != len(self.paths):
                raise ValueError(f"{len(self.paths)} images but {labels.shape[0]} label rows")

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class SourceData:
    """A dataset as officially released: `train` and `test` (the official val/test set), plus
    `val` where the release has its own validation set (else prepare carves val out of train)."""

    name: str
    image_root: Path
    class_names: list[str]
    train: SourceSplit
    test: Optional[SourceSplit] = None
    val: Optional[SourceSplit] = None
    notes: list[str] = field(default_factory=list)

    def splits(self) -> dict[str, SourceSplit]:
        return {name: split for name, split in (("train", self.train), ("val", self.val), ("test", self.test))
                if split is not None}


#: `pamc prepare`'s dataset names -> reader(root, **options) -> SourceData (a download's layout)
READERS: Registry[Callable[..., SourceData]] = Registry("dataset source")

#: Facts about the datasets (spec 1.1, 1.2, 6): the default observation `prepare` draws, classes,
#: official split sizes, the 80/20 split sizes, and the true mean number of positives per image k
#: (the EPR / ROLE prior).
BENCHMARK_FACTS: dict[str, dict] = {
    "voc": dict(observation="single-positive", num_classes=20, expected_positives=1.5,
                official={"train": 5717, "test": 5823}, split={"train": 4574, "val": 1143}),
    "coco": dict(observation="single-positive", num_classes=80, expected_positives=2.9,
                 official={"train": 82081, "test": 40137}, split={"train": 65665, "val": 16416}),
    "nuswide": dict(observation="single-positive", num_classes=81, expected_positives=1.9, official=None, split=None,
                    note="Cole et al.'s re-crawled subset: sizes depend on the crawl; the official release lists "
                         "161,789 train / 107,859 test images before those without any concept are dropped"),
    "cub": dict(observation="single-positive", num_classes=312, expected_positives=31.4,
                official={"train": 5994, "test": 5794}, split={"train": 4795, "val": 1199}),
    "openimages": dict(observation="as-given", num_classes=5000, expected_positives=None, official=None, split=None,
                       note="V3 (2017_11) human-verified image-level labels: real partial labels, kept sparse"),
    "own": dict(observation="as-given", num_classes=None, expected_positives=None, official=None, split=None),
}


def find_path(root: Path, candidates: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of `root / candidate` that exists, or a PamcError listing where pamc looked."""
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            return path
    looked = ", ".join(str(root / c) for c in candidates)
    raise PamcError(f"{what} not found (looked for {looked}){'; ' + hint if hint else ''}")


def read_lines(path: Path) -> list[str]:
    """Non-empty lines, stripped; a PamcError if the file cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise PamcError(f"cannot read {path}: {exc.strerror or exc}") from None


def parse_int(token: str, path: Path, line_no: int) -> int:
    try:
        return int(token)
    except ValueError:
        raise PamcError(f"{path}:{line_no}: expected an integer, got {token!r}") from None


def find_missing(root: Path, paths: Sequence[str]) -> list[str]:
    """The paths with no file under `root`, in order; one directory listing per folder, so
    checking a million images costs seconds."""
    by_dir: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, path in enumerate(paths):
        folder, _, name = path.replace("\\", "/").rpartition("/")
        by_dir[folder].append((i, name))
    missing: list[int] = []
    for folder, entries in by_dir.items():
        try:
            present = set(os.listdir(root / folder))
        except OSError:
            present = set()
        missing.extend(i for i, name in entries if name not in present)
    return [paths[i] for i in sorted(missing)]


def few(items: Sequence[str], n: int = 5) -> str:
    """The first `n` items and how many more, for one-line error messages."""
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" ... and {len(items) - n} more" if len(items) > n else "")
