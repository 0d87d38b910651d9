"""Observation procedures (single positive, random fraction), label validation and the LabelStore."""
import numpy as np
import pytest
import torch

from pamc.errors import PamcError
from pamc.labels import LabelStore, check_observed, observe_fraction, single_positive


def reference_single_positive(full: np.ndarray, seed: int = 1200, num_pos: int = 1, num_neg: int = 0) -> np.ndarray:
    """Spec 1.3 step by step: 0 -> -1, one fresh RandomState, per row shuffle positives then negatives."""
    labels = np.where(full == 1, 1, -1)
    rng = np.random.RandomState(seed)
    observed = np.zeros_like(labels)
    for i in range(labels.shape[0]):
        pos = np.nonzero(labels[i] == 1)[0]
        rng.shuffle(pos)
        observed[i, pos[:num_pos]] = 1
        neg = np.nonzero(labels[i] == -1)[0]
        rng.shuffle(neg)  # consumes the RNG even with num_neg = 0
        observed[i, neg[:num_neg]] = -1
    return observed


@pytest.mark.parametrize("seed,density", [(0, 0.1), (1, 0.3), (2, 0.7)])
def test_single_positive_reproduces_the_reference_procedure(seed, density):
    full = (np.random.RandomState(seed).random_sample((300, 20)) < density).astype(np.uint8)
    full[0] = 0  # a row without positives still consumes the RNG for its negatives
    full[1] = 1  # and a row without negatives
    expected = reference_single_positive(full)
    got = single_positive(full)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.sum(axis=1), np.minimum(full.sum(axis=1), 1))
    assert np.all(full[got == 1] == 1)


def test_single_positive_other_counts_and_seeds_follow_the_same_rule():
    full = (np.random.RandomState(9).random_sample((100, 12)) < 0.4).astype(np.uint8)
    np.testing.assert_array_equal(single_positive(full, seed=7, num_pos=2, num_neg=3),
                                  reference_single_positive(full, seed=7, num_pos=2, num_neg=3))
    assert not np.array_equal(single_positive(full, seed=7), single_positive(full, seed=8))


def test_single_positive_small_case_by_hand():
    # RandomState(1200) picks positives 0, 1, 4 when every row also shuffles its negatives; without
    # the negative shuffles the picks would be 0, 0, 3, so this case checks the RNG consumption too
    full = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    expected = np.zeros((3, 5), dtype=np.float32)
    expected[[0, 1, 2], [0, 1, 4]] = 1.0
    np.testing.assert_array_equal(single_positive(full), expected)


def test_observe_fraction_keeps_about_the_fraction_consistently():
    full = (np.random.RandomState(3).random_sample((400, 25)) < 0.2).astype(np.uint8)
    obs = observe_fraction(full, 0.3, seed=5)
    assert set(np.unique(obs).tolist()) <= {-1.0, 0.0, 1.0}
    kept = obs != 0
    # binomial(10000, 0.3): standard deviation 0.0046, so 0.3 +- 0.02 is over 4 sigma
    assert abs(kept.mean() - 0.3) < 0.02
    assert np.all(full[obs == 1] == 1) and np.all(full[obs == -1] == 0)
    np.testing.assert_array_equal(obs, observe_fraction(full, 0.3, seed=5))
    assert not np.array_equal(obs, observe_fraction(full, 0.3, seed=6))
    assert not observe_fraction(full, 0.0).any()
    np.testing.assert_array_equal(observe_fraction(full, 1.0), np.where(full == 1, 1.0, -1.0))
    with pytest.raises(PamcError, match="fraction"):
        observe_fraction(full, 1.5)


def test_full_labels_must_be_a_zero_one_matrix():
    with pytest.raises(PamcError, match="only 0 and 1"):
        single_positive(np.array([[0, 2]]))
    with pytest.raises(PamcError, match="2-D"):
        single_positive(np.array([0, 1]))


@pytest.mark.parametrize("bad,message", [
    (np.zeros(4), "2-D"),
    (np.zeros((2, 2, 2)), "2-D"),
    (np.array([[1.0, 2.0]]), "may hold only"),
    (np.array([[0.5, 0.0]]), "may hold only"),
    (np.array([[-1.5, 0.0]]), "may hold only"),
])
def test_check_observed_rejects_bad_shapes_and_values(bad, message):
    with pytest.raises(PamcError, match=message):
        check_observed(bad)


