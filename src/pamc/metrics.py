"""Average precision and mAP: fully labelled, partially annotated (OpenImages) and per frequency group.

Every per-class AP equals ``sklearn.metrics.average_precision_score`` on that column
(non-interpolated step sum, tied scores form one threshold; spec section 4) but is computed for
many classes at once: each chunk of classes is transposed to (classes x images), every row's
scores are sorted once, and each positive's precision is read by binary search (see
``_ap_per_row``).  Chunks bound the extra memory (a few hundred MB) whatever the number of
classes, so the OpenImages test shape (125k x 5k) needs no (N x C) temporaries beyond the inputs.

Inputs are numpy arrays or torch tensors of shape (images x classes); torch tensors are
evaluated on their own device.  Scores keep their float type (no rounding merges two scores),
counts are integers and precision is float64, so the APs equal sklearn's on the same values.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import PamcError

# Elements of one (classes x images) chunk; its temporaries take roughly 30-50 bytes per element.
_CHUNK_ELEMENTS = 1 << 22


def average_precision(scores, targets) -> np.ndarray:
    """Per-class AP (C,) in [0, 1]; targets == 1 is positive, anything else negative (spec 1.4).

    A class without any positive gets AP 0, as in every reference implementation.
    """
    return _per_class_ap(scores, targets, partial=False)


def mean_average_precision(scores, targets) -> float:
    """mAP in percent over all C classes, classes without a positive counting as 0 (spec 4)."""
    return 100.0 * float(average_precision(scores, targets).mean())


def partial_average_precision(scores, labels) -> np.ndarray:
    """Per-class AP (C,) on partially annotated labels: 1 positive, -1 annotated negative, 0 not annotated.

    Only annotated images (label != 0) of a class enter its AP, as in the OpenImages evaluation
    (spec 1.6).  A class with no annotated image is NaN (not evaluable); an annotated class
    without a positive is 0.  Fully labelled 0/1 targets must be converted first
    (``np.where(y == 1, 1, -1)``) since 0 means "not annotated" here.
    """
    return _per_class_ap(scores, labels, partial=True)


def partial_mean_average_precision(scores, labels) -> float:
    """mAP in percent over the classes with at least one annotated image (see partial_average_precision)."""
    return 100.0 * float(np.nanmean(partial_average_precision(scores, labels)))


def group_mean_average_precision(scores, labels, train_frequency, groups: int = 5) -> dict:
    """mAP per training-frequency group, as in the OpenImages tables (G1 = rarest ... G5, All).

    Grouping (Durand et al. CVPR'19 / IMCL convention, spec 1.6): classes are sorted by
    ``train_frequency`` ascending -- the number of observed positives per class in the *training*
    labels, e.g. ``(train_labels == 1).sum(0)`` -- with ties broken by class index, and cut into
    ``groups`` contiguous groups of equal size with ``numpy.array_split`` (the first groups get
    one extra class when C is not divisible).  Each group's mAP is the percent mean of the
    partially annotated AP over its evaluable classes (NaN if it has none); "All" is
    ``partial_mean_average_precision``.  Returns {"G1": .., ..., "G<groups>": .., "All": ..}.
    """
    ap = partial_average_precision(scores, labels)
    frequency = np.asarray(train_frequency)
    if frequency.shape != ap.shape or not np.issubdtype(frequency.dtype, np.number):
        raise PamcError(f"train_frequency must be a vector of {ap.size} per-class counts, got shape {frequency.shape}; "
                        "pass e.g. (train_labels == 1).sum(0)")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or not 1 <= groups <= ap.size:
        raise PamcError(f"groups must be an integer between 1 and the number of classes ({ap.size}), got {groups!r}")
    order = np.argsort(frequency, kind="stable")
    result = {}
    for g, members in enumerate(np.array_split(order, groups), start=1):
        evaluable = ap[members][~np.isnan(ap[members])]
        result[f"G{g}"] = 100.0 * float(evaluable.mean()) if evaluable.size else float("nan")
    result["All"] = 100.0 * float(np.nanmean(ap))  # never all-NaN: a -1 label is required
    return result


@torch.no_grad()
def _per_class_ap(scores, labels, partial: bool) -> np.ndarray:
    """Shared driver: validate, then evaluate chunks of classes so memory stays bounded."""
    kind = "labels" if partial else "targets"
    scores, labels = _as_matrix(scores, "scores"), _as_matrix(labels, kind)
    if scores.shape != labels.shape:
        raise PamcError(f"scores have shape {tuple(scores.shape)} but {kind} have shape {tuple(labels.shape)}; "
                        "pass one row per image and one column per class in both")
    num_images, num_classes = scores.shape
    device = scores.device if torch.is_tensor(scores) else torch.device("cpu")
    step = max(1, _CHUNK_ELEMENTS // num_images)
    ap = torch.empty(num_classes, dtype=torch.float64, device=device)
    any_negative = False
    for start in range(0, num_classes, step):
        block = slice(start, min(start + step, num_classes))
        y = _columns(labels, block, device)
        if not partial:
            s = _float_scores(_columns(scores, block, device))
            hit = (y == 1).view(-1).nonzero().squeeze(1)
            ap[block] = _ap_per_row(s, *_pack_rows(s.view(-1)[hit], hit // num_images, y.shape[0]))
            continue
        where = (y != 0).view(-1).nonzero().squeeze(1)
        values = y.view(-1)[where]
        if not bool(((values == 1) | (values == -1)).all()):
            bad = torch.unique(values[(values != 1) & (values != -1)])[:5].tolist()
            raise PamcError(f"partial labels may hold only 1 (positive), -1 (annotated negative), 0 (not annotated); "
                            f"found {bad}")
        any_negative = any_negative or bool((values == -1).any())
        row = where // num_images
        entries = _float_scores(_entries(scores, where % num_images, row + start, device))
        annotated, counts = _pack_rows(entries, row, y.shape[0])
        is_pos = values == 1
        ap[block] = _ap_per_row(annotated, *_pack_rows(entries[is_pos], row[is_pos], y.shape[0]))
        ap[block][counts == 0] = float("nan")
    if partial and not any_negative:
        raise PamcError("partial labels contain no -1 (annotated negative), so every AP would be trivial; "
                        "0 means 'not annotated' here -- convert 0/1 labels with np.where(y == 1, 1, -1)")
    return ap.cpu().numpy()


def _ap_per_row(evaluated: torch.Tensor, positives: torch.Tensor, num_pos: torch.Tensor) -> torch.Tensor:
    """AP of each row from the scores of its evaluated entries and of its positives (-inf pads both).

    sklearn's step sum, sum over distinct scores t of (recall gained at t) * precision(>= t),
    regrouped by positive, is the mean over positives of precision at the positive's own score:
    (positives scoring >= s) / (entries scoring >= s).  Tied scores are one threshold, exactly as
    in sklearn, and both counts are binary searches in sorted rows, so only the scores need
    sorting (no argsort, no gather) and everything after the sort is proportional to the positives.
    """
    ranked, positives = _sort_rows(evaluated), _sort_rows(positives)  # ascending, padding first
    width = positives.shape[1]
    entries_above = evaluated.shape[1] - torch.searchsorted(ranked, positives)
    positives_above = width - torch.searchsorted(positives, positives)
    real = torch.arange(width, device=positives.device) >= (width - num_pos)[:, None]
    precision = torch.where(real, positives_above.double() / entries_above.double(), 0.0)
    return torch.where(num_pos > 0, precision.sum(1) / num_pos, 0.0)


def _pack_rows(entries: torch.Tensor, row: torch.Tensor, num_rows: int):
    """Flat entries grouped by ascending `row` -> (num_rows x longest) matrix padded with -inf, and row counts.

    Lets rows with different numbers of entries (annotated images, positives) be sorted and
    searched in one batched call; -inf sorts before every finite score, so it is never counted.
    """
    counts = torch.bincount(row, minlength=num_rows)
    slot = torch.arange(row.numel(), device=row.device) - (counts.cumsum(0) - counts)[row]
    packed = torch.full((num_rows, int(counts.max())), float("-inf"), dtype=entries.dtype, device=entries.device)
    packed[row, slot] = entries
    return packed, counts


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending: numpy's SIMD sort on CPU (several times torch's), torch elsewhere."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _as_matrix(x, name: str):
    """Keep numpy arrays and tensors as they are (no full copy); check they are 2-D, non-empty, numeric."""
    if not torch.is_tensor(x):
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
            raise PamcError(f"{name} must be a numeric (images x classes) array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise PamcError(f"{name} must be a 2-D (images x classes) matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise PamcError(f"{name} have shape {tuple(x.shape)}; evaluate at least one image and one class")
    return x


def _columns(x, block: slice, device: torch.device) -> torch.Tensor:
    """Columns `block` of an (images x classes) matrix as a contiguous (classes x images) tensor."""
    if torch.is_tensor(x):
        return x[:, block].T.contiguous().to(device)
    return torch.from_numpy(np.ascontiguousarray(x[:, block].T)).to(device)


def _entries(x, rows: torch.Tensor, cols: torch.Tensor, device: torch.device) -> torch.Tensor:
    """x[rows[i], cols[i]] for every i, without copying anything else of x."""
    if torch.is_tensor(x):
        return x[rows.to(x.device), cols.to(x.device)].to(device)
    return torch.from_numpy(np.asarray(x[rows.cpu().numpy(), cols.cpu().numpy()])).to(device)


def _float_scores(s: torch.Tensor) -> torch.Tensor:
    """Scores in a float type that keeps every distinct value distinct, and finite."""
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    elif not s.is_floating_point():
        s = s.double()
    if not bool(torch.isfinite(s.sum())) and not bool(torch.isfinite(s).all()):  # sum: cheap, exact unless it overflows
        raise PamcError("scores contain NaN or infinite values; pass finite scores (probabilities or logits)")
    return s
