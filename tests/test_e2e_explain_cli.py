"""The explanation and evaluation commands end to end through `pamc.apps.cli.main`: explain,
compare-explanations, tune-alpha (and the eval that follows it), eval of a torchvision classifier
with post-hoc BoostLU, and predict, on two tiny scene checkpoints (full labels and AN).

References are computed here, independently of the commands: the models' own forward passes,
sklearn's AP, and a hand-written BoostLU on the torchvision CAMs (spec 2.2).
"""
import contextlib
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.metrics import average_precision_score

from pamc import train
from pamc.checkpoint import load_model
from pamc.apps.cli import main
from pamc.data.scenes import make_scenes
from pamc.data.transforms import normalize_uint8
from pamc.labels import single_positive

ALPHAS = [1, 1.5, 2, 3, 4, 5, 6, 8, 10]  # tune-alpha's default sweep
PNG_MAGIC = b"\x89PNG"


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def ok(args) -> str:
    code, stdout, stderr = run_cli([*args, "--device", "cpu"])
    assert code == 0, stderr
    return stdout


def data_flags(data: dict) -> list[str]:
    return [f"--data={key}={json.dumps(value)}" for key, value in data.items()]


def probabilities(run, images: torch.Tensor, alpha: float) -> np.ndarray:
    model, _ = load_model(run)
    with torch.no_grad():
        return torch.sigmoid(model(normalize_uint8(images), alpha=alpha)).numpy()


def mean_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Percent mAP over all classes, a class without a positive counting 0 (spec 4)."""
    return 100 * np.mean([average_precision_score(labels[:, c], scores[:, c]) if labels[:, c].any() else 0.0
                          for c in range(labels.shape[1])])


def table_rows(stdout: str) -> dict[float, float]:
    """{alpha: mAP} of the `| alpha | mAP | ...` Markdown table a command printed (its first two columns)."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {float(row[0]): float(row[1]) for row in rows[1:]}


def csv_rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_settings):
    """Run folders of a full-label and an AN model, trained on conftest's tiny scenes."""
    base = tmp_path_factory.mktemp("explain-runs")
    return {method: train({**tiny_settings, "method": method, "out": str(base / method)}).out
            for method in ("full", "an")}


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, tiny_bundle):
    """The first two test scenes as PNG files (the scenes are grey, stored as H x W)."""
    folder = tmp_path_factory.mktemp("pngs")
    for n, image in enumerate(tiny_bundle.test.images.images[:2].numpy()):
        Image.fromarray(image).save(folder / f"scene{n}.png")
    return folder


def check_overlays(out, stdout: str, run, images: torch.Tensor, names: list[str], class_names: list[str]) -> None:
    """scores.csv lists, per image, the model's top-3 classes with their probabilities, each with its PNG."""
    rows = csv_rows(out / "scores.csv")
    assert rows[0] == ["image", "rank", "class", "probability", "logit", "cam_peak", "cam_positive_mean", "overlay"]
    assert stdout.startswith(f"wrote {len(names) * 3} overlays and {out / 'scores.csv'}")
    probs = probabilities(run, images, alpha=1.0)
    expected = [(name, rank, class_names[c]) for name, p in zip(names, probs)
                for rank, c in enumerate(np.argsort(-p, kind="stable")[:3], start=1)]
    assert [(r[0], int(r[1]), r[2]) for r in rows[1:]] == expected
    got = np.array([float(r[3]) for r in rows[1:]])
    np.testing.assert_allclose(got, np.sort(probs, axis=1)[:, ::-1][:, :3].ravel(), atol=1e-5)
    for row in rows[1:]:
        assert (out / row[-1]).read_bytes()[:4] == PNG_MAGIC
    assert len(list(out.glob("*.png"))) == len(names) * 3


def test_explain_the_test_split_of_the_runs_data(runs, tiny_bundle, tmp_path):
    out = tmp_path / "explain"
    stdout = ok(["explain", runs["an"], "--split", "test", "--max-images", "2", "--out", out])
    test = tiny_bundle.test
    assert test.names is None  # scenes have no file names: the images are numbered
    check_overlays(out, stdout, runs["an"], test.images.take(torch.arange(2)), ["image00000", "image00001"],
                   tiny_bundle.class_names)


def test_explain_a_folder_of_pngs(runs, tiny_bundle, png_folder, tmp_path):
    out = tmp_path / "explain"
    stdout = ok(["explain", runs["an"], png_folder, "--out", out])
    check_overlays(out, stdout, runs["an"], tiny_bundle.test.images.take(torch.arange(2)),
                   [str(png_folder / f"scene{n}.png") for n in range(2)], tiny_bundle.class_names)


def test_compare_explanations_writes_the_report(runs, tmp_path):
    out = tmp_path / "compare"
    stdout = ok(["compare-explanations", runs["full"], runs["an"], "--labels", "full", "AN", "--boost-alpha", "5",
                 "--out", out, "--max-images", "20"])
    assert f"wrote {out / 'report.md'}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    boosted = "AN + BoostLU(5)"
    assert summary["num_images"] == 20 and summary["reference"] == "full"
    assert set(summary["gap"]) == {"AN", boosted} and set(summary["localization"]) == {"full", "AN", boosted}
    # BoostLU(5) multiplies the positive part of every CAM by 5, so the peak ratio to the
    # reference grows exactly 5-fold
    peak = {n: summary["gap"][n]["scale"]["peak"]["positive"] for n in ("AN", boosted)}
    assert peak[boosted] == pytest.approx(5 * peak["AN"], rel=1e-6)
    loc = summary["localization"]
    assert len({loc[n]["box_area_share"] for n in loc}) == 1  # the boxes' area: the same images for all
    assert all(0.0 <= loc[n][key] <= 1.0 for n in loc for key in ("energy_share", "pointing_game"))
    markdown = (out / "report.md").read_text()
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert summary["figures"]
    for name in summary["figures"].values():
        assert (out / name).read_bytes()[:4] == PNG_MAGIC and name in markdown


