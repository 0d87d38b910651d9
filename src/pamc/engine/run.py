"""A training run: set-up, the protocol it implements, checkpoints and the final test.

    for each remaining epoch:  train (`EpochLoop`), label feedback, validate, record, checkpoint
    then:                      test the best checkpoint, write results.json

The pieces live beside it: the optimiser step and the method seam (`step`), one epoch with its
sync points (`loop`), resumable state (`state`), status.json (`status`), model and loss (`build`).
"""
from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import losses as loss_registry
from ..checkpoint import MODEL_FILE, CheckpointMeta, RunFolder, load_weights, model_state
from ..config import TrainConfig
from ..data import DatasetBundle, Split, load_bundle
from ..data.augment import BatchAugment
from ..distributed import GlobalBatches
from ..errors import PamcError
from ..hooks import Hook, default_hooks
from ..labels import LabelStore, label_store, observe
from ..losses.base import PartialLabelLoss
from ..metrics import split_map, standard_metrics
from ..models.weights import load_state
from ..preemption import Preempted, StopRequest
from ..recipes import build_ema, build_optimizer, build_scheduler, schedule_steps
from ..runtime import Runtime, auto_workers, predict, processes_per_node, unwrap
from .build import build_loss, build_model
from .loop import EpochLoop
from .state import Part, Progress, RunState, ema_part, hooks_part, rng_part, schedule_parts
from .status import RunStatus
from .step import TrainStep


@dataclass
class RunResult:
    out: Path
    results: dict

    @property
    def test_map(self) -> float:
        return self.results["test_map"]


