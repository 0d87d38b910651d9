"""The labels your data is missing: unobserved (image, class) pairs ranked by the evidence that
the class is present, with where in the image the evidence is (the CAM's peak).

Why classes need making comparable: a model trained on partial labels scores its positives low,
and how low differs per class (frequent classes keep higher scores than rare ones), so one
ranking of raw probabilities over all classes fills its top with a few classes.  Three scales
(`COMPARABLE`), measured against each other on the scenes in docs/practitioner.md:

* ``margin`` (the default): logit(p) - logit(t_c), the distance past the class's calibrated
  threshold t_c (`pamc.thresholds`, tuned on the validation split: stored ones, or tuned on the
  spot); positive = the calibrated decision says present;
* ``rank``: per class, the share of the scored images with a lower score (ties count half), so
  every class spreads over 0..1 whatever its scale;
* ``raw``: the probability itself.

Scores come at the checkpoint's evaluation alpha (BoostLU restores much of the lost scale).
"""
from __future__ import annotations

import datetime
import io
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from .activation import check_alpha, same_alpha
from .errors import PamcError
from .models import eval_mode

COMPARABLE = ("margin", "rank", "raw")
COLUMNS = ["image", "class", "score", "rank", "split", "index", "probability", "peak_x", "peak_y", "run",
           "suggested_at"]


def check_comparable(how: str) -> None:
    if how not in COMPARABLE:
        raise PamcError(f"unknown score scale {how!r}; valid: {', '.join(COMPARABLE)}")


@torch.no_grad()
def evidence(model, images, alpha: float, rt, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N x C, CAM peaks N x C x 2) of a dataset's images; a peak is (x, y), the
    centre of the CAM cell with the largest value, as fractions of the image's width and height."""
    from .data.loading import image_batches

    probs, peaks = [], []
    with eval_mode(model):
        for x in image_batches(images, list(torch.arange(len(images)).split(batch_size))):
            with rt.autocast():
                maps = model.cams(rt.prepare(x)).float()
            probs.append(torch.sigmoid(model.logits_from_cams(maps, alpha)).cpu())
            h, w = maps.shape[-2:]
            flat = maps.flatten(2).argmax(dim=2).cpu()
            peaks.append(torch.stack([(flat % w + 0.5) / w, (flat // w + 0.5) / h], dim=-1))
    return torch.cat(probs).numpy(), torch.cat(peaks).numpy()


def comparable(probs: np.ndarray, how: str = "margin", thresholds: Optional[np.ndarray] = None) -> np.ndarray:
    """The probabilities on a scale shared by every class (see the module)."""
    check_comparable(how)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if how == "raw":
        return p
    if how == "rank":
        return (rankdata(p, axis=0) - 0.5) / p.shape[0]
    if thresholds is None:
        raise PamcError("the margin scale needs per-class thresholds (pamc calibrate)")
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p)) - np.log(t / (1 - t))


def rank_unobserved(values: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the unobserved entries (observed == 0), highest value first (ties: in
    row-major order)."""
    rows, cols = np.nonzero(np.asarray(observed) == 0)
    order = np.argsort(-values[rows, cols], kind="stable")
    return rows[order], cols[order]


def run_thresholds(checkpoint, meta, alpha: float, data: Optional[dict], device: str) -> np.ndarray:
    """The checkpoint's calibrated thresholds at `alpha`: stored ones, else tuned now (not stored)."""
    from .inference import calibrate
    from .thresholds import KEY, stored_thresholds

    stored = stored_thresholds(meta)
    if stored is not None and same_alpha(meta.extra[KEY]["alpha"], alpha):
        return stored
    return np.asarray(calibrate(checkpoint, "val", alpha, data, device, store=False)["values"])


@dataclass
class Suggestions:
    """Ranked suggestions: one dict per (image, class) with the `COLUMNS`, best first."""

    rows: list[dict]
    how: str
    unobserved: int  # how many pairs were ranked

    def csv_text(self) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return text.getvalue()


def suggest_labels(checkpoint: str | Path, splits: Sequence[str] = ("train", "val"), data: Optional[dict] = None,
                   how: str = "margin", top: Optional[int] = None, alpha: Optional[float] = None,
                   device: str = "auto", batch_size: int = 64, out: Optional[str | Path] = None) -> Suggestions:
    """Rank the unobserved (image, class) pairs of the checkpoint's training and validation images
    (`splits` of its data, or of `data`) by evidence, one ranking over all of them; keep the `top`
    best (default: all); with `out`, write the CSV.

    Observed labels are the ones training saw (the checkpoint's observation protocol where the
    data carries full labels only)."""
    from .checkpoint import load_model, resolve_checkpoint
    from .explain.cams import split_image_names
    from .files import write_text
    from .inference import load_split
    from .runtime import Runtime

    check_comparable(how)
    if top is not None and int(top) < 1:
        raise PamcError(f"--top must be >= 1 (got {top})")
    folder = resolve_checkpoint(checkpoint)
    model, meta = load_model(folder)
    alpha = meta.test_alpha if alpha is None else check_alpha(alpha)
    rt = Runtime.create(device)
    model = model.to(rt.device)
    thresholds = run_thresholds(folder, meta, alpha, data, device) if how == "margin" else None
    names = list(meta.class_names or [f"class_{c}" for c in range(meta.num_classes)])
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    found = []
    for split in splits:
        part = load_split(split, data, str(folder))
        if part.observed is None:
            raise PamcError(f"the {split} split has no observed labels, so nothing is known to be missing")
        probs, peaks = evidence(model, part.images, alpha, rt, batch_size)
        values = comparable(probs, how, thresholds)
        rows, cols = rank_unobserved(values, np.asarray(part.observed))
        image_names = split_image_names(part, len(part))
        found += [(values[r, c], split, int(r), int(c), probs[r, c], peaks[r, c], image_names[r])
                  for r, c in zip(rows, cols)]
    found.sort(key=lambda item: -item[0])  # stable: within a split, its order
    ranked = [{"image": name, "class": names[c], "score": f"{v:.6f}", "rank": n, "split": split, "index": r,
               "probability": f"{p:.6f}", "peak_x": f"{peak[0]:.4f}", "peak_y": f"{peak[1]:.4f}", "run": str(folder),
               "suggested_at": now}
              for n, (v, split, r, c, p, peak, name) in enumerate(found[:top], 1)]
    result = Suggestions(ranked, how, len(found))
    if out:
        write_text(out, result.csv_text())
    return result
