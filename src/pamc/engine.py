"""The training engine: one loop for every method, dataset and number of processes.

It knows no loss or dataset by name.  Losses edit stored labels only through the label-feedback
seam (`label_updates`, `epoch_end`, see losses/base.py); datasets arrive as a `DatasetBundle`.
Every epoch: train, apply label feedback, validate, checkpoint (`last/` always, `best/` on a
strictly better validation mAP), report to the hooks (`pamc.hooks`: metrics.jsonl/.csv,
TensorBoard).  At the end the best checkpoint is evaluated on test and `results.json` is written.

Preemption-safe: `last/` is also written every `checkpoint_every_steps` steps or
`checkpoint_every_minutes` minutes and when a stop signal arrives (`pamc.preemption`), and a run
resumed from such a mid-epoch checkpoint continues exactly where it stopped -- the same batches
(their order depends only on seed and epoch), flips, augmentations, label edits, schedule, EMA and
RNG states -- so on the CPU its results equal those of an uninterrupted run.  `status.json` says
whether the run is running, finished, failed (with the reason) or preempted.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses as loss_registry
from .checkpoint import MODEL_FILE, CheckpointMeta, RunFolder, load_weights, model_state
from .config import TrainConfig, make_config, resume_config
from .data import DatasetBundle, Split, load_bundle
from .data.augment import BatchAugment
from .data.loading import image_batches
from .distributed import GlobalBatches
from .errors import PamcError
from .hooks import Hook, Step, default_hooks
from .labels import LabelStore, label_store, observe
from .losses.base import PartialLabelLoss
from .metrics import split_map, standard_metrics
from .models import CamClassifier
from .models.weights import load_state
from .preemption import Preempted, StopRequest, rng_state, set_rng_state
from .recipes import build_ema, build_optimizer, build_scheduler, clip_gradients, group_names, schedule_steps
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
    model = CamClassifier(cfg.backbone, num_classes, alpha=cfg.alpha, weights=weights, activation=cfg.activation)
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


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    out: Path
    results: dict

    @property
    def test_map(self) -> float:
        return self.results["test_map"]


class Run:
    """State of one training run, so that `train()` reads as the protocol it implements.

    `hooks` are added to the default ones (`pamc.hooks.default_hooks`) on the main process."""

    def __init__(self, cfg: TrainConfig, bundle: Optional[DatasetBundle] = None, resume: bool = False,
                 hooks: Sequence[Hook] = ()):
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
        self.batches = GlobalBatches(len(train), cfg.batch_size, cfg.seed, self.rt.dist)
        self.optimizer = build_optimizer(self.model, self.loss_fn, cfg, self.rt)
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.batches))
        self.ema = build_ema(self.model, cfg.ema)
        self.augment = BatchAugment.from_config(cfg)
        self._prepare_folder(resume)
        self.net = self._wrap(self.model)
        if self.batches.dropped and self.main:
            warnings.warn(f"the last global batch ({self.batches.dropped} images, a different draw each epoch) is smaller "
                          f"than the {self.rt.dist.world_size} processes and is skipped; choose a batch size that avoids it")
        self.epoch, self.best_map, self.best_epoch, self.history = 0, -math.inf, 0, []
        # where training stands: `epoch` epochs done, then `step` steps of the next (a mid-epoch checkpoint)
        self.step, self.global_step, self.partial = 0, 0, None
        self.saved = None  # (epoch, step) of the last resumable checkpoint
        self.stop = StopRequest()
        self.hooks: list[Hook] = (default_hooks(cfg, self.folder) + list(hooks)) if self.main else []
        self._last_checkpoint_time = time.monotonic()
        if resume:
            self._load_state()

    # -- setup
    def _check_folder(self, resume: bool) -> None:
        """Refuse an unusable run folder before any work; nothing is written until `_prepare_folder`."""
        if resume:
            self.folder.require_resumable()
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

    def meta(self, epoch: int, **extra) -> CheckpointMeta:
        cfg = self.cfg
        return CheckpointMeta(backbone=cfg.backbone, num_classes=self.bundle.num_classes, alpha=cfg.alpha,
                              eval_alpha=cfg.test_alpha, class_names=list(self.bundle.class_names),
                              method=cfg.method, epoch=epoch, dataset=self.bundle.name, data=cfg.data,
                              observation=cfg.observation, observation_seed=cfg.observation_seed,
                              image_size=self.image_size, weights=self.weights_info, activation=cfg.activation,
                              extra=extra)

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, the best checkpoint and test use: the EMA of the weights when it is on."""
        return self.net if self.ema is None else self.ema.module

    # -- checkpoints
    def _save(self, epoch: int, is_best: bool, step: int = 0, partial: Optional[dict] = None) -> None:
        """A resumable `last/` after `epoch` epochs and `step` steps of the next (0: at an epoch's
        end, where `best/` is updated too).  `last/state.pt` holds everything a resumed run needs,
        the weights included, so a kill between the files never pairs one checkpoint's weights
        with another's state; it is written last."""
        self.saved = (epoch, step)
        self._last_checkpoint_time = time.monotonic()
        if not self.main:
            return
        for hook in self.hooks:
            hook.before_checkpoint(self)
        where = {"step": step, "global_step": self.global_step} if step else {}
        self.folder.save_checkpoint(self.folder.LAST, self.model, self.meta(epoch, **where))
        state = {"epoch": epoch, "step": step, "global_step": self.global_step, "best_map": self.best_map,
                 "best_epoch": self.best_epoch, "model": model_state(self.model),
                 "optimizer": self.optimizer.state_dict(), "labels": self.store.state_dict(),
                 "loss": self.loss_fn.state_dict(), "history": json.dumps(self.history), "rng": rng_state(),
                 "hooks": {type(h).__name__: h.state_dict() for h in self.hooks if h.state_dict()}}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
            state["schedule_steps"] = schedule_steps(self.cfg, len(self.batches))[0]
        if self.ema is not None:
            state["ema"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        if partial is not None:
            state["partial"] = partial
        self.folder.save_state(state)
        if is_best:
            best = self.model if self.ema is None else self.ema.module
            extra = {} if self.ema is None else {"ema_decay": self.cfg.ema}
            self.folder.save_checkpoint(self.folder.BEST, best, self.meta(epoch, **extra))
        # status.json: "epoch E, step S" = S steps into epoch E; "epoch E" alone = E epochs done
        self._status("running", epoch=epoch + 1 if step else epoch, step=step or None, global_step=self.global_step)

    def _load_state(self) -> None:
        state = self.folder.load_state()
        if "model" in state:
            load_state(unwrap(self.model), state["model"], str(self.folder.state))
        else:  # saved by an older pamc: the weights are beside it
            load_weights(self.model, self.folder.last / MODEL_FILE)
        self.optimizer.load_state_dict(state["optimizer"])
        self.store.load_state_dict(state["labels"])
        self.loss_fn.load_state_dict(state["loss"])
        self.epoch, self.best_map, self.best_epoch = int(state["epoch"]), float(state["best_map"]), int(state["best_epoch"])
        self.step = int(state.get("step", 0))
        self.global_step = int(state.get("global_step", self.epoch * len(self.batches)))
        self.partial = state.get("partial")
        self.history = json.loads(state["history"])
        self.saved = (self.epoch, self.step)
        if self.scheduler is not None:
            total = schedule_steps(self.cfg, len(self.batches))[0]
            if "scheduler" not in state or state.get("schedule_steps", total) != total:
                raise PamcError(f"this run's lr schedule is {state.get('schedule_steps', 'a constant lr')} steps long; "
                                f"resuming with {total} would change it mid-run: keep epochs/schedule_epochs as they were")
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:  # EMA switched on at a resume: it starts from the weights here
                self.ema.update_parameters(self.model)
        if "rng" in state:
            set_rng_state(state["rng"])
        for hook in self.hooks:
            hook.load_state_dict(state.get("hooks", {}).get(type(hook).__name__, {}))

    def _status(self, status: str, **fields) -> None:
        if self.main:
            self.folder.write_status(status, **fields)

    # -- one epoch
    def _apply_updates(self, index: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> int:
        gather = self.rt.dist.all_gather_cat
        dev = self.rt.device
        return self.store.apply(gather(index.to(dev)), gather(mask.to(dev)), gather(values.to(dev)))

    def _checkpoint_due(self) -> tuple[bool, bool]:
        """(a step checkpoint is due -- the same on every process, a time checkpoint is due -- the
        main process's clock, agreed on at the next sync point)."""
        cfg = self.cfg
        steps = cfg.checkpoint_every_steps is not None and self.global_step % cfg.checkpoint_every_steps == 0
        minutes = (cfg.checkpoint_every_minutes is not None and self.main
                   and time.monotonic() - self._last_checkpoint_time >= 60 * cfg.checkpoint_every_minutes)
        return steps, minutes

    def train_epoch(self, epoch: int) -> dict:
        cfg, rt, train = self.cfg, self.rt, self.bundle.train
        dist = rt.dist
        self.net.train()
        self.batches.epoch = epoch
        flips = torch.rand(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)) < 0.5
        plan = list(self.batches)
        first = self.step if epoch == self.epoch + 1 else 0  # > 0: resumed inside this epoch
        partial = self.partial if first else None
        self.step, self.partial = 0, None
        bar = tqdm(total=len(plan), initial=first, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1.0,
                   disable=not (cfg.progress and self.main))
        if partial is None:
            total, selected = torch.zeros((), device=rt.device), torch.zeros((), device=rt.device, dtype=torch.long)
            seen, edits, before = 0, 0, 0.0
        else:
            total, selected = partial["total"].to(rt.device), partial["selected"].to(rt.device)
            seen, edits, before = int(partial["seen"]), int(partial["edits"]), float(partial["seconds"])
        start = time.perf_counter()
        synced_at, synced_seen = start, seen
        pending: list[tuple] = []  # (device tensors, host values) of the steps since the last sync point
        images = image_batches(train.images, [i for i, _ in plan[first:]], cfg.num_workers, rt.device.type == "cuda")
        for step, ((index, global_bs), x) in enumerate(zip(plan[first:], images), start=first + 1):
            lrs = dict(zip(group_names(self.optimizer), (g["lr"] for g in self.optimizer.param_groups)))
            observed = self.store.batch(index).to(rt.device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x.to(rt.device, non_blocking=True), index, epoch)
            with rt.autocast():
                logits = self.net(rt.prepare(x, flips[index]))
            loss = self.loss_fn(logits.float(), observed, epoch=epoch, index=index.to(rt.device),
                                gather=dist.all_gather_cat)
            # the local mean weighted by its share of the global batch, times the world size
            # that DDP divides by: the gradient of the global-batch mean, whatever the split
            (loss * (len(index) * dist.world_size / global_bs)).backward()
            dist.average_gradients(self.loss_fn.parameters())
            grad_norm = clip_gradients(self.model, self.loss_fn, cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.scheduler is not None:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            step_edits = 0
            if self.loss_fn.label_updates is not None:
                step_edits = self._apply_updates(index, *self.loss_fn.label_updates)
                edits += step_edits
            step_selected = self.loss_fn.last_selected.sum()
            selected += step_selected
            weighted = loss.detach() * len(index)
            total += weighted
            seen += len(index)
            self.global_step += 1
            pending.append((weighted, step_selected, grad_norm,
                            {"epoch": epoch, "step": step, "global_step": self.global_step, "images": global_bs,
                             "lrs": lrs, "label_edits": step_edits}))
            steps_due, minutes_due = self._checkpoint_due()
            stop = self.stop.requested
            # a sync point: every log_every steps, at the epoch's end, and before any checkpoint; one
            # process also syncs for a signal or the clock, several agree on those at the next one
            local = not dist.enabled and (stop or minutes_due)
            logs = []
            if step % cfg.log_every == 0 or step == len(plan) or steps_due or local:
                flags = torch.tensor([float(stop), float(minutes_due)], dtype=torch.float64, device=rt.device)
                sums = dist.all_reduce_sum(torch.cat([
                    total.double().view(1), torch.stack([p[0] for p in pending]).double(),
                    torch.stack([p[1] for p in pending]).double(), flags])).tolist()
                norms = torch.stack([p[2] for p in pending]).tolist() if cfg.grad_clip is not None else None
                mean = sums[0] / (seen * dist.world_size)
                if not math.isfinite(mean):
                    raise NonFiniteLoss(
                        f"the loss became {mean} in epoch {epoch} (step {step}); the last good checkpoint is "
                        f"{self.folder.last} ({self._saved_text(epoch)}); lower --lr or set --amp off")
                now = time.perf_counter()
                n = len(pending)
                for k, (_, _, _, host) in enumerate(pending):
                    log = {**host, "loss": sums[1 + k] / host["images"], "selected": int(sums[1 + n + k])}
                    if norms is not None:
                        log["grad_norm"] = norms[k]
                    logs.append(log)
                logs[-1]["images_per_s"] = (seen - synced_seen) * dist.world_size / max(now - synced_at, 1e-9)
                synced_at, synced_seen, pending = now, seen, []
                stop, minutes_due = sums[-2] > 0, sums[-1] > 0
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{seen * dist.world_size / (now - start):.0f}")
            bar.update(1)
            for hook in self.hooks:
                hook.after_step(self, Step(epoch, step, self.global_step, global_bs, lrs, loss.detach(), logs))
            if logs and (stop or ((steps_due or minutes_due) and step < len(plan))):
                self._save(epoch - 1, False, step=step, partial={
                    "total": total.detach().cpu(), "selected": selected.detach().cpu(), "seen": seen,
                    "edits": edits, "seconds": before + time.perf_counter() - start})
                if stop:
                    dist.barrier()  # the checkpoint is written before any process leaves
                    raise Preempted(self.out, self.stop.name or "a stop signal", epoch, step)
        bar.close()
        seconds = before + time.perf_counter() - start
        # summed over the processes: the epoch's numbers are those of the global batches
        sums = torch.stack([total.double(), selected.double(), torch.tensor(seen, dtype=torch.float64, device=rt.device)])
        total, selected, seen = dist.all_reduce_sum(sums).tolist()
        return {"train_loss": total / max(seen, 1), "train_seconds": seconds,
                "train_images_per_s": seen / max(seconds, 1e-9), "selected": int(selected), "label_edits": edits}

    def _saved_text(self, epoch: int) -> str:
        if self.saved is None or not self.saved[1]:
            return f"epoch {epoch - 1}" if self.saved is None else f"epoch {self.saved[0]}"
        return f"epoch {self.saved[0] + 1}, step {self.saved[1]}"

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
        return predict(self.eval_model, split.images, self.rt, self.cfg.test_alpha, self.cfg.eval_batch_size,
                       self.cfg.num_workers)

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

    def _stop_between_epochs(self) -> None:
        """A signal that came outside the step loop (validation, linear init): stop here, on the
        checkpoint just written (or written now, before the first epoch)."""
        stop = self.rt.dist.all_reduce_sum(torch.tensor([float(self.stop.requested)], device=self.rt.device))
        if float(stop[0]) > 0:
            if self.saved is None:  # else the last checkpoint is where training stands
                self._save(self.epoch, False)
            self.rt.dist.barrier()
            raise Preempted(self.out, self.stop.name or "a stop signal", self.epoch, 0)

    def fit(self) -> RunResult:
        with self.stop:
            self._status("running", started=_now(), host=socket.gethostname(), pid=os.getpid(), reason=None,
                         ended=None, resume_command=None, attempts=self._attempts() + 1)
            results = None
            try:
                for hook in self.hooks:
                    hook.before_train(self)
                result = self._fit()
                results = result.results
            except Preempted as exc:
                self._status("preempted", reason=f"stopped by {exc.signal_name}", ended=_now(),
                             resume_command=f"pamc train --resume {self.out}")
                raise
            except BaseException as exc:
                self._failed(exc)
                raise
            finally:
                for hook in self.hooks:
                    hook.after_train(self, results)
            self._status("finished", ended=_now(), epoch=self.epoch, step=None)
            return result

    def _attempts(self) -> int:
        if not self.main:
            return 0
        return int((self.folder.read_status() or {}).get("attempts", 0)) if self.resumed else 0

    def _failed(self, exc: BaseException) -> None:
        """status.json: failed, with the reason; written by whichever process failed (the others may be
        waiting in a collective), where the folder exists."""
        if not self.out.is_dir():
            return
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__
        if self.rt.dist.enabled and not self.main:
            reason += f" (rank {self.rt.dist.rank})"
        try:
            self.folder.write_status("failed", reason=reason, ended=_now())
        except OSError:
            pass

    def _fit(self) -> RunResult:
        cfg = self.cfg
        if cfg.linear_init and not self.resumed:
            self.linear_init()
        if self.ema is not None and not self.resumed:
            self.ema.update_parameters(self.model)  # the EMA starts from the weights training starts from
        self._stop_between_epochs()
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
            self.epoch = epoch
            for hook in self.hooks:
                hook.after_epoch(self, record)
            if self.main and cfg.progress:
                tqdm.write(f"epoch {epoch}: loss {stats['train_loss']:.4f}  val mAP {val_map:.2f}"
                           f"  ({stats['train_images_per_s']:.0f} img/s){'  *' if is_best else ''}")
            self._save(epoch, is_best)
            self.rt.dist.barrier()
            if epoch < cfg.epochs:
                self._stop_between_epochs()
        return self.finish()

    def finish(self) -> RunResult:
        load_weights(self.model, self.folder.best / MODEL_FILE)
        test = self.bundle.test
        test_targets = test.full if test.full is not None else test.observed
        # the best checkpoint (the EMA's weights when EMA is on) is now in self.model
        scores = predict(self.net, test.images, self.rt, self.cfg.test_alpha, self.cfg.eval_batch_size,
                         self.cfg.num_workers)
        results = {"method": self.cfg.method, "train_alpha": self.cfg.alpha, "eval_alpha": self.cfg.test_alpha,
                   "test_map": split_map(scores, test_targets), "test_metrics": standard_metrics(scores, test_targets),
                   "val_map": self.best_map, "best_epoch": self.best_epoch, "epochs": self.cfg.epochs,
                   "seed": self.cfg.seed, "dataset": self.bundle.name, "world_size": self.rt.dist.world_size,
                   "stored_label_edits": self.store.num_edits()}
        if self.main:
            self.folder.write_results(results)
        return RunResult(self.out, results)


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finished(folder: RunFolder, epochs: int) -> Optional[RunResult]:
    """The results of a finished run of `epochs` epochs in `folder`, or None."""
    status = folder.read_status() or {}
    if status.get("status", "finished") != "finished" or not folder.results.is_file():
        return None
    try:
        results = folder.read_results()
    except (OSError, json.JSONDecodeError):
        return None
    return RunResult(folder.path, results) if results.get("epochs") == epochs else None


def train(config: TrainConfig | dict, bundle: Optional[DatasetBundle] = None, resume: bool | str = False,
          hooks: Sequence[Hook] = ()) -> RunResult:
    """Train, select on validation, evaluate the best checkpoint on test.  See `TrainConfig`.

    resume=True continues the run in the config's `out` folder.  A mapping then overrides the
    run's saved config.yaml (so `{"out": RUN, "epochs": 12}` resumes RUN with 12 epochs, exactly as
    `pamc train --resume RUN --epochs 12`); a `TrainConfig` is taken as the complete settings.

    resume="auto" resumes when `out` holds a resumable checkpoint and starts the run otherwise
    (replacing what a run killed before its first checkpoint left there); a run already finished
    with these epochs is not repeated: its results are returned.  So a job script (or torchrun
    --max-restarts) can be rerun unchanged after a preemption.

    A run stopped by SIGTERM/SIGINT/SIGUSR1 writes a resumable checkpoint and raises
    `pamc.preemption.Preempted`; `hooks` (`pamc.hooks.Hook`) are added to the default ones.
    """
    if resume == "auto":
        out = config.out if isinstance(config, TrainConfig) else config.get("out", TrainConfig.out)
        folder = RunFolder(out)
        resume = folder.can_resume()
        if resume:
            cfg = config if isinstance(config, TrainConfig) else resume_config(out, {k: v for k, v in config.items()
                                                                                  if k != "out"})
            done = _finished(folder, cfg.epochs)
            if done is not None:
                return done
            return Run(cfg, bundle, True, hooks).fit()
        if not folder.is_empty() and not folder.is_run_folder():
            raise PamcError(f"run folder {out} already exists and was not made by pamc; choose another --out")
        config = (dataclasses.replace(config, overwrite=True) if isinstance(config, TrainConfig)
                  else {**config, "overwrite": True})
    elif resume not in (True, False):
        raise PamcError(f"resume must be True, False or 'auto' (got {resume!r})")
    if isinstance(config, TrainConfig):
        cfg = config
    elif resume:
        if "out" not in config:
            raise PamcError("say which run to resume: pass its folder as out")
        cfg = resume_config(config["out"], {k: v for k, v in config.items() if k != "out"})
    else:
        cfg = make_config({**TrainConfig().to_dict(), **config})
    return Run(cfg, bundle, resume, hooks).fit()
