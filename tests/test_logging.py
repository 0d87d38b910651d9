"""What a run logs: TensorBoard scalars (read back with tensorboard's EventAccumulator), metrics.csv
beside metrics.jsonl, per-step values delivered at the sync points only, and the tensorboard switch."""
from __future__ import annotations

import csv
import json
import warnings

import pytest

import pamc
from pamc import hooks as hooks_module
from pamc.config import TrainConfig, make_config
from pamc.errors import PamcError
from pamc.hooks import Hook
from pamc.optional import tensorboard_available

from test_preemption import scalars


class StepLosses(Hook):
    """The loss of every step (read on the host here: a test may sync) and which steps carried logs."""

    def __init__(self):
        self.losses, self.synced, self.logged = [], [], []

    def after_step(self, run, step):
        self.losses.append(float(step.loss))
        if step.logs:
            self.synced.append(step.global_step)
            self.logged.append([log["global_step"] for log in step.logs])


needs_tensorboard = pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_settings, tiny_bundle):
    out = tmp_path_factory.mktemp("logged") / "run"
    hook = StepLosses()
    result = pamc.train({**tiny_settings, "out": str(out), "method": "ll-cp", "loss": {"delta": 5.0}, "log_every": 4,
                         "grad_clip": 10.0, "tensorboard": "on"}, bundle=tiny_bundle, hooks=[hook])
    return result, hook


@needs_tensorboard
def test_per_step_values_arrive_at_the_sync_points_only(logged_run):
    _, hook = logged_run
    # log_every 4, 6 steps an epoch: syncs at steps 4 and 6 of each epoch, each carrying the steps since the last
    assert hook.synced == [4, 6, 10, 12]
    assert hook.logged == [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10], [11, 12]]


@needs_tensorboard
def test_tensorboard_has_the_scalars(logged_run):
    result, hook = logged_run
    s = scalars(result.out)
    expected = {"train/loss", "train/selected", "train/label_edits", "train/grad_norm", "train/images_per_s",
                "lr/backbone", "lr/head", "val/map", "epoch/loss", "epoch/selected", "epoch/label_edits",
                "epoch/images_per_s", "test/map"}
    assert expected <= set(s)
    assert [step for step, _ in s["train/loss"]] == list(range(1, 13))
    assert [v for _, v in s["train/loss"]] == pytest.approx(hook.losses, rel=1e-6)  # float32 in the event file
    assert [v for _, v in s["lr/backbone"]] == pytest.approx([1e-4] * 12)
    assert [v for _, v in s["lr/head"]] == pytest.approx([1e-3] * 12)
    assert [step for step, _ in s["train/images_per_s"]] == [4, 6, 10, 12]
    lines = [json.loads(x) for x in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert s["val/map"] == [(6, pytest.approx(lines[0]["val_map"])), (12, pytest.approx(lines[1]["val_map"]))]
    for epoch, line in enumerate(lines):
        steps = [v for step, v in s["train/selected"] if 6 * epoch < step <= 6 * (epoch + 1)]
        assert sum(steps) == line["selected"]  # large-loss selections, step by step
        edits = [v for step, v in s["train/label_edits"] if 6 * epoch < step <= 6 * (epoch + 1)]
        assert sum(edits) == line["label_edits"]
        assert s["epoch/loss"][epoch][1] == pytest.approx(line["train_loss"])
    assert lines[1]["selected"] > 0
    assert s["test/map"] == [(12, pytest.approx(result.results["test_map"]))]
    assert all(v > 0 for _, v in s["train/grad_norm"])


@needs_tensorboard
def test_metrics_csv_matches_jsonl(logged_run):
    result, _ = logged_run
    lines = [json.loads(x) for x in (result.out / "metrics.jsonl").read_text().splitlines()]
    with open(result.out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(lines) == 2
    for row, line in zip(rows, lines):
        assert list(row) == list(line)
        assert {k: type(v)(row[k]) for k, v in line.items()} == line  # the same numbers, to the last digit


def test_tensorboard_off_writes_no_events(tiny_config, tiny_bundle, tmp_path):
    result = pamc.train({**tiny_config, "epochs": 1, "tensorboard": "off"}, bundle=tiny_bundle)
    assert not (result.out / "tensorboard").exists() and (result.out / "metrics.csv").is_file()


def test_without_the_package_auto_is_quiet_and_on_is_refused(tiny_config, tiny_bundle, tmp_path, monkeypatch, capsys):
    from pamc import optional

    monkeypatch.setattr(hooks_module, "tensorboard_available", lambda: False)
    monkeypatch.setattr(optional, "tensorboard_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto, the default, stays quiet: metrics.jsonl/.csv are the log
        pamc.train({**tiny_config, "epochs": 1}, bundle=tiny_bundle)
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.csv").is_file()
    assert "TensorBoard" not in capsys.readouterr().err
    with pytest.raises(PamcError, match="tensorboard: on needs the tensorboard package"):
        make_config({**TrainConfig().to_dict(), "tensorboard": "on"})
