"""Does a CAM point at the object?  Scores on images with known boxes (the embedded scenes).

For each (image, class present in it): the CAM channel is upsampled (bilinear) to the canvas,
* energy share = sum of relu(CAM) inside the union of the class's boxes / sum of relu(CAM)
  everywhere (0 when the map has no positive attribution at all);
* pointing game = 1 if the CAM's maximum falls inside one of the class's boxes.
`box_area_share` (area of the boxes / canvas) is what a uniform map would score on energy share.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import PamcError
from .cams import as_size, upsample

Box = tuple[int, int, int, int, int]  # (class, x0, y0, x1, y1), x1/y1 exclusive


def box_masks(boxes: Sequence[Box], size: tuple[int, int], num_classes: int) -> tuple[list[int], torch.Tensor]:
    """The classes present and, per class, the union of its boxes as a K x H x W bool mask."""
    height, width = size
    present = sorted({int(b[0]) for b in boxes})
    masks = torch.zeros(len(present), height, width, dtype=torch.bool)
    row = {c: k for k, c in enumerate(present)}
    for c, x0, y0, x1, y1 in boxes:
        if not (0 <= c < num_classes and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise PamcError(f"box {(c, x0, y0, x1, y1)} is invalid for {num_classes} classes on a {width} x {height} "
                            f"canvas; boxes are (class, x0, y0, x1, y1) with x1/y1 exclusive")
        masks[row[int(c)], y0:y1, x0:x1] = True
    return present, masks


def localization_scores(cams: torch.Tensor, boxes: Sequence[Sequence[Box]], image_size,
                        num_classes: Optional[int] = None) -> dict:
    """Energy share and pointing-game hit rate (fractions in [0, 1]) over every (image, present
    class), overall and per class.  `cams`: N x C x h x w with channel = class index; `boxes`:
    per image a list of (class, x0, y0, x1, y1) in canvas pixels; `image_size`: the canvas."""
    size = as_size(image_size)
    num_classes = cams.shape[1] if num_classes is None else int(num_classes)
    if cams.ndim != 4 or cams.shape[1] != num_classes:
        raise PamcError(f"expected CAMs as N x {num_classes} x h x w, got shape {tuple(cams.shape)}")
    if len(boxes) != cams.shape[0]:
        raise PamcError(f"got boxes for {len(boxes)} images but CAMs for {cams.shape[0]}")
    classes, shares, hits, areas = [], [], [], []
    for maps, image_boxes in zip(cams, boxes):
        present, masks = box_masks(image_boxes, size, num_classes)
        if not present:
            continue
        up = upsample(maps[present], size)
        energy = up.clamp(min=0)
        total = energy.sum(dim=(1, 2))
        inside = (energy * masks).sum(dim=(1, 2))
        shares.append(torch.where(total > 0, inside / total.clamp(min=1e-30), torch.zeros_like(total)))
        hits.append(masks.flatten(1).gather(1, up.flatten(1).argmax(dim=1, keepdim=True))[:, 0].float())
        areas.append(masks.flatten(1).float().mean(dim=1))
        classes += present
    if not classes:
        raise PamcError("no image has a box; localisation needs images with known object boxes")
    cls = np.array(classes)
    share, hit, area = (torch.cat(v).numpy() for v in (shares, hits, areas))
    per_class = []
    for c in range(num_classes):
        sel = cls == c
        per_class.append({"class": c, "pairs": int(sel.sum()),
                          "energy_share": float(share[sel].mean()) if sel.any() else None,
                          "pointing_game": float(hit[sel].mean()) if sel.any() else None})
    return {"energy_share": float(share.mean()), "pointing_game": float(hit.mean()),
            "box_area_share": float(area.mean()), "pairs": int(len(cls)), "per_class": per_class}
