"""CP / CR / CF1 / OP / OR / OF1 (spec since-2023 4) against hand computation and scikit-learn."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_score, recall_score

from pamc import metrics
from pamc.errors import PamcError
from pamc.metrics import multilabel_metrics, standard_metrics
from pamc.sparse_labels import SparseLabels

KEYS = ["CP", "CR", "CF1", "OP", "OR", "OF1"]


def f1(p, r):
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def sklearn_metrics(predicted, targets, zero_division=0.0):
    """Reference on full labels: sklearn macro / micro precision and recall, in percent."""
    y = targets == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the zero divisions it is told how to handle
        cp, cr, op, recall = (100 * score(y, predicted, average=average, zero_division=zero_division)
                              for average in ("macro", "micro") for score in (precision_score, recall_score))
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": recall, "OF1": f1(op, recall)}


def sklearn_partial(predicted, labels, zero_division=0.0):
    """Reference on partial labels: sklearn on each class's annotated images; pooled annotated entries."""
    per_class = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in range(labels.shape[1]):
            seen = labels[:, c] != 0
            if seen.any():
                y, p = labels[seen, c] == 1, predicted[seen, c]
                per_class.append([precision_score(y, p, zero_division=zero_division),
                                  recall_score(y, p, zero_division=zero_division)])
        seen = labels != 0
        y, p = labels[seen] == 1, predicted[seen]
        op = 100 * precision_score(y, p, zero_division=zero_division)
        recall = 100 * recall_score(y, p, zero_division=zero_division)
    cp, cr = 100 * np.nanmean(np.array(per_class), axis=0)
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": recall, "OF1": f1(op, recall)}


def reference_top_k(scores, k):
    """The k highest scores per row by a stable sort: ties go to the lower class index."""
    mask = np.zeros(scores.shape, dtype=bool)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def random_case(n=300, c=9, decimals=None, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.25).astype(np.int64)
    scores = np.clip(rng.random((n, c)) * 0.8 + 0.35 * targets, 0, 1).astype(np.float32)
    if decimals is not None:
        scores = np.round(scores, decimals).astype(np.float32)
    targets[:, 0] = 0  # no positive: recall has nothing to count
    scores[:, 1] = 0.1  # never predicted: precision has nothing to count
    return scores, targets


def assert_metrics(got, expected):
    assert list(got) == KEYS
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12, nan_ok=True), key


# -- hand-computed

SCORES = np.array([[0.9, 0.6, 0.1], [0.7, 0.2, 0.55], [0.4, 0.8, 0.3], [0.95, 0.1, 0.2]])
TARGETS = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [1, 0, 0]])


def test_hand_computed_threshold():
    # predicted (>= 0.5): class 0 rows 0, 1, 3 (TP 2 of 3 positives); class 1 rows 0, 2 (TP 2 of 2);
    # class 2 row 1 (TP 1 of 2 positives)
    cp, cr = (2 / 3 + 1 + 1) / 3, (2 / 3 + 1 + 1 / 2) / 3
    op, recall = 5 / 6, 5 / 7
    assert_metrics(multilabel_metrics(SCORES, TARGETS),
                   {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr),
                    "OP": 100 * op, "OR": 100 * recall, "OF1": 100 * f1(op, recall)})


def test_hand_computed_top_one_and_the_empty_class_options():
    # the top score of each row (all >= 0.5): class 0 rows 0, 1, 3; class 1 row 2; class 2 none
    op, recall = 3 / 4, 3 / 7
    cr = (2 / 3 + 1 / 2 + 0) / 3
    for zero_division, cp in ((0.0, (2 / 3 + 1 + 0) / 3), (1.0, (2 / 3 + 1 + 1) / 3), (np.nan, (2 / 3 + 1) / 2)):
        got = multilabel_metrics(SCORES, TARGETS, top_k=1, zero_division=zero_division)
        assert_metrics(got, {"CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * f1(cp, cr),
                             "OP": 100 * op, "OR": 100 * recall, "OF1": 100 * f1(op, recall)})
    # ML-GCN's top-k keeps the threshold: at 0.75 only rows 0, 2, 3 keep their top score
    got = multilabel_metrics(SCORES, TARGETS, threshold=0.75, top_k=1)
    assert got["OP"] == pytest.approx(100.0) and got["OR"] == pytest.approx(300 / 7)


def test_no_positive_anywhere_and_no_prediction_anywhere():
    got = multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert all(got[key] == 0.0 for key in KEYS)
    got = multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), zero_division=np.nan)
    assert all(np.isnan(got[key]) for key in KEYS)


# -- against scikit-learn

@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_matches_sklearn_macro_and_micro(zero_division, seed):
    scores, targets = random_case(seed=seed)
    assert_metrics(multilabel_metrics(scores, targets, zero_division=zero_division),
                   sklearn_metrics(scores >= 0.5, targets, zero_division))
    assert_metrics(multilabel_metrics(scores, targets, threshold=0.3, zero_division=zero_division),
                   sklearn_metrics(scores >= 0.3, targets, zero_division))


