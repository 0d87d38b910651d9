"""Frozen-backbone features, extracted once to disk and memory-mapped (the linear phase of "+ LI").

Training a head on a frozen backbone (spec 5.1, Cole et al.'s linear mode) needs every image's
features, 25 epochs in a row.  Computing them once and reading them back from a memory map makes
each epoch a few matrix products, and the same file serves every method and run that starts from
the same backbone on the same images.

Cache file: ``<cache>/<pooled|spatial>[-flipped]-<key>.npy`` (default ``$PAMC_CACHE/features``
or ``~/.cache/pamc/features``), where key hashes the backbone's state_dict (so ImageNet, scene
pretraining or a weights file are told apart by what they hold, not by their name), the
dataset's identity (its ``fingerprint`` attribute where it has one, as image files and image
caches do; otherwise its length, image shape and the bytes of a few evenly spaced images), the
mixed-precision mode, the format, and whether the images were mirrored (``flip``: the features
of the flipped images, for the flip augmentation on cached features).  A ``.json`` manifest
beside the file holds that key, checked on every reuse.  The file is written to a temporary file and moved into place,
so an interrupted extraction never leaves a file that looks finished.

Features are stored as float16 (half the disk and page cache of float32; the backbone's ReLU
features lose nothing that matters to a linear head at that precision).  Disk cost per image for
ResNet-50 at 448 x 448 (2048 channels, 14 x 14 map):

* pooled (N x 2048): 4 KB -> VOC (5,717 train+val) 23 MB, CUB (5,994) 25 MB, COCO (82,081) 0.34 GB,
  NUS-WIDE (~150k) 0.6 GB.
* spatial (N x 2048 x 14 x 14): 0.8 MB -> VOC 4.6 GB, CUB 4.8 GB, COCO 66 GB, NUS-WIDE ~120 GB.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .files import atomic_write, cache_dir, write_json
from .data.loading import image_batches
from .errors import PamcError

FEATURE_VERSION = 1
FEATURE_DTYPE = np.float16
#: images whose bytes identify a dataset that has no `fingerprint` attribute
SAMPLED_IMAGES = 8


def feature_dir(explicit: Optional[str | Path] = None) -> Path:
    """The feature cache folder: `explicit`, else $PAMC_CACHE/features or ~/.cache/pamc/features."""
    return Path(explicit) if explicit is not None else cache_dir() / "features"


def backbone_fingerprint(backbone: nn.Module) -> str:
    """A hash of the backbone's class and every tensor of its state_dict (weights and BN statistics)."""
    digest = hashlib.sha256(type(backbone).__name__.encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(images: Dataset) -> str:
    """The dataset's own fingerprint where it has one, else its length, shape and sampled image bytes."""
    own = getattr(images, "fingerprint", None)
    n = len(images)
    digest = hashlib.sha256(f"{n}\n{own}".encode())
    if own is None and n:
        for i in np.unique(np.linspace(0, n - 1, SAMPLED_IMAGES).round().astype(int)):
            image = images[int(i)]
            digest.update(f"{tuple(image.shape)}".encode())
            digest.update(image.contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(backbone: nn.Module, images: Dataset, runtime, spatial: bool = False, flip: bool = False) -> dict:
    """What identifies a feature file: backbone weights, images (and so their size), kind, flip,
    precision; `flip` enters only when set, so the files of unflipped features keep their names."""
    return {"version": FEATURE_VERSION, "backbone": backbone_fingerprint(backbone),
            "images": dataset_fingerprint(images), "spatial": bool(spatial),
            "amp": str(runtime.amp_dtype), "dtype": np.dtype(FEATURE_DTYPE).name, **({"flip": True} if flip else {})}


def feature_cache_path(backbone: nn.Module, images: Dataset, runtime, spatial: bool = False,
                       cache: Optional[str | Path] = None, flip: bool = False, key: Optional[dict] = None) -> Path:
    """Where `extract_features` keeps the features of `images` under `backbone` (see the module doc)."""
    key = key or cache_key(backbone, images, runtime, spatial, flip)
    kind = ("spatial" if spatial else "pooled") + ("-flipped" if flip else "")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return feature_dir(cache) / f"{kind}-{digest}.npy"


def manifest_path(path: Path) -> Path:
    """The JSON beside a feature file that says what it was computed from (its `cache_key` and backbone class)."""
    return Path(path).with_suffix(".json")


def check_manifest(path: Path, key: dict, backbone: nn.Module) -> None:
    """Refuse a feature file whose manifest names other weights, images or settings than `key`
    (a file copied or renamed into place); files of older pamc versions have no manifest."""
    try:
        written = json.loads(manifest_path(path).read_text())
    except FileNotFoundError:
        return
    except ValueError:
        raise PamcError(f"feature cache manifest {manifest_path(path)} is damaged; delete it and {path.name}") from None
    if written.get("key") != key:
        what = [k for k in sorted(set(key) | set(written.get("key", {}))) if written.get("key", {}).get(k) != key.get(k)]
        raise PamcError(f"feature cache {path} was computed with another {', '.join(what)} (backbone "
                        f"{written.get('backbone', '?')}, not {type(backbone).__name__} with these weights); "
                        "delete it or use another cache folder")


@torch.no_grad()
def _compute(backbone: nn.Module, images: Dataset, runtime, path: Path, spatial: bool, batch_size: int,
             num_workers: int, flip: bool = False) -> None:
    """Run the backbone (eval mode, no augmentation but `flip`: every image mirrored) over `images`
    into a new .npy file at `path`."""
    was_training = backbone.training
    backbone.eval()
    batches = list(torch.split(torch.arange(len(images)), batch_size))
    try:
        def write(tmp: str) -> None:
            out, start = None, 0
            for x in image_batches(images, batches, num_workers, pin_memory=runtime.device.type == "cuda"):
                with runtime.autocast():
                    maps = backbone(runtime.prepare(x, torch.ones(len(x), dtype=torch.bool) if flip else None))
                feats = (maps if spatial else maps.mean(dim=(2, 3))).float().cpu().numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=FEATURE_DTYPE, shape=(len(images), *feats.shape[1:]))
                out[start:start + len(feats)] = feats
                start += len(feats)
            out.flush()

        atomic_write(path, write)
    finally:
        backbone.train(was_training)


def extract_features(backbone: nn.Module, images: Dataset, runtime, cache: Optional[str | Path] = None,
                     spatial: bool = False, batch_size: int = 64, num_workers: int = 0, flip: bool = False) -> np.memmap:
    """Features of every image of `images` (uint8 3 x H x W), read-only memory-mapped float16.

    pooled (default): N x F, the global average of the backbone's feature map; spatial: N x F x h x w,
    for training a CAM head (with BoostLU) on a frozen backbone.  The backbone runs in eval mode on
    `runtime`'s device and precision, on the images as they are or, with `flip`, mirrored (the
    training augmentation).  Computed once per (backbone weights, images, kind, flip, precision)
    into the cache folder `cache` (see `feature_cache_path`), reused afterwards; a manifest beside
    the file (`manifest_path`) says what it was computed from and is checked on every reuse.
    """
    if len(images) == 0:
        raise PamcError("no images to extract features from; the split is empty")
    if int(batch_size) < 1:
        raise PamcError(f"feature batch_size must be a positive integer (got {batch_size!r})")
    key = cache_key(backbone, images, runtime, spatial, flip)
    path = feature_cache_path(backbone, images, runtime, spatial, cache, flip, key)
    if not path.is_file():
        _compute(backbone, images, runtime, path, spatial, int(batch_size), num_workers, flip)
        write_json(manifest_path(path), {"key": key, "backbone": type(backbone).__name__})
    check_manifest(path, key, backbone)
    features = np.load(path, mmap_mode="r")
    if features.shape[0] != len(images):
        raise PamcError(f"feature cache {path} holds {features.shape[0]} rows for {len(images)} images; delete it")
    return features
