"""Vision-language pseudo-labels: the rules of VLPL and AEVLP as plain functions of cached scores.

The scores (`pamc pseudo-label`, `pamc.vlscores`, or a user's own ``.npy``) are an N x V x C array
of per-view class scores, view 0 the whole image and views 1..g*g its tiles (an N x C array is
one view).  They depend only on the images and the frozen scorer, so pamc computes them once and
applies a rule here, once per run, where the references recompute CLIP on every training step
(spec since-2024, section 2).  A rule returns 1 (pseudo-positive) / 0 (nothing) / -1
(pseudo-negative) per entry; the losses (`losses.vision_language`) look them up by dataset index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import PamcError


def as_views(scores) -> torch.Tensor:
    """Scores as a float32 N x V x C tensor (an N x C array is one view)."""
    s = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores).float()
    if s.ndim == 2:
        s = s.unsqueeze(1)
    if s.ndim != 3:
        raise PamcError(f"scores must be N x C or N x V x C (got shape {tuple(s.shape)})")
    return s


def check_scores(scores, num_images: int, num_classes: int, what: str = "scores") -> torch.Tensor:
    """`as_views`, refusing a shape, class count or value that does not fit the training set."""
    s = np.asarray(scores)
    if s.ndim not in (2, 3):
        raise PamcError(f"{what} must be N x C or N x V x C (got shape {s.shape}); save one row per training image")
    if s.shape[0] != num_images or s.shape[-1] != num_classes:
        raise PamcError(f"{what} has shape {s.shape}, the training set needs {num_images} images x {num_classes} "
                        f"classes (N x C or N x V x C, rows in the order of images_train.txt)")
    s = as_views(s)
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise PamcError(f"{what} must hold class scores in [0, 1] (softmax over the classes), "
                        f"got values in [{float(s.min()):g}, {float(s.max()):g}]")
    return s


def load_scores(path: str | Path, num_images: int, num_classes: int) -> torch.Tensor:
    """A score file (.npy, N x C or N x V x C) as a checked N x V x C float32 tensor."""
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"score file {path} does not exist; make it with `pamc pseudo-label` or pass your own .npy")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise PamcError(f"{path} is not a .npy array of scores ({exc})") from None
    return check_scores(array, num_images, num_classes, what=f"score file {path}")


def _positives(observed) -> torch.Tensor:
    return torch.as_tensor(np.asarray(observed) if not torch.is_tensor(observed) else observed) == 1


def vlpl_pseudo_labels(scores, threshold: float = 0.3, negative_fraction: float = 0.0) -> torch.Tensor:
    """VLPL (Xing et al. CVPRW'24, `models.py`): 1 where the global view's score s_c > threshold.

    The optional negative rule (off in the reference's ResNet path): each image's
    int(negative_fraction * C) lowest-scoring classes that are not pseudo-positive become -1
    (ties: the lower class index first).
    """
    s = as_views(scores)[:, 0]
    labels = (s > threshold).to(torch.int8)
    n_neg = int(negative_fraction * s.shape[1])
    if n_neg:
        order = torch.where(labels == 1, torch.inf, s).argsort(dim=1, stable=True)[:, :n_neg]
        negatives = torch.zeros_like(labels, dtype=torch.bool).scatter_(1, order, True) & (labels == 0)
        labels[negatives] = -1
    return labels


def damp_scores(scores, observed, eta0: float) -> torch.Tensor:
    """AEVLP's dual adaptive merge (`utils.py: get_pseudo_labels`): s_c = (S_g,c + m_c) / 2 with
    m_c = max over tiles if that max > eta else min over tiles, eta = min(S_g at the observed
    positive, eta0).  With several observed positives eta uses the smallest of their global scores
    [pamc's reading; the reference has one]; with none, eta = eta0."""
    s = as_views(scores)
    if s.shape[1] < 2:
        raise PamcError("the AEVLP rule needs the global view and tiles (N x (1 + g*g) x C scores), got one view; "
                        "compute the scores with --grid G")
    global_view, tiles = s[:, 0], s[:, 1:]
    high, low = tiles.max(dim=1).values, tiles.min(dim=1).values
    pos = _positives(observed).to(s.device)
    at_positive = torch.where(pos, global_view, torch.inf).min(dim=1).values
    eta = at_positive.clamp(max=eta0).unsqueeze(1)
    merged = torch.where(high > eta, high, low)
    return (global_view + merged) / 2


def aevlp_pseudo_labels(scores, observed, eta0: float = 0.0, tau: float = 0.5, top_k: int = 3) -> torch.Tensor:
    """AEVLP (Tran et al. ICCV'25): among each image's `top_k` largest DAMP scores, those >= tau
    are 1, the rest 0 (the reference writes no negative pseudo-labels).  Ties at the top-k
    boundary: the lower class index first (a stable sort), so the rule is deterministic."""
    s = damp_scores(scores, observed, eta0)
    order = s.argsort(dim=1, descending=True, stable=True)[:, :int(top_k)]
    top = torch.zeros_like(s, dtype=torch.bool).scatter_(1, order, True)
    return (top & (s >= tau)).to(torch.int8)


def pseudo_label_quality(pseudo, observed, full) -> dict:
    """Precision and recall of the pseudo-positives against the full labels, over the entries that
    were not observed (what the pseudo-labels add), and how many each image gets on average."""
    pseudo = torch.as_tensor(pseudo)
    unobserved = torch.as_tensor(np.asarray(observed) if not torch.is_tensor(observed) else observed) == 0
    truth = torch.as_tensor(np.asarray(full)).bool()
    chosen = (pseudo == 1) & unobserved
    hits = int((chosen & truth).sum())
    n_chosen, n_true = int(chosen.sum()), int((truth & unobserved).sum())
    return {"precision": hits / n_chosen if n_chosen else None, "recall": hits / n_true if n_true else None,
            "pseudo_positives_per_image": n_chosen / max(len(pseudo), 1),
            "pseudo_negatives_per_image": int(((pseudo == -1) & unobserved).sum()) / max(len(pseudo), 1)}


def quality_or_none(pseudo, observed: Optional[object], full: Optional[object]) -> Optional[dict]:
    """`pseudo_label_quality` where the training set has full labels and dense observed labels."""
    if full is None or observed is None:
        return None
    return pseudo_label_quality(pseudo, observed, full)
