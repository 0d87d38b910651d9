"""The frozen-backbone ("linear") protocol: a run that trains only the CAM head on cached features.

``freeze_backbone: true`` (``--freeze-backbone``) is Cole et al.'s "linear" mode with the CAM head
of BoostLU: the backbone's spatial feature maps are computed once per (dataset, backbone weights,
image size, flip) by `pamc.features` (fp16, memory-mapped, a manifest checked on reuse; the same
files "+ LI" reads), and the 1x1-conv head is trained on them by the run's usual engine, so every
loss, label feedback (LL-Cp, EM-APL), BoostLU in training and at inference, validation, best/
selection, mid-epoch checkpoints and exact resume work unchanged.

The seam is three substitutions made once at set-up (`FrozenBackbone.setup`), none in the loop:

* the training and validation images become their cached feature maps (`FeatureMaps`, a Dataset
  with `take`): a training row holds the maps of the image and of its mirror image, a validation
  row the plain maps; test keeps its images;
* the run's runtime prepares such rows instead of images (`FeatureInputs.prepare`): to the device
  as float32, and from each row the mirrored maps where the engine's seeded per-epoch flips say so
  (the flip augmentation of end-to-end training, made from cached features as "+ LI" makes it);
* the model the engine trains is `head_model`, a `CamClassifier` whose backbone is an identity
  (`CachedBackbone`) and whose head and BoostLU are the very modules of the complete model.

What the run writes is always a complete model: `complete(trained)` puts the real (frozen)
backbone under the trained head, and the run saves that in last/ and best/ and tests it on the
test images, so `pamc eval / predict / explain / export` read best/ as any other checkpoint.  The
validation mAP (and so best/ selection) is computed on the cached fp16 features; the test mAP on
the images through the complete model, as `pamc eval` computes it.

Refused, each with a one-line error: a backbone without weights (its frozen features would be
random), "+ LI" (the whole run already is the linear phase), image augmentation (it changes the
images, and the features are cached), and methods whose `training_loss` looks at the images
(IGNORE's masked and strongly augmented views).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from . import losses as loss_registry
from .data import DatasetBundle
from .errors import PamcError
from .features import extract_features
from .losses.base import PartialLabelLoss
from .models import CamClassifier
from .runtime import Runtime, unwrap


class FeatureMaps(Dataset):
    """Cached feature maps as a run's images: row i is V x F x h x w float16, one map per view
    (view 0 the image, view 1 its mirror image, where the training rows have it)."""

    def __init__(self, *views: np.ndarray):
        self.views = views

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[i]) for v in self.views]))

    def take(self, index: torch.Tensor) -> torch.Tensor:
        rows = index.numpy()
        return torch.from_numpy(np.stack([np.asarray(v[rows]) for v in self.views], axis=1))


@dataclass
class FeatureInputs(Runtime):
    """The run's runtime, preparing `FeatureMaps` rows instead of uint8 images."""

    def prepare(self, images: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """B x V x F x h x w rows -> B x F x h x w float32 on the device: view 1 (the mirror
        image's maps) where `flip` is set, else view 0."""
        rows = images.to(self.device, non_blocking=True)
        view = (torch.zeros(len(rows), dtype=torch.long) if flip is None else flip.long()).to(rows.device)
        x = rows[torch.arange(len(rows), device=rows.device), view].float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @classmethod
    def of(cls, rt: Runtime) -> "FeatureInputs":
        return cls(**{f.name: getattr(rt, f.name) for f in fields(rt)})


class CachedBackbone(nn.Identity):
    """The backbone of `head_model`: its inputs already are the backbone's feature maps."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = int(out_channels)


def check(cfg) -> None:
    """Refuse what the frozen protocol cannot do, before any feature is computed."""
    if cfg.backbone_weights in (None, "none"):
        raise PamcError("freeze_backbone trains only the head on the backbone's features, which without weights are "
                        "random; set --backbone-weights (imagenet, scenes or a weights file)")
    if cfg.linear_init:
        raise PamcError("freeze_backbone and linear_init do not go together (a frozen run is the linear phase "
                        "throughout); leave out linear_init")
    if cfg.augment != "none":
        raise PamcError(f"augment {cfg.augment!r} changes the images, whose features freeze_backbone caches; "
                        "use --augment none (flips are kept)")
    loss = loss_registry.LOSSES.get(cfg.method)
    if getattr(loss, "training_loss", None) is not PartialLabelLoss.training_loss:
        raise PamcError(f"method {cfg.method!r} computes its loss on other views of the images, which "
                        "freeze_backbone does not keep; train it end to end")


@dataclass
class FrozenBackbone:
    """The substitutions of the module doc, made by `setup`."""

    model: CamClassifier  # the complete model: real backbone (frozen), the head being trained
    head_model: CamClassifier  # identity backbone; head and BoostLU are `model`'s own modules
    bundle: DatasetBundle  # train and val as `FeatureMaps`, test as images
    runtime: FeatureInputs  # prepares feature rows
    image_runtime: Runtime  # prepares images (test, as `pamc eval` does)

    @classmethod
    def setup(cls, cfg, model: CamClassifier, bundle: DatasetBundle, rt: Runtime, batch_size: int,
              num_workers: int, cache: Optional[str] = None) -> "FrozenBackbone":
        """Compute (or reuse) the features and build the head-only model; the first process
        extracts, the others then read its cache."""
        check(cfg)
        backbone = model.backbone
        backbone.requires_grad_(False)
        wanted = [(bundle.train.images, False), (bundle.train.images, True), (bundle.val.images, False)]

        def extract():
            return [extract_features(backbone, images, rt, cache, spatial=True, batch_size=batch_size,
                                     num_workers=num_workers, flip=flip) for images, flip in wanted]

        done = extract() if rt.dist.is_main else None
        rt.dist.barrier()
        train, mirrored, val = done if done is not None else extract()
        head_model = _with_modules(model, backbone=CachedBackbone(backbone.out_channels))
        features = replace(bundle, train=replace(bundle.train, images=FeatureMaps(train, mirrored)),
                           val=replace(bundle.val, images=FeatureMaps(val)))
        return cls(model, head_model, features, FeatureInputs.of(rt), rt)

    def complete(self, trained: nn.Module) -> CamClassifier:
        """The checkpoint of `trained` (the head-only model or its EMA): the real backbone under
        its head and BoostLU (a shallow copy of `model`; no weight is copied)."""
        plain = unwrap(trained)
        if plain is self.head_model:
            return self.model
        return _with_modules(self.model, head=plain.head, activation=plain.activation)


def _with_modules(model: CamClassifier, **modules: nn.Module) -> CamClassifier:
    """A shallow copy of `model` with some submodules replaced; the others are shared, and no
    module is made anew (so no weight is initialised and the RNG is not touched)."""
    out = copy.copy(model)
    out._modules = {**model._modules, **modules}
    return out
