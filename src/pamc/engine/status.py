"""status.json through a run's life: running (with host, pid, attempt), then finished, failed with
the reason, or preempted with the command that continues it."""
from __future__ import annotations

import datetime
import os
import socket
from contextlib import contextmanager

from ..checkpoint import RunFolder
from ..distributed import Dist
from ..preemption import Preempted


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunStatus:
    """Written by the main process; a failure by whichever process failed (the others may be
    waiting in a collective)."""

    def __init__(self, folder: RunFolder, dist: Dist, resumed: bool):
        self.folder, self.dist, self.resumed = folder, dist, resumed

    def write(self, status: str, **fields) -> None:
        if self.dist.is_main:
            self.folder.write_status(status, **fields)

    def attempts(self) -> int:
        if not self.dist.is_main or not self.resumed:
            return 0
        return int((self.folder.read_status() or {}).get("attempts", 0))

    def started(self) -> None:
        self.write("running", started=now(), host=socket.gethostname(), pid=os.getpid(), reason=None, ended=None,
                   resume_command=None, attempts=self.attempts() + 1)

    @contextmanager
    def stopped(self):
        """Around the run's work: a preemption or a failure is written as it happens (before the
        hooks' `after_train`, so a hook that fails then cannot hide it)."""
        try:
            yield
        except Preempted as exc:
            self.write("preempted", reason=f"stopped by {exc.signal_name}", ended=now(),
                       resume_command=f"pamc train --resume {self.folder.path}")
            raise
        except BaseException as exc:
            self.failed(exc)
            raise

    def finished(self, epoch: int) -> None:
        self.write("finished", ended=now(), epoch=epoch, step=None)

    def failed(self, exc: BaseException) -> None:
        if not self.folder.path.is_dir():
            return
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:500]}" if text else type(exc).__name__
        if self.dist.enabled and not self.dist.is_main:
            reason += f" (rank {self.dist.rank})"
        try:
            self.folder.write_status("failed", reason=reason, ended=now())
        except OSError:
            pass
