"""Per-class decision thresholds, chosen on the validation split and stored with the checkpoint.

Why: a model trained on partial labels has damaged, low scores for its positives, and how low
differs per class, so one threshold of 0.5 for every class decides badly (BoostLU restores much
of the scale; calibration does the rest).

How (`tune_thresholds`): per class, the threshold that maximises F1 on the validation images,
placed halfway between the lowest score it accepts and the highest it rejects.  Which entries
count:

* full validation labels (0 / 1): every entry;
* partial labels (1 observed positive, -1 observed negative, 0 not annotated): the observed
  positives; as negatives the observed negatives where the class has any, else every entry not
  observed positive (assumed negative, as AN training assumes).  The assumption counts the
  missed positives as false positives, so these thresholds err on the high side;
* a class without any positive among the counted entries gets the fallback: the one threshold
  for all classes that maximises the pooled (micro) F1 over the counted entries of every class,
  or 0.5 where the split has no positive at all.

The thresholds belong to the alpha they were tuned at; they are stored in ``model.json`` under
``extra["thresholds"]`` ({"values", "alpha", "split", "labels", "fallback", "created"}) by
`pamc.inference.calibrate` (`pamc calibrate`).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np

from .activation import describe_alpha, same_alpha
from .errors import PamcError
from .files import write_text

KEY = "thresholds"
DEFAULT = 0.5


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of `scores` >= threshold against the bool `positive`, maximising F1 over
    every cut between distinct scores; halfway between the accepted and the rejected score."""
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order].astype(np.float64), positive[order]
    total = int(pos.sum())
    if total == 0:
        raise ValueError("no positive")
    tp = np.cumsum(pos)
    predicted = np.arange(1, s.size + 1)
    f1 = 2 * tp / (predicted + total)
    cut = np.append(s[:-1] > s[1:], True)  # a cut after position k keeps every tie together
    k = int(np.argmax(np.where(cut, f1, -1.0)))
    if k == s.size - 1:
        return float(s[k]), float(f1[k])
    middle = (s[k] + s[k + 1]) / 2
    return float(middle if middle > s[k + 1] else s[k]), float(f1[k])


def counted_entries(labels: np.ndarray, partial: bool) -> tuple[np.ndarray, np.ndarray]:
    """(counted, positive) masks of a label matrix, full (0 / 1) or partial (see the module)."""
    labels = np.asarray(labels)
    positive = labels == 1
    if not partial:
        return np.ones(labels.shape, dtype=bool), positive
    negative = labels < 0
    has_negative = negative.any(axis=0, keepdims=True)
    counted = positive | np.where(has_negative, negative, True)
    return counted, positive


def tune_thresholds(scores, labels, partial: bool = False) -> dict:
    """Per-class thresholds maximising F1 on (`scores`, `labels`: full 0 / 1, or with `partial`
    1 / 0 / -1 observed labels); see the module for the rule.

    Returns {"values": [C floats], "labels": "full"|"partial", "fallback": [classes that got the
    fallback], "f1": [per-class F1 on the counted entries, None for fallback classes]}."""
    scores = np.asarray(scores, dtype=np.float64)
    counted, positive = counted_entries(labels, partial)
    kind = "partial" if partial else "full"
    if scores.shape != counted.shape:
        raise PamcError(f"scores have shape {scores.shape}, labels {counted.shape}; one row per image in both")
    pooled = DEFAULT
    if (positive & counted).any():
        pooled = best_f1_threshold(scores[counted], positive[counted])[0]
    values, f1s, fallback = [], [], []
    for c in range(scores.shape[1]):
        mask = counted[:, c]
        if not positive[mask, c].any():
            values.append(pooled)
            f1s.append(None)
            fallback.append(c)
            continue
        t, f1 = best_f1_threshold(scores[mask, c], positive[mask, c])
        values.append(t)
        f1s.append(f1)
    return {"values": values, "labels": kind, "fallback": fallback, "f1": f1s}


def stored_thresholds(meta) -> Optional[np.ndarray]:
    """The checkpoint's calibrated thresholds (C floats), or None where it has none."""
    entry = meta.extra.get(KEY)
    return None if not entry else np.asarray(entry["values"], dtype=np.float64)


def resolve_threshold(spec, meta, alpha: float):
    """What `--threshold` names, for a checkpoint evaluated at `alpha`: a float (one threshold
    for every class) or C per-class thresholds.

    None: the stored thresholds if the checkpoint has them, else 0.5; "auto": the stored ones
    (an error without them); a number; or a file: JSON (a list, a {class: threshold} mapping,
    or a stored entry with "values") or CSV with columns class, threshold."""
    if spec is None or spec == "auto":
        stored = stored_thresholds(meta)
        if stored is None:
            if spec is None:
                return DEFAULT
            raise PamcError("the checkpoint has no calibrated thresholds; run `pamc calibrate RUN` first, "
                            "or pass --threshold VALUE")
        tuned = meta.extra[KEY]["alpha"]
        if not same_alpha(tuned, alpha):
            raise PamcError(f"the stored thresholds were tuned at alpha {describe_alpha(tuned)}, not "
                            f"{describe_alpha(alpha)}; evaluate at that alpha, or `pamc calibrate RUN` at this one")
        return stored
    try:
        return float(spec)
    except (TypeError, ValueError):
        pass
    return read_threshold_file(spec, meta.class_names, meta.num_classes)


def read_threshold_file(path: str | Path, class_names, num_classes: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"--threshold {path}: neither auto, a number, nor an existing file")
    names = list(class_names or [f"class_{c}" for c in range(num_classes)])
    if path.suffix == ".json":
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PamcError(f"threshold file {path} is not valid JSON ({exc})") from None
        values = values.get("values", values) if isinstance(values, dict) else values
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"class", "threshold"} <= set(rows[0]):
            raise PamcError(f"threshold file {path} needs the columns class, threshold")
        values = {r["class"]: r["threshold"] for r in rows}
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(names))
        missing = [n for n in names if n not in values]
        if unknown or missing:
            raise PamcError(f"threshold file {path}: " + (f"unknown classes {unknown[:5]}" if unknown
                                                          else f"no threshold for {missing[:5]}"))
        values = [values[n] for n in names]
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PamcError(f"threshold file {path} holds values that are not numbers") from None
    if out.shape != (num_classes,) or not np.isfinite(out).all():
        raise PamcError(f"threshold file {path} must give {num_classes} finite thresholds (got shape {out.shape})")
    return out


def write_threshold_csv(path: str | Path, entry: dict, class_names) -> None:
    """The thresholds as CSV: class, threshold (exact: read back, it decides as the stored one), f1
    (on the tuning split), fallback (yes / no)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["class", "threshold", "f1", "fallback"])
    for c, name in enumerate(class_names):
        f1 = entry["f1"][c]
        w.writerow([name, repr(float(entry["values"][c])), "" if f1 is None else f"{f1:.4f}",
                    "yes" if c in entry["fallback"] else "no"])
    write_text(path, text.getvalue())
