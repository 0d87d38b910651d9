"""Typed checkpoint metadata, the run folder's layout, and resume semantics shared by the CLI and Python."""
import json

import pytest

import pamc
from pamc.checkpoint import CHECKPOINT_VERSION, CheckpointMeta, RunFolder, read_meta
from pamc.apps.cli import main
from pamc.errors import PamcError


def test_meta_round_trips_and_keeps_foreign_keys(tmp_path):
    meta = CheckpointMeta(backbone="scene-cnn", num_classes=3, alpha=5.0, extra={"note": "mine"})
    assert meta.test_alpha == 5.0 and CheckpointMeta(backbone="x", num_classes=1, alpha=5.0, eval_alpha=2.0).test_alpha == 2.0
    (tmp_path / "model.json").write_text(json.dumps(meta.to_dict()))
    again = read_meta(tmp_path)
    assert again == meta and again.to_dict()["note"] == "mine" and again.version == CHECKPOINT_VERSION


def test_a_newer_checkpoint_version_is_one_error(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"backbone": "scene-cnn", "num_classes": 3,
                                                     "version": CHECKPOINT_VERSION + 1}))
    with pytest.raises(PamcError, match="checkpoint version 2; this pamc reads version 1 and older: upgrade pamc"):
        read_meta(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"num_classes": 3}))
    with pytest.raises(PamcError, match="lacks 'backbone'"):
        read_meta(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"backbone": "scene-cnn", "num_classes": 3}))  # before the field
    assert read_meta(tmp_path).version == CHECKPOINT_VERSION


def test_run_folder_knows_the_layout(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.is_empty() and not folder.can_resume()
    assert (folder.config.name, folder.state.relative_to(folder.path).as_posix()) == ("config.yaml", "last/state.pt")
    with pytest.raises(PamcError, match="not a pamc run folder"):
        folder.read_config()


def test_resume_from_python_follows_the_saved_config_like_the_cli(tiny_config, tiny_bundle, tmp_path):
    """`pamc.train({out, epochs}, resume=True)` = `pamc train --resume RUN --epochs N`: the saved
    config.yaml with the given keys on top (not the defaults for every key left out)."""
    config = {**tiny_config, "method": "ll-r", "alpha": 3.0, "epochs": 1}
    pamc.train(config, bundle=tiny_bundle)
    resumed = pamc.train({"out": config["out"], "epochs": 2}, bundle=tiny_bundle, resume=True)
    assert (resumed.results["method"], resumed.results["train_alpha"], resumed.results["epochs"]) == ("ll-r", 3.0, 2)
    saved = RunFolder(config["out"]).read_config()
    assert (saved["method"], saved["epochs"], saved["data"]) == ("ll-r", 2, tiny_config["data"])


def test_resume_with_a_preset_is_refused(capsys, tmp_path):
    assert main(["train", "--resume", str(tmp_path), "--preset", "voc-an"]) == 2
    assert "drop --config/--preset" in capsys.readouterr().err
