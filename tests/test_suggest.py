"""Finding the missing labels: the comparable scales, the ranking of unobserved pairs with their
CAM peaks (against the model computed here), and merging reviewed decisions into a new label file."""
import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import pamc
from pamc.apps.cli import main
from pamc.checkpoint import load_model
from pamc.data.sources.own import read_table
from pamc.inference import load_split
from pamc.runtime import Runtime
from pamc.suggest import comparable, rank_unobserved


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_scales_make_classes_comparable():
    rng = np.random.default_rng(0)
    probs = np.round(rng.random((30, 4)) * np.array([1, 0.1, 0.5, 0.9]), 2)  # ties, and classes on other scales
    ranks = comparable(probs, "rank")
    for c in range(4):
        for i in range(30):
            below, same = (probs[:, c] < probs[i, c]).sum(), (probs[:, c] == probs[i, c]).sum()
            assert ranks[i, c] == pytest.approx((below + same / 2) / 30)
    t = np.array([0.5, 0.05, 0.3, 0.7])
    margin = comparable(probs, "margin", t)
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    np.testing.assert_allclose(margin, np.log(p / (1 - p)) - np.log(t / (1 - t)))
    assert ((margin >= 0) == (probs >= t)).all()
    np.testing.assert_allclose(comparable(probs, "raw"), p)
    with pytest.raises(pamc.errors.PamcError, match="valid: margin, rank, raw"):
        comparable(probs, "zscore")


def test_only_unobserved_pairs_are_ranked_best_first():
    values = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.2]])
    observed = np.array([[1, 0, 0], [0, -1, 0]])
    rows, cols = rank_unobserved(values, observed)
    assert list(zip(rows.tolist(), cols.tolist())) == [(1, 0), (0, 2), (1, 2), (0, 1)]


@pytest.fixture(scope="module")
def run(tiny_settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("suggest") / "run"
    return pamc.train({**tiny_settings, "alpha": 2.0, "out": str(out)}).out


def test_suggestions_rank_the_training_images_unobserved_labels(run, tmp_path):
    out = tmp_path / "s.csv"
    code, stdout, stderr = run_cli(["suggest-labels", run, "--out", out, "--scale", "raw", "--splits", "train",
                                    "--device", "cpu"])
    assert code == 0, stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    train = load_split("train", checkpoint=str(run))
    observed = np.asarray(train.observed)
    assert len(rows) == int((observed == 0).sum()) and f"{len(rows)} of {len(rows)}" in stdout
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    model, meta = load_model(run)
    names = meta.class_names
    for r in rows[:5] + rows[-5:]:
        i, c = int(r["index"]), names.index(r["class"])
        assert r["split"] == "train" and observed[i, c] == 0
        x = Runtime.create("cpu").prepare(train.images.take(torch.tensor([i])))
        with torch.no_grad():
            maps = model.cams(x)[0, c]
            p = torch.sigmoid(model(x, alpha=2.0))[0, c]
        assert float(r["probability"]) == pytest.approx(float(p), abs=1e-5)
        h, w = maps.shape
        y, xx = divmod(int(maps.flatten().argmax()), w)
        assert (float(r["peak_x"]), float(r["peak_y"])) == pytest.approx(((xx + 0.5) / w, (y + 0.5) / h), abs=1e-4)
    # the margin scale (default) tunes thresholds on the validation split when none are stored
    code, _, stderr = run_cli(["suggest-labels", run, "--out", tmp_path / "m.csv", "--top", "7", "--device", "cpu"])
    assert code == 0, stderr
    with open(tmp_path / "m.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 7
    assert "thresholds" not in load_model(run)[1].extra  # tuned on the spot, not stored


LABELS = "image,cat,dog,bird\na.jpg,1,,\nb.jpg,,1,0\nc.jpg,,,1\n"


def decisions_file(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "decision", "run", "suggested_at", "reviewer", "decided_at"])
        w.writerows(rows)


def test_merge_writes_a_new_file_with_provenance(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS)
    decisions = tmp_path / "decisions.csv"
    decisions_file(decisions, [["a.jpg", "dog", "accept", "runs/x/best", "2026-01-01T00:00:00+00:00", "ana", "t1"],
                               ["c.jpg", "cat", "reject", "runs/x/best", "2026-01-01T00:00:00+00:00", "ana", "t2"],
                               ["b.jpg", "dog", "accept", "runs/x/best", "2026-01-01T00:00:00+00:00", "", "t3"]])
    code, stdout, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", decisions,
                                    "--out", tmp_path / "new.csv", "--by", "bo"])
    assert code == 0, stderr
    assert "1 new positive(s), 0 new negative(s), 1 already so" in stdout
    assert labels.read_text() == LABELS  # the original is never changed
    paths, names, matrix = read_table(tmp_path / "new.csv")
    _, _, before = read_table(labels)
    expected = before.copy()
    expected[0, 1] = 1
    assert paths == ["a.jpg", "b.jpg", "c.jpg"] and names == ["cat", "dog", "bird"]
    np.testing.assert_array_equal(matrix, expected)
    provenance = json.loads((tmp_path / "new.csv.provenance.json").read_text())
    assert provenance["changes"] == [{"image": "a.jpg", "class": "dog", "label": 1, "was": 0, "decision": "accept",
                                      "run": "runs/x/best", "suggested_at": "2026-01-01T00:00:00+00:00",
                                      "score": None, "reviewer": "ana", "decided_at": "t1"}]
    assert provenance["merged_by"] == "bo" and provenance["original"] == str(labels)
    # JSON lines out, rejected suggestions as observed negatives
    code, stdout, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", decisions,
                                    "--out", tmp_path / "new.jsonl", "--reject-as-negative"])
    assert code == 0, stderr
    _, names_j, matrix_j = read_table(tmp_path / "new.jsonl")
    expected[2, 0] = -1
    np.testing.assert_array_equal(matrix_j[:, [names_j.index(n) for n in names]], expected)


