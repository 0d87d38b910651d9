"""How a partial-label model's CAMs differ from a full-label model's: scale vs structure.

The paper's finding: the same regions are highlighted (high spatial correlation) but with smaller
positive attributions, mostly on the classes present in the image; BoostLU closes the scale gap.

* Scale: per (image, class) the peak of the positive part, max(relu(CAM)), and the mean positive
  part, mean(relu(CAM)); reported as a *ratio of means*, sum(model) / sum(reference) over the
  (image, class) pairs of a group -- per-pair ratios would explode where the reference map is ~0.
  Groups: ground-truth positive classes and negative classes, pooled and per class.
* Structure: per (image, class) the spatial Pearson and Spearman correlations of the two maps and
  the IoU of their top-q regions (the q fraction of positions with the largest values).  Spearman
  ranks use average ranks for ties (as scipy) or ordinal ranks (argsort of argsort).  Maps that
  are constant have no correlation (NaN) and are left out of the means.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_model, resolve_checkpoint
from ..errors import PamcError
from ..labels import check_full_labels
from .cams import as_size, cams, iter_image_batches, resolve_device, split_images, upsample
from .figures import examples_figure, histogram_figure, ratio_figure, scatter_figure
from .localization import localization_scores
from .report import Report


def peak(maps: torch.Tensor) -> torch.Tensor:
    """Peak positive attribution per map (0 for a map with no positive value)."""
    return maps.clamp(min=0).amax(dim=(-2, -1))


def positive_mean(maps: torch.Tensor) -> torch.Tensor:
    return maps.clamp(min=0).mean(dim=(-2, -1))


SCALE_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"peak": peak, "positive_mean": positive_mean}


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation over the last dimension (NaN where either input is constant)."""
    a = a.double() - a.double().mean(dim=-1, keepdim=True)
    b = b.double() - b.double().mean(dim=-1, keepdim=True)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(dim=-1) / denom, torch.nan).float()


def rank(x: torch.Tensor, ties: str = "average") -> torch.Tensor:
    """0-based ranks along the last dimension; tied values share their average rank, or get
    distinct ranks in position order (`ties="ordinal"`)."""
    if ties == "ordinal":
        return x.argsort(dim=-1, stable=True).argsort(dim=-1).double()
    if ties != "average":
        raise PamcError(f"unknown ties method {ties!r}; valid: average, ordinal")
    x = x.contiguous()
    ordered = x.sort(dim=-1).values
    first = torch.searchsorted(ordered, x)
    after_last = torch.searchsorted(ordered, x, right=True)
    return (first + after_last - 1).double() / 2


