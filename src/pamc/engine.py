"""The training engine: one loop for every method, dataset and number of processes.

It knows no loss or dataset by name.  Losses edit stored labels only through the label-feedback
seam (`label_updates`, `epoch_end`, see losses/base.py); datasets arrive as a `DatasetBundle`.
Every epoch: train, apply label feedback, validate, checkpoint (`last/` always, `best/` on a
strictly better validation mAP), append a line to `metrics.jsonl`.  At the end the best
checkpoint is evaluated on test and `results.json` is written.
"""
from __future__ import annotations

import inspect
import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses as loss_registry
from .checkpoint import MODEL_FILE, CheckpointMeta, RunFolder, load_weights
from .config import TrainConfig, make_config, resume_config
from .data import DatasetBundle, Split, load_bundle
from .data.loading import image_batches
from .distributed import GlobalBatches
from .errors import PamcError
from .labels import LabelStore, label_store, observe
from .losses.base import PartialLabelLoss
from .metrics import split_map, standard_metrics
from .models import CamClassifier
from .runtime import Runtime, predict, unwrap


class NonFiniteLoss(PamcError):
    pass


# ----------------------------------------------------------------------------- model / loss


def build_model(cfg: TrainConfig, num_classes: int) -> CamClassifier:
    weights = cfg.backbone_weights
    if weights == "scenes":
        if cfg.data.get("name") != "scenes":
            raise PamcError("backbone_weights 'scenes' pretrains on scene objects; it needs data.name: scenes")
        from .pretrain import pretrained_scene_backbone

        params = {k: cfg.data[k] for k in ("source", "canvas", "object_scale") if k in cfg.data}
        weights = str(pretrained_scene_backbone(backbone=cfg.backbone, seed=cfg.seed, **params))
    torch.manual_seed(cfg.seed)
    model = CamClassifier(cfg.backbone, num_classes, alpha=cfg.alpha, weights=weights)
    if cfg.backbone_weights == "scenes":  # what model.json records (`Run.meta`): the option, and its cached file
        info = model.backbone.weights_info or {}
        model.backbone.weights_info = {"name": "scenes", "file": info.get("name"), "sha256": info.get("sha256")}
    return model


def build_loss(cfg: TrainConfig, num_images: int, num_classes: int, observed,
               expected_positives: Optional[float] = None) -> PartialLabelLoss:
    """Build the configured loss, filling in what it needs from the run (and only that).

    Losses with per-image state or schedules declare parameters such as `num_images` or
    `num_epochs` in their constructor; the engine supplies those it knows unless configured --
    `k` (EPR / ROLE) from the dataset's expected number of positives, where it has one.
    """
    cls = loss_registry.LOSSES.get(cfg.method)
    context = {"num_images": num_images, "num_classes": num_classes, "num_epochs": cfg.epochs,
               "init_observed": torch.as_tensor(observed) if not hasattr(observed, "batch") else None,
               "seed": cfg.seed, "k": expected_positives}
    accepted = inspect.signature(cls.__init__).parameters
    params = {k: v for k, v in context.items() if k in accepted and v is not None}
    params.update(cfg.loss or {})
    return loss_registry.build(cfg.method, **params)


def build_optimizer(model: CamClassifier, loss_fn: PartialLabelLoss, cfg: TrainConfig, rt: Runtime):
    """Adam with a backbone group (lr), a head group (lr * lr_mult) and the loss's own parameters."""
    plain = unwrap(model)
    groups = [{"params": list(plain.backbone.parameters()), "lr": cfg.lr},
              {"params": list(plain.head.parameters()), "lr": cfg.lr * cfg.lr_mult}]
    own = [p for p in loss_fn.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own, "lr": cfg.lr * loss_fn.param_lr_mult})
    fused = {"auto": rt.device.type == "cuda", "on": True, "off": False}[cfg.fused_adam]  # checked in make_config
    return torch.optim.Adam(groups, fused=fused or None)


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    out: Path
    results: dict

    @property
    def test_map(self) -> float:
        return self.results["test_map"]


