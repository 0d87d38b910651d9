"""Label noise as observation protocols (`pamc.labels`: ``BASE+false-positive:P``,
``BASE+flip-negative:P``): the rates, what is left alone, determinism, the vocabulary, one-line
errors, training with it, and `pamc prepare` reporting what was corrupted."""
import json

import numpy as np
import pytest

import fixtures_datasets as fx
from pamc.errors import PamcError
from pamc.labels import Observation, corrupt, observe, observe_fraction, single_positive


def random_full(n: int = 4000, c: int = 12, seed: int = 0) -> np.ndarray:
    full = (np.random.default_rng(seed).random((n, c)) < 0.25).astype(np.uint8)
    full[full.sum(1) == 0, 0] = 1  # every image has a class
    return full


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.4, 1.0])
def test_false_positives_replace_positives_by_absent_classes_at_rate_p(rate):
    full = random_full()
    clean = single_positive(full, seed=3)
    noisy, report = corrupt(clean, full, "false-positive", rate, seed=3)
    assert ((noisy == 1).sum(1) == 1).all() and set(np.unique(noisy)) <= {0, 1}  # still one positive per image
    moved = (noisy != clean).any(1)
    wrong = (noisy == 1) & (full == 0)
    np.testing.assert_array_equal(wrong.any(1), moved)  # a replaced positive lies on a class the image lacks
    np.testing.assert_array_equal(noisy[~moved], clean[~moved])  # the others are exactly the clean ones
    n = len(full)
    assert report["candidates"] == n and report["corrupted"] == int(moved.sum())
    assert abs(moved.mean() - rate) <= 4 * np.sqrt(rate * (1 - rate) / n) + 1e-12  # binomial: 4 standard errors


@pytest.mark.parametrize("rate", [0.0, 0.2, 1.0])
def test_flipped_negatives_become_positives_at_rate_p(rate):
    full = random_full(seed=1)
    clean = observe_fraction(full, 0.5, seed=5)
    noisy, report = corrupt(clean, full, "flip-negative", rate, seed=5)
    flipped = (clean == -1) & (noisy == 1)
    np.testing.assert_array_equal(noisy[~flipped], clean[~flipped])  # only observed negatives change
    assert report["candidates"] == int((clean == -1).sum()) and report["corrupted"] == int(flipped.sum())
    share, k = flipped.sum() / (clean == -1).sum(), (clean == -1).sum()
    assert abs(share - rate) <= 4 * np.sqrt(rate * (1 - rate) / k) + 1e-12


def test_noise_is_seeded_and_deterministic():
    full = random_full(n=500)
    text = "single-positive+false-positive:0.3"
    a, b = observe(full, None, text, seed=7), observe(full, None, text, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, observe(full, None, text, seed=8))
    clean = observe(full, None, "single-positive", seed=7)
    assert (a != clean).any(1).sum() > 0  # the noise acted, on top of the same base observation
    np.testing.assert_array_equal(observe(full, None, "single-positive+false-positive:0", seed=7), clean)


def test_an_image_with_every_class_keeps_its_positive():
    full = np.ones((3, 4), dtype=np.uint8)
    clean = single_positive(full, seed=0)
    noisy, report = corrupt(clean, full, "false-positive", 1.0)
    np.testing.assert_array_equal(noisy, clean)
    assert report["corrupted"] == 0 and report["left_for_want_of_a_wrong_class"] == 3


@pytest.mark.parametrize("text, base, noise, rate", [
    ("single-positive+false-positive:0.2", "single-positive", "false-positive", 0.2),
    ("fraction:0.5+flip-negative:0.1", "fraction", "flip-negative", 0.1),
    ("auto+false-positive:0", "auto", "false-positive", 0.0),
    ("full+flip-negative:1", "full", "flip-negative", 1.0)])
def test_the_vocabulary_reads_and_writes_noise(text, base, noise, rate):
    parsed = Observation.parse(text)
    assert (parsed.mode, parsed.noise, parsed.rate) == (base, noise, rate)
    assert Observation.parse(str(parsed)) == parsed
    resolved = Observation.parse("auto+false-positive:0.2").resolve(False)
    assert (resolved.mode, resolved.noise, resolved.rate) == ("single-positive", "false-positive", 0.2)


@pytest.mark.parametrize("text, message", [
    ("single-positive+false-positive:1.5", "false-positive rate P must lie in \\[0, 1\\]"),
    ("single-positive+false-positive:-0.1", "false-positive rate P must lie in \\[0, 1\\]"),
    ("single-positive+flip-negative:x", "flip-negative rate P must lie in \\[0, 1\\]"),
    ("single-positive+swap:0.1", "label noise must be \\+NAME:P with NAME one of false-positive, flip-negative"),
    ("single-positive+false-positive", "label noise must be"),
    ("singlepositive+false-positive:0.1", "observation must be one of"),
])
def test_bad_noise_is_a_one_line_error(text, message):
    with pytest.raises(PamcError, match=message) as error:
        Observation.parse(text)
    assert "\n" not in str(error.value)
    with pytest.raises(PamcError, match="rate P must lie in"):
        corrupt(np.zeros((2, 3), np.float32), None, "flip-negative", 2.0)


def test_training_uses_the_noisy_labels(tiny_settings, tiny_bundle, tmp_path):
    from pamc import train
    from pamc.inference import load_split

    train({**tiny_settings, "method": "an", "epochs": 1, "observation": "single-positive+false-positive:1",
           "out": str(tmp_path / "run")})
    assert json.loads((tmp_path / "run" / "best" / "model.json").read_text())["observation"] == \
        "single-positive+false-positive:1"
    split = load_split("train", None, tmp_path / "run")  # the labels the run trained on, drawn again
    observed = np.asarray(split.observed)
    assert ((observed == 1).sum(1) == 1).all() and not ((observed == 1) & (split.full == 1)).any()  # every one wrong


def test_prepare_reports_what_was_corrupted(tmp_path):
    from pamc.data.prepared import prepare

    root = fx.make_voc(tmp_path / "data", extra_train=37)
    summary = prepare("voc", root, tmp_path / "out", observation="single-positive+false-positive:0.5")
    corrupted = summary["protocol"]["corrupted"]
    assert corrupted["noise"] == "false-positive" and corrupted["candidates"] == 40 and 0 < corrupted["corrupted"] < 40
    assert (f"; false-positive noise: {corrupted['corrupted']} of 40 observed positives replaced by a class "
            "the image does not have") in summary["message"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["protocol"]["observation"] == "single-positive+false-positive:0.5" and meta["protocol"]["corrupted"] == corrupted
    observed = np.concatenate([np.load(tmp_path / "out" / f"observed_{s}.npy") for s in ("train", "val")])
    assert ((observed == 1).sum(1) == 1).all()
