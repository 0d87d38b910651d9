"""Trainer hooks (detectron2 style): what a run reports, kept out of the training loop.

The engine calls every hook at fixed points of `Run.fit`:

    before_train(run)            after set-up (and after a resume has restored its state)
    after_step(run, step)        after every optimiser step (a `Step`)
    after_epoch(run, record)     after validation, with the epoch's metrics.jsonl record
    before_checkpoint(run)       before a resumable checkpoint is written: make your output durable
                                 (on the main process only, where checkpoints are written)
    after_train(run, results)    at the end; results is None when the run failed or was preempted

Hooks see the run through `RunView`, a small read-only protocol (the engine's `Run` satisfies it).

Hooks run on the main process only (rank 0 under DDP), so they may write files freely; they must
not take part in collectives.  A trainer feature that changes training (it must then run on every
process, at the same points, to keep the processes' weights equal) says `every_process = True`.
A hook with state that a resumed run needs returns it from `state_dict` (saved in
last/state.pt) and gets it back in `load_state_dict`.  So a new trainer feature is a hook, and
the training loop stays as it is.

Logging does not slow training: the loop synchronises the host with the device only every
`log_every` steps (for the non-finite-loss check); the per-step values stay on the device until
then, and `Step.logs` carries them, as host numbers, for all steps since the previous sync point
(empty on the other steps).  A hook that reads `Step.loss` (a device tensor) on every step would
add a sync per step; use `logs` instead.

Built-in hooks: `MetricsFiles` (metrics.jsonl + metrics.csv) and `TensorBoard` (event files under
RUN/tensorboard, if the tensorboard package is installed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import torch

from .checkpoint import RunFolder
from .optional import tensorboard_available

log = logging.getLogger(__name__)


class RunView(Protocol):
    """What a hook sees of a run.  Reporting hooks only read it; a trainer feature
    (`every_process = True`) may change the weights it trains (`model`)."""

    cfg: "object"  # the TrainConfig in force
    out: Path  # the run folder
    resumed: bool  # continued from a checkpoint

    @property
    def epoch(self) -> int: ...  # epochs done

    @property
    def global_step(self) -> int: ...  # optimiser steps since the run began

    @property
    def history(self) -> list[dict]: ...  # the metrics records of the finished epochs

    @property
    def model(self) -> torch.nn.Module: ...  # the weights being trained (unwrapped)


class Hook:
    """Override what you need; every method is a no-op here."""

    #: run on every process (a feature that changes training), not on the main process only
    every_process: bool = False

    def before_train(self, run: "RunView") -> None:
        pass

    def after_step(self, run: "RunView", step: "Step") -> None:
        pass

    def after_epoch(self, run: "RunView", record: dict) -> None:
        pass

    def before_checkpoint(self, run: "RunView") -> None:
        pass

    def after_train(self, run: "RunView", results: Optional[dict]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Step:
    """One optimiser step, as the hooks see it."""

    epoch: int
    step: int  # 1-based within the epoch
    global_step: int  # optimiser steps since the run began
    images: int  # images in the global batch
    lrs: dict[str, float]  # learning rate of each parameter group for this step
    loss: torch.Tensor  # this process's loss (device tensor; reading it syncs)
    logs: list[dict] = field(default_factory=list)  # host values of the steps since the last sync point

    @property
    def synced(self) -> bool:
        return bool(self.logs)


class MetricsFiles(Hook):
    """metrics.jsonl (one JSON line per epoch) and metrics.csv (the same records as a table).

    A resumed run rewrites both from the checkpoint's history, dropping the lines of an epoch that
    was interrupted after it was logged."""

    def __init__(self, folder: RunFolder):
        self.folder = folder

    def before_train(self, run: "RunView") -> None:
        if run.resumed:
            self.folder.rewrite_metrics(run.history)
            if run.history:
                self.folder.write_metrics_csv(run.history)

    def after_epoch(self, run: "RunView", record: dict) -> None:
        self.folder.append_metrics(record)
        self.folder.write_metrics_csv(run.history)


def tensorboard_enabled(setting: str) -> bool:
    """auto: on when the tensorboard package is installed, quietly off when not (metrics.jsonl and
    metrics.csv are written either way; `on` without the package is refused when the config is made)."""
    if setting == "off":
        return False
    if tensorboard_available():
        return True
    log.info("TensorBoard logging is off: the tensorboard package is not installed (pip install 'pamc[tensorboard]')")
    return False


class TensorBoard(Hook):
    """Scalars in RUN/tensorboard, on the global step (optimiser steps since the start):

    train/loss, train/selected (large-loss selections), train/label_edits, lr/<group>, and
    train/grad_norm (when grad_clip is on) for every step; train/images_per_s once per sync
    interval (measured between syncs, so it is exact on a GPU too); val/map, epoch/train_loss,
    epoch/selected, epoch/label_edits, epoch/images_per_s at the last step of each epoch; and
    test/map at the end.  The loss and counts are those of the global batch (summed over the
    processes).  A resumed run purges the events logged after its checkpoint (`purge_step`), so the
    curves have no duplicates.
    """

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.writer = None

    def before_train(self, run: "RunView") -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = run.global_step + 1 if run.resumed else None
        if run.resumed:
            _after_earlier_event_files(self.folder.tensorboard)
        self.writer = SummaryWriter(log_dir=str(self.folder.tensorboard), purge_step=purge)

    def after_step(self, run: "RunView", step: Step) -> None:
        add = self.writer.add_scalar
        for log in step.logs:
            g = log["global_step"]
            add("train/loss", log["loss"], g)
            add("train/selected", log["selected"], g)
            add("train/label_edits", log["label_edits"], g)
            for name, lr in log["lrs"].items():
                add(f"lr/{name}", lr, g)
            if "grad_norm" in log:
                add("train/grad_norm", log["grad_norm"], g)
            if "images_per_s" in log:
                add("train/images_per_s", log["images_per_s"], g)

    def after_epoch(self, run: "RunView", record: dict) -> None:
        g = run.global_step
        self.writer.add_scalar("val/map", record["val_map"], g)
        for key in ("train_loss", "selected", "label_edits", "train_images_per_s"):
            self.writer.add_scalar(f"epoch/{key.removeprefix('train_')}", record[key], g)

    def before_checkpoint(self, run: "RunView") -> None:
        self.writer.flush()

    def after_train(self, run: "RunView", results: Optional[dict]) -> None:
        if self.writer is None:
            return
        if results is not None:
            self.writer.add_scalar("test/map", results["test_map"], run.global_step)
        self.writer.close()
        self.writer = None


def _after_earlier_event_files(folder) -> None:
    """TensorBoard reads a folder's event files in name order, whose first field is the second a
    file was made: wait (at most a second) so that a resumed run's file sorts after the earlier
    ones, whose events it purges from its first step on."""
    import time

    stamps = []
    for path in folder.glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            stamps.append(int(field))
    if stamps:
        while time.time() < max(stamps) + 1:
            time.sleep(0.02)


def default_hooks(cfg, folder: RunFolder) -> list[Hook]:
    hooks: list[Hook] = [MetricsFiles(folder)]
    if tensorboard_enabled(cfg.tensorboard):
        hooks.append(TensorBoard(folder))
    return hooks
