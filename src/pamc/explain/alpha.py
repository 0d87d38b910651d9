"""Choosing the evaluation alpha of BoostLU on validation data (`pamc tune-alpha`).

Every form of BoostLU is f(x) = x + (alpha - 1) * g(x) (`pamc.activation`), so the boosted logit is
    mean(CAM) + (alpha - 1) * mean(g(CAM)):
two pooled maps per image give the logits at every alpha exactly, without storing CAMs or
running the model more than once.  Average precision is computed class by class, so the same
sweep also gives the best alpha of each class (per-class alpha, `per_class=True`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..activation import Alpha, alpha_value, as_form, check_alpha, describe_alpha, form_text, is_identity
from ..checkpoint import load_model, read_meta, resolve_checkpoint, write_meta
from ..errors import PamcError
from ..labels import check_full_labels, check_observed
from ..metrics import average_precision
from .cams import cam_batches, resolve_device
from .figures import line_figure

DEFAULT_ALPHAS = (1, 1.5, 2, 3, 4, 5, 6, 8, 10)
MODES = ("full", "observed")


def pooled_cams(model, images, batch_size: int = 64, image_size=None, form=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean CAM, mean boosted part g(CAM)), each N x C on the CPU; g of `form` (default: the model's)."""
    part = (model.activation.form if form is None else as_form(form)).part
    means, positives = [], []
    for maps in cam_batches(model, images, batch_size, image_size):
        means.append(maps.mean(dim=(2, 3)).cpu())
        positives.append(part(maps).mean(dim=(2, 3)).cpu())
    if not means:
        raise PamcError("no images were given")
    return torch.cat(means), torch.cat(positives)


def binary_targets(targets, mode: str, num_classes: int) -> np.ndarray:
    """Full 0/1 labels as they are; observed 1/0/-1 labels binarised to (observed == 1)."""
    if mode == "full":
        return check_full_labels(np.asarray(targets))
    if mode == "observed":
        return (check_observed(targets, num_classes) == 1).numpy().astype(np.int64)
    raise PamcError(f"unknown tuning mode {mode!r}; valid: {', '.join(MODES)}")


def tune_alpha(model, images, targets, alphas: Sequence[float] = DEFAULT_ALPHAS, mode: str = "full",
               batch_size: int = 64, image_size=None, out_dir: Optional[str | Path] = None,
               per_class: bool = False, form=None) -> dict:
    """Validation mAP (percent) for each evaluation alpha; the best alpha (ties: the smallest).

    mode "full": `targets` are full 0/1 labels (the reference protocol: selection on fully
    labelled val).  mode "observed": `targets` are observed 1/0/-1 labels and AP is computed for
    observed positives against everything else (unobserved entries count as negatives, so the
    numbers are lower than full-label mAP but rank alphas without full labels).
    `form`: the form of BoostLU to tune (default: the model's own).  `per_class`: also the best
    alpha of each class ("best_alpha" becomes that list; a class without a positive in `targets`
    takes the best shared alpha) and the mAP with it ("best_map").
    With `out_dir`, writes alpha_map.png, alpha_table.csv and alpha_table.md there.
    """
    alphas = sorted({check_alpha(a) for a in alphas})
    if not alphas:
        raise PamcError("give at least one alpha to try")
    mean, positive = pooled_cams(model, images, batch_size, image_size, form)
    y = binary_targets(targets, mode, model.num_classes)
    if y.shape != tuple(mean.shape):
        raise PamcError(f"targets have shape {y.shape} but the images give {tuple(mean.shape)} (images x classes)")
    ap = np.stack([average_precision(torch.sigmoid(mean + (a - 1) * positive), y) * 100 for a in alphas])
    table = [{"alpha": a, "map": float(row.mean())} for a, row in zip(alphas, ap)]
    best = max(table, key=lambda row: row["map"])  # first maximum = smallest alpha
    result = {"mode": mode, "form": form_text(model.activation.form if form is None else form), "table": table,
              "best_alpha": best["alpha"], "best_map": best["map"]}
    if per_class:
        picks = np.where(y.sum(axis=0) > 0, ap.argmax(axis=0), alphas.index(best["alpha"]))  # argmax: the first maximum
        result.update(shared_alpha=best["alpha"], shared_map=best["map"],
                      best_alpha=[alphas[i] for i in picks],
                      best_map=float(ap[picks, np.arange(ap.shape[1])].mean()))
    if out_dir is not None:
        result["files"] = [str(p) for p in write_alpha_table(table, best["alpha"], mode, Path(out_dir))]
    return result


