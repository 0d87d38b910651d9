"""Average precision and mAP: fully labelled, partially annotated (OpenImages) and per frequency group;
and the thresholded precision / recall / F1 reported beside mAP (CP, CR, CF1, OP, OR, OF1).

Every per-class AP equals ``sklearn.metrics.average_precision_score`` on that column
(non-interpolated step sum, tied scores form one threshold; spec section 4).  Per class it costs
one values-only sort plus binary searches for the positives (``_class_ap``), several times
less than sklearn's argsort and cumulative passes.  The inputs are read one block of classes at
a time (scores transposed so each class is contiguous); blocks bound the extra memory (a few
hundred MB) whatever the number of classes, and for partial labels only the annotated scores
are read, so the OpenImages test shape (125k x 5k) stays cheap.

The thresholded metrics are counts: one pass over blocks of rows, or for partial labels over
the annotated entries only; their top-k variant needs each row's k-th score, the one full
pass over the scores (3-5 s at 125k x 5k on a busy 2-core machine; benchmarks/bench_eval.py).

The work is numpy on the CPU: single-threaded SIMD sorts, no thread pool that stalls when
data-loader workers keep the cores busy (the top-k values alone use torch.topk).  Inputs are
numpy arrays or torch tensors (any device, copied to the host block by block) of shape
(images x classes).  Scores keep their type (no rounding merges two scores) and precision is
float64, so the APs equal sklearn's on the same values.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .errors import PamcError
from .sparse_labels import SparseLabels

# Entries (images x classes) in one block of columns; its copies (transposed scores, a label
# mask) take 5-10 bytes per entry, so a block stays near 100-150 MB.
_CHUNK_ELEMENTS = 1 << 24


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


def split_map(scores, targets) -> float:
    """mAP of a split: full 0/1 labels, or partially annotated 1/0/-1 labels (AP over annotated
    entries), dense or a sparse label store."""
    if hasattr(targets, "batch"):
        targets = targets.batch(torch.arange(len(targets)))
    targets = np.asarray(targets)
    if (targets < 0).any():
        return partial_mean_average_precision(scores, targets)
    return mean_average_precision(scores, targets)


def multilabel_metrics(scores, targets, threshold=0.5, top_k=None, zero_division=0.0) -> dict:
    """{"CP", "CR", "CF1", "OP", "OR", "OF1"} in percent (ML-GCN, CVPR'19; spec since-2023 4).

    Predicted positive: score >= `threshold` (0.5 for probabilities, 0 for logits; or one threshold
    per class, e.g. `pamc.thresholds`' calibrated ones); with `top_k`
    = k it must also be among the k highest scores of its image, as in ML-GCN's top-3 code;
    threshold None keeps the k highest alone.  Ties at the k-th score go to the lower class
    index.  From TP, FP, FN per class: CP and CR are the means over the classes of TP/(TP+FP)
    and TP/(TP+FN), CF1 = 2 CP CR / (CP + CR) (the harmonic mean of the two means, not the mean
    of per-class F1s); OP, OR, OF1 the same with the counts pooled over the classes.

    `zero_division` is what a ratio with nothing to count gives: the precision of a class with no
    predicted positive, the recall of a class with no positive, OP / OR without any.  0 (the
    default: ML-GCN's code for precision, and sklearn's ``zero_division=0``) counts it as 0 in its
    mean; nan leaves it out of the mean (sklearn's ``zero_division=np.nan``); 1 counts it as 1.
    Either way precision and recall are treated alike.  (ML-GCN's recall would be NaN there; the
    COCO classes it was written for all have test positives.)

    Targets as for mAP: 0/1 (anything but 1 negative), or partial labels 1 / -1 / 0 = not
    annotated, dense or a `SparseLabels` store; as in `split_map`, any -1 (or a sparse store) means
    partial.  Partial labels count only annotated entries, and a class without any
    annotated image leaves the class means, as it leaves partial mAP.  The top k are still taken
    over all C scores of an image.
    """
    _check_options(threshold, top_k, zero_division)
    scores, labels = _prepared(scores, targets)
    threshold = _per_class(threshold, scores.shape[1])
    return _summary(*_counts(scores, labels, threshold, top_k), zero_division)


def standard_metrics(scores, targets, threshold=0.5, top_k=3, zero_division=0.0) -> dict:
    """The thresholded metrics stored beside mAP: `multilabel_metrics` at `threshold` ("CP", ...,
    "OF1") and its top-k variant ("CP@3", ..., "OF1@3"), each in percent."""
    _check_options(threshold, top_k, zero_division)
    scores, labels = _prepared(scores, targets)
    threshold = _per_class(threshold, scores.shape[1])
    plain = _summary(*_counts(scores, labels, threshold, None), zero_division)
    top = _summary(*_counts(scores, labels, threshold, top_k), zero_division)
    return {**plain, **{f"{key}@{top_k}": value for key, value in top.items()}}


def predicted_labels(scores, threshold=0.5, top_k=None) -> np.ndarray:
    """The decisions the thresholded metrics count (bool, images x classes): score >= `threshold`
    (one, or one per class) and, with `top_k`, among the image's k highest (ties to the lower class)."""
    _check_options(threshold, top_k, 0.0)
    scores = _finite(_host(_as_matrix(scores, "scores")))
    return _predicted(scores, _per_class(threshold, scores.shape[1]), top_k)


def _check_options(threshold, top_k, zero_division) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise PamcError(f"top_k must be a positive integer or None (got {top_k!r})")
    if threshold is None and top_k is None:
        raise PamcError("threshold None predicts every label; give a threshold (e.g. 0.5), a top_k, or both")
    if isinstance(threshold, (np.ndarray, list, tuple, torch.Tensor)):  # one per class
        if not np.isfinite(np.asarray(threshold, dtype=np.float64)).all():
            raise PamcError("per-class thresholds must be finite numbers")
    elif threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                    or not np.isfinite(threshold)):
        raise PamcError(f"threshold must be a finite number, one per class, or None (got {threshold!r})")
    if (isinstance(zero_division, bool) or not isinstance(zero_division, numbers.Real)
            or not (zero_division in (0, 1) or np.isnan(zero_division))):
        raise PamcError(f"zero_division must be 0, 1 or nan (got {zero_division!r})")


def _per_class(threshold, num_classes: int):
    """A scalar threshold as it is; per-class thresholds as a float64 array of `num_classes`."""
    if not isinstance(threshold, (np.ndarray, list, tuple, torch.Tensor)):
        return threshold
    values = np.asarray(threshold, dtype=np.float64)
    if values.shape != (num_classes,):
        raise PamcError(f"per-class thresholds must be {num_classes} values, one per class (got shape {values.shape})")
    return values


def _prepared(scores, targets):
    """(scores, labels): labels are a dense targets matrix (full labels) or, for partial labels,
    the annotated entries (row, column, positive) in row order."""
    scores = _as_matrix(scores, "scores")
    if isinstance(targets, SparseLabels):
        shape = targets.shape
    else:
        targets = _as_matrix(targets, "targets")
        shape = tuple(targets.shape)
    if tuple(scores.shape) != shape:
        raise PamcError(f"scores have shape {tuple(scores.shape)} but targets have shape {shape}; "
                        "pass one row per image and one column per class in both")
    if isinstance(targets, SparseLabels):
        current = targets.subset(np.arange(len(targets)))  # current labels, soft negatives as -1
        rows = np.repeat(np.arange(len(targets)), np.diff(current.indptr))
        entries = rows, current.cols.astype(np.int64), current.initial == 1
    elif _has_negative(targets):
        entries = _dense_entries(targets)
    else:
        return scores, targets
    if entries[2].all():
        raise PamcError("partial labels contain no -1 (annotated negative), so every precision would be trivial; "
                        "0 means 'not annotated' here -- pass 0/1 test labels for full labels")
    return scores, entries


def _has_negative(labels) -> bool:
    """Whether any label is < 0, read in row blocks (no matrix-sized temporary; stops at the first)."""
    step = max(1, _CHUNK_ELEMENTS // labels.shape[1])
    return any((_host(labels[start:start + step]) < 0).any() for start in range(0, labels.shape[0], step))


def _dense_entries(labels):
    """Annotated entries (row, column, positive) of a dense 1 / -1 / 0 matrix, read in row blocks."""
    num_images, num_classes = labels.shape
    step = max(1, _CHUNK_ELEMENTS // num_classes)
    parts = []
    for start in range(0, num_images, step):
        y = _host(labels[start:start + step])
        rows, cols = np.divmod(np.flatnonzero(y), num_classes)  # flatnonzero: about twice np.nonzero's speed
        values = y[rows, cols]
        if not np.isin(values, (1, -1)).all():
            raise PamcError(f"partial labels may hold only 1 (positive), -1 (annotated negative), 0 (not annotated); "
                            f"found {np.unique(values[~np.isin(values, (1, -1))])[:5].tolist()}")
        parts.append((rows + start, cols, values == 1))
    return tuple(np.concatenate(a) for a in zip(*parts))


def _counts(scores, labels, threshold, top_k):
    """Per class: true positives, predicted positives, positives, and whether it is evaluated."""
    num_images, num_classes = scores.shape
    step = max(1, _CHUNK_ELEMENTS // num_classes)
    if not isinstance(labels, tuple):  # full labels: every entry, one block of rows at a time
        counts = np.zeros((3, num_classes), dtype=np.int64)
        for start in range(0, num_images, step):
            block = slice(start, start + step)
            predicted = _predicted(_finite(_host(scores[block])), threshold, top_k)
            positive = _host(labels[block]) == 1
            counts += [np.count_nonzero(predicted & positive, axis=0), np.count_nonzero(predicted, axis=0),
                       np.count_nonzero(positive, axis=0)]
        return (*counts, np.ones(num_classes, dtype=bool))
    rows, cols, positive = labels
    if top_k is None:  # only the annotated scores are read
        predicted = _finite(_entries(scores, rows, cols)) >= (threshold[cols] if isinstance(threshold, np.ndarray) else threshold)
    else:  # the top k need whole rows
        predicted = np.empty(rows.size, dtype=bool)
        for start in range(0, num_images, step):
            lo, hi = np.searchsorted(rows, [start, start + step])
            block = _predicted(_finite(_host(scores[start:start + step])), threshold, top_k)
            predicted[lo:hi] = block[rows[lo:hi] - start, cols[lo:hi]]
    per_class = [np.bincount(cols[mask], minlength=num_classes) for mask in (predicted & positive, predicted, positive)]
    return (*per_class, np.bincount(cols, minlength=num_classes) > 0)


def _predicted(scores: np.ndarray, threshold, top_k) -> np.ndarray:
    """Predicted positives of a block of rows: score >= threshold and/or among the row's top k."""
    predicted = np.ones(scores.shape, dtype=bool) if threshold is None else scores >= threshold
    if top_k is not None and top_k < scores.shape[1]:
        predicted &= _top_k(scores, top_k)
    return predicted


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k highest scores of each row, ties at the k-th score going to the lower class
    index: the k-th value of each row, and a cumulative count only in rows with too many ties.

    The k-th values come from torch.topk, which for a small k is about 4x faster than
    numpy's partition (the values are exact; which tied index it returns is not used).  Scores
    that are not floats (bool, integers) go through float64, which torch.topk takes.
    """
    values = scores if scores.dtype.kind == "f" else scores.astype(np.float64)
    kth = torch.from_numpy(np.ascontiguousarray(values)).topk(k, dim=1).values[:, -1:].numpy()
    above, tied = scores > kth, scores == kth
    room = k - np.count_nonzero(above, axis=1)
    crowded = np.count_nonzero(tied, axis=1) > room
    if crowded.any():
        tied[crowded] &= np.cumsum(tied[crowded], axis=1) <= room[crowded, None]
    return above | tied


def _summary(tp, predicted, positive, evaluated, zero_division) -> dict:
    tp, predicted, positive = tp[evaluated], predicted[evaluated], positive[evaluated]
    cp, cr = _mean_ratio(tp, predicted, zero_division), _mean_ratio(tp, positive, zero_division)
    op = _mean_ratio(tp.sum(keepdims=True), predicted.sum(keepdims=True), zero_division)
    recall = _mean_ratio(tp.sum(keepdims=True), positive.sum(keepdims=True), zero_division)
    values = {"CP": cp, "CR": cr, "CF1": _harmonic(cp, cr), "OP": op, "OR": recall, "OF1": _harmonic(op, recall)}
    return {key: 100.0 * value for key, value in values.items()}


def _mean_ratio(num: np.ndarray, den: np.ndarray, zero_division) -> float:
    """Mean of num / den, a zero denominator giving `zero_division` (NaN: left out; all NaN: NaN)."""
    ratios = np.divide(num, den, out=np.full(num.shape, float(zero_division)), where=den > 0)
    kept = ratios[~np.isnan(ratios)]
    return float(kept.mean()) if kept.size else float("nan")


def _harmonic(p: float, r: float) -> float:
    if np.isnan(p) or np.isnan(r):
        return float("nan")
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _per_class_ap(scores, labels, partial: bool) -> np.ndarray:
    """Shared driver: validate, then read the inputs one block of classes at a time."""
    kind = "labels" if partial else "targets"
    scores, labels = _as_matrix(scores, "scores"), _as_matrix(labels, kind)
    if scores.shape != labels.shape:
        raise PamcError(f"scores have shape {tuple(scores.shape)} but {kind} have shape {tuple(labels.shape)}; "
                        "pass one row per image and one column per class in both")
    num_images, num_classes = scores.shape
    step = max(1, _CHUNK_ELEMENTS // num_images)
    ap = np.empty(num_classes)
    any_negative = False
    for start in range(0, num_classes, step):
        block = slice(start, min(start + step, num_classes))
        y = _host(labels[:, block])
        if not partial:
            by_class = _finite(_transposed(_host(scores[:, block])))
            for c, (s, hit) in enumerate(zip(by_class, _transposed(y == 1)), start):
                ap[c] = _class_ap(np.sort(s), np.sort(s[hit]))
            continue
        image, col, bounds = _by_class(y != 0)
        values = y[image, col]
        if not np.isin(values, (1, -1)).all():
            raise PamcError(f"partial labels may hold only 1 (positive), -1 (annotated negative), 0 (not annotated); "
                            f"found {np.unique(values[~np.isin(values, (1, -1))])[:5].tolist()}")
        any_negative = any_negative or bool((values == -1).any())
        entries = _finite(_entries(scores, image, col + start))
        for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), start):
            annotated = entries[lo:hi]
            ap[c] = _class_ap(np.sort(annotated), np.sort(annotated[values[lo:hi] == 1])) if hi > lo else np.nan
    if partial and not any_negative:
        raise PamcError("partial labels contain no -1 (annotated negative), so every AP would be trivial; "
                        "0 means 'not annotated' here -- convert 0/1 labels with np.where(y == 1, 1, -1)")
    return ap


def _class_ap(ranked: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class from the sorted scores of its evaluated images and of its positives among them.

    sklearn's step sum, sum over distinct scores t of (recall gained at t) * precision(>= t),
    regrouped by positive, is the mean over positives of the precision at the positive's own
    score: (positives scoring >= s) / (images scoring >= s).  Tied scores are thus one threshold,
    exactly as in sklearn, and both counts are binary searches, so a class costs one values-only
    sort (numpy's SIMD sort, several times faster than the argsort sklearn needs).  No positive:
    AP 0 (spec 4).
    """
    if not positives.size:
        return 0.0
    images_above = ranked.size - np.searchsorted(ranked, positives)
    positives_above = positives.size - np.searchsorted(positives, positives)
    return float(np.mean(positives_above / images_above))


def _by_class(mask: np.ndarray):
    """Positions of the set entries of an (images x classes) block, grouped by class.

    Returns (image, column, bounds): class c owns entries bounds[c]:bounds[c+1].  Scanning the
    block in its own row-major layout and sorting the hits beats transposing it when hits are
    few (partial labels: a few annotations per image).
    """
    num_images, width = mask.shape
    image, col = np.divmod(np.flatnonzero(mask), width)
    col, image = np.divmod(np.sort(col * num_images + image), num_images)
    return image, col, np.searchsorted(col, np.arange(width + 1))


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


def _transposed(a: np.ndarray) -> np.ndarray:
    """a.T as a contiguous array, copied in bands of rows that stay in cache (2-3x np.ascontiguousarray)."""
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    for r in range(0, a.shape[0], 256):
        out[:, r:r + 256] = a[r:r + 256].T
    return out


def _entries(x, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x[rows[i], cols[i]] for every i, without copying anything else of x."""
    if torch.is_tensor(x):
        return _host(x[torch.from_numpy(rows).to(x.device), torch.from_numpy(cols).to(x.device)])
    return np.asarray(x[rows, cols])


def _host(x) -> np.ndarray:
    """A numpy view (or host copy) of a numpy array or of a tensor on any device."""
    if not torch.is_tensor(x):
        return x
    x = x.detach().cpu()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16; float32 holds it exactly


def _finite(s: np.ndarray) -> np.ndarray:
    """The scores, unchanged (any numeric type sorts and compares exactly), once known to be finite."""
    if not np.isfinite(s.sum()) and not np.isfinite(s).all():  # the sum is cheap and exact unless it overflows
        raise PamcError("scores contain NaN or infinite values; pass finite scores (probabilities or logits)")
    return s
