"""pamc's one on-disk dataset format: written by `prepare`, read by `load_prepared`.

A prepared folder holds (N = images of the split, C = classes):

=========================  =========================================================================
``meta.json``              format/version, dataset, ``image_root`` (absolute; image paths are relative
                           to it), the protocol (seed, val_fraction, observation, where val and test
                           come from), image counts per split, the official sizes, notes
``classes.txt``            the C class names, one per line, in label-column order
``images_<split>.txt``     image paths relative to ``image_root``, one per line, in label-row order
``full_<split>.npy``       uint8 N x C, 0/1 labels, where the dataset is fully labelled
``observed_<split>.npy``   int8 N x C observed labels: 1 positive, 0 unobserved, -1 negative
``observed_<split>.npz``   the same as sparse CSR arrays (OpenImages; `SparseLabels.save`)
``missing_images.txt``     image files that were missing, left out by ``prepare(missing="drop")``
``skipped_<split>.txt``    unreadable images left out by ``load_prepared(on_error="skip")``
=========================  =========================================================================

Protocol (spec 1.2, 1.3), for every dataset without an official validation set: the observed
labels are drawn once on the whole official train file (``single-positive``: the reference
procedure with a fresh ``RandomState(seed)``); then the official train set is split with
``RandomState(seed).permutation(N)``: n_val = round(val_fraction * N), train = sort(perm[:N - n_val]),
val = sort(perm[-n_val:]).  Val keeps its full labels (used for model selection) and also its
rows of the observation; the official val/test set is the test set, with full labels.  The same
``seed`` (1200 in the reference) serves the observation and the split.  OpenImages has its own
validation set, so nothing is split.  Own data without a test file: the test set is drawn first
the same way from the whole table, then val from the rest.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import PamcError
from ..reference import REFERENCE_SEED
from ..labels import Observation
from ..sparse_labels import SparseLabels
from . import LOADERS, DatasetBundle, Split
from .images import ON_ERROR, CachedImages, ImageFiles, build_image_cache, open_cache
from .sources import BENCHMARK_FACTS, SourceData, SourceSplit, find_missing, read_source
from .sources.base import Labels, few

FORMAT, VERSION = "pamc-prepared", 1
SPLITS = ("train", "val", "test")
MISSING = ("fail", "drop")
OWN_FILES = ("meta.json", "classes.txt", "images_*.txt", "full_*.npy", "observed_*.npy", "observed_*.npz",
             "missing_images.txt", "skipped_*.txt")


def split_indices(num: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference split (Cole et al.'s generate_split): sorted train and val indices
    (val = perm[N - n_val:], which equals the reference's perm[-n_val:] whenever n_val > 0)."""
    n_val = int(np.round(val_fraction * num))
    perm = np.random.RandomState(seed).permutation(num)
    return np.sort(perm[:num - n_val]), np.sort(perm[num - n_val:])


def _rows(labels: Optional[Labels], index: np.ndarray) -> Optional[Labels]:
    if labels is None:
        return None
    return labels.subset(index) if isinstance(labels, SparseLabels) else labels[index]


def _row_positives(observed: Labels) -> np.ndarray:
    return observed.row_counts()[0] if isinstance(observed, SparseLabels) else (observed == 1).sum(axis=1)


def _take(split: SourceSplit, index: np.ndarray, observed: Optional[Labels]) -> SourceSplit:
    return SourceSplit([split.paths[i] for i in index], full=_rows(split.full, index), observed=_rows(observed, index))


def _given(split: SourceSplit) -> Optional[Labels]:
    """Observed labels an evaluation split keeps: only where the dataset is partially labelled."""
    return split.observed if split.full is None else None


def _make_splits(source: SourceData, observed: Labels, val_fraction: float, seed: int) -> tuple[dict, dict]:
    """{split: SourceSplit} per the protocol, and where val and test came from."""
    train, rows = source.train, np.arange(len(source.train))
    origin = {"val": "official validation set", "test": "official test (val) set"}
    test = source.test
    if test is None:
        rows, test_rows = split_indices(len(train), val_fraction, seed)
        test = _take(train, test_rows, _given(train))
        origin["test"] = f"{val_fraction:g} of the labelled images, RandomState({seed})"
    if source.val is None:
        train_rows, val_rows = (rows[i] for i in split_indices(len(rows), val_fraction, seed))
        val = _take(train, val_rows, observed)
        origin["val"] = f"{val_fraction:g} of the official train set, RandomState({seed})"
    else:
        train_rows, val = rows, SourceSplit(source.val.paths, source.val.full, _given(source.val))
    return {"train": _take(train, train_rows, observed), "val": val, "test": test}, origin


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PamcError(f"{out} is a file; choose a folder for the prepared dataset")
    if overwrite or not out.is_dir():
        return
    if (out / "meta.json").exists():
        raise PamcError(f"{out} already holds a prepared dataset; pass overwrite=True to replace it")
    if any(out.iterdir()):
        raise PamcError(f"{out} is not empty; choose a new folder or pass overwrite=True")