def spatial_pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N x C x h x w maps -> N x C correlations over positions."""
    return pearson(a.flatten(-2), b.flatten(-2))


def spatial_spearman(a: torch.Tensor, b: torch.Tensor, ties: str = "average") -> torch.Tensor:
    return pearson(rank(a.flatten(-2), ties), rank(b.flatten(-2), ties))


def top_region_iou(a: torch.Tensor, b: torch.Tensor, q: float = 0.2) -> torch.Tensor:
    """IoU of the top-q fractions of positions of each map (at least one position each)."""
    if not 0 < q <= 1:
        raise PamcError(f"top-region fraction q must be in (0, 1], got {q}")
    a, b = a.flatten(-2), b.flatten(-2)
    k = max(1, round(q * a.shape[-1]))

    def top(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.topk(k, dim=-1).indices, True)

    ta, tb = top(a), top(b)
    return (ta & tb).sum(dim=-1).float() / (ta | tb).sum(dim=-1).float()


def nan_to_none(values) -> list[Optional[float]]:
    return [None if np.isnan(v) else float(v) for v in np.atleast_1d(np.asarray(values, dtype=float))]


def masked_ratio(other: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> tuple[float, list]:
    """Ratio of means over the masked (image, class) pairs: pooled and per class."""
    m = mask.double()
    num, den = (other.double() * m).sum(dim=0), (ref.double() * m).sum(dim=0)
    per_class = torch.where(den > 0, num / den.clamp(min=1e-300), torch.nan)
    pooled = num.sum() / den.sum() if den.sum() > 0 else torch.tensor(torch.nan)
    return nan_to_none(pooled)[0], nan_to_none(per_class)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[Optional[float], list]:
    """Mean over the masked pairs that are not NaN: pooled and per class."""
    keep = mask & ~values.isnan()
    v = torch.where(keep, values.double(), 0.0)
    per_class = torch.where(keep.sum(dim=0) > 0, v.sum(dim=0) / keep.sum(dim=0).clamp(min=1), torch.nan)
    pooled = v.sum() / keep.sum() if keep.any() else torch.tensor(torch.nan)
    return nan_to_none(pooled)[0], nan_to_none(per_class)


def by_label(reduce: Callable, labels: torch.Tensor, *values: torch.Tensor) -> dict:
    """Apply a masked reduction to the positive and to the negative (image, class) pairs."""
    out = {}
    for group, mask in (("positive", labels == 1), ("negative", labels == 0)):
        out[group], out[f"per_class_{group}"] = reduce(*values, mask)
    return out


def gap_measures(reference: torch.Tensor, other: torch.Tensor, labels, q: float = 0.2,
                 ties: str = "average") -> dict:
    """Scale ratios (other / reference) and structural agreement of two models' CAMs (N x C x h x w,
    same images), split by the full 0/1 labels (N x C)."""
    if reference.shape != other.shape:
        raise PamcError(f"CAM shapes differ ({tuple(reference.shape)} vs {tuple(other.shape)}); "
                        f"compare models with the same classes at the same input size")
    labels = torch.as_tensor(check_full_labels(np.asarray(labels)))
    if tuple(labels.shape) != tuple(reference.shape[:2]):
        raise PamcError(f"labels have shape {tuple(labels.shape)} but the CAMs are for {tuple(reference.shape[:2])} "
                        f"(images x classes)")
    return {
        "scale": {name: by_label(masked_ratio, labels, stat(other), stat(reference))
                  for name, stat in SCALE_STATS.items()},
        "structure": {
            "pearson": by_label(masked_mean, labels, spatial_pearson(reference, other)),
            "spearman": by_label(masked_mean, labels, spatial_spearman(reference, other, ties)),
            f"top{round(q * 100)}_iou": by_label(masked_mean, labels, top_region_iou(reference, other, q)),
        },
    }


def attribution_scores(maps: torch.Tensor, labels) -> dict:
    """Absolute mean peak / mean positive part of one model's CAMs, by label group."""
    labels = torch.as_tensor(np.asarray(labels))
    return {name: by_label(masked_mean, labels, stat(maps)) for name, stat in SCALE_STATS.items()}


def quantiles(values: torch.Tensor) -> dict:
    """5/25/50/75/95 % quantiles of CAM values: the histograms' shape in a few numbers."""
    if values.numel() == 0:
        return {}
    qs = (5, 25, 50, 75, 95)
    return {f"q{q:02d}": float(v) for q, v in zip(qs, np.percentile(values.numpy(), qs))}


def model_label(checkpoint: str | Path) -> str:
    """A run's name for reports: the run folder, not its best/ or last/ sub-folder."""
    folder = resolve_checkpoint(checkpoint)
    return folder.parent.name if folder.name in ("best", "last") else folder.name


