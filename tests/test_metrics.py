"""AP / mAP against hand-computed values and sklearn's average_precision_score."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from pamc import metrics
from pamc.errors import PamcError
from pamc.metrics import (average_precision, group_mean_average_precision, mean_average_precision,
                          partial_average_precision, partial_mean_average_precision)


def sklearn_ap(scores, targets):
    """Reference: sklearn per class on its own, AP 0 for a class without positives (spec 4)."""
    return np.array([average_precision_score(targets[:, c] == 1, scores[:, c]) if (targets[:, c] == 1).any() else 0.0
                     for c in range(scores.shape[1])])


def sklearn_partial_ap(scores, labels):
    """Reference: sklearn on each class's annotated images; NaN when none, 0 when no positive."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        seen = labels[:, c] != 0
        if seen.any():
            out[c] = sklearn_ap(scores[seen, c:c + 1], labels[seen, c:c + 1])[0]
    return out


def tied_data(n, c, decimals, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    scores = np.round(rng.random((n, c)) + 0.3 * targets, decimals).astype(dtype)
    return scores, targets


def partial_labels(targets, annotated_fraction, seed=1):
    rng = np.random.default_rng(seed)
    labels = np.where(targets == 1, 1, -1)
    labels[rng.random(targets.shape) >= annotated_fraction] = 0
    return labels


def test_hand_computed_case():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [1], [0]])
    np.testing.assert_allclose(average_precision(scores, targets), [(1 + 2 / 3) / 2], rtol=1e-12)


def test_tied_scores_form_one_threshold():
    # all four tied: one threshold with precision 2/4; a tie spanning a positive and a negative
    # ranked after the top positive: thresholds 0.9 (P 1, R 1/2) and 0.5 (P 2/3, R 1)
    scores = np.array([[0.5, 0.9], [0.5, 0.5], [0.5, 0.5], [0.5, 0.1]])
    targets = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    np.testing.assert_allclose(average_precision(scores, targets), [0.5, (1 + 2 / 3) / 2], rtol=1e-12)


@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_matches_sklearn_with_ties_and_degenerate_classes(decimals):
    scores, targets = tied_data(400, 12, decimals, seed=decimals)
    targets[:, 0] = 0  # no positive: AP 0, still averaged
    targets[:, 1] = 1  # all positive: AP 1
    targets[:5, 2], targets[5:, 2] = 1, 0
    reference = sklearn_ap(scores, targets)
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, reference, rtol=1e-10)
    assert ap[0] == 0.0 and ap[1] == pytest.approx(1.0)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * reference.mean(), rel=1e-12)


def test_chunking_and_torch_input_give_identical_values(monkeypatch):
    scores, targets = tied_data(300, 23, 2)
    whole = average_precision(scores, targets)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 300 * 4)  # 4 classes per chunk, ragged last chunk
    scores_t = torch.from_numpy(scores).requires_grad_()
    np.testing.assert_allclose(average_precision(scores_t, torch.from_numpy(targets)), whole, rtol=1e-13)
    np.testing.assert_allclose(whole, sklearn_ap(scores, targets), rtol=1e-10)


def test_half_precision_tensor_scores_are_read_exactly():
    scores, targets = tied_data(300, 4, 3)
    half = torch.from_numpy(scores).to(torch.bfloat16)  # many new ties; sklearn sees the same float32 values
    np.testing.assert_allclose(average_precision(half, targets), sklearn_ap(half.float().numpy(), targets), rtol=1e-10)


def test_targets_other_than_one_are_negative_and_scores_keep_their_precision():
    scores, targets = tied_data(200, 5, 6, dtype=np.float64)
    scores[:, 0] = 0.5 + np.arange(200) * 1e-12  # distinct in float64, would tie in float32
    encoded = np.where(targets == 1, 1, np.where(np.arange(5) % 2 == 0, -1, 0))  # 0/-1 both negative
    np.testing.assert_allclose(average_precision(scores, encoded), sklearn_ap(scores, targets), rtol=1e-10)
    integer_scores = (scores * 10).astype(np.int64)
    np.testing.assert_allclose(average_precision(integer_scores, targets), sklearn_ap(integer_scores, targets),
                               rtol=1e-10)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 1.0])