def test_tune_alpha_on_observed_labels_stores_the_best_for_eval(runs, tiny_bundle, tmp_path):
    run = tmp_path / "an"
    shutil.copytree(runs["an"], run)  # --store edits the checkpoint; the other tests keep theirs
    alphas = [2, 5, 8]  # none is the training alpha 1, so eval's alpha shows where it came from
    stdout = ok(["tune-alpha", run, "--mode", "observed", "--alphas", *alphas, "--store", "--out", tmp_path / "tuned"])
    table = table_rows(stdout)
    val = tiny_bundle.val
    images, observed = val.images.take(torch.arange(len(val))), single_positive(val.full, seed=1200)
    expected = [mean_ap(probabilities(run, images, a), (observed == 1).astype(int)) for a in alphas]
    assert list(table) == alphas
    np.testing.assert_allclose(list(table.values()), expected, atol=0.006)
    best = float(re.search(r"best alpha (\S+), stored in (\S+)", stdout).group(1))
    assert table[best] == max(table.values()) and f"stored in {run / 'best' / 'model.json'}" in stdout
    assert json.loads((run / "best" / "model.json").read_text())["eval_alpha"] == best
    assert list(table_rows(ok(["eval", run]))) == [best]  # the stored alpha is the one eval uses


def test_tune_alpha_on_full_labels_agrees_with_eval(runs, tmp_path):
    before = (runs["an"] / "best" / "model.json").read_text()
    tuned = table_rows(ok(["tune-alpha", runs["an"], "--mode", "full", "--out", tmp_path / "tuned"]))
    evaluated = table_rows(ok(["eval", runs["an"], "--split", "val", "--alpha", *map(str, ALPHAS)]))
    assert list(tuned) == ALPHAS and tuned == pytest.approx(evaluated, abs=0.011)
    assert (runs["an"] / "best" / "model.json").read_text() == before  # nothing stored without --store


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """Random-weight torchvision resnet18 state dicts: 10 classes (the digit scenes') and 5."""
    folder = tmp_path_factory.mktemp("torchvision")
    files = {}
    for classes in (10, 5):
        torch.manual_seed(classes)
        files[classes] = folder / f"resnet18_{classes}.pth"
        torch.save(torchvision.models.resnet18(num_classes=classes).state_dict(), files[classes])
    return files


def test_eval_boosts_a_torchvision_classifier(resnet_files, tiny_settings):
    # 64 px scenes give 2 x 2 CAMs, where boosting changes the ranking (at 1 x 1 it cannot)
    data = {**tiny_settings["data"], "canvas": 64, "object_scale": [20, 28], "n_train": 8, "n_val": 8}
    stdout = ok(["eval", "--torchvision", f"resnet18={resnet_files[10]}", "--boost-alpha", "2", *data_flags(data)])
    assert "| alpha | mAP |" in stdout
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(resnet_files[10], weights_only=True))
    test = make_scenes(**{k: v for k, v in data.items() if k != "name"}).test
    with torch.no_grad():
        features = torch.nn.Sequential(*list(model.children())[:-2]).eval()(
            normalize_uint8(test.images.take(torch.arange(len(test)))))
        cams = torch.einsum("nchw,kc->nkhw", features, model.fc.weight) + model.fc.bias[:, None, None]
        logits = torch.where(cams > 0, 2 * cams, cams).mean(dim=(2, 3))
    assert features.shape[-2:] == (2, 2)
    assert table_rows(stdout) == {2.0: pytest.approx(mean_ap(torch.sigmoid(logits).numpy(), test.full), abs=0.006)}


def test_eval_of_a_torchvision_classifier_for_other_classes_is_one_line(resnet_files, tiny_settings):
    code, _, stderr = run_cli(["eval", "--torchvision", f"resnet18={resnet_files[5]}", "--boost-alpha", "2",
                               *data_flags(tiny_settings["data"]), "--device", "cpu"])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pamc: error: "), stderr
    assert "5 classes" in lines[0] and "10" in lines[0]


def test_predict_a_folder(runs, tiny_bundle, png_folder, tmp_path):
    target = tmp_path / "scores.csv"
    assert "scores for 2 images written to" in ok(["predict", runs["full"], png_folder, "--out", target])
    rows = csv_rows(target)
    assert rows[0] == ["image", *tiny_bundle.class_names, "predicted"]
    assert [r[0] for r in rows[1:]] == [str(png_folder / f"scene{n}.png") for n in range(2)]
    expected = probabilities(runs["full"], tiny_bundle.test.images.take(torch.arange(2)), alpha=1.0)
    np.testing.assert_allclose([[float(v) for v in r[1:-1]] for r in rows[1:]], expected, atol=1e-5)