class Run:
    """One training run.  `hooks` (`pamc.hooks.Hook`) are added to the default ones; hooks run on
    the main process unless they say `every_process = True`."""

    def __init__(self, cfg: TrainConfig, bundle: Optional[DatasetBundle] = None, resume: bool = False,
                 hooks: Sequence[Hook] = ()):
        self.cfg = cfg
        self.folder = RunFolder(cfg.out)
        self.out = self.folder.path
        self.resumed = resume
        self._check_folder(resume)
        saved_state = self.folder.load_state() if resume else None
        self.rt, auto_decides = self._runtime(saved_state)
        self.num_workers = auto_workers(processes_per_node()) if cfg.num_workers == "auto" else cfg.num_workers
        self.main = self.rt.dist.is_main
        torch.manual_seed(cfg.seed)
        self.bundle = bundle or load_bundle(cfg.data)
        self.store, observed = self._training_labels()
        self.val_targets = self._selection_targets()
        self.image_size = int(self.bundle.train.images[0].shape[-1])
        self.model = build_model(cfg, self.bundle.num_classes).to(self.rt.device)
        if auto_decides:  # auto's CPU choice knows the model too (a resumed run keeps the choice it began with)
            self.rt = self.rt.for_model(self.model, self.image_size)
        self.weights_info = getattr(self.model.backbone, "weights_info", None)  # file hashed once, at build
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = build_loss(cfg, len(self.bundle.train), self.bundle.num_classes, observed,
                                  self.bundle.info.get("expected_positives"), self.bundle.train.full).to(self.rt.device)
        self.frozen = None
        if cfg.freeze_backbone:  # the run's images become cached features, its model the head (pamc.frozen)
            from ..frozen import FrozenBackbone

            self.frozen = FrozenBackbone.setup(cfg, self.model, self.bundle, self.rt, cfg.eval_batch_size,
                                               self.num_workers)
            self.model, self.bundle, self.rt = self.frozen.head_model, self.frozen.bundle, self.frozen.runtime
        self.eval_rt = self.rt.for_evaluation()  # validation's runtime, from the training one as finally set
        self.batches = GlobalBatches(len(self.bundle.train), cfg.batch_size, cfg.seed, self.rt.dist)
        self.optimizer = build_optimizer(self.model, self.loss_fn, cfg, self.rt)
        self.scheduler = build_scheduler(self.optimizer, cfg, len(self.batches))
        self.ema = build_ema(self.model, cfg.ema)
        self.augment = BatchAugment.from_config(cfg)
        self._prepare_folder(resume)
        self.net = self._wrap(self.model)
        self.train_step = TrainStep(self.net, self.model, self.loss_fn, self.optimizer, self.scheduler, self.ema, self.store,
                              self.rt, cfg.grad_clip)
        self.epoch_loop = EpochLoop(self)
        if self.batches.dropped and self.main:
            warnings.warn(f"the last global batch ({self.batches.dropped} images, a different draw each epoch) is smaller "
                          f"than the {self.rt.dist.world_size} processes and is skipped; choose a batch size that avoids it")
        self.progress = Progress()
        self.saved = None  # (epoch, step) of the last resumable checkpoint
        self.stop = StopRequest()
        self.hooks: list[Hook] = [h for h in (default_hooks(cfg, self.folder) + list(hooks))
                                  if self.main or h.every_process]
        self.status = RunStatus(self.folder, self.rt.dist, resume)
        self.state = self._state()
        self._last_checkpoint_time = time.monotonic()
        if resume:
            self.state.load_state_dict(saved_state, len(self.batches))
            self.saved = (self.progress.epoch, self.progress.step)
        elif self.main and self.rt.choice and cfg.progress:
            tqdm.write(f"pamc: {self.rt.choice} (set --amp / --channels-last to choose)")

    # -- set-up
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

    def _runtime(self, saved_state: Optional[dict]) -> tuple[Runtime, bool]:
        """The run's device, precision and memory format, and whether `auto` decided them anew.
        `auto` knows the CPU (`Runtime.create`); a resumed run computes as it began: the choice is
        in its state (a run begun before pamc recorded it began with the old auto, fp32 NCHW on
        the CPU)."""
        cfg = self.cfg
        if saved_state is None:
            return Runtime.from_config(cfg, cpu_auto=True), True
        recorded = saved_state.get("runtime")
        if recorded is None:
            return Runtime.from_config(cfg), False
        rt = Runtime.from_config(cfg, cpu_auto=True)
        if (recorded["device"], recorded["processes"]) != (rt.device.type, rt.dist.world_size):
            if rt.dist.is_main and cfg.progress:  # another machine: auto decides anew
                tqdm.write(f"pamc: this run began on {recorded['processes']} {recorded['device']} process(es); "
                           f"{rt.choice or 'its settings apply as given'}")
            return rt, True
        amp = recorded["amp"] if cfg.amp == "auto" else cfg.amp
        channels_last = recorded["channels_last"] if cfg.channels_last == "auto" else cfg.channels_last
        kept = Runtime.create(cfg.device, amp, channels_last, cfg.cudnn_benchmark)
        same = (amp, channels_last) == (recorded["amp"], recorded["channels_last"])
        return replace(kept, choice=recorded.get("choice", "") if same else "",
                       auto_bf16=bool(recorded.get("choice")) and same and amp == "bf16"), False

    def _training_labels(self) -> tuple:
        """The label store training edits, and the observed labels it starts from."""
        train = self.bundle.train
        full_loss = getattr(loss_registry.LOSSES.get(self.cfg.method), "uses_full_labels", False)
        if full_loss and train.full is None:
            raise PamcError("method 'full' needs full training labels, which this dataset lacks")
        observed = (train.full.astype(np.float32) if full_loss else
                    observe(train.full, train.observed, self.cfg.observation, self.cfg.observation_seed,
                            what="the training set"))
        store = label_store(observed)
        if len(store) != len(train):
            raise PamcError(f"{len(store)} label rows for {len(train)} training images; the dataset is inconsistent")
        return store, observed

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
            from ..distributed import sync_batchnorm

            net = sync_batchnorm(net, self.rt)
        if self.rt.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.cfg.compile != "off":
            net = torch.compile(net, mode=None if self.cfg.compile == "default" else self.cfg.compile)
        return net

    def _state(self) -> RunState:
        """What last/state.pt holds, part by part (the keys of release 0.1)."""
        state = RunState(self.progress)
        state.add("model", Part(lambda: model_state(self.model),
                                lambda weights: load_state(unwrap(self.model), weights, str(self.folder.state)),
                                lambda: load_weights(self.model, self.folder.last / MODEL_FILE)))  # older pamc: beside it
        state.add("optimizer", self.optimizer)
        state.add("labels", self.store)
        state.add("loss", self.loss_fn)
        if self.scheduler is not None:
            for name, part in schedule_parts(self.scheduler, schedule_steps(self.cfg, len(self.batches))[0]).items():
                state.add(name, part)
        if self.ema is not None:
            state.add("ema", ema_part(self.ema, self.model))
        state.add("runtime", Part(self.rt.record, lambda recorded: None))  # read before set-up (`_runtime`)
        state.add("rng", rng_part())
        state.add("hooks", hooks_part(self.hooks))
        return state

    # -- what the hooks and the loop read
    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def history(self) -> list[dict]:
        return self.progress.history

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, the best checkpoint and test use: the EMA of the weights when it is on."""
        return self.net if self.ema is None else self.ema.module

    def meta(self, epoch: int, **extra) -> CheckpointMeta:
        cfg = self.cfg
        return CheckpointMeta(backbone=cfg.backbone, num_classes=self.bundle.num_classes, alpha=cfg.alpha,
                              eval_alpha=cfg.test_alpha, class_names=list(self.bundle.class_names),
                              method=cfg.method, epoch=epoch, dataset=self.bundle.name, data=cfg.data,
                              observation=cfg.observation, observation_seed=cfg.observation_seed,
                              image_size=self.image_size, weights=self.weights_info, activation=cfg.activation,
                              extra={"runtime": self.rt.record(), **extra})

    # -- checkpoints
    def save(self, epoch: int, is_best: bool, step: int = 0, partial: Optional[dict] = None) -> None:
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
        self.folder.save_checkpoint(self.folder.LAST, self.deployed(self.model), self.meta(epoch, **where))
        # the counters as of the checkpoint: `epoch` done, `step` steps of the next with its sums
        state = {**self.state.state_dict(), "epoch": epoch, "step": step}
        state.pop("partial", None)
        if partial is not None:
            state["partial"] = partial
        self.folder.save_state(state)
        if is_best:
            extra = {} if self.ema is None else {"ema_decay": self.cfg.ema}
            best = self.model if self.ema is None else self.ema.module
            self.folder.save_checkpoint(self.folder.BEST, self.deployed(best), self.meta(epoch, **extra))
        # status.json: "epoch E, step S" = S steps into epoch E; "epoch E" alone = E epochs done
        self.status.write("running", epoch=epoch + 1 if step else epoch, step=step or None, global_step=self.global_step)

    def deployed(self, model: torch.nn.Module) -> torch.nn.Module:
        """What a checkpoint of `model` holds: `model`, or under a frozen backbone the complete
        model, the real backbone under `model`'s head."""
        return model if self.frozen is None else self.frozen.complete(model)

    def checkpoint_due(self) -> tuple[bool, bool]:
        """(a step checkpoint is due -- the same on every process, a time checkpoint is due -- the
        main process's clock, agreed on at the next sync point)."""
        cfg = self.cfg
        steps = cfg.checkpoint_every_steps is not None and self.global_step % cfg.checkpoint_every_steps == 0
        minutes = (cfg.checkpoint_every_minutes is not None and self.main
                   and time.monotonic() - self._last_checkpoint_time >= 60 * cfg.checkpoint_every_minutes)
        return steps, minutes

    def saved_text(self, epoch: int) -> str:
        if self.saved is None or not self.saved[1]:
            return f"epoch {epoch - 1}" if self.saved is None else f"epoch {self.saved[0]}"
        return f"epoch {self.saved[0] + 1}, step {self.saved[1]}"

    def _stop_between_epochs(self) -> None:
        """A signal that came outside the step loop (validation, linear init): stop here, on the
        checkpoint just written (or written now, before the first epoch)."""
        stop = self.rt.dist.all_reduce_sum(torch.tensor([float(self.stop.requested)], device=self.rt.device))
        if float(stop[0]) > 0:
            if self.saved is None:  # else the last checkpoint is where training stands
                self.save(self.epoch, False)
            self.rt.dist.barrier()
            raise Preempted(self.out, self.stop.name or "a stop signal", self.epoch, 0)

    # -- evaluation
    def predict(self, split: Split) -> torch.Tensor:
        return predict(self.eval_model, split.images, self.eval_rt, self.cfg.test_alpha, self.cfg.eval_batch_size,
                       self.num_workers)

    def evaluate(self, split: Split, targets) -> float:
        return split_map(self.predict(split), targets)

    def epoch_feedback(self, epoch: int) -> int:
        """Epoch-level label feedback (EM-APL) for losses that define it."""
        if type(self.loss_fn).epoch_end is PartialLabelLoss.epoch_end:
            return 0
        if not isinstance(self.store, LabelStore):
            raise PamcError(f"method {self.cfg.method!r} needs dense training labels; this dataset's are sparse")
        updates = self.loss_fn.epoch_end(epoch, self.store.observed, self.store.initial,
                                         lambda: predict(self.net, self.bundle.train.images, self.rt,
                                                         self.cfg.alpha, self.cfg.eval_batch_size, self.num_workers))
        if updates is None:
            return 0
        mask, values = updates
        return self.store.apply(torch.arange(len(self.store)), mask, values)

    # -- the protocol
    def fit(self) -> RunResult:
        with self.stop:
            self.status.started()
            results = None
            try:
                with self.status.stopped():
                    for hook in self.hooks:
                        hook.before_train(self)
                    self.before_first_epoch()
                    for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
                        started = time.perf_counter()
                        self.end_epoch(epoch, self.epoch_loop(epoch), started)
                    result = self.finish()
                    results = result.results
            finally:
                for hook in self.hooks:
                    hook.after_train(self, results)
            self.status.finished(self.epoch)
        return result

    def before_first_epoch(self) -> None:
        """"+ LI" (`pamc.linear_init`, once), the EMA's starting point, and a stop that came during set-up."""
        if self.cfg.linear_init and not self.resumed:
            from ..linear_init import LinearInit

            LinearInit.from_config(self.cfg.linear_init).run(
                self.model, self.loss_fn, self.store, self.bundle.train.images, self.bundle.val.images,
                self.val_targets, self.rt, alphas=(self.cfg.alpha, self.cfg.test_alpha), seed=self.cfg.seed,
                folder=self.out if self.main else None, progress=self.cfg.progress and self.main,
                batch_size=self.cfg.eval_batch_size, num_workers=self.num_workers)
        if self.ema is not None and not self.resumed:
            self.ema.update_parameters(self.model)  # the EMA starts from the weights training starts from
        self._stop_between_epochs()

    def end_epoch(self, epoch: int, stats: dict, started: float) -> None:
        """After an epoch's steps: label feedback, validation, the record, the hooks, the checkpoint.
        `epoch_seconds` is the epoch's wall time in this process, steps to validation (an epoch
        resumed mid-way counts from the resume)."""
        stats["label_edits"] += self.epoch_feedback(epoch)
        val_map = self.evaluate(self.bundle.val, self.val_targets)
        is_best = self.progress.record(epoch, val_map)
        record = {"epoch": epoch, "val_map": val_map, "best_epoch": self.progress.best_epoch, **stats,
                  "stored_label_edits": self.store.num_edits(), "epoch_seconds": time.perf_counter() - started}
        self.history.append(record)
        for hook in self.hooks:
            hook.after_epoch(self, record)
        if self.main and self.cfg.progress:
            tqdm.write(f"epoch {epoch}: loss {stats['train_loss']:.4f}  val mAP {val_map:.2f}"
                       f"  ({stats['train_images_per_s']:.0f} img/s){'  *' if is_best else ''}")
        self.save(epoch, is_best)
        self.rt.dist.barrier()
        if epoch < self.cfg.epochs:
            self._stop_between_epochs()

    def finish(self) -> RunResult:
        """The best checkpoint (the EMA's weights when EMA is on) on test; results.json."""
        tested = self.deployed(self.model)  # the head-only model's head is in it: loaded together
        load_weights(tested, self.folder.best / MODEL_FILE)
        test = self.bundle.test
        test_targets = test.full if test.full is not None else test.observed
        rt = self.eval_rt if self.frozen is None else self.frozen.image_runtime.for_evaluation()
        scores = predict(tested, test.images, rt, self.cfg.test_alpha, self.cfg.eval_batch_size, self.num_workers)
        results = {"method": self.cfg.method, "train_alpha": self.cfg.alpha, "eval_alpha": self.cfg.test_alpha,
                   "test_map": split_map(scores, test_targets), "test_metrics": standard_metrics(scores, test_targets),
                   "val_map": self.progress.best_map, "best_epoch": self.progress.best_epoch, "epochs": self.cfg.epochs,
                   "seed": self.cfg.seed, "dataset": self.bundle.name, "world_size": self.rt.dist.world_size,
                   "stored_label_edits": self.store.num_edits(), "runtime": self.rt.record(), **self.loss_fn.results()}
        if self.cfg.scores is not None:  # an extra resource: a frozen vision-language scorer
            from ..vlscores import describe_scores

            results["extra_resources"] = describe_scores(self.cfg.scores)
        if self.main:
            self.folder.write_results(results)
        return RunResult(self.out, results)