def _clear(out: Path) -> None:
    """Remove the files of an earlier prepare (meta.json first, so a half-cleared folder never looks prepared)."""
    for pattern in OWN_FILES:
        for path in out.glob(pattern):
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    bad = next((line for line in lines if "\n" in line or "\r" in line), None)
    if bad is not None:
        raise PamcError(f"{bad!r} contains a line break; rename it")
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_split(out: Path, name: str, split: SourceSplit) -> dict:
    _write_lines(out / f"images_{name}.txt", split.paths)
    entry: dict[str, Any] = {"images": len(split), "full": split.full is not None, "observed": None}
    if split.full is not None:
        np.save(out / f"full_{name}.npy", split.full.astype(np.uint8))
    if isinstance(split.observed, SparseLabels):
        split.observed.save(out / f"observed_{name}.npz")
        entry["observed"] = "sparse"
        positives, negatives = split.observed.class_counts()
    elif split.observed is not None:
        np.save(out / f"observed_{name}.npy", np.sign(split.observed).astype(np.int8))
        entry["observed"] = "dense"
        positives, negatives = (split.observed == 1).sum(), (split.observed < 0).sum()
    if split.observed is not None:
        entry.update(observed_positives=int(np.sum(positives)), observed_negatives=int(np.sum(negatives)))
    return entry


