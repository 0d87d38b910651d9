"""What a run trains: the model and the loss, built from its config and what the data says.

Knows no dataset or loss by name: weights that are made rather than read come from
`models.weights.named_weights` (registered by the module that makes them), and a loss receives the
run facts its constructor asks for.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch

from .. import losses as loss_registry
from .. import pretrain  # noqa: F401  (registers the named weights it makes: scenes)
from ..config import TrainConfig
from ..errors import PamcError
from ..losses.base import PartialLabelLoss
from ..models import CamClassifier
from ..models.weights import named_weights


def build_model(cfg: TrainConfig, num_classes: int) -> CamClassifier:
    made = named_weights(cfg.backbone_weights, backbone=cfg.backbone, seed=cfg.seed, data=cfg.data)
    torch.manual_seed(cfg.seed)
    model = CamClassifier(cfg.backbone, num_classes, alpha=cfg.alpha,
                          weights=cfg.backbone_weights if made is None else made.file, activation=cfg.activation)
    if made is not None:  # what model.json records: the option, and the file it made
        info = model.backbone.weights_info or {}
        model.backbone.weights_info = {"name": made.name, "file": info.get("name"), "sha256": info.get("sha256")}
    return model


def build_loss(cfg: TrainConfig, num_images: int, num_classes: int, observed,
               expected_positives: Optional[float] = None, full_labels=None) -> PartialLabelLoss:
    """Build the configured loss, filling in what it needs from the run (and only that).

    Losses with per-image state or schedules declare parameters such as `num_images` or
    `num_epochs` in their constructor; the engine supplies those it knows unless configured --
    `k` (EPR / ROLE) from the dataset's expected number of positives, where it has one;
    `scores` (per-image side inputs: vision-language scores) from the run's `scores` file;
    `full_labels` (the training set's, where known: for reports such as pseudo-label quality).
    """
    cls = loss_registry.LOSSES.get(cfg.method)
    accepted = inspect.signature(cls.__init__).parameters
    if cfg.scores is not None and "scores" not in accepted:
        raise PamcError(f"method {cfg.method!r} uses no per-image scores; leave out --scores")
    scores = None
    if cfg.scores is not None and "scores" in accepted:
        from ..vlscores import scores_for_run

        scores = scores_for_run(cfg.scores, cfg.data, num_images, num_classes)
    context = {"num_images": num_images, "num_classes": num_classes, "num_epochs": cfg.epochs,
               "init_observed": torch.as_tensor(observed) if not hasattr(observed, "batch") else None,
               "seed": cfg.seed, "k": expected_positives, "scores": scores,
               "full_labels": None if full_labels is None else torch.as_tensor(full_labels)}
    params = {k: v for k, v in context.items() if k in accepted and v is not None}
    params.update(cfg.loss or {})
    return loss_registry.build(cfg.method, **params)