def test_check_observed_accepts_soft_negatives_and_checks_the_class_count():
    obs = check_observed(np.array([[1, 0, -1, -0.25]]))
    assert obs.dtype == torch.float32 and obs.tolist() == [[1.0, 0.0, -1.0, -0.25]]
    with pytest.raises(PamcError, match="3 classes"):
        check_observed(np.zeros((2, 4)), num_classes=3)


def test_label_store_apply_and_state_round_trip():
    initial = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, -1]], dtype=np.float32)
    store = LabelStore(initial)
    assert store.shape == (4, 3) and len(store) == 4
    index = torch.tensor([2, 0])
    mask = torch.tensor([[True, False, False], [False, False, True]])
    values = torch.tensor([[1.0, 7.0, 7.0], [7.0, 7.0, -0.5]])  # unmasked values are ignored
    assert store.apply(index, mask, values) == 2
    expected = initial.copy()
    expected[2, 0], expected[0, 2] = 1.0, -0.5
    np.testing.assert_array_equal(store.observed.numpy(), expected)
    np.testing.assert_array_equal(store.batch(torch.tensor([0, 2])).numpy(), expected[[0, 2]])
    assert store.num_edits() == 2

    fresh = LabelStore(initial)
    fresh.load_state_dict(store.state_dict())
    assert torch.equal(fresh.observed, store.observed) and torch.equal(fresh.initial, store.initial)
    assert fresh.num_edits() == 2
    np.testing.assert_array_equal(initial, LabelStore(initial).observed.numpy())  # the input is not edited
    with pytest.raises(PamcError, match="same dataset"):
        LabelStore(np.zeros((5, 3))).load_state_dict(store.state_dict())


@pytest.mark.parametrize("text, mode, fraction", [
    ("auto", "auto", None), ("as-given", "as-given", None), ("full", "full", None),
    ("single-positive", "single-positive", None), ("fraction:0.25", "fraction", 0.25), ("fraction:1", "fraction", 1.0)])
def test_observation_vocabulary(text, mode, fraction):
    from pamc.labels import Observation

    parsed = Observation.parse(text)
    assert (parsed.mode, parsed.fraction) == (mode, fraction) and Observation.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["fraction:x", "fraction:1.5", "fraction:0", "singlepositive", "", None, 3])
def test_bad_observations_are_one_line_errors(text):
    from pamc.labels import Observation

    with pytest.raises(PamcError, match=r"observation must be one of auto, as-given, full, single-positive, fraction:P"):
        Observation.parse(text)


def test_observation_means_the_same_in_training_and_prepare():
    from pamc.labels import observe

    full = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.uint8)
    given = np.array([[1, 0, -1], [0, 0, 1]], dtype=np.float32)
    both_ways = np.where(full == 1, 1.0, -1.0)
    np.testing.assert_array_equal(observe(full, None, "as-given"), both_ways)  # complete labels: all observed
    np.testing.assert_array_equal(observe(full, given, "as-given"), given)  # partial labels as they are
    np.testing.assert_array_equal(observe(full, None, "full"), both_ways)
    assert observe(full, given, "auto") is given and ((observe(full, None, "auto") == 1).sum(1) == 1).all()
    assert observe(full, None, "auto", default="full").min() == -1  # a dataset's own default
    with pytest.raises(PamcError, match="only partial labels.*observation='as-given'"):
        observe(None, given, "single-positive")


def test_config_checks_observation_and_weights_before_any_data(capsys, tmp_path):
    from pamc.apps.cli import main
    from pamc.config import resolve

    for bad in ("fraction:x", "fraction:1.5"):
        assert main(["train", "--observation", bad, "--data", "name=prepared", "--data", f"path={tmp_path}/none",
                     "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "observation must be one of" in err and not (tmp_path / "run").exists()
    assert resolve(preset="voc-an", overrides={"backbone_weights": "none"}).backbone_weights is None
    assert resolve(preset="voc-an", overrides={"backbone_weights": "None"}).backbone_weights is None
    assert main(["train", "--amp", "fp8", "--out", str(tmp_path / "run")]) == 2
    assert "amp must be auto, bf16, off" in capsys.readouterr().err