def prepare(dataset: str, root: str | Path, out: str | Path, seed: int = REFERENCE_SEED, val_fraction: float = 0.2,
            observation: str = "auto", overwrite: bool = False, missing: str = "fail",
            **options: Any) -> dict:
    """Read `dataset` from `root` and write it to `out` in pamc's format; returns a summary.

    observation: drawn once on the whole official train file (spec 1.3), in the vocabulary of
    `pamc.labels`, label noise included (what it corrupted goes into meta.json's protocol and
    the message) ("auto" = the dataset's default: single-positive for the benchmarks, as-given
    -- partial labels as they are, complete ones as 1/-1 -- for openimages and own data).  missing: "fail" on image files that
    are not there, or "drop" them after the observation and split were drawn (so the other images
    keep the reference labels), listed in missing_images.txt.  options go to the reader (own data:
    labels=, test_labels=; nuswide: variant=).
    """
    observation = Observation.parse(observation)
    if not 0.0 < val_fraction < 1.0:
        raise PamcError(f"val_fraction must lie strictly between 0 and 1 (got {val_fraction})")
    if missing not in MISSING:
        raise PamcError(f"missing must be one of {', '.join(MISSING)} (got {missing!r})")
    out = Path(out)
    _check_out(out, overwrite)
    source = read_source(dataset, root, **options)
    observation = observation.resolve(source.train.observed is not None, BENCHMARK_FACTS[source.name]["observation"])
    observed, corrupted = observation.draw(source.train.full, source.train.observed, seed, what=source.name)
    splits, origin = _make_splits(source, observed, val_fraction, seed)

    absent = find_missing(source.image_root, [p for s in splits.values() for p in s.paths])
    if absent and missing == "fail":
        raise PamcError(f"{len(absent)} image files are missing under {source.image_root}: {few(absent)}; "
                        "add them, or pass missing='drop' to leave them out")
    if absent:
        gone = set(absent)
        splits = {name: _take(s, np.array([i for i, p in enumerate(s.paths) if p not in gone], dtype=np.int64), s.observed)
                  for name, s in splits.items()}

    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        raise PamcError(f"the {' and '.join(empty)} split{'s' * (len(empty) > 1)} would hold no image "
                        f"({len(source.train)} labelled images, "
                        f"val_fraction {val_fraction:g}); label more images or change val_fraction")
    _clear(out)
    if absent:
        _write_lines(out / "missing_images.txt", absent)
    _write_lines(out / "classes.txt", source.class_names)
    counts = {name: _write_split(out, name, split) for name, split in splits.items()}
    notes = list(source.notes)
    unlabelled = int((_row_positives(splits["train"].observed) == 0).sum())
    if unlabelled:
        notes.append(f"{unlabelled} training images have no observed positive")
    meta = {
        "format": FORMAT, "version": VERSION, "dataset": source.name,
        "source_root": str(Path(root).resolve()), "image_root": str(source.image_root.resolve()),
        "num_classes": len(source.class_names),
        "protocol": {"seed": seed, "val_fraction": val_fraction,
                     "observation": str(observation),
                     "observed_from": "the whole official train file, before the split", **origin,
                     **({"corrupted": corrupted} if corrupted else {})},
        "official": {name: len(s) for name, s in source.splits().items()},
        "splits": counts, "missing_images": len(absent), "notes": notes,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    n = {name: f"{c['images']:,}" for name, c in counts.items()}
    message = (f"{source.name}: official train {len(source.train):,} -> train {n['train']} / val {n['val']}; "
               f"test {n['test']}; {len(source.class_names)} classes; observation {meta['protocol']['observation']}"
               + (f"; {len(absent):,} missing images dropped" if absent else "")
               + (f"; {corrupted['noise']} noise: {corrupted['corrupted']:,} of {corrupted['candidates']:,} "
                  f"{corrupted['what']}" if corrupted else ""))
    return {**meta, "out": str(out), "message": message}


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PamcError(f"{path} is not a prepared dataset (no meta.json); run `pamc prepare` first") from None
    except ValueError as exc:
        raise PamcError(f"{path / 'meta.json'} is damaged ({exc}); prepare the dataset again") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PamcError(f"{path} holds format {meta.get('format')} v{meta.get('version')}, this pamc reads "
                        f"{FORMAT} v{VERSION}; prepare the dataset again")
    return meta


def _load_labels(path: Path, name: str) -> tuple[Optional[np.ndarray], Optional[Labels]]:
    full_file, dense_file, sparse_file = (path / f"full_{name}.npy", path / f"observed_{name}.npy",
                                          path / f"observed_{name}.npz")
    full = np.load(full_file) if full_file.is_file() else None
    if dense_file.is_file():
        return full, np.load(dense_file).astype(np.float32)
    return full, SparseLabels.load(sparse_file) if sparse_file.is_file() else None


def _open_images(paths: list[str], root: Path, size: int, cache: Optional[Path], on_error: str, name: str):
    """(dataset, kept indices, {skipped path: reason}) for one split, from the cache where possible."""
    files = ImageFiles(paths, root, size)  # cheap: no scan yet
    if cache is None:
        if on_error == "skip":
            files = ImageFiles(paths, root, size, on_error="skip")
        return files, files.kept, files.skipped
    cache_file = cache / f"{name}_{size}_{files.fingerprint[:12]}.npy"  # never mistaken for another dataset's
    images = open_cache(files, cache_file)
    if images is None:
        if on_error == "skip":
            files = ImageFiles(paths, root, size, on_error="skip")
        build_image_cache(files, cache_file)
        images = CachedImages(cache_file)
    if images.skipped and on_error == "fail":
        raise PamcError(f"the image cache {cache_file} was built without {len(images.skipped)} unreadable images "
                        f"({few(list(images.skipped))}); load with on_error='skip' or delete the cache")
    return images, images.kept, images.skipped


def load_prepared(path: str | Path, image_size: int = 448, cache: Optional[str | Path] = None,
                  on_error: str = "fail", image_root: Optional[str | Path] = None) -> DatasetBundle:
    """A prepared folder as a `DatasetBundle` (images resized to `image_size`).

    cache: a folder for one-time uint8 image caches (`<split>_<size>_<fingerprint>.npy`, ~0.6 MB per
    image at 448), built on first use and reused while the image list, root and size are unchanged.
    on_error="skip" leaves unreadable images out (with their labels), lists them in
    skipped_<split>.txt and counts them in `bundle.info["skipped"]`.  image_root overrides the
    recorded one (data moved since prepare).
    """
    path = Path(path)
    if on_error not in ON_ERROR:
        raise PamcError(f"on_error must be one of {', '.join(ON_ERROR)} (got {on_error!r})")
    meta = _read_meta(path)
    root = Path(image_root) if image_root is not None else Path(meta["image_root"])
    class_names = (path / "classes.txt").read_text(encoding="utf-8").splitlines()
    splits, skipped = {}, {}
    for name in SPLITS:
        paths = (path / f"images_{name}.txt").read_text(encoding="utf-8").splitlines()
        full, observed = _load_labels(path, name)
        images, kept, bad = _open_images(paths, root, image_size, None if cache is None else Path(cache), on_error, name)
        if bad:
            report = path / f"skipped_{name}.txt"
            report.write_text("".join(f"{p}\t{reason}\n" for p, reason in bad.items()), encoding="utf-8")
            skipped[name] = {"count": len(bad), "list": str(report)}
            warnings.warn(f"{name}: skipped {len(bad)} unreadable images, listed in {report}", stacklevel=2)
            paths, full, observed = [paths[i] for i in kept], _rows(full, kept), _rows(observed, kept)
        splits[name] = Split(images=images, full=full, observed=observed, names=paths)
    return DatasetBundle(name=meta["dataset"], class_names=class_names, **splits,
                         info={**meta, "prepared": str(path), "skipped": skipped,
                               "expected_positives": BENCHMARK_FACTS.get(meta["dataset"], {}).get("expected_positives")})


LOADERS.register("prepared")(load_prepared)
