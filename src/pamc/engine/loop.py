"""One training epoch: the steps, their reports, and the points where processes agree.

The host syncs with the device only at sync points -- every `log_every` steps, at the epoch's end
and before any checkpoint -- where the buffered step values are reduced over the processes in one
collective, checked for a non-finite loss and handed to the hooks as host numbers.  At the same
points the processes agree on a stop signal or a checkpoint due by the clock, so every process
checkpoints and stops at the same step.  A mid-epoch checkpoint carries the epoch's running sums
(`partial`), and a resumed epoch starts at the step after it with the same batches and flips.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..data.loading import image_batches
from ..errors import PamcError
from ..hooks import Step
from ..preemption import Preempted
from ..recipes import group_names

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


class NonFiniteLoss(PamcError):
    pass


@dataclass
class EpochSums:
    """The epoch's running totals on this process (device tensors until the epoch ends)."""

    total: torch.Tensor
    selected: torch.Tensor
    seen: int = 0
    edits: int = 0
    seconds_before: float = 0.0  # of this epoch, before a resume

    @classmethod
    def start(cls, device, partial=None) -> "EpochSums":
        if partial is None:
            return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))
        return cls(partial["total"].to(device), partial["selected"].to(device), int(partial["seen"]),
                   int(partial["edits"]), float(partial["seconds"]))

    def partial(self, seconds: float) -> dict:
        return {"total": self.total.detach().cpu(), "selected": self.selected.detach().cpu(), "seen": self.seen,
                "edits": self.edits, "seconds": seconds}


@dataclass
class SyncBuffer:
    """The steps since the last sync point: device values and the host fields of their log lines."""

    device_values: list = field(default_factory=list)  # (weighted loss, selected, grad norm)
    host: list = field(default_factory=list)
    synced_at: float = 0.0
    synced_seen: int = 0
    mean: float = 0.0  # the epoch's mean loss over the processes at the last sync point

    def add(self, weighted, selected, grad_norm, fields: dict) -> None:
        self.device_values.append((weighted, selected, grad_norm))
        self.host.append(fields)


class EpochLoop:
    """Runs epoch `epoch` of `run` (an `engine.Run`) and returns its metrics record's training fields."""

    def __init__(self, run: "Run"):
        self.run = run

    def __call__(self, epoch: int) -> dict:
        run, cfg, rt = self.run, self.run.cfg, self.run.rt
        train = run.bundle.train
        run.net.train()
        run.batches.epoch = epoch
        flips = torch.rand(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)) < 0.5
        plan = list(run.batches)
        progress = run.progress
        first = progress.step if epoch == progress.epoch + 1 else 0  # > 0: resumed inside this epoch
        sums = EpochSums.start(rt.device, progress.partial if first else None)
        progress.step, progress.partial = 0, None
        bar = tqdm(total=len(plan), initial=first, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, mininterval=1.0,
                   disable=not (cfg.progress and run.main))
        start = time.perf_counter()
        buffer = SyncBuffer(synced_at=start, synced_seen=sums.seen)
        images = image_batches(train.images, [i for i, _ in plan[first:]], run.num_workers, rt.device.type == "cuda")
        for step, ((index, global_bs), x) in enumerate(zip(plan[first:], images), start=first + 1):
            lrs = dict(zip(group_names(run.optimizer), (g["lr"] for g in run.optimizer.param_groups)))
            if run.augment is not None:
                x = run.augment(x.to(rt.device, non_blocking=True), index, epoch)
            out = run.train_step(run.train_step.batch(index, x, flips[index], epoch), global_bs)
            sums.edits += out.label_edits
            sums.selected += out.selected
            sums.total += out.weighted
            sums.seen += len(index)
            progress.global_step += 1
            buffer.add(out.weighted, out.selected, out.grad_norm,
                       {"epoch": epoch, "step": step, "global_step": progress.global_step, "images": global_bs,
                        "lrs": lrs, "label_edits": out.label_edits})
            steps_due, minutes_due = run.checkpoint_due()
            stop = run.stop.requested
            # one process also syncs for a signal or the clock; several agree on those at the next sync point
            local = not rt.dist.enabled and (stop or minutes_due)
            logs = []
            if step % cfg.log_every == 0 or step == len(plan) or steps_due or local:
                logs, stop, minutes_due = self.sync(buffer, sums, stop, minutes_due, epoch, step)
                bar.set_postfix(loss=f"{buffer.mean:.4f}",
                                img_s=f"{sums.seen * rt.dist.world_size / (time.perf_counter() - start):.0f}")
            bar.update(1)
            for hook in run.hooks:
                hook.after_step(run, Step(epoch, step, progress.global_step, global_bs, lrs, out.loss, logs))
            if logs and (stop or ((steps_due or minutes_due) and step < len(plan))):
                run.save(epoch - 1, False, step=step,
                         partial=sums.partial(sums.seconds_before + time.perf_counter() - start))
                if stop:
                    rt.dist.barrier()  # the checkpoint is written before any process leaves
                    raise Preempted(run.out, run.stop.name or "a stop signal", epoch, step)
        bar.close()
        seconds = sums.seconds_before + time.perf_counter() - start
        # summed over the processes: the epoch's numbers are those of the global batches
        totals = torch.stack([sums.total.double(), sums.selected.double(),
                              torch.tensor(sums.seen, dtype=torch.float64, device=rt.device)])
        total, selected, seen = rt.dist.all_reduce_sum(totals).tolist()
        return {"train_loss": total / max(seen, 1), "train_seconds": seconds,
                "train_images_per_s": seen / max(seconds, 1e-9), "selected": int(selected), "label_edits": sums.edits}

    def sync(self, buffer: SyncBuffer, sums: EpochSums, stop: bool, minutes_due: bool, epoch: int,
             step: int) -> tuple[list[dict], bool, bool]:
        """A sync point: one all-reduce of the buffered steps and the stop / clock flags; returns the
        steps' log lines and the agreed flags."""
        run, rt, cfg = self.run, self.run.rt, self.run.cfg
        dist = rt.dist
        flags = torch.tensor([float(stop), float(minutes_due)], dtype=torch.float64, device=rt.device)
        values = buffer.device_values
        reduced = dist.all_reduce_sum(torch.cat([
            sums.total.double().view(1), torch.stack([v[0] for v in values]).double(),
            torch.stack([v[1] for v in values]).double(), flags])).tolist()
        norms = torch.stack([v[2] for v in values]).tolist() if cfg.grad_clip is not None else None
        mean = reduced[0] / (sums.seen * dist.world_size)
        if not math.isfinite(mean):
            raise NonFiniteLoss(f"the loss became {mean} in epoch {epoch} (step {step}); the last good checkpoint is "
                                f"{run.folder.last} ({run.saved_text(epoch)}); lower --lr or set --amp off")
        now = time.perf_counter()
        n = len(values)
        logs = []
        for k, host in enumerate(buffer.host):
            log = {**host, "loss": reduced[1 + k] / host["images"], "selected": int(reduced[1 + n + k])}
            if norms is not None:
                log["grad_norm"] = norms[k]
            logs.append(log)
        logs[-1]["images_per_s"] = (sums.seen - buffer.synced_seen) * dist.world_size / max(now - buffer.synced_at, 1e-9)
        buffer.device_values, buffer.host = [], []
        buffer.synced_at, buffer.synced_seen, buffer.mean = now, sums.seen, mean
        return logs, reduced[-2] > 0, reduced[-1] > 0
