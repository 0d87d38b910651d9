"""The training engine: one loop for every method, dataset and number of processes.

It knows no loss, dataset or backbone by name.  Every epoch: train, apply label feedback,
validate, checkpoint (`last/` always, `best/` on a strictly better validation mAP), report to the
hooks.  At the end the best checkpoint is evaluated on test and `results.json` is written.

    api      `train(config)`: start, resume, or either
    run      `Run`: set-up and the protocol (epochs, validation, checkpoints, test)
    loop     `EpochLoop`: one epoch's steps, sync points, stop agreement, mid-epoch checkpoints
    step     `TrainStep`: the optimiser step; `Batch` and `Forward`, what a method's
             `training_loss(forward, batch)` gets -- the seam for methods that need more than one
             forward pass or side inputs
    state    `Progress` and `RunState`: resumable state, part by part
    status   status.json through the run's life
    build    the model and the loss from the config

Ways in, none of which edits the loop:
- a method with extra forward passes or per-image side inputs: a loss class that overrides
  `training_loss` (and takes its side inputs in its constructor, as ROLE takes `num_images`);
- a trainer feature: a `pamc.hooks.Hook` (reporting, on the main process) or, where it changes
  training, one with `every_process = True`; its state travels in `state_dict` / `load_state_dict`;
- label edits: the label-feedback seam of `losses.base` (`label_updates`, `epoch_end`).

Preemption-safe: `last/` is also written every `checkpoint_every_steps` steps or
`checkpoint_every_minutes` minutes and when a stop signal arrives (`pamc.preemption`), and a run
resumed from such a mid-epoch checkpoint continues exactly where it stopped -- the same batches
(their order depends only on seed and epoch), flips, augmentations, label edits, schedule, EMA and
RNG states -- so on the CPU its results equal those of an uninterrupted run.
"""
from .api import train
from .build import build_loss, build_model
from .loop import NonFiniteLoss
from .run import Run, RunResult

__all__ = ["train", "Run", "RunResult", "build_model", "build_loss", "NonFiniteLoss"]
