"""Embedded multi-object scenes: real single-object images pasted on a blank canvas.

This gives a real multi-label benchmark with known object boxes (for CAM localisation checks)
that builds in seconds on a CPU.  Objects come from an *object bank* (train + test objects):

* ``digits``         scikit-learn's bundled 8x8 digits; seeded stratified 70/30 object split.
* ``fashion[:DIR]``  Fashion-MNIST idx .gz files (default DIR: the Debian package
                     ``dataset-fashion-mnist``); the official train/test split.
* ``npz:PATH``       a user bank: ``images`` N x H x W uint8, ``labels`` N int, optional
                     ``class_names`` and ``split`` (0 train / 1 test, else seeded 70/30).

Objects should be bright on a black (0) background: scenes composite with a pixel-wise max.
Train and val scenes use only train objects (val plays the protocol's held-out part of the
training images); test scenes use only test objects, so no test object is ever seen in training.
Scenes are deterministic by seed and cached on disk as .npz.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from importlib.metadata import version
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import PamcError
from ..files import atomic_write, cache_dir
from . import LOADERS, ArrayImages, DatasetBundle, Split

#: bump when the generator's output for the same parameters changes (invalidates caches)
FORMAT_VERSION = 1
#: seed of the 70/30 object split for banks without an official one; fixed so that the
#: train/test objects never depend on the scene seed
BANK_SPLIT_SEED = 20230
TEST_FRACTION = 0.3
#: placement tries per object; the first with IoU below MAX_IOU wins, else the least overlapping
PLACEMENT_TRIES = 20
MAX_IOU = 0.3

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# one independent random stream per split, so e.g. n_val never changes the train scenes
_STREAM = {"train": 0, "val": 1, "test": 2, "pretrain": 3}
_CACHE_KEYS = ["class_names", "info"] + [f"{split}_{part}" for split in ("train", "val", "test")
                                         for part in ("images", "full", "boxes")]
_SOURCES_HELP = "valid sources: digits, fashion, fashion:DIR, npz:PATH"

Scale = Union[int, Sequence[int]]


@dataclass
class ObjectBank:
    """Single-object images (uint8 N x H x W, bright on black) with int labels, split train/test."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    name: str


# ----------------------------------------------------------------------------- object banks

def _parse_source(source: str) -> tuple[str, Path | None]:
    kind, _, arg = str(source).partition(":")
    kind = kind.strip().lower()
    if kind == "digits" and not arg:
        return kind, None
    if kind == "fashion":
        return kind, Path(arg or FASHION_DIR).expanduser()
    if kind == "npz" and arg:
        return kind, Path(arg).expanduser()
    raise PamcError(f"unknown scene source {source!r}; {_SOURCES_HELP}")


def _stratified_split(labels: np.ndarray, what: str) -> np.ndarray:
    """0 (train) / 1 (test) per object: a stratified 70/30 split with a fixed seed."""
    try:
        from sklearn.model_selection import train_test_split  # sklearn only when a bank is built

        _, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                       stratify=labels, random_state=BANK_SPLIT_SEED)
    except ValueError as exc:
        raise PamcError(f"cannot split {what} 70/30 by class ({exc}); give every class at least 2 objects "
                        "or pass a `split` array (0 train / 1 test)") from None
    split = np.zeros(len(labels), dtype=np.int64)
    split[test_idx] = 1
    return split


def _bank_from_split(images, labels, split, class_names, name) -> ObjectBank:
    train, test = split == 0, split == 1
    return ObjectBank(images[train], labels[train], images[test], labels[test], list(class_names), name)


def _digits_bank() -> ObjectBank:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    split = _stratified_split(labels, "the digits")
    return _bank_from_split(images, labels, split, [str(c) for c in digits.target_names], "digits")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (LeCun's MNIST format: magic 0 0 dtype ndim, big-endian int32 dims, data)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise PamcError(f"{path} is not a gzipped idx file of {ndim}-D unsigned bytes; "
                        "re-download the Fashion-MNIST .gz files")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise PamcError(f"{path} is truncated: header says {dims}, found {body.size} bytes of data; "
                        "re-download the Fashion-MNIST .gz files")
    return body.reshape(dims)


