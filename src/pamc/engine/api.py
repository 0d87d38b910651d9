"""`pamc.train`: start a run, resume one, or either (`resume="auto"`, for job scripts rerun after a preemption)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

from ..checkpoint import RunFolder
from ..config import TrainConfig, make_config, resume_config
from ..data import DatasetBundle
from ..errors import PamcError
from ..hooks import Hook
from .run import Run, RunResult


def finished_run(folder: RunFolder, epochs: int) -> Optional[RunResult]:
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
            done = finished_run(folder, cfg.epochs)
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
