"""The contract every loss follows, and the label-feedback seam to the training engine.

A loss is called as ``loss_fn(logits, observed, epoch=e, index=idx)`` and returns a scalar; in
training the engine calls ``training_loss(forward, batch)``, which does just that unless a method
needs more than one forward pass or side inputs (the training-step seam, `engine.step`).
``observed`` uses 1 / 0 / -1 (soft negatives in (-1, 0)); ``epoch`` is 1-based; ``index`` holds
the batch's dataset indices, needed only by losses with per-image state (ROLE).

Label feedback: a loss that edits the stored observed labels (LL-Cp, EM-APL) leaves
``label_updates = (mask, values)`` for the last batch, or returns full-matrix updates from
``epoch_end``; the engine applies both to its ``LabelStore`` (gathered from every process under
DDP) and never asks which loss it runs.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import PamcError


@dataclass(frozen=True)
class Param:
    """The valid values of one loss parameter, declared by the loss (`PartialLabelLoss.params`) and
    checked when a config is made and when the loss is built: a bad value is one line, not a
    run that trains on a meaningless setting or a traceback from a conversion."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    integer: bool = False
    choices: Optional[tuple] = None
    optional: bool = False  # None allowed (the engine or a constructor fills it in)
    text: Optional[str] = None  # says what the value is, instead of the range

    def describe(self) -> str:
        if self.text:
            return f"be {self.text}"
        if self.choices is not None:
            return f"be one of {', '.join(map(str, self.choices))}"
        if self.low is not None and self.high is not None:
            return (f"lie in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
                    + (" (an integer)" if self.integer else ""))
        kind = "an integer " if self.integer else ""
        if self.low is not None:
            return f"be {kind}{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"be {kind}{'<' if self.high_open else '<='} {self.high:g}"
        return "be an integer" if self.integer else "be a number"

    def valid(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.choices is not None:
            return value in self.choices
        kind = numbers.Integral if self.integer else numbers.Real  # numpy numbers too; 2.0 is no integer
        if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, kind):
            return False
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def check(self, loss: str, name: str, value: Any) -> None:
        if not self.valid(value):
            raise PamcError(f"{loss}: {name} must {self.describe()} (got {value!r})")


#: parameters the engine fills in from the run (`engine.build_loss`)
NUM_IMAGES, NUM_CLASSES = Param(low=1, integer=True), Param(low=1, integer=True)
NUM_EPOCHS = Param(low=1, integer=True)


def _identity_gather(x: torch.Tensor) -> torch.Tensor:
    return x


class PartialLabelLoss(nn.Module):
    #: learning-rate multiplier for the loss's own parameters (ROLE's label estimator)
    param_lr_mult: float = 1.0
    #: the valid values of the constructor's parameters (`Param`); ranges that tie two parameters
    #: together are checked by the constructor
    params: dict[str, Param] = {}

    #: the registered name (set by `losses.register`), for messages
    name: str = ""

    @classmethod
    def check_params(cls, name: str, values: dict) -> None:
        for key, value in values.items():
            if key in cls.params:
                cls.params[key].check(name, key, value)

    def __init_subclass__(cls, **kwargs) -> None:
        """A loss built directly (`LargeLossRejection(delta=-1)`) is checked as `losses.build` checks."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def checked(self, *args, **kw):
            given = signature.bind(self, *args, **kw).arguments
            type(self).check_params(type(self).name or type(self).__name__,
                                    {k: v for k, v in given.items() if k != "self"})
            init(self, *args, **kw)

        cls.__init__ = checked

    def __init__(self) -> None:
        super().__init__()
        self.last_selected: Optional[torch.Tensor] = None
        self.label_updates: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.gather: Callable[[torch.Tensor], torch.Tensor] = _identity_gather

    def forward(self, logits: torch.Tensor, observed: torch.Tensor, epoch: int = 1,
                index: Optional[torch.Tensor] = None,
                gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """`gather` concatenates a tensor over every training process (the engine passes
        `Dist.all_gather_cat` under DDP, so batch-level statistics use the global batch); it is
        `self.gather` during this call, the identity when not given."""
        observed = observed.to(device=logits.device, dtype=torch.float32)
        logits = logits.float()
        if observed.shape != logits.shape:
            raise PamcError(f"labels of shape {tuple(observed.shape)} do not match logits {tuple(logits.shape)}")
        self.last_selected = torch.zeros_like(observed, dtype=torch.bool)
        self.label_updates = None
        self.gather = gather or _identity_gather
        return self.compute(logits, observed, int(epoch), index)

    def compute(self, logits: torch.Tensor, observed: torch.Tensor, epoch: int,
                index: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, forward, batch) -> torch.Tensor:
        """The loss of one training step (`engine.step`: `forward` runs the network, `batch` holds the
        step's images, labels, rows and epoch).  One forward pass on the batch, then this loss on
        its logits; a method that needs other views or side inputs overrides this -- the engine's
        loop stays as it is.  Label edits and selections are those the last call of the loss
        leaves (`label_updates`, `last_selected`); pass `gather=batch.gather` to each call, so
        that batch statistics span every process."""
        return self(forward(batch.images), batch.observed, epoch=batch.epoch, index=batch.index, gather=batch.gather)

    def epoch_end(self, epoch: int, observed: torch.Tensor, initial: torch.Tensor,
                  predict: Callable[[], torch.Tensor]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Full-matrix label updates (mask, values) after training epoch `epoch`, or None.

        `predict()` returns the current probabilities for every training image (N x C).
        """
        return None


def positive_part(observed: torch.Tensor) -> torch.Tensor:
    """AN targets: observed positives are 1, everything else (unobserved, negatives) 0."""
    return (observed == 1).float()


#: Added to probabilities before the log by Cole et al. [C] and Zhou et al. [E] (spec 3).
LOG_EPSILON = 1e-5


def nlog(x: torch.Tensor) -> torch.Tensor:
    """-log(x + 1e-5) on probabilities, the form of the reference AN-LS/WAN/EPR/ROLE/EM code.

    Kept instead of exact logits-BCE because the reference results were obtained with it: the
    epsilon bounds each term by about 11.5 and caps the gradient of saturated predictions.
    """
    return -torch.log(x + LOG_EPSILON)


def nlog_bce(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-entry BCE against soft targets in the nlog form: t*nlog(p) + (1-t)*nlog(1-p)."""
    return target * nlog(probs) + (1.0 - target) * nlog(1.0 - probs)


def known_label_loss(probs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """nlog loss of the observed labels only: positives nlog(p), negatives (< 0) nlog(1-p), else 0.

    The reference code for these losses asserts there are no observed negatives (SPML); pamc
    supervises them like full-label BCE, so partial labels with negatives (OpenImages) work too.
    """
    zero = torch.zeros_like(probs)
    return torch.where(observed == 1, nlog(probs), torch.where(observed < 0, nlog(1.0 - probs), zero))