def test_bad_decisions_are_one_line_errors_and_write_nothing(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS)
    cases = {"image(s) not in": [["zebra.jpg", "cat", "accept"]], "unknown class(es) 'fish'": [["a.jpg", "fish", "accept"]],
             "is not accept or reject": [["a.jpg", "cat", "maybe"]]}
    for needle, rows in cases.items():
        decisions = tmp_path / "d.csv"
        decisions_file(decisions, [r + ["", "", "", ""] for r in rows])
        code, _, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", decisions,
                                   "--out", tmp_path / "new.csv"])
        assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "new.csv").exists() and not (tmp_path / "new.csv.provenance.json").exists()
    code, _, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", tmp_path / "d.csv", "--out", labels])
    assert code == 2 and "keeps the original" in stderr


def test_own_images_from_training_to_a_reviewed_label_file(tiny_bundle, tiny_settings, tmp_path):
    """The new user's path: own images with partial labels -> prepare -> train -> calibrate on
    partial validation labels -> suggest -> decisions -> a new label file for the same images."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = tiny_bundle.class_names
    rng = np.random.default_rng(0)
    lines = ["image," + ",".join(names)]
    for n, (image, full) in enumerate(zip(tiny_bundle.train.images.images[:40].numpy(), tiny_bundle.train.full[:40])):
        Image.fromarray(image).save(photos / f"p{n:02d}.png")
        cells = ["1" if (f and rng.random() < 0.5) else ("0" if (not f and rng.random() < 0.3) else "") for f in full]
        lines.append(f"p{n:02d}.png," + ",".join(cells))
    labels = photos / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    original = labels.read_text()
    code, _, stderr = run_cli(["prepare", "own", "--root", photos, "--out", tmp_path / "data", "--option", "labels=labels.csv"])
    assert code == 0, stderr
    run = pamc.train({**tiny_settings, "epochs": 1, "selection": "observed", "out": str(tmp_path / "run"),
                      "data": {"name": "prepared", "path": str(tmp_path / "data"), "image_size": 32}}).out
    code, stdout, stderr = run_cli(["calibrate", run, "--device", "cpu"])
    assert code == 0 and "partial labels" in stdout, stderr
    code, _, stderr = run_cli(["suggest-labels", run, "--out", tmp_path / "s.csv", "--top", "5", "--device", "cpu"])
    assert code == 0, stderr
    with open(tmp_path / "s.csv", newline="") as f:
        suggestions = list(csv.DictReader(f))
    decisions = tmp_path / "decisions.csv"
    decisions_file(decisions, [[s["image"], s["class"], "accept", s["run"], s["suggested_at"], "ana", "t"]
                               for s in suggestions[:3]])
    code, _, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", decisions, "--out", tmp_path / "new.csv"])
    assert code == 0, stderr
    assert labels.read_text() == original
    paths, classes, before = read_table(labels)
    _, _, after = read_table(tmp_path / "new.csv")
    changed = {(paths[i], classes[c]) for i, c in zip(*np.nonzero(after != before))}
    assert changed == {(s["image"], s["class"]) for s in suggestions[:3]}
    assert (after[after != before] == 1).all()
