"""Explanation tools: CAMs, the full-vs-partial gap measures, localisation, overlays, reports,
alpha tuning."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from pamc.checkpoint import load_model, read_meta, save_model
from pamc.data import ArrayImages, Split
from pamc.errors import PamcError
from pamc.explain import (cams, compare_explanations, explain_command, gap_measures, localization_scores,
                          save_overlays, store_eval_alpha, tune_alpha, tune_alpha_command, upsample)
from pamc.explain.gap import rank, spatial_pearson, spatial_spearman, top_region_iou
from pamc.metrics import mean_average_precision
from pamc.models import CamClassifier

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PixelBackbone(nn.Identity):
    """Feature map = the (normalised) input itself, so CAMs are hand-computable."""
    out_channels = 3


def pixel_model(alpha=1.0):
    model = CamClassifier(PixelBackbone(), 2, alpha=alpha)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])[:, :, None, None])
        model.head.bias.copy_(torch.tensor([0.1, -0.3]))
    return model


def manual_cam(x):
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])
    return torch.einsum("kc,nchw->nkhw", w, x) + torch.tensor([0.1, -0.3])[None, :, None, None]


# ----------------------------------------------------------------------------- CAMs


def test_cams_are_raw_selected_and_boosted():
    x = torch.randn(5, 3, 4, 6)
    model = pixel_model(alpha=3.0)
    want = manual_cam(x)
    assert torch.allclose(cams(model, x, batch_size=2), want, atol=1e-6)
    picked = cams(model, x, classes=["b", 0], class_names=["a", "b"])
    assert torch.allclose(picked, want[:, [1, 0]], atol=1e-6)
    boosted = cams(model, x, boosted=True)  # the model's alpha, 3
    assert torch.allclose(boosted, torch.where(want > 0, 3 * want, want), atol=1e-6)
    assert torch.allclose(cams(model, x, alpha=2.0), torch.where(want > 0, 2 * want, want), atol=1e-6)
    with pytest.raises(PamcError, match="unknown class 'c'; valid: a, b"):
        cams(model, x, classes=["c"], class_names=["a", "b"])
    with pytest.raises(PamcError, match="out of range"):
        cams(model, x, classes=[2])


def test_uint8_images_are_imagenet_normalised():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    want = manual_cam((x.float() / 255 - MEAN) / STD)
    assert torch.allclose(cams(pixel_model(), x), want, atol=1e-5)


def test_upsample_shapes_and_values():
    maps = torch.randn(2, 3, 4, 4)
    assert upsample(maps, 16).shape == (2, 3, 16, 16)
    assert upsample(maps[0, 0], (8, 12)).shape == (8, 12)
    assert torch.allclose(upsample(maps, 4), maps)
    assert torch.allclose(upsample(torch.full((1, 2, 2), 1.5), 7), torch.full((1, 7, 7), 1.5))


# ----------------------------------------------------------------------------- gap measures


def test_half_scale_gives_ratio_half_and_perfect_structure():
    torch.manual_seed(0)
    a = torch.randn(6, 3, 5, 5) + 0.5
    labels = np.zeros((6, 3), dtype=int)
    labels[:, 0] = 1
    labels[::2, 1] = 1
    g = gap_measures(a, 0.5 * a, labels)
    for stat in ("peak", "positive_mean"):
        for group in ("positive", "negative"):
            assert g["scale"][stat][group] == pytest.approx(0.5)
    assert g["scale"]["peak"]["per_class_positive"][2] is None  # class 2 never present
    for measure in ("pearson", "spearman", "top20_iou"):
        assert g["structure"][measure]["positive"] == pytest.approx(1.0)


def test_scale_is_a_ratio_of_means_split_by_label():
    a = torch.zeros(2, 2, 1, 2)
    a[0, 0, 0, 0], a[1, 0, 0, 0] = 1.0, 3.0  # positive pairs: reference peaks 1 and 3
    a[:, 1, 0, 0] = 2.0  # negative pairs
    b = a.clone()
    b[1, 0, 0, 0] = 1.0  # the partial model's peaks: 1 and 1 -> (1 + 1) / (1 + 3)
    b[:, 1] *= 2
    g = gap_measures(a, b, np.array([[1, 0], [1, 0]]))
    assert g["scale"]["peak"]["positive"] == pytest.approx(0.5)
    assert g["scale"]["peak"]["negative"] == pytest.approx(2.0)
    assert g["scale"]["positive_mean"]["per_class_positive"] == [pytest.approx(0.5), None]


def test_correlations_match_numpy_and_scipy():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 2, 6, 6, generator=gen)
    b = (a + torch.randn(4, 2, 6, 6, generator=gen)).round()  # rounding creates ties
    pearson, spearman = spatial_pearson(a, b), spatial_spearman(a, b)
    for n in range(4):
        for c in range(2):
            x, y = a[n, c].flatten().numpy(), b[n, c].flatten().numpy()
            assert pearson[n, c] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-5)
            assert spearman[n, c] == pytest.approx(spearmanr(x, y).statistic, abs=1e-5)
    assert rank(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert rank(torch.tensor([3.0, 1.0, 3.0, 2.0]), ties="ordinal").tolist() == [2.0, 0.0, 3.0, 1.0]
    assert torch.isnan(spatial_pearson(torch.ones(1, 1, 2, 2), a[:1, :1, :2, :2]))[0, 0]


def test_top_region_iou():
    a = torch.tensor([5.0, 4, 3, 2, 1]).view(1, 1, 1, 5)
    b = a.flip(-1)
    assert top_region_iou(a, b, q=0.4).item() == 0.0
    assert top_region_iou(a, b, q=0.6).item() == pytest.approx(1 / 5)
    assert top_region_iou(a, a, q=0.01).item() == 1.0  # at least one position


# ----------------------------------------------------------------------------- localisation


def test_localization_scores():
    maps = torch.full((2, 3, 8, 8), -1.0)
    maps[0, 0, 0:2, 0:2] = 3.0 / 4  # energy 3 inside class 0's box ...
    maps[0, 0, 7, 7] = 1.0  # ... and 1 outside, where the maximum is
    maps[0, 1, 4:6, 4:6] = 2.0  # class 1: all energy and the maximum inside
    # image 1: class 2's map has no positive value anywhere; its maximum is outside the box
    maps[1, 2, 0, 0] = -0.5
    boxes = [[(0, 0, 0, 2, 2), (1, 4, 4, 8, 8)], [(2, 4, 4, 6, 6)]]
    s = localization_scores(maps, boxes, 8)
    assert s["pairs"] == 3
    assert s["energy_share"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert s["pointing_game"] == pytest.approx(1 / 3)
    assert s["box_area_share"] == pytest.approx((4 / 64 + 16 / 64 + 4 / 64) / 3)
    assert [p["pairs"] for p in s["per_class"]] == [1, 1, 1]
    assert s["per_class"][1]["pointing_game"] == 1.0 and s["per_class"][0]["pointing_game"] == 0.0
    with pytest.raises(PamcError, match="invalid"):
        localization_scores(maps, [[(0, 0, 0, 9, 2)], []], 8)


# ----------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def scene_checkpoints(tmp_path_factory):
    """A random scene-cnn model and the same model with its CAM head halved (CAM_B = 0.5 CAM_A)."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = CamClassifier("scene-cnn", 3).eval()
    with torch.no_grad():
        model.head.bias.fill_(0.5)  # some positive attribution everywhere, so the scale ratios are defined
    meta = {"backbone": "scene-cnn", "num_classes": 3, "class_names": ["cat", "dog", "sky"], "alpha": 1.0,
            "image_size": 32}
    save_model(root / "full", model, meta)
    with torch.no_grad():
        model.head.weight.mul_(0.5)
        model.head.bias.mul_(0.5)
    save_model(root / "partial" / "best", model, meta)
    return root / "full", root / "partial"


