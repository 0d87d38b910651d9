"""One optimiser step, and the seam through which a method computes its loss.

The step is the same for every method: compute the loss, back-propagate the global-batch mean,
average the loss's own gradients, clip, step the optimiser, the schedule and the EMA, and hand
label edits to the label store.  What differs between methods is only how the loss is computed,
and that is the method's own `training_loss(forward, batch)` (`losses.base.PartialLabelLoss`):
the default runs the network once and calls the loss on the logits; a method that needs more --
extra forward passes on other views (IGNORE), per-image side inputs (pseudo-labels, by
`batch.index`) -- overrides it.  The engine never asks which method it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..recipes import clip_gradients
from ..runtime import Runtime


@dataclass
class Batch:
    """A step's inputs, as a method's `training_loss` sees them (on the training device but `raw`)."""

    index: torch.Tensor  # the images' dataset rows
    images: torch.Tensor  # prepared for the network: normalised, flipped, in its memory format
    observed: torch.Tensor  # the stored labels of these rows: 1 / 0 / -1 (soft negatives in between)
    epoch: int  # 1-based
    gather: Callable[[torch.Tensor], torch.Tensor]  # concatenates a tensor over every process
    raw: torch.Tensor  # the uint8 images before preparation (after batch augmentation; on the CPU without it)
    prepare: Callable[[torch.Tensor], torch.Tensor]  # raw-like images -> network input, with this batch's flips


class Forward:
    """The network as a method calls it: under the run's autocast, float32 logits out.

    `forward(images)` returns logits; `forward(images, cams=True)` returns (logits, CAMs before
    BoostLU), for methods that look at where the evidence is.  Each call is a forward pass through
    the (DDP-wrapped, compiled) network, so gradients reach every process's weights as usual; a
    view that needs no gradient belongs under `torch.no_grad()`.
    """

    def __init__(self, net: torch.nn.Module, rt: Runtime):
        self.net, self.rt = net, rt

    def __call__(self, images: torch.Tensor, cams: bool = False):
        with self.rt.autocast():
            if not cams:
                return self.net(images).float()
            logits, maps = self.net(images, return_cams=True)
        return logits.float(), maps.float()


@dataclass
class StepResult:
    """A step's numbers, left on the device (reading them would sync the host)."""

    loss: torch.Tensor  # this process's mean loss
    weighted: torch.Tensor  # loss x local batch size, summed into the epoch's mean
    selected: torch.Tensor  # entries the loss selected (large-loss methods)
    grad_norm: Optional[torch.Tensor]
    label_edits: int


class TrainStep:
    """The optimiser step of `engine.Run`, with the parts it needs and nothing else."""

    def __init__(self, net, model, loss_fn, optimizer, scheduler, ema, store, rt: Runtime, grad_clip):
        self.model, self.loss_fn = model, loss_fn
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.store, self.rt, self.grad_clip = store, rt, grad_clip
        self.forward = Forward(net, rt)

    def batch(self, index: torch.Tensor, x: torch.Tensor, flips: torch.Tensor, epoch: int) -> Batch:
        rt = self.rt
        prepare = lambda images: rt.prepare(images, flips)  # noqa: E731
        return Batch(index=index.to(rt.device), images=prepare(x),
                     observed=self.store.batch(index).to(rt.device, non_blocking=True), epoch=epoch,
                     gather=rt.dist.all_gather_cat, raw=x, prepare=prepare)

    def __call__(self, batch: Batch, global_batch_size: int) -> StepResult:
        dist, loss_fn = self.rt.dist, self.loss_fn
        # what a step's loss leaves behind starts empty, so a method's `training_loss` that calls
        # the loss on some steps only (or not at all) never hands on another step's edits
        loss_fn.label_updates, loss_fn.last_selected, loss_fn.gather = None, None, batch.gather
        loss = loss_fn.training_loss(self.forward, batch)
        # the local mean weighted by its share of the global batch, times the world size that DDP
        # divides by: the gradient of the global-batch mean, whatever the split
        local = len(batch.index)
        (loss * (local * dist.world_size / global_batch_size)).backward()
        dist.average_gradients(self.loss_fn.parameters())
        grad_norm = clip_gradients(self.model, self.loss_fn, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        edits = 0
        if self.loss_fn.label_updates is not None:
            edits = self.apply_label_updates(batch.index, *self.loss_fn.label_updates)
        selected = (loss_fn.last_selected.sum() if loss_fn.last_selected is not None
                    else torch.zeros((), dtype=torch.long, device=self.rt.device))
        return StepResult(loss.detach(), loss.detach() * local, selected, grad_norm, edits)

    def apply_label_updates(self, index: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> int:
        """The label-feedback seam: a loss's edits of this batch, from every process, into the store."""
        gather, dev = self.rt.dist.all_gather_cat, self.rt.device
        return self.store.apply(gather(index.to(dev)), gather(mask.to(dev)), gather(values.to(dev)))

