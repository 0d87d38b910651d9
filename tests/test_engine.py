"""The training engine on the tiny scenes: run folder, determinism, resume, label feedback, errors.

Reference values are recomputed from the saved checkpoints with sklearn, not read back from the
engine's own bookkeeping.
"""
import json
import shutil
from pathlib import Path
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score

import pamc
from pamc.checkpoint import load_model
from pamc.config import TrainConfig, make_config
from pamc.data.transforms import normalize_uint8
from pamc.engine import NonFiniteLoss, Run
from pamc.engine.loop import EpochLoop
from pamc.errors import PamcError
from pamc.labels import single_positive
from pamc.losses.assume_negative import AssumeNegative


def sklearn_map(folder, split, alpha: float, targets=None) -> float:
    """mAP (%) of the checkpoint in `folder` on `split`, AP = 0 for classes without a positive."""
    model, _ = load_model(folder)
    with torch.no_grad():
        x = normalize_uint8(split.images.take(torch.arange(len(split))))
        scores = torch.sigmoid(model(x, alpha=alpha)).numpy()
    targets = split.full if targets is None else targets
    aps = [average_precision_score(targets[:, c] == 1, scores[:, c]) if (targets[:, c] == 1).any() else 0.0
           for c in range(targets.shape[1])]
    return 100.0 * float(np.mean(aps))


def weights(folder) -> dict:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metric_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "train_images_per_s", "epoch_seconds")} for r in records]


def test_a_run_writes_config_metrics_checkpoints_and_results(tiny_config, tiny_bundle, tmp_path):
    result = pamc.train({**tiny_config, "method": "an"}, bundle=tiny_bundle)
    out = tmp_path / "run"
    assert result.out == out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config == make_config({**TrainConfig().to_dict(), **tiny_config}).to_dict()
    lines = metric_lines(out)
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(isinstance(r["val_map"], float) and 0 <= r["val_map"] <= 100 for r in lines)
    for folder in ("best", "last"):
        assert (out / folder / "model.safetensors").is_file()
        meta = json.loads((out / folder / "model.json").read_text())
        assert meta["backbone"] == "scene-cnn" and meta["num_classes"] == 10 and meta["image_size"] == 32
    assert (out / "last" / "state.pt").is_file()
    assert json.loads((out / "last" / "model.json").read_text())["epoch"] == 2

    results = json.loads((out / "results.json").read_text())
    assert results == result.results
    maps = [r["val_map"] for r in lines]
    assert results["best_epoch"] == 1 + maps.index(max(maps))  # the first best (strictly greater)
    assert results["val_map"] == pytest.approx(max(maps))
    # the test mAP is the best checkpoint's, recomputed independently
    assert results["test_map"] == pytest.approx(sklearn_map(out / "best", tiny_bundle.test, 1.0), abs=1e-6)
    assert lines[-1]["val_map"] == pytest.approx(sklearn_map(out / "last", tiny_bundle.val, 1.0), abs=1e-6)