def scene_split(n=6, size=32):
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    full = np.zeros((n, 3), dtype=int)
    boxes = []
    for i in range(n):
        classes = [i % 3, (i + 1) % 3]
        full[i, classes] = 1
        boxes.append([(c, 4 * k, 4 * k, 4 * k + 12, 4 * k + 12) for k, c in enumerate(classes)])
    return Split(images=ArrayImages(images), full=full, boxes=boxes)


def test_explain_command_writes_overlays_and_scores(tmp_path, scene_checkpoints):
    full_ckpt, _ = scene_checkpoints
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    written = explain_command(full_ckpt, folder, tmp_path / "out", top_k=2)
    assert sorted(p.name for p in written if p.suffix == ".png") == sorted(
        p.name for p in (tmp_path / "out").glob("*.png"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert len(rows) == 4 and [r["rank"] for r in rows] == ["1", "2", "1", "2"]
    model, _ = load_model(full_ckpt)
    from pamc.data.images import decode
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(decode(folder / "a.png"), [32, 32], antialias=True)
    with torch.no_grad():
        probs = torch.sigmoid(model(((image[None].float() / 255) - MEAN) / STD))[0]
    assert rows[0]["class"] == ["cat", "dog", "sky"][int(probs.argmax())]
    assert float(rows[0]["probability"]) == pytest.approx(float(probs.max()), abs=1e-5)
    maps = cams(model, image[None])[0]
    assert float(rows[0]["cam_peak"]) == pytest.approx(float(maps[int(probs.argmax())].clamp(min=0).max()), abs=1e-5)

    named = explain_command(full_ckpt, [folder / "a.png"], tmp_path / "named", classes=["sky"], boosted=True)
    assert [p.name for p in named] == ["a__sky.png", "scores.csv"]
    with pytest.raises(PamcError, match="unknown class 'cow'; valid: cat, dog, sky"):
        explain_command(full_ckpt, folder, tmp_path / "bad", classes=["cow"])


def test_save_overlays_per_image_classes(tmp_path):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    maps = torch.randn(2, 3, 4, 4)
    paths = save_overlays(images, maps, tmp_path, ["a b", "c", "d"], names=["x", "x"], classes=[[0], [1, 2]], vmax=2.0)
    assert [p.name for p in paths] == ["x_0__a_b.png", "x_1__c.png", "x_1__d.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_compare_explanations(tmp_path, scene_checkpoints):
    full_ckpt, partial_ckpt = scene_checkpoints
    split = scene_split()
    summary = compare_explanations([full_ckpt, partial_ckpt], split, tmp_path, boosted_alpha=2.0, max_images=5)
    assert summary["models"] == ["full", "partial", "partial + BoostLU(2)"]
    assert summary["num_images"] == 5
    gap = summary["gap"]
    assert gap["partial"]["scale"]["peak"]["positive"] == pytest.approx(0.5, abs=1e-5)
    assert gap["partial"]["structure"]["pearson"]["positive"] == pytest.approx(1.0, abs=1e-5)
    # BoostLU(2) on the halved maps restores the positive part exactly: the gap is closed
    assert gap["partial + BoostLU(2)"]["scale"]["peak"]["positive"] == pytest.approx(1.0, abs=1e-5)
    assert gap["partial + BoostLU(2)"]["scale"]["positive_mean"]["negative"] == pytest.approx(1.0, abs=1e-5)
    loc = summary["localization"]
    assert loc["full"]["pairs"] == 10
    assert loc["partial"]["energy_share"] == pytest.approx(loc["full"]["energy_share"], abs=1e-5)
    assert json.loads((tmp_path / "summary.json").read_text())["gap"]["partial"]["scale"] == gap["partial"]["scale"]
    for name in ("histograms.png", "scatter.png", "class_ratios.png", "examples.png", "report.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "](histograms.png)" in report and "| partial | 0.5" in report
    with pytest.raises(PamcError, match="at least two checkpoints"):
        compare_explanations([full_ckpt], split, tmp_path)


def test_tune_alpha_matches_direct_evaluation(tmp_path, scene_checkpoints):
    full_ckpt, _ = scene_checkpoints
    model, _ = load_model(full_ckpt)
    split = scene_split(n=12)
    images = split.images.take(torch.arange(12))
    alphas = (1, 2, 5)
    result = tune_alpha(model, images, split.full, alphas=alphas, out_dir=tmp_path)
    x = ((images.float() / 255) - MEAN) / STD
    with torch.no_grad():
        direct = [mean_average_precision(torch.sigmoid(model(x, alpha=a)), split.full) for a in alphas]
    assert [r["map"] for r in result["table"]] == pytest.approx(direct, abs=1e-6)
    assert result["best_alpha"] == alphas[int(np.argmax(direct))]
    for name in ("alpha_map.png", "alpha_table.csv", "alpha_table.md"):
        assert (tmp_path / name).stat().st_size > 0

    observed = np.where(split.full == 1, -1, 0)
    observed[np.arange(12), split.full.argmax(axis=1)] = 1
    obs = tune_alpha(model, split.images, observed, alphas=(1, 3), mode="observed")
    with torch.no_grad():
        want = mean_average_precision(torch.sigmoid(model(x, alpha=3.0)), observed == 1)
    assert obs["table"][1]["map"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(PamcError, match="unknown tuning mode"):
        tune_alpha(model, images, split.full, mode="partial")


def test_tune_alpha_command_stores_eval_alpha(tmp_path, scene_checkpoints):
    _, partial_ckpt = scene_checkpoints
    result = tune_alpha_command(partial_ckpt, scene_split(), tmp_path, alphas=(1, 4), store=True)
    assert read_meta(partial_ckpt / "best").eval_alpha == result["best_alpha"]
    store_eval_alpha(partial_ckpt, 1.0)
    assert read_meta(partial_ckpt / "best").eval_alpha == 1.0
    with pytest.raises(PamcError, match="alpha must be >= 1"):
        store_eval_alpha(partial_ckpt, 0.5)
