"""Calibrated decisions: per-class thresholds tuned for F1 (against a brute force with
scikit-learn), the partial-label rule, metrics at per-class thresholds, and `pamc calibrate /
predict / eval` using them; streaming prediction over folders with unreadable files."""
import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support

import pamc
from pamc.apps.cli import main
from pamc.checkpoint import load_model
from pamc.errors import PamcError
from pamc.inference import load_split
from pamc.metrics import multilabel_metrics, predicted_labels
from pamc.runtime import Runtime, predict
from pamc.thresholds import best_f1_threshold, tune_thresholds


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def brute_force_f1(scores, positive) -> float:
    return max(f1_score(positive, scores >= t, zero_division=0) for t in np.unique(scores))


def test_best_threshold_reaches_the_best_f1_of_any_cut():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 60))
        scores = np.round(rng.random(n), 1 if trial % 2 else 4)  # coarse rounding: many ties
        positive = rng.random(n) < rng.uniform(0.1, 0.7)
        positive[0] = True
        t, f1 = best_f1_threshold(scores, positive)
        assert f1 == pytest.approx(brute_force_f1(scores, positive))
        assert f1_score(positive, scores >= t) == pytest.approx(f1)
        rejected = scores[scores < t]
        if rejected.size:  # halfway between the lowest accepted and the highest rejected score
            assert t == pytest.approx((scores[scores >= t].min() + rejected.max()) / 2)


def test_partial_labels_count_observed_negatives_or_assume_them():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 3))
    labels = np.zeros((40, 3))
    labels[:8, 0], labels[8:20, 0] = 1, -1  # class 0: observed negatives -> only they count
    labels[20:30, 1] = 1  # class 1: no observed negative -> the rest assumed negative
    labels[30:, 2] = -1  # class 2: no positive -> the pooled fallback
    entry = tune_thresholds(scores, labels, partial=True)
    assert entry["labels"] == "partial" and entry["fallback"] == [2] and entry["f1"][2] is None
    t0, _ = best_f1_threshold(scores[:20, 0], labels[:20, 0] == 1)
    t1, _ = best_f1_threshold(scores[:, 1], labels[:, 1] == 1)
    counted = np.concatenate([scores[:20, 0], scores[:, 1], scores[30:, 2]])
    positive = np.concatenate([labels[:20, 0], labels[:, 1], labels[30:, 2]]) == 1
    pooled, _ = best_f1_threshold(counted, positive)
    assert entry["values"] == pytest.approx([t0, t1, pooled])
    # full labels: every entry counts, 0 is a negative
    full = tune_thresholds(scores, (labels == 1).astype(float))
    assert full["labels"] == "full"
    assert full["values"][0] == pytest.approx(best_f1_threshold(scores[:, 0], labels[:, 0] == 1)[0])


def test_metrics_at_per_class_thresholds_match_sklearn():
    rng = np.random.default_rng(2)
    targets = (rng.random((50, 4)) < 0.3).astype(int)
    scores = rng.random((50, 4))
    thresholds = np.array([0.2, 0.5, 0.7, 0.9])
    predicted = (scores >= thresholds).astype(int)
    p, r, _, _ = precision_recall_fscore_support(targets, predicted, average=None, zero_division=0)
    po, ro, fo, _ = precision_recall_fscore_support(targets, predicted, average="micro", zero_division=0)
    assert (predicted_labels(scores, thresholds) == predicted.astype(bool)).all()
    top1 = predicted_labels(scores, thresholds, top_k=1)
    assert (top1 == (predicted.astype(bool) & (scores == scores.max(1, keepdims=True)))).all()
    got = multilabel_metrics(scores, targets, threshold=thresholds)
    assert got["CP"] == pytest.approx(100 * p.mean()) and got["CR"] == pytest.approx(100 * r.mean())
    assert got["OP"] == pytest.approx(100 * po) and got["OF1"] == pytest.approx(100 * fo)
    # partial labels: only annotated entries, each against its class's threshold
    partial = np.where(rng.random((50, 4)) < 0.5, 2 * targets - 1, 0)
    got = multilabel_metrics(scores, partial, threshold=thresholds)
    kept = partial != 0
    tp = ((predicted == 1) & (partial == 1)).sum()
    assert got["OP"] == pytest.approx(100 * tp / ((predicted == 1) & kept).sum())
    assert got["OR"] == pytest.approx(100 * tp / (partial == 1).sum())
    with pytest.raises(PamcError, match="4 values, one per class"):
        multilabel_metrics(scores, targets, threshold=[0.5, 0.5])


