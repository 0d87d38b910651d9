"""Stopping a run cleanly when the cluster asks, and the RNG states an exact resume restores.

On SIGTERM, SIGINT or SIGUSR1 (the signals schedulers send before they kill a job: Slurm's
`--signal`, Kubernetes' termination, torchrun forwarding its own SIGTERM) a training run writes a
resumable checkpoint at the next step boundary and raises `Preempted`; `pamc train` then prints
how to continue and exits with status 75 (EX_TEMPFAIL, sysexits.h: "try again later").  A second
SIGINT interrupts at once (KeyboardInterrupt), for a person at a terminal who means it.

Latency: one process stops after the step in flight.  Under torchrun the processes agree on the
step to stop at, at the engine's sync points (every `log_every` steps, 20 by default): the stop
flag travels in the all-reduce that the loop does there anyway, so it costs no extra collective
and no per-step host sync; the stop comes at most `log_every` steps after the signal.
"""
from __future__ import annotations

import random
import signal
import threading
from typing import Optional

import numpy as np
import torch

from .errors import PamcError

#: exit status of a preempted `pamc train` (EX_TEMPFAIL): rerun the same command with --resume auto
EXIT_PREEMPTED = 75
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class Preempted(PamcError):
    """The run stopped on a signal after writing a resumable checkpoint."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, out, signal_name: str, epoch: int, step: int):
        self.out, self.signal_name, self.epoch, self.step = out, signal_name, epoch, step
        where = f"epoch {epoch}, step {step}" if step else f"the end of epoch {epoch}"
        super().__init__(f"stopped by {signal_name} at {where}; the resumable checkpoint is {out}/last. "
                         f"Continue with: pamc train --resume {out}  (or rerun the same command with --resume auto)")


class StopRequest:
    """While entered, the stop signals set `signal` instead of killing the process.

    Installed only in the main thread (Python delivers signals there); elsewhere it is inert and
    the process keeps its handlers."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and numbers (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
