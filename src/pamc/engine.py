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
import yaml
from tqdm.auto import tqdm

from . import losses as loss_registry
from .checkpoint import (atomic_write, load_resume_state, load_weights, save_model, save_resume_state, unwrap, write_json,
                         MODEL_FILE)
from .config import TrainConfig, make_config
from .data import DATASETS, DatasetBundle, Split
from .data.loading import image_batches
from .data.transforms import flip_where, normalize_uint8
from .distributed import Dist, GlobalBatches
from .errors import PamcError
from .labels import LabelStore, observe_fraction, single_positive
from .losses.base import PartialLabelLoss
from .metrics import mean_average_precision, partial_mean_average_precision
from .models import CamClassifier, eval_mode
from .registry import check_keywords


class NonFiniteLoss(PamcError):
    pass


# ----------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """Where and how tensors are computed: device, mixed precision, memory format, processes."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: Dist

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "Runtime":
        name = cfg.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise PamcError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu")
        dist = Dist.from_env(torch.device(name).type)
        device = torch.device(name)
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank if dist.enabled else (device.index or 0))
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        on_gpu = device.type == "cuda"
        amp = {"auto": on_gpu, "bf16": True, "off": False}.get(cfg.amp)
        if amp is None:
            raise PamcError(f"amp must be auto, bf16 or off (got {cfg.amp!r})")
        cl = {"auto": on_gpu, "on": True, "off": False}.get(cfg.channels_last)
        if cl is None:
            raise PamcError(f"channels_last must be auto, on or off (got {cfg.channels_last!r})")
        return cls(device, torch.bfloat16 if amp else None, cl, dist)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def prepare(self, images: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 batch -> normalised float on the device (flipped where asked), in the model's layout."""
        x = normalize_uint8(images.to(self.device, non_blocking=True))
        if flip is not None:
            x = flip_where(x, flip)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# ----------------------------------------------------------------------------- data


def load_bundle(data: dict) -> DatasetBundle:
    params = dict(data)
    name = params.pop("name")
    loader = DATASETS.get(name)
    check_keywords(loader, params, f"dataset {name!r}", "setting")
    return loader(**params)


def observe(split: Split, mode: str, seed: int):
    """The observed labels of a split under the configured observation protocol."""
    if mode == "auto":
        mode = "as-given" if split.observed is not None else "single-positive"
    if mode == "as-given":
        if split.observed is None:
            raise PamcError("observation as-given needs a dataset with observed labels; use single-positive")
        return split.observed
    if split.full is None:
        raise PamcError(f"observation {mode!r} needs full labels, which this dataset lacks; use observation: as-given")
    if mode == "single-positive":
        return single_positive(split.full, seed=seed)
    if mode == "full":
        return np.where(np.asarray(split.full) == 1, 1.0, -1.0).astype(np.float32)
    if mode.startswith("fraction:"):
        return observe_fraction(split.full, float(mode.split(":", 1)[1]), seed=seed)
    raise PamcError(f"unknown observation {mode!r}; valid: auto, single-positive, fraction:P, as-given, full")


def label_store(labels):
    """Dense matrices go into a LabelStore; sparse stores (huge label sets) are used as they are."""
    return labels if hasattr(labels, "batch") else LabelStore(labels)


def split_map(scores: torch.Tensor, targets) -> float:
    """mAP of a split: full 0/1 labels, or partially annotated 1/0/-1 labels (AP over annotated)."""
    if hasattr(targets, "batch"):
        targets = targets.batch(torch.arange(len(targets)))
    targets = np.asarray(targets)
    if (targets < 0).any():
        return partial_mean_average_precision(scores, targets)
    return mean_average_precision(scores, targets)


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
    return CamClassifier(cfg.backbone, num_classes, alpha=cfg.alpha, weights=weights)


def build_loss(cfg: TrainConfig, num_images: int, num_classes: int, observed) -> PartialLabelLoss:
    """Build the configured loss, filling in what it needs from the run (and only that).

    Losses with per-image state or schedules declare parameters such as `num_images` or
    `num_epochs` in their constructor; the engine supplies those it knows unless configured.
    """
    cls = loss_registry.LOSSES.get(cfg.method)
    context = {"num_images": num_images, "num_classes": num_classes, "num_epochs": cfg.epochs,
               "init_observed": torch.as_tensor(observed) if not hasattr(observed, "batch") else None,
               "seed": cfg.seed}
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
    fused = {"auto": rt.device.type == "cuda", "on": True, "off": False}[cfg.fused_adam]
    return torch.optim.Adam(groups, fused=fused or None)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: CamClassifier, images, rt: Runtime, alpha: Optional[float] = None,
            batch_size: int = 128, num_workers: int = 0) -> torch.Tensor:
    """Probabilities (N x C, float32, CPU) for every image; shared out and gathered under DDP."""
    plain = unwrap(model)
    batches = list(torch.split(rt.dist.shard(len(images)), batch_size))
    out = []
    with eval_mode(plain):
        for x in image_batches(images, batches, num_workers, pin_memory=rt.device.type == "cuda"):
            with rt.autocast():
                out.append(torch.sigmoid(plain(rt.prepare(x), alpha=alpha).float()))
    scores = torch.cat(out) if out else torch.zeros(0, plain.num_classes, device=rt.device)
    return rt.dist.all_gather_cat(scores).cpu()


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
        self.out = Path(cfg.out)
        self.main = self.rt.dist.is_main
        self._check_folder(resume)
        torch.manual_seed(cfg.seed)
        self.bundle = bundle or load_bundle(cfg.data)
        train = self.bundle.train
        full_loss = getattr(loss_registry.LOSSES.get(cfg.method), "uses_full_labels", False)
        if full_loss and train.full is None:
            raise PamcError("method 'full' needs full training labels, which this dataset lacks")
        observed = train.full.astype(np.float32) if full_loss else observe(train, cfg.observation, cfg.observation_seed)
        self.store = label_store(observed)
        if len(self.store) != len(train):
            raise PamcError(f"{len(self.store)} label rows for {len(train)} training images; the dataset is inconsistent")
        self.val_targets = self._selection_targets()
        self.image_size = int(train.images[0].shape[-1])
        self.model = build_model(cfg, self.bundle.num_classes).to(self.rt.device)
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, len(train), self.bundle.num_classes, observed).to(self.rt.device)
        self.loss_fn.all_gather = self.rt.dist.all_gather_cat
        self._prepare_folder(resume)
        if cfg.linear_init and not resume:
            from .linear_init import apply_linear_init

            apply_linear_init(self)
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
        if resume and not (self.out / "last" / "state.pt").is_file():
            raise PamcError(f"nothing to resume in {self.out} (no last/state.pt); start a new run")
        if not resume and not self.cfg.overwrite and self.out.exists() and any(self.out.iterdir()):
            raise PamcError(f"run folder {self.out} already exists; pass --overwrite to replace it or --resume to continue it")

    def _prepare_folder(self, resume: bool) -> None:
        """Called once the run is set up, so a bad setting (loss parameter, data option) leaves no
        half-made folder behind that the corrected command would need --overwrite for."""
        if not resume and self.out.exists() and any(self.out.iterdir()):
            self.rt.dist.barrier()  # every process has looked at the folder before it goes
            if self.main:
                shutil.rmtree(self.out)
        self.rt.dist.barrier()
        if self.main:  # rewritten on resume too: `--resume RUN --epochs N` changes the config in force
            self.out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
            atomic_write(self.out / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    def _selection_targets(self):
        val = self.bundle.val
        if self.cfg.selection == "observed":
            obs = observe(val, self.cfg.observation, self.cfg.observation_seed)
            return label_store(obs).batch(torch.arange(len(val))) if hasattr(obs, "batch") else np.asarray(obs)
        if val.full is None:
            raise PamcError("validation has no full labels; use --selection observed")
        return val.full

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        net = model
        if self.rt.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.cfg.compile != "off":
            net = torch.compile(net, mode=None if self.cfg.compile == "default" else self.cfg.compile)
        return net

    def meta(self, epoch: int) -> dict:
        cfg = self.cfg
        return {"backbone": cfg.backbone, "num_classes": self.bundle.num_classes, "alpha": cfg.alpha,
                "eval_alpha": cfg.test_alpha, "class_names": list(self.bundle.class_names),
                "method": cfg.method, "epoch": epoch, "dataset": self.bundle.name, "data": cfg.data,
                "observation": cfg.observation, "observation_seed": cfg.observation_seed,
                "image_size": self.image_size}

    # -- checkpoints
    def _save(self, epoch: int, is_best: bool) -> None:
        if not self.main:
            return
        meta = self.meta(epoch)
        save_model(self.out / "last", self.model, meta)
        save_resume_state(self.out / "last" / "state.pt", {
            "epoch": epoch, "best_map": self.best_map, "best_epoch": self.best_epoch,
            "optimizer": self.optimizer.state_dict(), "labels": self.store.state_dict(),
            "loss": self.loss_fn.state_dict(), "loss_extra": self.loss_fn.extra_state(),
            "history": json.dumps(self.history)})
        if is_best:
            save_model(self.out / "best", self.model, meta)

    def _load_state(self) -> None:
        state = load_resume_state(self.out / "last" / "state.pt")
        load_weights(self.model, self.out / "last" / MODEL_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.store.load_state_dict(state["labels"])
        self.loss_fn.load_state_dict(state["loss"])
        self.loss_fn.load_extra_state(state["loss_extra"])
        self.epoch, self.best_map, self.best_epoch = int(state["epoch"]), float(state["best_map"]), int(state["best_epoch"])
        self.history = json.loads(state["history"])
        if self.main:  # drop metric lines of epochs after the checkpoint (an interrupted epoch)
            lines = [json.dumps(h) for h in self.history]
            (self.out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))

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
            loss = self.loss_fn(logits.float(), observed, epoch=epoch, index=index.to(rt.device))
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
                        f"{self.out / 'last'} (epoch {epoch - 1}); lower --lr or set --amp off")
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

    def evaluate(self, split: Split, targets) -> float:
        scores = predict(self.net, split.images, self.rt, self.cfg.test_alpha, self.cfg.eval_batch_size, self.cfg.num_workers)
        return split_map(scores, targets)

    # -- the protocol
    def fit(self) -> RunResult:
        cfg = self.cfg
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
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if cfg.progress:
                    tqdm.write(f"epoch {epoch}: loss {stats['train_loss']:.4f}  val mAP {val_map:.2f}"
                               f"  ({stats['train_images_per_s']:.0f} img/s){'  *' if is_best else ''}")
            self._save(epoch, is_best)
            self.rt.dist.barrier()
        return self.finish()

    def finish(self) -> RunResult:
        load_weights(self.model, self.out / "best" / MODEL_FILE)
        test = self.bundle.test
        test_targets = test.full if test.full is not None else test.observed
        scores = predict(self.net, test.images, self.rt, self.cfg.test_alpha, self.cfg.eval_batch_size, self.cfg.num_workers)
        results = {"method": self.cfg.method, "train_alpha": self.cfg.alpha, "eval_alpha": self.cfg.test_alpha,
                   "test_map": split_map(scores, test_targets), "val_map": self.best_map,
                   "best_epoch": self.best_epoch, "epochs": self.cfg.epochs, "seed": self.cfg.seed,
                   "dataset": self.bundle.name, "world_size": self.rt.dist.world_size,
                   "stored_label_edits": self.store.num_edits()}
        if self.main:
            write_json(self.out / "results.json", results)
        return RunResult(self.out, results)


def train(config: TrainConfig | dict, bundle: Optional[DatasetBundle] = None, resume: bool = False) -> RunResult:
    """Train, select on validation, evaluate the best checkpoint on test.  See `TrainConfig`."""
    cfg = config if isinstance(config, TrainConfig) else make_config({**TrainConfig().to_dict(), **config})
    return Run(cfg, bundle, resume).fit()
