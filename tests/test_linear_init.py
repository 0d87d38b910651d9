""""+ LI": the frozen-feature cache and phase 1 of linear initialisation, on tiny scenes."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score

import pamc
from pamc import features as F
from pamc import linear_init as LI
from pamc.data.transforms import normalize_uint8
from pamc.runtime import Runtime
from pamc.config import TrainConfig
from pamc.errors import PamcError
from pamc.models import build_backbone


@pytest.fixture
def spy(monkeypatch):
    """Records the run's state just before and just after phase 1."""
    seen = {}
    original = LI.LinearInit.run

    def wrapped(self, model, loss_fn, store, *args, **kwargs):
        seen["backbone"] = copy.deepcopy(model.backbone)
        seen["head_before"] = {k: v.clone() for k, v in model.head.state_dict().items()}
        if hasattr(loss_fn, "logits"):
            seen["theta_before"] = loss_fn.logits.detach().clone()
        summary = original(self, model, loss_fn, store, *args, **kwargs)
        seen["head_after"] = {k: v.clone() for k, v in model.head.state_dict().items()}
        if hasattr(loss_fn, "logits"):
            seen["theta_after"] = loss_fn.logits.detach().clone()
        seen["label_edits_after"] = store.num_edits()
        seen["summary"] = summary
        return summary

    monkeypatch.setattr(LI.LinearInit, "run", wrapped)
    return seen


def _config(tiny_config, tmp_path, name, **extra):
    return {**tiny_config, "backbone": "scene-cnn", "epochs": 1, "lr": 1e-4, "out": str(tmp_path / name),
            "linear_init": {"epochs": 3, "cache": str(tmp_path / "features")}, **extra}


def _map(scores, full):
    return 100 * np.mean([average_precision_score(full[:, c], scores[:, c]) if full[:, c].any() else 0.0
                          for c in range(full.shape[1])])


def test_role_linear_init_keeps_best_head_and_estimates(tiny_bundle, tiny_config, tmp_path, spy, monkeypatch):
    thetas = []  # Theta after each phase-1 epoch's training, recorded when that epoch is validated
    validate = LI._val_map

    def recording(run, *args):
        thetas.append(run.loss_fn.logits.detach().clone())
        return validate(run, *args)

    monkeypatch.setattr(LI, "_val_map", recording)
    cfg = _config(tiny_config, tmp_path, "role", method="role", loss={"k": 2.0})
    pamc.train(cfg, bundle=tiny_bundle)
    out = tmp_path / "role"
    summary = json.loads((out / "linear_init.json").read_text())
    saved = load_file(str(out / "linear_init.safetensors"))

    # the head moved away from its random init and is exactly the saved best phase-1 head
    assert not torch.equal(spy["head_before"]["weight"], spy["head_after"]["weight"])
    for k in ("weight", "bias"):
        assert torch.equal(spy["head_after"][k], saved[f"head.{k}"])
    # best epoch = first epoch with the highest val mAP
    maps = [h["val_map"] for h in summary["history"]]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert summary["best_epoch"] == 1 + int(np.argmax(maps)) and summary["best_val_map"] == max(maps)

    # the cached features are the pooled eval-mode backbone features (no flip), in float16
    backbone = spy["backbone"].eval()
    val = tiny_bundle.val
    with torch.no_grad():
        expected = backbone(normalize_uint8(val.images.images[:, None].expand(-1, 3, -1, -1))).mean(dim=(2, 3)).numpy()
    cached = np.load(summary["features"]["val"])
    assert cached.dtype == np.float16 and cached.shape == expected.shape
    np.testing.assert_allclose(cached.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    # the saved head scores those features to the reported best val mAP (1x1 conv == linear layer)
    w, b = saved["head.weight"][:, :, 0, 0].numpy(), saved["head.bias"].numpy()
    scores = 1 / (1 + np.exp(-(cached.astype(np.float32) @ w.T + b)))
    assert _map(scores, val.full) == pytest.approx(summary["best_val_map"], abs=1e-6)

    # ROLE's Theta was trained in phase 1 and restarts from the estimates of the best epoch
    estimates = saved["estimates"]
    assert len(thetas) == 3 and not torch.allclose(thetas[0], spy["theta_before"], atol=1e-3)
    torch.testing.assert_close(estimates, thetas[summary["best_epoch"] - 1].sigmoid())
    torch.testing.assert_close(spy["theta_after"], torch.logit(estimates.double(), eps=1e-5).float())


def test_feature_cache_is_reused_by_the_next_run(tiny_bundle, tiny_config, tmp_path, spy, monkeypatch):
    first = _config(tiny_config, tmp_path, "an-1", method="an")
    pamc.train(first, bundle=tiny_bundle)
    files = sorted((tmp_path / "features").glob("*.npy"))
    assert len(files) == 2  # train and val (each with its .json manifest)
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(F, "_compute", no_extraction)
    pamc.train({**first, "out": str(tmp_path / "an-2")}, bundle=tiny_bundle)
    assert sorted((tmp_path / "features").glob("*.npy")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    one, two = (json.loads((tmp_path / n / "linear_init.json").read_text()) for n in ("an-1", "an-2"))
    assert one["history"] == two["history"]  # same seed, same features: the same phase 1


def test_cache_key_follows_weights_and_images(tiny_bundle):
    rt = Runtime.from_config(TrainConfig(device="cpu"))
    torch.manual_seed(0)
    net = build_backbone("scene-cnn")
    train, val = tiny_bundle.train.images, tiny_bundle.val.images
    path = F.feature_cache_path(net, train, rt)
    assert F.feature_cache_path(copy.deepcopy(net), train, rt) == path
    assert F.feature_cache_path(net, val, rt) != path
    assert F.feature_cache_path(net, train, rt, spatial=True) != path
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3
    assert F.feature_cache_path(net, train, rt) != path


def test_spatial_phase_trains_with_boostlu_and_keeps_label_edits_private(tiny_bundle, tiny_config, tmp_path, spy):
    cfg = _config(tiny_config, tmp_path, "llcp", method="ll-cp", alpha=3.0)
    cfg["linear_init"] = {**cfg["linear_init"], "spatial": True}
    pamc.train(cfg, bundle=tiny_bundle)
    summary = spy["summary"]
    assert summary["train_alpha"] == 3.0 and summary["eval_alpha"] == 3.0
    feats = np.load(summary["features"]["train"], mmap_mode="r")
    channels = pamc.models.build_backbone("scene-cnn").out_channels
    assert feats.shape == (len(tiny_bundle.train), channels, 4, 4)  # 32 px / 8
    # LL-Cp corrected labels in phase 1 (from its epoch 2) but phase 2 starts from the observed ones
    assert sum(h["label_edits"] for h in summary["history"]) > 0
    assert spy["label_edits_after"] == 0


@pytest.mark.parametrize("value, problem", [
    ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"batch_size": 2.5}, "batch_size"),
    ({"lr": "fast"}, "lr"), ({"spatial": "yes"}, "spatial"),
    ({"epoch": 3}, "unknown linear_init setting"), ("yes", "must be a mapping"),
])
def test_bad_settings_are_one_line_errors(value, problem):
    with pytest.raises(PamcError, match=problem):
        LI.LinearInit.from_config(value)


def test_true_means_the_reference_defaults():
    settings = LI.LinearInit.from_config(True)
    assert (settings.epochs, settings.lr, settings.batch_size, settings.spatial) == (25, 1e-3, 16, False)
    assert LI.LinearInit.from_config({"lr": "1e-4"}).lr == 1e-4  # as YAML reads 1e-4
