"""Several seeds of one configuration, one after another: `pamc train --seeds 0 1 2`.

Seed K runs into OUT/seed-K (`RunFolder.seed_run`).  A seed that fails is recorded (its folder's
status.json says why) and the next one starts; a preemption stops the sweep, and rerunning the
same command with `--resume auto` skips the finished seeds and resumes the interrupted one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..checkpoint import RunFolder
from ..config import TrainConfig
from ..data import DatasetBundle
from ..engine import RunResult, train
from ..errors import PamcError
from ..hooks import Hook
from ..preemption import Preempted


@dataclass
class SweepResult:
    out: Path
    runs: dict[int, RunResult] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # seed -> reason


def train_seeds(config: TrainConfig | dict, seeds: Sequence[int], bundle: Optional[DatasetBundle] = None,
                resume: bool | str = False, hooks: Sequence[Hook] = (), report=print) -> SweepResult:
    """Train `config` once per seed into OUT/seed-K (OUT = the config's `out`).

    resume as in `train` (True: resume each OUT/seed-K with its saved settings, a mapping's keys on
    top; "auto": resume or start each).  `report` gets one line per seed (None: silent)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise PamcError(f"--seeds needs distinct seeds (got {seeds})")
    out = Path(config.out if isinstance(config, TrainConfig) else config.get("out", TrainConfig.out))
    sweep = SweepResult(out)
    for seed in seeds:
        folder = str(RunFolder(out).seed_run(seed).path)
        if isinstance(config, TrainConfig):
            one = dataclasses.replace(config, seed=seed, out=folder)
        else:
            one = {**config, "out": folder} if resume is True else {**config, "seed": seed, "out": folder}
        try:
            result = train(one, bundle, resume=resume, hooks=hooks)
        except Preempted:
            raise
        except Exception as exc:  # recorded in the seed's status.json too; the next seed starts
            sweep.failed[seed] = f"{type(exc).__name__}: {exc}"
            if report:
                report(f"seed {seed}: failed ({sweep.failed[seed]}); run folder {folder}")
            continue
        sweep.runs[seed] = result
        if report:
            r = result.results
            report(f"seed {seed}: test mAP {r['test_map']:.2f} (best val epoch {r['best_epoch']}); run folder {folder}")
    return sweep