class Run:
    """State of one training run, so that `train()` reads as the protocol it implements."""

    def __init__(self, cfg: TrainConfig, bundle: Optional[DatasetBundle] = None, resume: bool = False):
        self.cfg = cfg
        self.rt = Runtime.from_config(cfg)
        self.folder = RunFolder(cfg.out)
        self.out = self.folder.path
        self.main = self.rt.dist.is_main
        self.resumed = resume
        self._check_folder(resume)
        torch.manual_seed(cfg.seed)
        self.bundle = bundle or load_bundle(cfg.data)
        train = self.bundle.train
        full_loss = getattr(loss_registry.LOSSES.get(cfg.method), "uses_full_labels", False)
        if full_loss and train.full is None:
            raise PamcError("method 'full' needs full training labels, which this dataset lacks")
        observed = (train.full.astype(np.float32) if full_loss else
                    observe(train.full, train.observed, cfg.observation, cfg.observation_seed, what="the training set"))
        self.store = label_store(observed)
        if len(self.store) != len(train):
            raise PamcError(f"{len(self.store)} label rows for {len(train)} training images; the dataset is inconsistent")
        self.val_targets = self._selection_targets()
        self.image_size = int(train.images[0].shape[-1])
        self.model = build_model(cfg, self.bundle.num_classes).to(self.rt.device)
        self.weights_info = getattr(self.model.backbone, "weights_info", None)  # file hashed once, at build
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, len(train), self.bundle.num_classes, observed,
                                  self.bundle.info.get("expected_positives")).to(self.rt.device)
        self._prepare_folder(resume)
        self.optimizer = build_optimizer(self.model, self.loss_fn, cfg, self.rt)
        self.net = self._wrap(self.model)
        self.batches = GlobalBatches(len(train), cfg.batch_size, cfg.seed, self.rt.dist)
        if self.batches.dropped and self.main:
            warnings.warn(f"the last global batch ({self.batches.dropped} images, a different draw each epoch) is smaller "
                          f"than the {self.rt.dist.world_size} processes and is skipped; choose a batch size that avoids it")
        self.epoch, self.best_map, self.best_epoch, self.history = 0, -math.inf, 0, []
        if resume:
            self._load_state()

    # -- setup
    def _check_folder(self, resume: bool) -> None:
        """Refuse an unusable run folder before any work; nothing is written until `_prepare_folder`."""
        if resume and not self.folder.can_resume():
            raise PamcError(f"nothing to resume in {self.out} (no {self.folder.LAST}/{self.folder.STATE}); start a new run")
        if not resume and not self.cfg.overwrite and not self.folder.is_empty():
            raise PamcError(f"run folder {self.out} already exists; pass --overwrite to replace it or --resume to continue it")

    def _prepare_folder(self, resume: bool) -> None:
        """Called once the run is set up, so a bad setting (loss parameter, data option) leaves no
        half-made folder behind that the corrected command would need --overwrite for."""
        if not resume and not self.folder.is_empty():
            self.rt.dist.barrier()  # every process has looked at the folder before it goes
            if self.main:
                shutil.rmtree(self.out)
        self.rt.dist.barrier()
        if self.main:  # rewritten on resume too: `--resume RUN --epochs N` changes the config in force
            self.out.mkdir(parents=True, exist_ok=True)
            self.folder.write_config(self.cfg.to_dict())

    def _selection_targets(self):
        val = self.bundle.val
        if self.cfg.selection == "observed":
            obs = observe(val.full, val.observed, self.cfg.observation, self.cfg.observation_seed, what="the validation set")
            return obs.batch(torch.arange(len(val))) if hasattr(obs, "batch") else np.asarray(obs)
        if val.full is None:
            raise PamcError("validation has no full labels; use --selection observed")
        return val.full

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        net = model
        if self.cfg.sync_batchnorm:
            from .distributed import sync_batchnorm

            net = sync_batchnorm(net, self.rt)
        if self.rt.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.cfg.compile != "off":
            net = torch.compile(net, mode=None if self.cfg.compile == "default" else self.cfg.compile)
        return net

    def meta(self, epoch: int) -> CheckpointMeta:
        cfg = self.cfg
        return CheckpointMeta(backbone=cfg.backbone, num_classes=self.bundle.num_classes, alpha=cfg.alpha,
                              eval_alpha=cfg.test_alpha, class_names=list(self.bundle.class_names),
                              method=cfg.method, epoch=epoch, dataset=self.bundle.name, data=cfg.data,
                              observation=cfg.observation, observation_seed=cfg.observation_seed,
                              image_size=self.image_size, weights=self.weights_info)

    # -- checkpoints
    def _save(self, epoch: int, is_best: bool) -> None:
        if not self.main:
            return
        meta = self.meta(epoch)
        self.folder.save_checkpoint(self.folder.LAST, self.model, meta)
        self.folder.save_state({
            "epoch": epoch, "best_map": self.best_map, "best_epoch": self.best_epoch,
            "optimizer": self.optimizer.state_dict(), "labels": self.store.state_dict(),
            "loss": self.loss_fn.state_dict(), "history": json.dumps(self.history)})
        if is_best:
            self.folder.save_checkpoint(self.folder.BEST, self.model, meta)

    def _load_state(self) -> None:
        state = self.folder.load_state()
        load_weights(self.model, self.folder.last / MODEL_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.store.load_state_dict(state["labels"])
        self.loss_fn.load_state_dict(state["loss"])
        self.epoch, self.best_map, self.best_epoch = int(state["epoch"]), float(state["best_map"]), int(state["best_epoch"])
        self.history = json.loads(state["history"])
        if self.main:  # drop metric lines of epochs after the checkpoint (an interrupted epoch)
            self.folder.rewrite_metrics(self.history)

    # -- one epoch
    def _apply_updates(self, index: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> int:
        gather = self.rt.dist.all_gather_cat
        dev = self.rt.device
        return self.store.apply(gather(index.to(dev)), gather(mask.to(dev)), gather(values.to(dev)))

    def train_epoch(self, epoch: int) -> dict:
        cfg, rt, train = self.cfg, self.rt, self.bundle.train
        self.net.train()
        self.batches.epoch = epoch
        flips = torch.rand(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)) < 0.5
        plan = list(self.batches)
        bar = tqdm(total=len(plan), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1.0,
                   disable=not (cfg.progress and self.main))
        total, selected = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device, dtype=torch.long)
        seen, edits, start = 0, 0, time.perf_counter()
        images = image_batches(train.images, [i for i, _ in plan], cfg.num_workers, rt.device.type == "cuda")
        for step, ((index, global_bs), x) in enumerate(zip(plan, images), start=1):
            observed = self.store.batch(index).to(rt.device, non_blocking=True)
            with rt.autocast():
                logits = self.net(rt.prepare(x, flips[index]))
            loss = self.loss_fn(logits.float(), observed, epoch=epoch, index=index.to(rt.device),
                                gather=rt.dist.all_gather_cat)
            # the local mean weighted by its share of the global batch, times the world size
            # that DDP divides by: the gradient of the global-batch mean, whatever the split
            (loss * (len(index) * rt.dist.world_size / global_bs)).backward()
            rt.dist.average_gradients(self.loss_fn.parameters())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.loss_fn.label_updates is not None:
                edits += self._apply_updates(index, *self.loss_fn.label_updates)
            selected += self.loss_fn.last_selected.sum()
            total += loss.detach() * len(index)
            seen += len(index)
            if step % 20 == 0 or step == len(plan):  # every process checks the global loss, so all stop together
                mean = float(rt.dist.all_reduce_sum(total)) / (seen * rt.dist.world_size)
                if not math.isfinite(mean):
                    raise NonFiniteLoss(
                        f"the loss became {mean} in epoch {epoch} (step {step}); the last good checkpoint is "
                        f"{self.folder.last} (epoch {epoch - 1}); lower --lr or set --amp off")
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{seen * rt.dist.world_size / (time.perf_counter() - start):.0f}")
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - start
        # summed over the processes: the epoch's numbers are those of the global batches
        sums = torch.stack([total.double(), selected.double(), torch.tensor(seen, dtype=torch.float64, device=rt.device)])
        total, selected, seen = rt.dist.all_reduce_sum(sums).tolist()
        return {"train_loss": total / max(seen, 1), "train_seconds": seconds,
                "train_images_per_s": seen / seconds, "selected": int(selected), "label_edits": edits}

    def epoch_feedback(self, epoch: int) -> int:
        """Epoch-level label feedback (EM-APL) for losses that define it."""
        if type(self.loss_fn).epoch_end is PartialLabelLoss.epoch_end:
            return 0
        if not isinstance(self.store, LabelStore):
            raise PamcError(f"method {self.cfg.method!r} needs dense training labels; this dataset's are sparse")
        updates = self.loss_fn.epoch_end(epoch, self.store.observed, self.store.initial,
                                         lambda: predict(self.net, self.bundle.train.images, self.rt,
                                                         self.cfg.alpha, self.cfg.eval_batch_size, self.cfg.num_workers))
        if updates is None:
            return 0
        mask, values = updates
        return self.store.apply(torch.arange(len(self.store)), mask, values)

    def predict(self, split: Split) -> torch.Tensor:
        return predict(self.net, split.images, self.rt, self.cfg.test_alpha, self.cfg.eval_batch_size, self.cfg.num_workers)

    def evaluate(self, split: Split, targets) -> float:
        return split_map(self.predict(split), targets)

    # -- the protocol
    def linear_init(self) -> None:
        """Phase 1 of "+ LI" (`pamc.linear_init`), once, before the first end-to-end epoch."""
        from .linear_init import LinearInit

        phase = LinearInit.from_config(self.cfg.linear_init)
        phase.run(self.model, self.loss_fn, self.store, self.bundle.train.images, self.bundle.val.images,
                  self.val_targets, self.rt, alphas=(self.cfg.alpha, self.cfg.test_alpha), seed=self.cfg.seed,
                  folder=self.out if self.main else None, progress=self.cfg.progress and self.main,
                  batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.num_workers)

    def fit(self) -> RunResult:
        cfg = self.cfg
        if cfg.linear_init and not self.resumed:
            self.linear_init()
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            stats = self.train_epoch(epoch)
            stats["label_edits"] += self.epoch_feedback(epoch)
            val_map = self.evaluate(self.bundle.val, self.val_targets)
            is_best = val_map > self.best_map  # strictly greater, as the reference
            if is_best:
                self.best_map, self.best_epoch = val_map, epoch
            record = {"epoch": epoch, "val_map": val_map, "best_epoch": self.best_epoch, **stats,
                      "stored_label_edits": self.store.num_edits()}
            self.history.append(record)
            if self.main:
                self.folder.append_metrics(record)
                if cfg.progress:
                    tqdm.write(f"epoch {epoch}: loss {stats['train_loss']:.4f}  val mAP {val_map:.2f}"
                               f"  ({stats['train_images_per_s']:.0f} img/s){'  *' if is_best else ''}")
            self._save(epoch, is_best)
            self.rt.dist.barrier()
        return self.finish()

    def finish(self) -> RunResult:
        load_weights(self.model, self.folder.best / MODEL_FILE)
        test = self.bundle.test
        test_targets = test.full if test.full is not None else test.observed
        scores = self.predict(test)
        results = {"method": self.cfg.method, "train_alpha": self.cfg.alpha, "eval_alpha": self.cfg.test_alpha,
                   "test_map": split_map(scores, test_targets), "test_metrics": standard_metrics(scores, test_targets),
                   "val_map": self.best_map,
                   "best_epoch": self.best_epoch, "epochs": self.cfg.epochs, "seed": self.cfg.seed,
                   "dataset": self.bundle.name, "world_size": self.rt.dist.world_size,
                   "stored_label_edits": self.store.num_edits()}
        if self.main:
            self.folder.write_results(results)
        return RunResult(self.out, results)


def train(config: TrainConfig | dict, bundle: Optional[DatasetBundle] = None, resume: bool = False) -> RunResult:
    """Train, select on validation, evaluate the best checkpoint on test.  See `TrainConfig`.

    resume=True continues the run in the config's `out` folder.  A mapping then overrides the
    run's saved config.yaml (so `{"out": RUN, "epochs": 12}` resumes RUN with 12 epochs, exactly as
    `pamc train --resume RUN --epochs 12`); a `TrainConfig` is taken as the complete settings.
    """
    if isinstance(config, TrainConfig):
        cfg = config
    elif resume:
        if "out" not in config:
            raise PamcError("say which run to resume: pass its folder as out")
        cfg = resume_config(config["out"], {k: v for k, v in config.items() if k != "out"})
    else:
        cfg = make_config({**TrainConfig().to_dict(), **config})
    return Run(cfg, bundle, resume).fit()
