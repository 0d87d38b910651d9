"""Reusing checkpoints on data: the recorded dataset must be the one the checkpoint was trained on."""
import json

import pytest

import pamc
from pamc.errors import PamcError
from pamc.inference import evaluate_checkpoint, load_split


def test_recorded_data_is_checked_against_the_trained_dataset(tiny_bundle, tiny_config, tmp_path):
    run = pamc.train({**tiny_config, "epochs": 1}, bundle=tiny_bundle).out
    ok = evaluate_checkpoint(str(run), alphas=[1.0, 3.0])
    assert [r["alpha"] for r in ok["rows"]] == [1.0, 3.0] and ok["dataset"] == tiny_bundle.name
    # a checkpoint whose recorded data settings do not rebuild its dataset (trained on a bundle
    # passed in Python under other settings) must not be evaluated silently on other data
    meta_file = run / "best" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "dataset": "my-own-images"}))
    with pytest.raises(PamcError, match="trained on 'my-own-images'.*pass --data"):
        evaluate_checkpoint(str(run))
    with pytest.raises(PamcError, match="trained on 'my-own-images'"):
        load_split("val", checkpoint=str(run))
    # naming the data explicitly is the way out
    assert evaluate_checkpoint(str(run), data=tiny_config["data"])["dataset"] == tiny_bundle.name


def test_observed_validation_labels_follow_the_checkpoint_protocol(tiny_bundle, tiny_config):
    run = pamc.train({**tiny_config, "epochs": 1}, bundle=tiny_bundle).out
    val = load_split("val", checkpoint=str(run))
    assert val.observed.shape == val.full.shape
    assert ((val.observed == 1).sum(1) == 1).all()  # single positive, as in training
    assert (val.full[val.observed == 1] == 1).all()