def test_partial_matches_sklearn_on_annotated_subset(fraction, monkeypatch):
    scores, targets = tied_data(500, 17, 2, seed=3)
    labels = partial_labels(targets, fraction)
    labels[:, 0] = 0  # never annotated: skipped
    labels[:, 1] = np.where(np.arange(500) % 7 == 0, -1, 0)  # annotated, no positive: AP 0, counted
    labels[0, 2] = -1  # only positives plus one negative
    labels[1:, 2] = np.where(targets[1:, 2] == 1, 1, 0)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 500 * 5)
    reference = sklearn_partial_ap(scores, labels)
    ap = partial_average_precision(scores, labels)
    assert np.isnan(ap[0]) and ap[1] == 0.0
    np.testing.assert_allclose(ap, reference, rtol=1e-10)  # NaN positions must match too
    assert partial_mean_average_precision(scores, labels) == pytest.approx(100 * np.nanmean(reference), rel=1e-12)


def test_fully_annotated_partial_equals_full():
    scores, targets = tied_data(250, 9, 1)
    np.testing.assert_allclose(partial_average_precision(scores, np.where(targets == 1, 1, -1)),
                               average_precision(scores, targets), rtol=1e-12)


def test_unannotated_scores_do_not_matter():
    scores, targets = tied_data(300, 6, 2)
    labels = partial_labels(targets, 0.4)
    shuffled = scores.copy()
    hidden = labels == 0
    shuffled[hidden] = np.random.default_rng(5).permutation(shuffled[hidden])
    np.testing.assert_array_equal(partial_average_precision(shuffled, labels),
                                  partial_average_precision(scores, labels))


def test_group_map_on_hand_built_case():
    # class c: one positive ranked at position c+1 among 6 annotated images -> AP 1/(c+1)
    num_classes = 6
    scores = np.tile(np.linspace(1.0, 0.5, 6)[:, None], (1, num_classes))
    labels = -np.ones((6, num_classes))
    labels[np.arange(num_classes), np.arange(num_classes)] = 1
    labels[:, 4] = 0  # class 4 not annotated in test
    ap = 1 / np.arange(1, num_classes + 1)
    frequency = np.array([50, 3, 7, 3, 9, 1])  # rarest first, tie 1 vs 3 broken by index: [5, 1, 3, 2, 4, 0]
    result = group_mean_average_precision(scores, labels, frequency, groups=4)
    # array_split of 6 into 4: sizes 2, 2, 1, 1
    expected = {"G1": 100 * (ap[5] + ap[1]) / 2, "G2": 100 * (ap[3] + ap[2]) / 2, "G4": 100 * ap[0],
                "All": 100 * np.mean(ap[[0, 1, 2, 3, 5]])}
    assert set(result) == {"G1", "G2", "G3", "G4", "All"}
    assert np.isnan(result["G3"])  # its only class (4) has no annotated test image
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12)


def test_sparse_openimages_like_labels_match_sklearn():
    rng = np.random.default_rng(7)
    n, c = 20000, 300
    scores = rng.random((n, c), dtype=np.float32)
    labels = np.zeros((n, c), dtype=np.int8)
    rows, cols = rng.integers(0, n, 40000), rng.integers(0, c, 40000)
    labels[rows, cols] = np.where(rng.random(40000) < 0.3, 1, -1)
    subset = slice(0, 20)
    np.testing.assert_allclose(partial_average_precision(scores, labels)[subset],
                               sklearn_partial_ap(scores[:, subset], labels[:, subset]), rtol=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda: average_precision(np.zeros(3), np.zeros(3)), "2-D"),
    (lambda: average_precision(np.zeros((3, 2)), np.zeros((3, 3))), "shape"),
    (lambda: average_precision(np.zeros((0, 2)), np.zeros((0, 2))), "at least one image"),
    (lambda: average_precision(np.array([[np.nan], [0.1]]), np.ones((2, 1))), "NaN"),
    (lambda: average_precision(np.array([["a"], ["b"]]), np.ones((2, 1))), "numeric"),
    (lambda: partial_average_precision(np.zeros((2, 1)), np.array([[1], [0.5]])), "only 1"),
    (lambda: partial_average_precision(np.zeros((2, 1)), np.array([[1], [0]])), "no -1"),
    (lambda: group_mean_average_precision(np.zeros((2, 2)), -np.ones((2, 2)), [1, 2, 3]), "train_frequency"),
    (lambda: group_mean_average_precision(np.zeros((2, 2)), -np.ones((2, 2)), [1, 2], groups=3), "groups"),
])
def test_bad_input_is_a_one_line_pamc_error(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PamcError, match=message):
            call()