def test_the_same_config_gives_identical_runs(tiny_config, tiny_bundle, tmp_path):
    config = {**tiny_config, "method": "ll-r", "loss": {"delta": 5.0}, "alpha": 5.0}
    a = pamc.train({**config, "out": str(tmp_path / "a")}, bundle=tiny_bundle)
    b = pamc.train({**config, "out": str(tmp_path / "b")}, bundle=tiny_bundle)
    assert a.results == b.results
    assert_same_weights(weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last"))
    assert without_timing(metric_lines(tmp_path / "a")) == without_timing(metric_lines(tmp_path / "b"))
    assert metric_lines(tmp_path / "a")[-1]["selected"] > 0  # the rejection really ran


@pytest.fixture(scope="module")
def ll_cp_straight(tmp_path_factory, tiny_settings, tiny_bundle):
    """LL-Cp with a large delta (5 % of each batch per step), 3 epochs without interruption."""
    out = tmp_path_factory.mktemp("straight") / "run"
    config = {**tiny_settings, "epochs": 3, "method": "ll-cp", "loss": {"delta": 5.0}, "out": str(out)}
    return config, pamc.train(config, bundle=tiny_bundle)


def test_ll_cp_writes_its_corrections_into_the_stored_labels(ll_cp_straight):
    _, result = ll_cp_straight
    lines = metric_lines(result.out)
    labels = torch.load(result.out / "last" / "state.pt", weights_only=True)["labels"]
    changed = labels["observed"] != labels["initial"]
    assert result.results["stored_label_edits"] == int(changed.sum()) > 0
    # corrections turn unobserved labels into observed positives, nothing else
    assert (labels["initial"][changed] == 0).all() and (labels["observed"][changed] == 1).all()
    assert [r["label_edits"] for r in lines] == [r["selected"] for r in lines]  # every selection is stored
    assert lines[0]["label_edits"] == 0  # epoch 1 is plain AN
    assert sum(r["label_edits"] for r in lines) == result.results["stored_label_edits"]
    assert lines[-1]["stored_label_edits"] == result.results["stored_label_edits"]


def test_resume_after_an_interruption_equals_the_straight_run(ll_cp_straight, tiny_bundle, tmp_path, monkeypatch):
    config, straight = ll_cp_straight
    config = {**config, "out": str(tmp_path / "run")}
    original = EpochLoop.__call__

    def interrupted(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(EpochLoop, "__call__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pamc.train(config, bundle=tiny_bundle)
    assert json.loads((tmp_path / "run" / "last" / "model.json").read_text())["epoch"] == 2
    assert not (tmp_path / "run" / "results.json").exists()

    run = Run(make_config({**TrainConfig().to_dict(), **config}), bundle=tiny_bundle, resume=True)
    assert run.epoch == 2 and run.store.num_edits() > 0  # the corrections of epoch 2 came back
    resumed = run.fit()

    assert resumed.results == straight.results
    for folder in ("last", "best"):
        assert_same_weights(weights(straight.out / folder), weights(resumed.out / folder))
    assert without_timing(metric_lines(resumed.out)) == without_timing(metric_lines(straight.out))
    saved = torch.load(resumed.out / "last" / "state.pt", weights_only=True)["labels"]
    assert torch.equal(saved["observed"], run.store.observed)
    straight_labels = torch.load(straight.out / "last" / "state.pt", weights_only=True)["labels"]
    assert torch.equal(saved["observed"], straight_labels["observed"])


def test_resume_needs_a_checkpoint(tiny_config, tiny_bundle):
    with pytest.raises(PamcError, match="nothing to resume"):
        pamc.train(tiny_config, bundle=tiny_bundle, resume=True)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tiny_bundle, tmp_path, monkeypatch):
    original = AssumeNegative.compute

    def nan_from_epoch_two(self, logits, observed, epoch, index):
        loss = original(self, logits, observed, epoch, index)
        return loss * math.nan if epoch >= 2 else loss

    monkeypatch.setattr(AssumeNegative, "compute", nan_from_epoch_two)
    with pytest.raises(NonFiniteLoss) as err:
        pamc.train({**tiny_config, "epochs": 3}, bundle=tiny_bundle)
    message = str(err.value)
    assert "nan in epoch 2" in message and str(tmp_path / "run" / "last") in message and "(epoch 1)" in message
    assert isinstance(err.value, PamcError)  # the CLI prints it as one line
    last = tmp_path / "run" / "last"
    assert json.loads((last / "model.json").read_text())["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in weights(last).values() if v.is_floating_point())
    assert len(metric_lines(tmp_path / "run")) == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_an_existing_run_folder_needs_overwrite(tiny_config, tiny_bundle, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("from an earlier run")
    with pytest.raises(PamcError, match="already exists; pass --overwrite"):
        pamc.train({**tiny_config, "epochs": 1}, bundle=tiny_bundle)
    assert (out / "old.txt").is_file()  # nothing was touched
    pamc.train({**tiny_config, "epochs": 1, "overwrite": True}, bundle=tiny_bundle)
    assert not (out / "old.txt").exists() and (out / "results.json").is_file()


def test_selection_on_observed_validation_labels(tiny_config, tiny_bundle, tmp_path):
    result = pamc.train({**tiny_config, "selection": "observed"}, bundle=tiny_bundle)
    observed_val = single_positive(tiny_bundle.val.full, seed=1200)
    last = metric_lines(tmp_path / "run")[-1]["val_map"]
    assert last == pytest.approx(sklearn_map(tmp_path / "run" / "last", tiny_bundle.val, 1.0, observed_val), abs=1e-6)
    assert last != pytest.approx(sklearn_map(tmp_path / "run" / "last", tiny_bundle.val, 1.0), abs=1e-3)
    assert result.results["test_map"] == pytest.approx(sklearn_map(tmp_path / "run" / "best", tiny_bundle.test, 1.0))


def test_inference_only_boostlu_evaluates_with_the_eval_alpha(tiny_config, tiny_bundle, tmp_path):
    result = pamc.train({**tiny_config, "alpha": 1.0, "eval_alpha": 5.0}, bundle=tiny_bundle)
    r = result.results
    assert (r["train_alpha"], r["eval_alpha"]) == (1.0, 5.0)
    best = tmp_path / "run" / "best"
    assert json.loads((best / "model.json").read_text())["eval_alpha"] == 5.0
    boosted = sklearn_map(best, tiny_bundle.test, 5.0)
    assert r["test_map"] == pytest.approx(boosted, abs=1e-6)
    assert abs(boosted - sklearn_map(best, tiny_bundle.test, 1.0)) > 1e-3  # BoostLU changes the ranking
    best_line = metric_lines(tmp_path / "run")[r["best_epoch"] - 1]
    assert best_line["val_map"] == pytest.approx(sklearn_map(best, tiny_bundle.val, 5.0), abs=1e-6)


def test_a_checkpoint_of_the_previous_release_resumes_to_the_same_result(tmp_path):
    """tests/data/legacy-run-0.1.0: a run (LL-Cp, EMA, OneCycle, RandAugment + Cutout, AdamW, clipping)
    stopped by SIGTERM in epoch 2, step 4, by the release before the engine became a package; the
    resumed run ends with the results the same release got without interruption."""
    data = Path(__file__).parent / "data"
    run = tmp_path / "legacy"
    shutil.copytree(data / "legacy-run-0.1.0", run)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert {"epoch", "step", "partial", "model", "optimizer", "labels", "loss", "scheduler", "schedule_steps",
            "ema", "rng", "history"} <= set(state)  # the release-0.1 layout this test keeps
    resumed = pamc.train({"out": str(run)}, resume=True)
    expected = json.loads((data / "legacy-run-0.1.0-expected-results.json").read_text())
    assert resumed.results.keys() - {"runtime"} == expected.keys()  # runtime: recorded since
    assert resumed.results["runtime"]["amp"] == "off" and resumed.results["runtime"]["channels_last"] == "off"
    for key, value in expected.items():
        if isinstance(value, float):
            assert resumed.results[key] == pytest.approx(value, abs=1e-6), key
        elif key != "test_metrics":
            assert resumed.results[key] == value, key
    assert resumed.results["test_metrics"] == pytest.approx(expected["test_metrics"], abs=1e-6)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