def write_alpha_table(table: list[dict], best: float, mode: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    label = "val mAP (%)" if mode == "full" else "val mAP on observed labels (%)"
    figure = line_figure([r["alpha"] for r in table], [r["map"] for r in table], out_dir / "alpha_map.png",
                         "BoostLU alpha (evaluation)", label, f"best alpha {best:g}", mark=best)
    with open(out_dir / "alpha_table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alpha", "map"])
        writer.writerows([f"{r['alpha']:g}", f"{r['map']:.4f}"] for r in table)
    lines = [f"| alpha | {label} |", "|---|---|"]
    lines += [f"| {r['alpha']:g}{' (best)' if r['alpha'] == best else ''} | {r['map']:.2f} |" for r in table]
    (out_dir / "alpha_table.md").write_text("\n".join(lines) + "\n")
    return [figure, out_dir / "alpha_table.csv", out_dir / "alpha_table.md"]


def adopted_form(meta, form) -> dict:
    """The spec of `form` for a checkpoint to evaluate with: a model trained with boosting keeps
    its own form; one trained at alpha 1 (where every form is the identity) may take on any."""
    spec = as_form(form).spec()
    if spec != as_form(meta.activation).spec() and not is_identity(meta.alpha):
        raise PamcError(f"the checkpoint was trained with {form_text(meta.activation)} at alpha "
                        f"{describe_alpha(meta.alpha)}; only a model trained at alpha 1 can take on another form")
    return spec


def store_eval_alpha(checkpoint_folder: str | Path, alpha: Alpha, form=None) -> Path:
    """Record `alpha` (one, or one per class) as the checkpoint's `eval_alpha` (a run folder means
    its best/ checkpoint); with `form`, also record that form of BoostLU, which only a model
    trained without boosting (alpha 1, where every form is the identity) may take on."""
    folder = resolve_checkpoint(checkpoint_folder)
    meta = read_meta(folder)
    alpha = check_alpha(alpha)
    if isinstance(alpha, tuple) and len(alpha) != meta.num_classes:
        raise PamcError(f"per-class alpha has {len(alpha)} values but the checkpoint has {meta.num_classes} classes")
    if form is not None:
        meta.activation = adopted_form(meta, form)
    meta.eval_alpha = alpha_value(alpha)
    return write_meta(folder, meta)


def tune_alpha_command(checkpoint: str | Path, data, out_dir: str | Path, alphas: Sequence[float] = DEFAULT_ALPHAS,
                       mode: str = "full", store: bool = False, device: str = "auto", batch_size: int = 64,
                       image_size=None, per_class: bool = False, form=None) -> dict:
    """`pamc tune-alpha`: tune on `data` -- a `Split` (normally val: its full labels for mode
    "full", its observed labels for "observed") or a pair (images, targets) -- write the table and
    plot into `out_dir`, and with `store` save the best alpha (and `form`, if given) in the
    checkpoint's model.json.  `per_class` and `form`: see `tune_alpha`."""
    model, meta = load_model(checkpoint, resolve_device(device))
    if form is not None:
        adopted_form(meta, form)  # before the slow part
    if isinstance(data, (tuple, list)):
        images, targets = data
    else:
        images, targets = data.images, (data.full if mode == "full" else data.observed)
        if targets is None:
            raise PamcError(f"the split has no {'full' if mode == 'full' else 'observed'} labels; "
                            f"use mode {'observed' if mode == 'full' else 'full'} or another split")
    result = tune_alpha(model, images, targets, alphas, mode, batch_size, image_size or meta.image_size, out_dir,
                        per_class, form)
    if store:
        result["stored_in"] = str(store_eval_alpha(checkpoint, result["best_alpha"], form))
    return result