@pytest.mark.parametrize("k", [1, 3, 9, 20])
@pytest.mark.parametrize("threshold", [0.5, None])
def test_top_k_matches_a_stable_sort_with_ties(k, threshold):
    scores, targets = random_case(decimals=1, seed=k)  # many ties at the k-th score
    expected = reference_top_k(scores, k) & (scores >= (threshold if threshold is not None else -np.inf))
    assert_metrics(multilabel_metrics(scores, targets, threshold=threshold, top_k=k),
                   sklearn_metrics(expected, targets))


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float16, np.bool_])
def test_top_k_on_scores_of_other_types(dtype):
    scores, targets = random_case(seed=9)
    typed = (scores * 10).astype(dtype) if dtype != np.bool_ else scores >= 0.5
    expected = reference_top_k(typed.astype(np.float64), 3) & (typed >= 0.5)
    assert_metrics(multilabel_metrics(typed, targets, top_k=3), sklearn_metrics(expected, targets))


def partial_labels(targets, fraction, seed=2):
    rng = np.random.default_rng(seed)
    labels = np.where(targets == 1, 1, -1)
    labels[rng.random(targets.shape) >= fraction] = 0
    labels[:, 2] = 0  # never annotated: left out of the class means
    labels[:, 3] = np.where(np.arange(len(labels)) % 5 == 0, -1, 0)  # annotated, no positive
    return labels


@pytest.mark.parametrize("top_k", [None, 2])
@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_partial_labels_count_annotated_entries_only(top_k, fraction, monkeypatch):
    scores, targets = random_case(n=400, c=10, seed=3)
    labels = partial_labels(targets, fraction)
    predicted = scores >= 0.5
    if top_k is not None:
        predicted &= reference_top_k(scores, top_k)  # over all C scores, annotated or not
    expected = sklearn_partial(predicted, labels)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 10 * 37)  # 37-row blocks, ragged last one
    assert_metrics(multilabel_metrics(scores, labels, top_k=top_k), expected)
    assert_metrics(multilabel_metrics(torch.from_numpy(scores), SparseLabels.from_dense(labels), top_k=top_k), expected)
    assert_metrics(multilabel_metrics(scores, torch.from_numpy(labels), top_k=top_k), expected)


def test_partial_with_nan_zero_division_matches_sklearn():
    scores, targets = random_case(n=200, c=8, seed=4)
    labels = partial_labels(targets, 0.3)
    assert_metrics(multilabel_metrics(scores, labels, zero_division=np.nan),
                   sklearn_partial(scores >= 0.5, labels, np.nan))


def test_unannotated_scores_matter_only_through_the_top_k():
    scores, targets = random_case(seed=5)
    labels = partial_labels(targets, 0.3)
    shuffled = scores.copy()
    hidden = labels == 0
    shuffled[hidden] = np.random.default_rng(6).permutation(shuffled[hidden])
    assert multilabel_metrics(shuffled, labels) == multilabel_metrics(scores, labels)


def test_fully_annotated_partial_labels_equal_full_labels_and_blocks_do_not_matter(monkeypatch):
    scores, targets = random_case(seed=7)
    whole = standard_metrics(scores, targets)
    assert_metrics(multilabel_metrics(scores, np.where(targets == 1, 1, -1)), multilabel_metrics(scores, targets))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 9 * 13)
    assert standard_metrics(torch.from_numpy(scores).to(torch.bfloat16), targets) == standard_metrics(
        torch.from_numpy(scores).to(torch.bfloat16).float().numpy(), targets)
    assert standard_metrics(scores, targets) == whole


def test_standard_metrics_holds_the_threshold_and_top_three_variants():
    scores, targets = random_case(seed=8)
    got = standard_metrics(scores, targets)
    assert list(got) == KEYS + [f"{key}@3" for key in KEYS]
    assert {key: got[key] for key in KEYS} == multilabel_metrics(scores, targets)
    assert {key: got[f"{key}@3"] for key in KEYS} == multilabel_metrics(scores, targets, top_k=3)


# -- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3))),
     r"scores have shape \(3, 2\) but targets have shape \(3, 3\)"),
    (lambda: multilabel_metrics(np.zeros((3, 2)), SparseLabels.from_dense(-np.ones((4, 2)))), "shape"),
    (lambda: multilabel_metrics(np.zeros(3), np.zeros(3)), "2-D"),
    (lambda: multilabel_metrics(np.array([[np.nan], [0.1]]), np.ones((2, 1))), "NaN"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.array([[1, -1], [0.5, 0]])), "only 1"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), SparseLabels.from_dense([[1, 0], [0, 1]])), "no -1"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.ones((2, 2)), top_k=0), "top_k must be a positive integer"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.ones((2, 2)), top_k=1.5), "top_k must be a positive integer"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.ones((2, 2)), threshold=None), "give a threshold"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.ones((2, 2)), threshold="0.5"), "threshold must be a finite"),
    (lambda: multilabel_metrics(np.zeros((2, 2)), np.ones((2, 2)), zero_division=0.5), "zero_division must be 0, 1"),
    (lambda: standard_metrics(np.zeros((2, 2)), np.ones((2, 2)), top_k=-3), "top_k"),
])
def test_bad_input_is_a_one_line_pamc_error(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(PamcError, match=message) as error:
            call()
    assert "\n" not in str(error.value)
