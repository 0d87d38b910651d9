""""+ LI" (linear initialisation, spec 5.1): train the head on frozen features before fine-tuning.

Phase 1 trains only the run's 1x1-conv CAM head, on features of the fresh pretrained backbone
extracted once (`pamc.features`, cached on disk and shared by every run with the same backbone
and images), for `epochs` epochs of Adam at `lr` with mini-batches of `batch_size`, using the
run's own loss and observed labels (epochs numbered 1..E for the loss's schedule).  The epoch with
the best validation mAP (strictly greater, selection labels as the run's `selection`) gives the
head that phase 2, the run's usual end-to-end training, starts from.  It is a phase of the run
(`engine.Run.before_first_epoch` calls `LinearInit.run`) with its own optimiser, so phase
2 begins with fresh Adam state; it receives what it works on as arguments and touches nothing else.

Pooled or spatial features.  By default the head is trained on globally pooled features, as the
reference's linear layer: a 1x1 conv followed by the average equals a linear layer on the
average only without BoostLU, so with pooled features phase 1 runs at alpha = 1 whatever the
run's alpha (and selects at alpha = 1).  ``spatial: true`` keeps the feature maps instead, so
phase 1 trains and selects with the run's BoostLU (training and evaluation alpha) at ~200x the
disk (see `pamc.features` for the sizes).  ``flip: true`` adds end-to-end training's flip
augmentation: the features of the mirrored training images are cached too (twice the training
features' disk), and each step takes each image's row from one or the other with probability 1/2.

State beside the head.  Losses with per-image label estimates (ROLE) train them in phase 1 too,
and phase 2 starts them from the estimates of the best phase-1 epoch (`init_from_estimates`,
spec: "Theta initialised from the phase-1 label estimates").  Label edits the loss makes in
phase 1 (LL-Cp's corrections) stay in phase 1: phase 2 starts from the observed labels.
Epoch-level feedback (EM-APL's pseudo-labelling rounds, scheduled over the end-to-end epochs)
does not run in phase 1.  Under DDP every process trains the same phase 1 on all the data (it is
cheap); process 0 extracts the features first and the others read its cache.

Written into the run folder: ``linear_init.json`` (settings, per-epoch history, best epoch) and
``linear_init.safetensors`` (the best head, and the label estimates where the loss has them).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .errors import PamcError
from .features import extract_features
from .files import atomic_write, write_json
from .metrics import split_map

RESULT_JSON = "linear_init.json"
RESULT_WEIGHTS = "linear_init.safetensors"


@dataclass
class _Phase:
    """What phase 1 works on (handed over by the run; nothing else is reached into)."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    store: object
    val_targets: object
    rt: object
    eval_batch_size: int