@pytest.fixture(scope="module")
def calibrated(tiny_settings, tmp_path_factory):
    """A tiny run whose best checkpoint holds calibrated thresholds (tuned by the command)."""
    run = tmp_path_factory.mktemp("calibrated") / "run"
    pamc.train({**tiny_settings, "epochs": 2, "alpha": 2.0, "out": str(run)})
    code, stdout, stderr = run_cli(["calibrate", run, "--device", "cpu", "--out", run / "thresholds.csv"])
    assert code == 0, stderr
    assert "full labels, alpha 2" in stdout
    return run


def test_calibrate_stores_the_thresholds_of_the_validation_split(calibrated):
    model, meta = load_model(calibrated)
    val = load_split("val", checkpoint=str(calibrated))
    scores = predict(model, val.images, Runtime.create("cpu"), alpha=2.0).numpy()
    stored = meta.extra["thresholds"]
    assert stored["alpha"] == 2.0 and stored["split"] == "val"
    assert stored["values"] == pytest.approx(tune_thresholds(scores, np.asarray(val.full))["values"])
    with open(calibrated / "thresholds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == meta.class_names
    assert [float(r["threshold"]) for r in rows] == pytest.approx(stored["values"], rel=1e-5)


def test_eval_at_the_calibrated_thresholds(calibrated, tmp_path):
    code, stdout, stderr = run_cli(["eval", calibrated, "--split", "val", "--threshold", "auto",
                                    "--out", tmp_path / "m.json", "--device", "cpu"])
    assert code == 0, stderr
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    model, meta = load_model(calibrated)
    val = load_split("val", checkpoint=str(calibrated))
    scores = predict(model, val.images, Runtime.create("cpu"), alpha=2.0)
    expected = multilabel_metrics(scores, val.full, threshold=np.array(meta.extra["thresholds"]["values"]))
    assert row["threshold"] == "per-class" and row["CF1"] == pytest.approx(expected["CF1"])
    # the table `pamc calibrate --out` wrote is a threshold file too
    code, _, stderr = run_cli(["eval", calibrated, "--split", "val", "--threshold", calibrated / "thresholds.csv",
                               "--out", tmp_path / "f.json", "--device", "cpu"])
    assert code == 0, stderr
    assert json.loads((tmp_path / "f.json").read_text())["rows"][0]["CF1"] == pytest.approx(row["CF1"])
    # tuned at one alpha, they are refused at another
    code, _, stderr = run_cli(["eval", calibrated, "--threshold", "auto", "--alpha", "3", "--device", "cpu"])
    assert code == 2 and "tuned at alpha 2" in stderr


@pytest.fixture(scope="module")
def photo_folder(tiny_bundle, tmp_path_factory):
    """Five scene PNGs in nested folders and one file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for n, image in enumerate(tiny_bundle.test.images.images[:5].numpy()):
        Image.fromarray(image).save(folder / ("sub" if n % 2 else ".") / f"scene{n}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_predict_streams_rows_with_labels_and_skips_unreadable_images(calibrated, photo_folder, tmp_path):
    out = tmp_path / "scores.csv"
    code, stdout, stderr = run_cli(["predict", calibrated, photo_folder, "--out", out, "--batch-size", "2",
                                    "--device", "cpu"])
    assert code == 0, stderr
    assert "scores for 5 images" in stdout and "per-class thresholds" in stdout
    assert "skipped 1 unreadable image" in stderr and "broken.jpg" in stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    model, meta = load_model(calibrated)
    thresholds = np.array(meta.extra["thresholds"]["values"])
    names = meta.class_names
    assert len(rows) == 5 and not any("broken" in r["image"] for r in rows)
    from pamc.data.images import load_image

    for r in rows:
        x = load_image(r["image"], 32)[None]
        with torch.no_grad():
            expected = torch.sigmoid(model(Runtime.create("cpu").prepare(x), alpha=2.0))[0].numpy()
        got = np.array([float(r[n]) for n in names])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        labels = r["predicted"].split(";") if r["predicted"] else []
        assert labels == [n for n, s, t in zip(names, got, thresholds) if s >= t]
    # JSON lines, a fixed threshold and at most one label per image
    out = tmp_path / "scores.jsonl"
    code, _, stderr = run_cli(["predict", calibrated, photo_folder, "--out", out, "--threshold", "0",
                               "--top-k", "1", "--device", "cpu"])
    assert code == 0, stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5
    for rec in records:
        assert rec["predicted"] == [max(rec["scores"], key=rec["scores"].get)]


def test_threshold_errors_are_one_line(calibrated, photo_folder, tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("class,threshold\nnot-a-class,0.3\n")
    cases = {"unknown classes": ["--threshold", bad], "neither auto, a number": ["--threshold", tmp_path / "none"],
             "write .csv or .jsonl": ["--out", tmp_path / "x.txt"], "--top-k must be": ["--top-k", "0"]}
    for needle, extra in cases.items():
        code, _, stderr = run_cli(["predict", calibrated, photo_folder, *extra, "--device", "cpu"])
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
