"""Where a run stands, and everything a resumed run needs, as objects that save and restore themselves.

`last/state.pt` is one flat mapping (its keys are the release-0.1 format, so older checkpoints
resume): `Progress` writes its counters at the top level, and every other part -- model, optimiser,
labels, loss, schedule, EMA, runtime, RNG, hooks -- its `state_dict` under its own name.  A trainer
feature that is a hook keeps its state in the hook's `state_dict` (saved under "hooks"); a part of
the engine itself is one `RunState.add` in `Run._state`; neither edits the save or load code.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from ..errors import PamcError
from ..preemption import rng_state, set_rng_state


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class Progress:
    """`epoch` epochs done, then `step` steps of the next (a mid-epoch checkpoint, whose running sums
    are `partial`); the best validation mAP so far, and one metrics record per finished epoch."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_map: float = -math.inf
    best_epoch: int = 0
    history: list = field(default_factory=list)
    partial: Optional[dict] = None

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "global_step": self.global_step, "best_map": self.best_map,
                 "best_epoch": self.best_epoch, "history": json.dumps(self.history)}
        if self.partial is not None:
            state["partial"] = self.partial
        return state

    def load_state_dict(self, state: dict, steps_per_epoch: int) -> None:
        self.epoch, self.best_map, self.best_epoch = int(state["epoch"]), float(state["best_map"]), int(state["best_epoch"])
        self.step = int(state.get("step", 0))
        self.global_step = int(state.get("global_step", self.epoch * steps_per_epoch))
        self.partial = state.get("partial")
        self.history = json.loads(state["history"])

    def record(self, epoch: int, val_map: float) -> bool:
        """A finished epoch's validation mAP; True when it is the best so far (strictly, as the reference)."""
        self.epoch = epoch
        if val_map > self.best_map:
            self.best_map, self.best_epoch = val_map, epoch
            return True
        return False


class Part:
    """A piece of state under one key, saved by `save()` and restored by `load(value)`.
    `missing()` is called instead when a checkpoint lacks the key (a feature switched on at a resume)."""

    def __init__(self, save: Callable[[], Any], load: Callable[[Any], None],
                 missing: Optional[Callable[[], None]] = None):
        self.save, self.load, self.missing = save, load, missing


class RunState:
    """The named parts of a run's resumable state, and the `Progress` beside them."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.parts: dict[str, Part] = {}

    def add(self, name: str, part: Stateful | Part) -> None:
        if name in self.parts or name in Progress.__dataclass_fields__:
            raise ValueError(f"state part {name!r} is added twice")
        if not isinstance(part, Part):
            part = Part(part.state_dict, part.load_state_dict)
        self.parts[name] = part

    def state_dict(self) -> dict:
        state = self.progress.state_dict()
        for name, part in self.parts.items():
            state[name] = part.save()
        return state

    def load_state_dict(self, state: dict, steps_per_epoch: int) -> None:
        self.progress.load_state_dict(state, steps_per_epoch)
        for name, part in self.parts.items():
            if name in state:
                part.load(state[name])
            elif part.missing is not None:
                part.missing()


def rng_part() -> Part:
    """The random number generators (Python, NumPy, torch): a resumed run draws what it would have."""
    return Part(rng_state, set_rng_state)


def schedule_parts(scheduler, total_steps: int) -> dict[str, Part]:
    """The lr schedule and its length (two keys, as release 0.1 wrote them): resuming with other
    epochs would change the schedule mid-run, so that is refused."""

    def refuse(saved) -> None:
        raise PamcError(f"this run's lr schedule is {saved} steps long; resuming with {total_steps} would "
                        "change it mid-run: keep epochs/schedule_epochs as they were")

    def check(saved: int) -> None:
        if saved != total_steps:
            refuse(saved)

    return {"schedule_steps": Part(lambda: total_steps, check),
            "scheduler": Part(scheduler.state_dict, scheduler.load_state_dict, lambda: refuse("a constant lr"))}


def ema_part(ema, model: torch.nn.Module) -> Part:
    """The EMA of the weights; switched on at a resume, it starts from the weights there."""
    return Part(lambda: {k: v.detach().cpu() for k, v in ema.state_dict().items()}, ema.load_state_dict,
                lambda: ema.update_parameters(model))


def hooks_part(hooks: list) -> Part:
    """Each hook's state, by its class name (hooks without state save nothing)."""

    def load(states: dict) -> None:
        for hook in hooks:
            hook.load_state_dict(states.get(type(hook).__name__, {}))

    return Part(lambda: {type(h).__name__: h.state_dict() for h in hooks if h.state_dict()}, load,
                lambda: load({}))