def _fashion_bank(folder: Path) -> ObjectBank:
    paths = {key: folder / fname for key, fname in FASHION_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        raise PamcError(f"Fashion-MNIST not found in {folder}; `apt-get install dataset-fashion-mnist` "
                        f"or pass fashion:DIR holding the four .gz idx files ({', '.join(FASHION_FILES.values())})")
    try:
        arrays = {key: _read_idx(p, 3 if key.endswith("images") else 1) for key, p in paths.items()}
    except (OSError, EOFError) as exc:
        raise PamcError(f"cannot read Fashion-MNIST in {folder}: {exc}; re-download the .gz idx files") from None
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise PamcError(f"Fashion-MNIST {part} images and labels in {folder} differ in length; "
                            "re-download the .gz idx files")
    labels = {part: arrays[f"{part}_labels"].astype(np.int64) for part in ("train", "test")}
    if max(int(lab.max(initial=0)) for lab in labels.values()) >= len(FASHION_CLASSES):
        raise PamcError(f"Fashion-MNIST labels in {folder} exceed the 10 classes; re-download the .gz idx files")
    return ObjectBank(arrays["train_images"], labels["train"], arrays["test_images"], labels["test"],
                      list(FASHION_CLASSES), "fashion")


def _npz_bank(path: Path) -> ObjectBank:
    if not path.is_file():
        raise PamcError(f"object bank {path} not found; pass npz:PATH of an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse for safety
        raise PamcError(f"cannot read object bank {path} ({exc}); save class_names as a str array") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise PamcError(f"cannot read object bank {path} ({exc}); write it with numpy.savez") from None
    missing = {"images", "labels"} - set(data)
    if missing:
        raise PamcError(f"object bank {path} lacks {', '.join(sorted(missing))} "
                        f"(has: {', '.join(sorted(data)) or 'nothing'}); save images (N x H x W uint8) and labels (N ints)")
    images, labels = data["images"], data["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or 0 in images.shape:
        raise PamcError(f"object bank {path}: images must be a non-empty N x H x W uint8 array, got "
                        f"{images.dtype} {images.shape}; convert grey 0..255 images with .astype(np.uint8)")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise PamcError(f"object bank {path}: labels must be {len(images)} integers (one per image), got "
                        f"{labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise PamcError(f"object bank {path}: labels must be class indices >= 0 (found {labels.min()})")
    if "class_names" in data:
        names = data["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) <= labels.max():
            raise PamcError(f"object bank {path}: class_names must be a 1-D str array with a name for each "
                            f"label 0..{labels.max()}, got {names.dtype} {names.shape}")
        class_names = [str(n) for n in names]
    else:
        class_names = [str(c) for c in range(int(labels.max()) + 1)]
    if "split" in data:
        split = data["split"]
        if split.shape != labels.shape or not np.isin(split, (0, 1)).all():
            raise PamcError(f"object bank {path}: split must hold one 0 (train) or 1 (test) per image, "
                            f"got {split.dtype} {split.shape}")
    else:
        split = _stratified_split(labels, f"object bank {path}")
    if not (split == 0).any() or not (split == 1).any():
        raise PamcError(f"object bank {path}: split needs both train (0) and test (1) objects")
    return _bank_from_split(images, labels, split, class_names, path.stem)


def load_object_bank(source: str = "digits") -> ObjectBank:
    """The train/test single-object images of a scene source (see the module docstring)."""
    kind, path = _parse_source(source)
    if kind == "digits":
        return _digits_bank()
    return _fashion_bank(path) if kind == "fashion" else _npz_bank(path)


def _source_identity(source: str) -> dict:
    """What the bank's content depends on, cheap to compute so a cache hit never loads the bank."""
    kind, path = _parse_source(source)
    if kind == "digits":
        return {"kind": kind, "sklearn": version("scikit-learn"), "split_seed": BANK_SPLIT_SEED}
    files = [path / f for f in FASHION_FILES.values()] if kind == "fashion" else [path]
    stats = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] if f.is_file() else [str(f), None, None]
             for f in files]
    return {"kind": kind, "files": stats, "split_seed": BANK_SPLIT_SEED}


# ----------------------------------------------------------------------------- rendering

def _scale_range(object_scale: Scale, canvas: int) -> tuple[int, int]:
    pair = [object_scale] * 2 if np.isscalar(object_scale) else list(object_scale)
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair)
    if len(pair) != 2 or not ints or not 1 <= pair[0] <= pair[1] <= canvas:
        raise PamcError(f"object_scale must be an int or (min, max) ints with 1 <= min <= max <= canvas ({canvas}), "
                        f"got {object_scale!r}")
    return int(pair[0]), int(pair[1])


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise PamcError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _resized_objects(objects: np.ndarray, sides: np.ndarray) -> list[np.ndarray]:
    """Each object resized (bilinear, antialiased, aspect kept) so its longer side is `sides[i]`,
    then cropped to its nonzero extent so the pasted rectangle is the object's tight box.

    One interpolate call per distinct side keeps this vectorised."""
    h, w = objects.shape[1:]
    out: list[np.ndarray] = [None] * len(objects)  # type: ignore[list-item]
    for side in np.unique(sides):
        idx = np.flatnonzero(sides == side)
        size = (max(1, round(side * h / max(h, w))), max(1, round(side * w / max(h, w))))
        batch = torch.from_numpy(objects[idx]).unsqueeze(1).float()
        resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
        patches = resized.squeeze(1).round_().clamp_(0, 255).to(torch.uint8).numpy()
        rows, cols = patches.any(axis=2), patches.any(axis=1)
        y0, y1 = rows.argmax(1), size[0] - rows[:, ::-1].argmax(1)
        x0, x1 = cols.argmax(1), size[1] - cols[:, ::-1].argmax(1)
        for j, i in enumerate(idx):  # a blank object (all zero) keeps its full rectangle
            out[i] = patches[j, y0[j]:y1[j], x0[j]:x1[j]] if rows[j].any() else patches[j]
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of candidate boxes (T x 4, x0 y0 x1 y1) against placed boxes (K x 4) -> T x K."""
    a, b = box[:, None, :], boxes[None, :, :]
    sides = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = sides.prod(-1)
    area_a, area_b = (a[..., 2:] - a[..., :2]).prod(-1), (b[..., 2:] - b[..., :2]).prod(-1)
    return inter / (area_a + area_b - inter)


def _render(objects: np.ndarray, counts: np.ndarray, canvas: int, scales: tuple[int, int],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste `counts[n]` random objects into scene n.

    Returns the scenes (N x canvas x canvas uint8), the chosen object ids, and one box row per
    object (scene, x0, y0, x1, y1), in scene order.  All random draws happen up front, in a fixed
    order, so the output depends on the seed only."""
    total = int(counts.sum())
    ids = rng.integers(0, len(objects), size=total)
    sides = rng.integers(scales[0], scales[1] + 1, size=total)
    spots = rng.random((total, PLACEMENT_TRIES, 2))
    patches = _resized_objects(objects[ids], sides)
    scenes = np.zeros((len(counts), canvas, canvas), dtype=np.uint8)
    boxes = np.zeros((total, 5), dtype=np.int64)
    boxes[:, 0] = np.repeat(np.arange(len(counts)), counts)
    starts = np.concatenate([[0], np.cumsum(counts)])
    for n in range(len(counts)):
        for k in range(starts[n], starts[n + 1]):
            ph, pw = patches[k].shape
            xy = np.floor(spots[k] * [canvas - pw + 1, canvas - ph + 1]).astype(np.int64)
            tries = np.concatenate([xy, xy + [pw, ph]], axis=1)
            choice = 0
            if k > starts[n]:
                worst = _iou(tries, boxes[starts[n]:k, 1:]).max(axis=1)
                ok = np.flatnonzero(worst < MAX_IOU)
                choice = ok[0] if ok.size else int(worst.argmin())
            x0, y0, x1, y1 = tries[choice]
            boxes[k, 1:] = tries[choice]
            np.maximum(scenes[n, y0:y1, x0:x1], patches[k], out=scenes[n, y0:y1, x0:x1])
    return scenes, ids, boxes


def pretraining_objects(bank: ObjectBank, canvas: int, object_scale: Scale, n: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` single TRAIN objects at random places/scales on a blank canvas, with their int labels.

    The scene backbone's single-object pretraining (our stand-in for ImageNet pretraining) sees
    the same object statistics as the scenes but never a test object."""
    canvas = _check_count("canvas", canvas, 1)
    n, seed = _check_count("n", n, 0), _check_count("seed", seed, 0)
    rng = np.random.default_rng([seed, _STREAM["pretrain"]])
    images, ids, _ = _render(bank.train_images, np.ones(n, dtype=np.int64), canvas,
                             _scale_range(object_scale, canvas), rng)
    return images, bank.train_labels[ids]


# ----------------------------------------------------------------------------- scenes + cache

def _cache_root(explicit) -> Path:
    """The argument, else the scenes folder of pamc's cache."""
    return Path(explicit).expanduser() if explicit is not None else cache_dir() / "scenes"


def _load_cached(path: Path):
    """The cached arrays, or None when the file is missing, unreadable or incomplete (then we regenerate)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in _CACHE_KEYS}
        data["info"] = json.loads(str(data["info"]))
        return data
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _save_atomic(path: Path, arrays: dict) -> None:
    """A reader (or a concurrent rank) never sees a half file."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(path, write)


def _generate(source: str, params: dict) -> dict:
    bank = load_object_bank(source)
    scales = tuple(params["object_scale"])
    arrays = {"class_names": np.array(bank.class_names, dtype=str)}
    objects = {}
    for split in ("train", "val", "test"):
        rng = np.random.default_rng([params["seed"], _STREAM[split]])
        test = split == "test"
        images = bank.test_images if test else bank.train_images
        labels = bank.test_labels if test else bank.train_labels
        counts = rng.integers(1, params["max_objects"] + 1, size=params[f"n_{split}"])
        scenes, ids, boxes = _render(images, counts, params["canvas"], scales, rng)
        full = np.zeros((len(scenes), len(bank.class_names)), dtype=np.uint8)
        full[boxes[:, 0], labels[ids]] = 1
        # box rows: scene, class, x0, y0, x1, y1
        arrays[f"{split}_images"], arrays[f"{split}_full"] = scenes, full
        arrays[f"{split}_boxes"] = np.column_stack([boxes[:, 0], labels[ids], boxes[:, 1:]])
        objects[split] = len(ids)
    info = {"source": source, "bank": bank.name, "params": params,
            "bank_objects": {"train": len(bank.train_labels), "test": len(bank.test_labels)},
            "objects": objects, "bank_split_seed": BANK_SPLIT_SEED, "format_version": FORMAT_VERSION}
    arrays["info"] = np.array(json.dumps(info))
    return arrays


def _split(data: dict, split: str) -> Split:
    images, rows = data[f"{split}_images"], data[f"{split}_boxes"]
    boxes: list[list[tuple[int, int, int, int, int]]] = [[] for _ in range(len(images))]
    for scene, cls, x0, y0, x1, y1 in rows.tolist():
        boxes[scene].append((cls, x0, y0, x1, y1))
    return Split(images=ArrayImages(images), full=data[f"{split}_full"], observed=None, boxes=boxes)


def make_scenes(source: str = "digits", canvas: int = 64, max_objects: int = 4, object_scale: Scale = (16, 28),
                n_train: int = 3000, n_val: int = 600, n_test: int = 1000, seed: int = 0,
                cache_dir=None) -> DatasetBundle:
    """Multi-object scenes of `canvas` px with 1..max_objects objects each (uniform count).

    `object_scale` is the object's longer side in px after resizing, an int or a (min, max) range
    drawn uniformly per object.  Placement retries keep the IoU with earlier boxes below 0.3 where
    possible; objects composite with a pixel-wise max.  Boxes are (class, x0, y0, x1, y1) with
    x1/y1 exclusive, tight around each object's nonzero pixels.  The result is cached in
    `cache_dir` (default $PAMC_CACHE/scenes or ~/.cache/pamc/scenes) under a hash of every
    parameter, the source's identity and the format version; an unreadable cache file is rebuilt.
    """
    canvas = _check_count("canvas", canvas, 1)
    params = {"canvas": canvas, "max_objects": _check_count("max_objects", max_objects, 1),
              "object_scale": list(_scale_range(object_scale, canvas)),
              "n_train": _check_count("n_train", n_train, 0), "n_val": _check_count("n_val", n_val, 0),
              "n_test": _check_count("n_test", n_test, 0), "seed": _check_count("seed", seed, 0)}
    key = json.dumps({"source": _source_identity(source), "params": params, "format": FORMAT_VERSION}, sort_keys=True)
    kind, _ = _parse_source(source)
    path = _cache_root(cache_dir) / f"scenes-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    data = _load_cached(path)
    if data is None:
        arrays = _generate(source, params)
        _save_atomic(path, arrays)
        data = {**arrays, "info": json.loads(str(arrays["info"]))}
    # the true mean number of classes per training scene: the k of EPR / ROLE for these scenes
    expected = round(float(data["train_full"].sum(1).mean()), 3) if len(data["train_full"]) else None
    info = {**data["info"], "cache_file": str(path), "expected_positives": expected}
    return DatasetBundle(name=f"scenes-{info['bank']}", class_names=[str(c) for c in data["class_names"]],
                         train=_split(data, "train"), val=_split(data, "val"), test=_split(data, "test"), info=info)


LOADERS.register("scenes")(make_scenes)
