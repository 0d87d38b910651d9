"""Cached features of mirrored images (`pamc.features`, ``flip``), the manifest that guards a cache
file against another backbone, and "+ LI" phase 1 with the flip augmentation on cached features."""
import json
import shutil

import numpy as np
import pytest
import torch

import pamc
from pamc import features as F
from pamc.config import TrainConfig
from pamc.data.transforms import normalize_uint8
from pamc.errors import PamcError
from pamc.linear_init import LinearInit
from pamc.models import build_backbone
from pamc.runtime import Runtime


@pytest.fixture
def runtime():
    return Runtime.from_config(TrainConfig(device="cpu"))


def backbone(seed: int):
    torch.manual_seed(seed)
    return build_backbone("scene-cnn").eval()


def test_flipped_features_are_those_of_the_mirrored_images_and_are_reused(tiny_bundle, runtime, tmp_path, monkeypatch):
    net, images = backbone(0), tiny_bundle.val.images
    plain = F.extract_features(net, images, runtime, tmp_path, spatial=True)
    mirrored = F.extract_features(net, images, runtime, tmp_path, spatial=True, flip=True)
    assert plain.filename != mirrored.filename and "flipped" in str(mirrored.filename)
    x = torch.stack([images[i] for i in range(len(images))])
    with torch.no_grad():
        want_plain = net(normalize_uint8(x)).numpy()
        want_mirrored = net(normalize_uint8(x).flip(-1)).numpy()  # computed here, not by pamc
    np.testing.assert_allclose(plain, want_plain, rtol=1e-2, atol=1e-2)  # float16
    np.testing.assert_allclose(mirrored, want_mirrored, rtol=1e-2, atol=1e-2)
    assert not np.allclose(mirrored, want_plain, atol=1e-2)
    manifest = json.loads(F.manifest_path(mirrored.filename).read_text())
    assert manifest["backbone"] == type(net).__name__ and manifest["key"]["flip"] is True
    monkeypatch.setattr(F, "_compute", lambda *a, **k: pytest.fail("features were extracted again"))
    again = F.extract_features(net, images, runtime, tmp_path, spatial=True, flip=True)
    np.testing.assert_array_equal(again, mirrored)
    # the unflipped files keep the names they had before flips were cached (no "flip" in their key)
    assert "flip" not in F.cache_key(net, images, runtime, spatial=True)


def test_a_cache_file_of_another_backbone_is_a_one_line_error(tiny_bundle, runtime, tmp_path):
    images = tiny_bundle.val.images
    first, second = backbone(0), backbone(1)
    made = F.extract_features(first, images, runtime, tmp_path)
    other = F.feature_cache_path(second, images, runtime, cache=tmp_path)
    shutil.copy(made.filename, other)  # a file put where the second backbone's features belong
    shutil.copy(F.manifest_path(made.filename), F.manifest_path(other))
    with pytest.raises(PamcError, match="was computed with another backbone .*delete it or use another cache folder") as error:
        F.extract_features(second, images, runtime, tmp_path)
    assert "\n" not in str(error.value)


def test_phase_one_trains_on_flipped_features(tiny_bundle, tiny_settings, tmp_path):
    cfg = {**tiny_settings, "method": "an", "epochs": 1, "out": str(tmp_path / "run"),
           "linear_init": {"epochs": 2, "spatial": True, "flip": True, "cache": str(tmp_path / "features")}}
    pamc.train(cfg, bundle=tiny_bundle)
    summary = json.loads((tmp_path / "run" / "linear_init.json").read_text())
    assert summary["flip"] is True and "flipped" in summary["features"]["train_flipped"]
    assert len(summary["history"]) == 2 and all(np.isfinite(h["train_loss"]) for h in summary["history"])
    with pytest.raises(PamcError, match="linear_init flip must be true or false"):
        LinearInit.from_config({"flip": "yes"})
