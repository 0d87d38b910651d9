"""CAM overlays on images with colour bars in absolute attribution units, and `pamc explain`."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..activation import check_alpha
from ..checkpoint import load_model
from ..errors import PamcError
from .cams import (as_size, cams, file_images, resolve_classes, resolve_device, split_image_names, split_images,
                   top_classes, upsample)
from .figures import overlay_figure


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def unique_names(names: Sequence[str]) -> list[str]:
    """File-name-safe names, with the position appended where two would collide."""
    safe = [safe_name(n) for n in names]
    return [f"{s}_{i}" if safe.count(s) > 1 else s for i, s in enumerate(safe)]


def save_overlays(images_uint8, cams, out_dir: str | Path, class_names: Sequence[str],
                  names: Optional[Sequence[str]] = None, vmax: Optional[float] = None, classes=None,
                  shared_scale: bool = True, signed: bool = False, scores: Optional[torch.Tensor] = None,
                  opacity: float = 0.5) -> list[Path]:
    """Write `<image>__<class>.png` per image and drawn class: the image with its upsampled CAM on
    top and a colour bar in CAM units.

    images_uint8: N x 3 x H x W (or a list of 3 x H x W); cams: N x C x h x w (or a list of
    C x h x w) with `class_names` naming the C channels.  `classes`: None (all channels), channel
    indices for every image, or one list per image.  The colour range is `vmax` if given, else the
    largest drawn value over all maps (`shared_scale`, comparable across images and runs) or per
    map.  Only the positive part is drawn unless `signed` (then blue < 0 < red, range +-vmax).
    `scores` (N x C probabilities) go into the titles.
    """
    if len(images_uint8) != len(cams):
        raise PamcError(f"got {len(images_uint8)} images but {len(cams)} CAM sets; pass one CAM set per image")
    if len(cams) and len(class_names) != cams[0].shape[0]:
        raise PamcError(f"{len(class_names)} class names for CAMs with {cams[0].shape[0]} channels")
    names = unique_names(names if names is not None else [f"image{i:04d}" for i in range(len(cams))])
    if classes is None or not any(isinstance(c, (list, tuple)) for c in classes):
        classes = [classes] * len(cams)
    elif len(classes) != len(cams):
        raise PamcError(f"got {len(classes)} per-image class lists for {len(cams)} images")
    picks = [list(range(len(class_names))) if cs is None else resolve_classes(cs, class_names, len(class_names))
             for cs in classes]
    drawn = [[upsample(cam[c], image.shape[-2:]) for c in pick] for image, cam, pick in zip(images_uint8, cams, picks)]

    def top(m: torch.Tensor) -> float:
        return float((m.abs() if signed else m.clamp(min=0)).max())

    if vmax is None and shared_scale:
        vmax = max((top(m) for maps in drawn for m in maps), default=1.0)
    out_dir = Path(out_dir)
    written = []
    for i, (image, pick, maps) in enumerate(zip(images_uint8, picks, drawn)):
        for c, cam in zip(pick, maps):
            title = class_names[c] if scores is None else f"{class_names[c]}  p = {float(scores[i, c]):.3f}"
            path = out_dir / f"{names[i]}__{safe_name(class_names[c])}.png"
            written.append(overlay_figure(image, cam, path, title, top(cam) if vmax is None else vmax, signed, opacity))
    return written


def explain_command(checkpoint: str | Path, images, out: str | Path, top_k: int = 3, classes=None,
                    boosted: bool = False, image_size=None, device: str = "auto", alpha: Optional[float] = None,
                    vmax: Optional[float] = None, signed: bool = False, max_images: int = 16) -> list[Path]:
    """`pamc explain`: overlays of the top-k predicted (or the named) classes of some images.

    `images`: image files and/or folders, or a dataset `Split` (its first `max_images` images).

    Images are resized to `image_size` (default: the checkpoint's `image_size`, else kept as they
    are).  Scores use `alpha` (default: the checkpoint's eval alpha); `boosted` draws the boosted
    maps.  All overlays share one colour scale (`vmax` fixes it, to compare two models' runs).
    Writes the PNGs and `scores.csv`; returns the written paths.
    """
    model, meta = load_model(checkpoint, resolve_device(device))
    class_names = [str(n) for n in meta.class_names or range(model.num_classes)]
    alpha = meta.test_alpha if alpha is None else check_alpha(alpha)
    picked = None if classes is None else resolve_classes(classes, class_names, model.num_classes)
    size = as_size(image_size or meta.image_size)
    if hasattr(images, "images"):  # a dataset split
        count = min(int(max_images), len(images))
        files = [Path(n) for n in split_image_names(images, count)]
        pictures = split_images(images, count, size)
    else:
        files, pictures = file_images([images] if isinstance(images, (str, Path)) else images, size)
    raw = [cams(model, p)[0] for p in pictures]
    logits = torch.stack([model.logits_from_cams(m[None], alpha)[0] for m in raw])
    probs = torch.sigmoid(logits)
    picked_per_image = top_classes(probs, top_k) if picked is None else [picked] * len(files)
    shown = [model.boost(m, alpha) for m in raw] if boosted else raw
    out = Path(out)
    written = save_overlays(pictures, shown, out, class_names, [f.stem for f in files], vmax, picked_per_image,
                            signed=signed, scores=probs)
    overlays = iter(written)
    rows = []
    for i, pick in enumerate(picked_per_image):
        for rank, c in enumerate(pick, start=1):
            positive = shown[i][c].clamp(min=0)
            rows.append([str(files[i]), rank, class_names[c], f"{float(probs[i, c]):.6f}", f"{float(logits[i, c]):.6f}",
                         f"{float(positive.max()):.6f}", f"{float(positive.mean()):.6f}", next(overlays).name])
    table = out / "scores.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "rank", "class", "probability", "logit", "cam_peak", "cam_positive_mean", "overlay"])
        writer.writerows(rows)
    return written + [table]
