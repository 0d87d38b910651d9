"""Images read from files, and a one-time uint8 memmap cache of them (the fast path).

Both datasets return uint8 3 x S x S tensors, resized like the reference pipeline
(`Resize((S, S))`: aspect ratio not kept, antialiased bilinear).  Augmentation and normalisation
happen later, on whole batches on the training device.

An unreadable or missing image is an error naming its path.  With ``on_error="skip"`` the files
are scanned once up front and the dataset covers only the readable ones; `ImageFiles.kept` holds
their positions in the given list (to subset the labels the same way) and `ImageFiles.skipped`
maps every dropped path to the reason, so callers can report and list them.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import PamcError

ON_ERROR = ("fail", "skip")


def decode(path: str | Path) -> torch.Tensor:
    """The image at `path` as a uint8 3 x H x W RGB tensor; PamcError naming the path if unreadable.

    Decoded with PIL (libjpeg-turbo), which reads every format and colour mode; torchvision's CPU
    decoders are deprecated since 0.29.  (The GPU path decodes JPEGs with nvJPEG instead.)
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else f"{exc.__class__.__name__}: {exc}"
        raise PamcError(f"cannot read image {path} ({reason}); fix or remove it, or use on_error='skip'") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: int) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF  # here: torchvision costs ~2 s to import

    return TF.resize(decode(path), [size, size], antialias=True)


def _in_workers(dataset: Dataset, workers: Optional[int]):
    """The items of `dataset` in order, decoded by loader worker processes (one per core by default)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    return DataLoader(dataset, batch_size=None, num_workers=workers if len(dataset) > 1 else 0)


class _Problems(Dataset):
    """Per file of an `ImageFiles`: why it cannot be read, or "" (decoded but not resized)."""

    def __init__(self, files: "ImageFiles"):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str:
        try:
            decode(self.files.root / self.files.paths[i])
        except PamcError as exc:
            return str(exc)
        return ""


class ImageFiles(Dataset):
    """Image files `root / path`, returned as uint8 3 x size x size tensors."""

    def __init__(self, paths: Sequence[str], root: str | Path, size: int = 448, on_error: str = "fail"):
        if on_error not in ON_ERROR:
            raise PamcError(f"on_error must be one of {', '.join(ON_ERROR)} (got {on_error!r})")
        if int(size) < 1:
            raise PamcError(f"image size must be a positive number of pixels (got {size})")
        self.root = Path(root)
        self.size = int(size)
        self.paths = [str(p) for p in paths]
        # identifies the requested list, root and size, so a cache built from it can be recognised
        digest = hashlib.sha1(f"{self.root.resolve()}\n{self.size}\n".encode())
        digest.update("\n".join(self.paths).encode())
        self.fingerprint = digest.hexdigest()
        self.kept = np.arange(len(self.paths))
        self.skipped: dict[str, str] = {}
        if on_error == "skip":
            self.skipped = self.check()
            bad = set(self.skipped)
            self.kept = np.array([i for i, p in enumerate(self.paths) if p not in bad], dtype=np.int64)
            self.paths = [self.paths[i] for i in self.kept]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.root / self.paths[i], self.size)

    def check(self, workers: Optional[int] = None) -> dict[str, str]:
        """Decode every file once; returns {path: reason} for those that cannot be read."""
        reasons = _in_workers(_Problems(self), workers)
        return {path: reason for path, reason in zip(self.paths, reasons) if reason}


def build_image_cache(files: ImageFiles, out_path: str | Path, workers: Optional[int] = None) -> Path:
    """Decode and resize every image of `files` once into a uint8 N x 3 x S x S array at `out_path`
    (an .npy file, read back as a memmap by `CachedImages`).

    A JSON sidecar (`out_path` + ".json") records the shape, `files.fingerprint` and which of the
    requested files were skipped; it is written last, so an interrupted build never counts as a cache.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shape = (len(files), 3, files.size, files.size)
    cache = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=shape)
    for i, image in enumerate(_in_workers(files, workers)):
        cache[i] = image.numpy()
    cache.flush()
    sidecar = {"shape": list(shape), "fingerprint": files.fingerprint,
               "kept": files.kept.tolist() if files.skipped else None, "skipped": files.skipped}
    Path(f"{out_path}.json").write_text(json.dumps(sidecar))
    return out_path


class CachedImages(Dataset):
    """Images from a cache written by `build_image_cache`.

    `kept` and `skipped` tell which of the originally requested files the cache holds.  The memmap
    is opened lazily in each process, so pickling the dataset for loader workers copies no pixels.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        sidecar = Path(f"{self.path}.json")
        if not (self.path.is_file() and sidecar.is_file()):
            raise PamcError(f"{self.path} is not a finished image cache; build it with build_image_cache")
        info = json.loads(sidecar.read_text())
        self.fingerprint: str = info["fingerprint"]
        self.shape = tuple(info["shape"])
        self.kept = np.arange(self.shape[0]) if info["kept"] is None else np.asarray(info["kept"], dtype=np.int64)
        self.skipped: dict[str, str] = info["skipped"]
        self._images: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._images[i]))

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """A whole batch in one indexing of the memory map, in the main process: about 30x what
        a DataLoader's workers deliver item by item (`benchmarks/bench_cpu_reference.py`)."""
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(self._images[np.asarray(index, dtype=np.int64)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


def open_cache(files: ImageFiles, path: str | Path) -> Optional[CachedImages]:
    """The finished cache at `path` if it was built from exactly these files (list, root, size)."""
    try:
        cache = CachedImages(path)
    except (PamcError, ValueError, KeyError):  # absent, unfinished or damaged: build it again
        return None
    return cache if cache.fingerprint == files.fingerprint else None