@dataclass(frozen=True)
class LinearInit:
    """The "+ LI" phase, with the `linear_init` settings of the run config; defaults are ROLE's
    phase 1 (Cole et al.)."""

    epochs: int = 25
    lr: float = 1e-3
    batch_size: int = 16
    spatial: bool = False
    #: train with the flip augmentation of end-to-end training: each image's features are those of
    #: the image or of its mirror image, each with probability 1/2 (both cached; validation unflipped)
    flip: bool = False
    cache: Optional[str] = None  # feature cache folder (default $PAMC_CACHE/features)

    @classmethod
    def from_config(cls, values) -> "LinearInit":
        """From a mapping of settings, or `true` for the defaults."""
        if values is True:
            return cls()
        if not isinstance(values, dict):
            raise PamcError(f"linear_init must be a mapping like {{epochs: 25, lr: 1e-3, batch_size: 16}} or true "
                            f"(got {values!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise PamcError(f"unknown linear_init setting(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        settings = cls(**values)
        for name in ("epochs", "batch_size"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PamcError(f"linear_init {name} must be a positive integer (got {value!r})")
        try:  # YAML reads 1e-3 (no dot) as a string
            lr = float(settings.lr)
        except (TypeError, ValueError):
            lr = math.nan
        if isinstance(settings.lr, bool) or not lr > 0:
            raise PamcError(f"linear_init lr must be a positive number (got {settings.lr!r})")
        for name in ("spatial", "flip"):
            if not isinstance(getattr(settings, name), bool):
                raise PamcError(f"linear_init {name} must be true or false (got {getattr(settings, name)!r})")
        return dataclasses.replace(settings, lr=lr)

    def run(self, model, loss_fn, store, train_images, val_images, val_targets, rt, alphas: tuple[float, float],
            seed: int, folder: Optional[Path], progress: bool = False, batch_size: int = 128,
            num_workers: int = 0) -> dict:
        """Train `model.head` (and the loss's own parameters) on frozen features; leave the best
        head in `model`, the loss started from its best estimates, and `store` as it was.

        alphas = (training, evaluation) BoostLU of the run (used only with spatial features);
        `folder` receives linear_init.json / .safetensors (None on processes other than the first).
        Returns the summary that is also written to linear_init.json.
        """
        train_alpha, eval_alpha = alphas if self.spatial else (1.0, 1.0)
        train_feats, val_feats, flipped = self._features(model.backbone, train_images, val_images, rt,
                                                         folder is not None, batch_size, num_workers)
        phase = _Phase(model, loss_fn, store, val_targets, rt, batch_size)
        head = model.head
        own = [p for p in loss_fn.parameters() if p.requires_grad]
        groups = [{"params": list(head.parameters()), "lr": self.lr}]
        if own:
            groups.append({"params": own, "lr": self.lr * loss_fn.param_lr_mult})
        optimizer = torch.optim.Adam(groups)
        generator = torch.Generator().manual_seed(seed)
        labels = store.state_dict()
        history, best_map, best_epoch, best_head, best_estimates = [], -math.inf, 0, None, None
        try:
            for epoch in range(1, self.epochs + 1):
                train_loss, edits = _train_epoch(phase, train_feats, epoch, self.batch_size, optimizer, generator,
                                                 train_alpha, flipped)
                val_map = _val_map(phase, val_feats, eval_alpha)
                is_best = val_map > best_map  # strictly greater, as the engine's selection
                if is_best:
                    best_map, best_epoch = val_map, epoch
                    best_head = {k: v.detach().clone() for k, v in head.state_dict().items()}
                    best_estimates = loss_fn.estimates().clone() if hasattr(loss_fn, "estimates") else None
                history.append({"epoch": epoch, "train_loss": train_loss, "val_map": val_map, "label_edits": edits})
                if progress:
                    tqdm.write(f"linear init {epoch}/{self.epochs}: loss {train_loss:.4f}  val mAP {val_map:.2f}"
                               f"{'  *' if is_best else ''}")
        finally:
            store.load_state_dict(labels)
        head.load_state_dict(best_head)
        if best_estimates is not None:
            loss_fn.init_from_estimates(best_estimates)
        summary = {**dataclasses.asdict(self), "train_alpha": train_alpha, "eval_alpha": eval_alpha,
                   "best_epoch": best_epoch, "best_val_map": best_map,
                   "features": {"train": str(train_feats.filename), "val": str(val_feats.filename),
                                **({"train_flipped": str(flipped.filename)} if flipped is not None else {})},
                   "history": history}
        if folder is not None:
            tensors = {f"head.{k}": v.cpu().contiguous() for k, v in best_head.items()}
            if best_estimates is not None:
                tensors["estimates"] = best_estimates.cpu().contiguous()
            atomic_write(Path(folder) / RESULT_WEIGHTS, lambda tmp: save_file(tensors, tmp))
            write_json(Path(folder) / RESULT_JSON, summary)
        return summary

    def _features(self, backbone, train_images, val_images, rt, first: bool, batch_size: int,
                  num_workers: int) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """Train and val features, and with `flip` those of the mirrored training images; the first
        process extracts them, the others then read its cache."""
        def extract():
            wanted = [(train_images, False), (val_images, False)] + ([(train_images, True)] if self.flip else [None])
            return tuple(None if item is None else
                         extract_features(backbone, item[0], rt, self.cache, self.spatial, batch_size, num_workers,
                                          flip=item[1]) for item in wanted)

        done = extract() if first else None
        rt.dist.barrier()
        return done if first else extract()


def _logits(phase: _Phase, rows: np.ndarray, alpha: float) -> torch.Tensor:
    """Head logits for feature rows: pooled rows act as 1 x 1 maps, so one code path serves both."""
    x = torch.from_numpy(np.asarray(rows, dtype=np.float32)).to(phase.rt.device)
    maps = x[:, :, None, None] if x.ndim == 2 else x
    return phase.model.logits_from_cams(phase.model.head(maps), alpha)


@torch.no_grad()
def _val_map(phase: _Phase, feats: np.ndarray, alpha: float) -> float:
    step = phase.eval_batch_size
    scores = [torch.sigmoid(_logits(phase, feats[i:i + step], alpha)).cpu() for i in range(0, len(feats), step)]
    return split_map(torch.cat(scores), phase.val_targets)


def _rows(feats: np.ndarray, flipped: Optional[np.ndarray], index: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """The batch's feature rows; with `flipped`, each row from the mirrored images with probability 1/2."""
    rows = np.asarray(feats[index.numpy()], dtype=np.float32)
    if flipped is not None:
        mirror = (torch.rand(len(index), generator=generator) < 0.5).numpy()
        rows[mirror] = flipped[index.numpy()[mirror]]
    return rows


def _train_epoch(phase: _Phase, feats: np.ndarray, epoch: int, batch_size: int, optimizer,
                 generator: torch.Generator, alpha: float, flipped: Optional[np.ndarray] = None) -> tuple[float, int]:
    """One phase-1 epoch over the training features (mirrored ones too with `flipped`); (mean loss,
    label edits).  Every process trains on all the features, so the loss gathers nothing (its
    default identity gather)."""
    total, edits = torch.zeros((), device=phase.rt.device), 0
    for index in torch.split(torch.randperm(len(feats), generator=generator), batch_size):
        index = index.sort().values  # sorted reads are sequential on the memory map
        observed = phase.store.batch(index).to(phase.rt.device)
        loss = phase.loss_fn(_logits(phase, _rows(feats, flipped, index, generator), alpha), observed, epoch=epoch,
                             index=index.to(phase.rt.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if phase.loss_fn.label_updates is not None:
            edits += phase.store.apply(index, *phase.loss_fn.label_updates)
        total += loss.detach() * len(index)
    mean = float(total) / len(feats)
    if not math.isfinite(mean):
        raise PamcError(f"the linear-init loss became {mean} in phase-1 epoch {epoch}; lower linear_init.lr")
    return mean, edits