def load_models(checkpoints: Sequence[str | Path], labels: Optional[Sequence[str]], device: str = "auto"):
    """Checkpoints of one dataset, loaded on `device`: (a distinct name each -- `labels`, else the run
    folders --, [(model, meta)], class names); PamcError where their classes differ."""
    if not checkpoints:
        raise PamcError("give at least one checkpoint (a run folder made by `pamc train`)")
    if labels is not None:
        names = [str(n) for n in labels]
        if len(names) != len(checkpoints) or len(set(names)) != len(names):
            raise PamcError(f"give one distinct label per checkpoint ({len(checkpoints)}), got {names}")
    else:
        names = [model_label(c) for c in checkpoints]
        names = [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    device = resolve_device(device)
    models = [load_model(c, device) for c in checkpoints]
    first, first_meta = models[0]
    class_names = [str(n) for n in first_meta.class_names or range(first.num_classes)]
    for (model, meta), name in zip(models[1:], names[1:]):
        if model.num_classes != first.num_classes or (meta.class_names or class_names) != class_names:
            raise PamcError(f"{name} has other classes than {names[0]}; compare models of one dataset")
    return names, models, class_names


def gather_images(data, max_images: int, size, batch_size: int):
    """(uint8 images N x 3 x H x W, full labels, boxes or None, canvas size of the boxes)."""
    if isinstance(data, (tuple, list)):
        images, full = data
        boxes, canvas = None, None
        n = min(max_images, len(images))
        images = torch.cat(list(iter_image_batches(torch.as_tensor(images[:n]), batch_size, size)))
    else:
        if getattr(data, "full", None) is None:
            raise PamcError("the split has no full labels; comparing explanations needs fully labelled images")
        full, boxes = data.full, data.boxes
        n = min(max_images, len(data))
        canvas = tuple(data.images[0].shape[-2:])
        images = split_images(data, n, size, batch_size)
        boxes = None if boxes is None else list(boxes[:n])
    if n == 0:
        raise PamcError("no images to compare on")
    full = check_full_labels(np.asarray(full)[:n])
    if images.dtype != torch.uint8:
        raise PamcError(f"compare_explanations needs uint8 images (to draw them), got {images.dtype}")
    return images, full, boxes, canvas


def compare_explanations(checkpoints: Sequence[str | Path], data, out_dir: str | Path,
                         labels: Optional[Sequence[str]] = None, boosted_alpha: Optional[float] = None,
                         max_images: int = 200, image_size=None, device: str = "auto", batch_size: int = 32,
                         q: float = 0.2, ties: str = "average", n_examples: int = 4, seed: int = 0) -> dict:
    """Compare the CAMs of checkpoints on the same images; the first is the reference (full labels).

    `data`: a `Split` with full labels (its boxes, if any, add localisation scores) or a pair
    (uint8 images N x 3 x H x W, full 0/1 labels N x C); the first `max_images` images are used,
    resized to `image_size` (default: the reference checkpoint's `image_size`).  With
    `boosted_alpha`, every non-reference model is also compared with BoostLU(alpha) applied to its
    CAMs.  Writes `summary.json`, figures, `report.md` and `report.html`; returns the summary.
    """
    if len(checkpoints) < 2:
        raise PamcError("compare needs at least two checkpoints: the full-label reference first, then the others")
    names, models, class_names = load_models(checkpoints, labels, device)
    ref_model, ref_meta = models[0]
    size = as_size(image_size or ref_meta.image_size)
    images, full, boxes, canvas = gather_images(data, max_images, size, batch_size)
    if full.shape[1] != ref_model.num_classes:
        raise PamcError(f"the labels have {full.shape[1]} classes but the models have {ref_model.num_classes}")

    maps = {name: cams(model, images, batch_size=batch_size) for (model, _), name in zip(models, names)}
    model_of = {name: model for (model, _), name in zip(models, names)}
    boosted = {}  # model -> the name of its boosted maps
    if boosted_alpha is not None:
        for name in names[1:]:
            boosted[name] = f"{name} + BoostLU({float(boosted_alpha):g})"
            maps[boosted[name]] = model_of[name].boost(maps[name], boosted_alpha)  # each model's own form
    ref_name = names[0]
    compared = [n for n in maps if n != ref_name]
    labels_t = torch.as_tensor(full)
    summary = {
        "reference": ref_name, "models": list(maps), "checkpoints": [str(c) for c in checkpoints],
        "num_images": int(images.shape[0]), "image_size": list(images.shape[-2:]),
        "cam_size": list(maps[ref_name].shape[-2:]), "class_names": class_names, "boosted_alpha": boosted_alpha,
        "top_region_fraction": q, "rank_ties": ties,
        "scores": {n: attribution_scores(m, full) for n, m in maps.items()},
        "distribution": {n: {g: quantiles(m[labels_t == v]) for g, v in (("positive", 1), ("negative", 0))}
                         for n, m in maps.items()},
        "gap": {n: gap_measures(maps[ref_name], maps[n], full, q, ties) for n in compared},
    }
    if boxes is not None:
        summary["localization"] = {n: localization_scores(m, boxes, canvas, ref_model.num_classes) for n, m in maps.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(maps, ref_name, boosted, images, labels_t, class_names, summary, out_dir, n_examples, seed)
    summary["figures"] = {k: p.name for k, p in figures.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, figures, out_dir)
    return summary


def draw_figures(maps: dict, ref_name: str, boosted: dict[str, str], images: torch.Tensor, labels: torch.Tensor,
                 class_names: list[str], summary: dict, out_dir: Path, n_examples: int, seed: int) -> dict[str, Path]:
    """The report's figures; `boosted` maps a model to the name of its boosted maps (if any), which
    are drawn beside it (same histogram panel, next scatter panel)."""
    compared = [n for n in maps if n != ref_name]
    models = [n for n in compared if n not in boosted.values()]
    pos, neg = labels == 1, labels == 0
    figures = {"histograms": histogram_figure(
        {"positive classes": {n: m[pos].flatten().numpy() for n, m in maps.items()},
         "negative classes": {n: m[neg].flatten().numpy() for n, m in maps.items()}}, ref_name,
        [(n, boosted.get(n)) for n in models], out_dir / "histograms.png")}
    gen = torch.Generator().manual_seed(seed)
    ref_values = maps[ref_name].flatten()
    positive = labels[..., None, None].expand_as(maps[ref_name]).flatten() == 1
    pick = torch.randperm(ref_values.numel(), generator=gen)[:5000]
    paired = [n for m in models for n in (m, boosted.get(m)) if n is not None]  # a model, then its boosted maps
    figures["scatter"] = scatter_figure(
        {n: (ref_values[pick].numpy(), maps[n].flatten()[pick].numpy(), positive[pick].numpy()) for n in paired},
        ref_name, out_dir / "scatter.png", columns=2 if boosted else 4)
    figures["class_ratios"] = ratio_figure(
        {n: summary["gap"][n]["scale"]["peak"]["per_class_positive"] for n in paired}, class_names,
        out_dir / "class_ratios.png", f"Peak attribution relative to {ref_name}, per class (positive pairs)")
    rows = []
    ref_peaks = peak(maps[ref_name])
    for i in torch.nonzero(pos.any(dim=1))[:n_examples, 0].tolist():
        c = int(torch.where(pos[i], ref_peaks[i], -torch.inf).argmax())
        rows.append((images[i], f"image {i}: {class_names[c]}",
                     [upsample(m[i, c], images.shape[-2:]) for m in maps.values()]))
    if rows:
        figures["examples"] = examples_figure(rows, list(maps), out_dir / "examples.png")
    return figures


def write_report(summary: dict, figures: dict[str, Path], out_dir: Path) -> None:
    ref = summary["reference"]
    report = Report(f"CAMs compared with {ref}")
    report.text(f"{summary['num_images']} images at {summary['image_size'][0]} x {summary['image_size'][1]} px, "
                f"CAMs of {summary['cam_size'][0]} x {summary['cam_size'][1]}. Reference: {ref} (full labels). "
                f"Positive / negative = (image, class) pairs whose class is / is not in the image.")
    report.heading("Attribution scale relative to the reference")
    report.text("Ratio of means over (image, class) pairs: sum of the model's statistic / sum of the reference's. "
                "peak = max of relu(CAM); positive mean = mean of relu(CAM). A ratio below 1 on positives is the "
                "gap BoostLU targets.")
    gap = summary["gap"]
    report.table(["model", "peak (pos)", "peak (neg)", "positive mean (pos)", "positive mean (neg)"],
                 [[n, g["scale"]["peak"]["positive"], g["scale"]["peak"]["negative"],
                   g["scale"]["positive_mean"]["positive"], g["scale"]["positive_mean"]["negative"]]
                  for n, g in gap.items()])
    report.heading("Absolute attribution scores")
    report.table(["model", "mean peak (pos)", "mean peak (neg)", "mean positive part (pos)", "mean positive part (neg)"],
                 [[n, s["peak"]["positive"], s["peak"]["negative"], s["positive_mean"]["positive"],
                   s["positive_mean"]["negative"]] for n, s in summary["scores"].items()])
    report.heading("Where the maps point: agreement with the reference")
    iou = next(k for k in next(iter(gap.values()))["structure"] if k.endswith("_iou"))
    report.text(f"Per (image, class) spatial correlation of the two maps, averaged; {iou} = IoU of the top "
                f"{round(summary['top_region_fraction'] * 100)}% positions. High values with a low scale ratio mean: "
                f"same regions, weaker attribution.")
    report.table(["model", "Pearson (pos)", "Pearson (neg)", "Spearman (pos)", "Spearman (neg)", f"{iou} (pos)",
                  f"{iou} (neg)"],
                 [[n] + [g["structure"][k][grp] for k in ("pearson", "spearman", iou) for grp in ("positive", "negative")]
                  for n, g in gap.items()])
    if "localization" in summary:
        report.heading("Localisation on the known object boxes")
        report.text("Energy share = fraction of relu(CAM) inside the class's boxes (a uniform map scores the box "
                    "area share); pointing game = fraction of maps whose maximum lies in a box.")
        report.table(["model", "energy share", "pointing game", "box area share", "pairs"],
                     [[n, s["energy_share"], s["pointing_game"], s["box_area_share"], s["pairs"]]
                      for n, s in summary["localization"].items()])
    report.heading("Figures")
    captions = {"examples": "Example maps; each row shares one colour scale (CAM units).",
                "histograms": f"Distribution of CAM values at every position, positive vs negative classes: one row per "
                              f"model, over {ref}'s (grey).",
                "scatter": f"CAM value of {ref} (x) vs each model (y) at the same positions (5,000 sampled).",
                "class_ratios": f"Per-class peak ratio to {ref} on positive pairs (1 = same scale)."}
    for key, caption in captions.items():
        if key in figures:
            report.image(figures[key], caption)
    report.write(out_dir)
