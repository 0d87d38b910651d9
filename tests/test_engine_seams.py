"""The engine's two ways in that leave the training loop as it is: a method's `training_loss`
(extra forward passes, other views, side inputs) and a hook that runs on every process (a trainer
feature that changes training, with state that a resumed run gets back)."""
from __future__ import annotations

import torch

import pamc
from pamc import losses
from pamc.engine.step import Batch
from pamc.hooks import Hook
from pamc.losses.assume_negative import AssumeNegative


class TwoViews(AssumeNegative):
    """AN on the batch plus AN on its mirror image, made from the raw images: two forward passes,
    one of them through the CAM path."""

    calls: list = []

    def training_loss(self, forward, batch: Batch) -> torch.Tensor:
        logits, cams = forward(batch.images, cams=True)
        mirrored = forward(batch.prepare(torch.flip(batch.raw, dims=[-1])))
        TwoViews.calls.append((batch.epoch, tuple(batch.index.shape), tuple(batch.observed.shape), tuple(cams.shape),
                               logits.dtype, mirrored.shape == logits.shape))
        return self(logits, batch.observed, epoch=batch.epoch, index=batch.index, gather=batch.gather) + \
            self(mirrored, batch.observed, epoch=batch.epoch, index=batch.index, gather=batch.gather)


def test_a_method_with_an_extra_forward_pass_trains_through_training_loss(tiny_config, tiny_bundle, monkeypatch):
    monkeypatch.setitem(losses.LOSSES._items, "two-views", TwoViews)
    TwoViews.calls = []
    config = {**tiny_config, "epochs": 1, "tensorboard": "off"}
    two = pamc.train({**config, "method": "two-views"}, bundle=tiny_bundle)
    steps = len(tiny_bundle.train) // config["batch_size"]
    assert len(TwoViews.calls) == steps
    epoch, index, observed, cams, dtype, same = TwoViews.calls[0]
    assert epoch == 1 and index == (16,) and observed == (16, 10) and cams[:2] == (16, 10) and len(cams) == 4
    assert dtype == torch.float32 and same
    plain = pamc.train({**config, "method": "an", "out": config["out"] + "-an"}, bundle=tiny_bundle)
    assert two.results["test_map"] != plain.results["test_map"]  # the second view changed training


class ShrinkHead(Hook):
    """A trainer feature: after every optimiser step, on every process, the CAM head's bias is
    scaled by 0.5 (nothing a real recipe does; easy to see), counting its steps."""

    every_process = True

    def __init__(self):
        self.steps = 0

    def after_step(self, run, step) -> None:
        with torch.no_grad():
            run.model.head.bias.mul_(0.5)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state.get("steps", 0)


def test_a_trainer_feature_is_a_hook_whose_state_resumes(tiny_config, tiny_bundle):
    config = {**tiny_config, "epochs": 2, "tensorboard": "off"}
    hook = ShrinkHead()
    shrunk = pamc.train(config, bundle=tiny_bundle, hooks=[hook])
    steps = len(tiny_bundle.train) // config["batch_size"]
    assert hook.steps == 2 * steps
    bias = load_bias(shrunk.out / "last")
    plain = pamc.train({**config, "out": config["out"] + "-plain"}, bundle=tiny_bundle)
    assert load_bias(plain.out / "last").abs().max() > 4 * bias.abs().max()  # the feature acted on training
    saved = torch.load(shrunk.out / "last" / "state.pt", weights_only=True)["hooks"]
    assert saved == {"ShrinkHead": {"steps": 2 * steps}}
    again = ShrinkHead()
    pamc.train({"out": str(shrunk.out), "epochs": 3}, resume=True, hooks=[again])
    assert again.steps == 3 * steps  # restored, then counted on


def load_bias(folder) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")["head.bias"]


def test_a_hook_that_fails_at_the_end_does_not_hide_a_preemption(tiny_config, tiny_bundle):
    """status.json says preempted (with the command that continues) before the hooks' after_train
    run, so a hook that fails there leaves the run resumable and its status true."""
    import json
    import signal
    from pathlib import Path

    import pytest

    class StopThenFail(Hook):
        def after_step(self, run, step) -> None:
            if step.step == 2:
                run.stop.signal = signal.SIGTERM

        def after_train(self, run, results) -> None:
            raise RuntimeError("the hook's own failure")

    config = {**tiny_config, "epochs": 2, "tensorboard": "off", "log_every": 1}
    with pytest.raises(RuntimeError, match="the hook's own failure"):
        pamc.train(config, bundle=tiny_bundle, hooks=[StopThenFail()])
    status = json.loads((Path(config["out"]) / "status.json").read_text())
    assert status["status"] == "preempted" and status["resume_command"].startswith("pamc train --resume")
