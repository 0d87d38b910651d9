"""The frozen-backbone ("linear") protocol (`pamc.frozen`, ``freeze_backbone``): one step equals the
head trained by hand on the same cached features; the backbone never changes; the feature cache
is reused and invalidated; exact mid-epoch resume; best/ is a complete model that `pamc eval`
reads; what the protocol refuses."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import pamc
from pamc import features
from pamc.apps.cli import main
from pamc.config import TrainConfig, make_config
from pamc.engine import Run
from pamc.errors import PamcError
from pamc.models import build_backbone
from pamc.preemption import Preempted

from test_engine import assert_same_weights, metric_lines, without_timing
from test_preemption import SignalAt


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A scene-cnn weights file (the frozen protocol wants a backbone with weights)."""
    def make(seed: int):
        torch.manual_seed(seed)
        state = build_backbone("scene-cnn").state_dict()
        path = tmp_path_factory.mktemp("weights") / f"scene-cnn-{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return str(path)
    return make


@pytest.fixture
def frozen(tiny_config, weights, tmp_path):
    return {**tiny_config, "freeze_backbone": True, "backbone_weights": weights(0), "tensorboard": "off",
            "amp": "off"}


def test_one_step_equals_the_head_trained_by_hand_on_the_cached_features(frozen, tiny_bundle):
    """One global batch, AN with BoostLU (alpha 2): the run's head after its single Adam step and
    its epoch loss equal a step computed here from the cached plain / mirrored maps."""
    cfg = {**frozen, "epochs": 1, "batch_size": len(tiny_bundle.train), "method": "an", "alpha": 2.0, "lr": 1e-3}
    run = Run(make_config({**TrainConfig().to_dict(), **cfg}), tiny_bundle)
    w0, b0 = run.model.head.weight.detach().clone(), run.model.head.bias.detach().clone()
    observed = run.store.batch(torch.arange(len(tiny_bundle.train))).clone()
    train_maps = run.bundle.train.images.views
    result = run.fit()
    # by hand: the same files, the engine's seeded flips of epoch 1 (seed * 7919 + epoch)
    n = len(tiny_bundle.train)
    flips = torch.rand(n, generator=torch.Generator().manual_seed(0 * 7919 + 1)) < 0.5
    plain, mirrored = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in train_maps)
    x = torch.where(flips[:, None, None, None], mirrored, plain)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    cams = F.conv2d(x, w, b)
    logits = torch.where(cams > 0, 2.0 * cams, cams).mean(dim=(2, 3))  # BoostLU, alpha 2, then GAP
    loss = F.binary_cross_entropy_with_logits(logits, (observed == 1).float())  # AN
    loss.backward()
    opt = torch.optim.Adam([w, b], lr=cfg["lr"] * 10.0)  # the head's lr: lr * lr_mult
    opt.step()
    trained = load_file(str(result.out / "last/model.safetensors"))
    torch.testing.assert_close(trained["head.weight"], w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trained["head.bias"], b.detach(), rtol=1e-5, atol=1e-6)
    assert metric_lines(result.out)[0]["train_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)


def test_the_backbone_is_unchanged_and_best_is_a_complete_model_pamc_eval_reads(frozen, tiny_bundle, weights,
                                                                                  tmp_path, capsys):
    """EM-APL (epoch-level label feedback) with BoostLU at training and inference; the backbone in
    last/ and best/ is the weights file bit for bit; `pamc eval` of best/ gives results' test mAP."""
    cfg = {**frozen, "epochs": 3, "method": "em-apl", "loss": {"warmup": 1}, "alpha": 2.0, "eval_alpha": 3.0}
    result = pamc.train(cfg, bundle=tiny_bundle)
    start = load_file(weights(0))
    for which in ("last", "best"):
        saved = load_file(str(result.out / which / "model.safetensors"))
        assert_same_weights({k[len("backbone."):]: v for k, v in saved.items() if k.startswith("backbone.")}, start)
        assert {"head.weight", "head.bias"} <= saved.keys()
    assert result.results["stored_label_edits"] > 0  # the pseudo-labelling rounds ran on the features
    assert main(["eval", str(result.out / "best"), "--out", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["rows"][0]["alpha"] == 3.0
    assert evaluated["rows"][0]["map"] == pytest.approx(result.test_map, abs=1e-9)
    capsys.readouterr()
    assert main(["table", str(result.out)]) == 0
    assert "EM + APL + BoostLU (alpha 2, eval alpha 3) [frozen backbone]" in capsys.readouterr().out


def test_the_feature_cache_is_reused_and_invalidated_by_another_backbone_or_size(frozen, tiny_bundle, weights,
                                                                                 tmp_path, monkeypatch):
    cache = features.feature_dir()
    pamc.train({**frozen, "epochs": 1}, bundle=tiny_bundle)
    before = set(cache.glob("*.npy"))
    computed = []
    original = features._compute
    monkeypatch.setattr(features, "_compute", lambda *a, **k: (computed.append(a[3]), original(*a, **k)))
    pamc.train({**frozen, "epochs": 1, "method": "ll-r", "out": str(tmp_path / "again")}, bundle=tiny_bundle)
    assert computed == [] and set(cache.glob("*.npy")) == before  # the same three files, read back
    pamc.train({**frozen, "epochs": 1, "backbone_weights": weights(1), "out": str(tmp_path / "other")},
               bundle=tiny_bundle)
    assert len(computed) == 3 and not set(computed) & before  # train, mirrored train, val: new files
    from pamc.data.scenes import make_scenes
    data = {**frozen["data"], "canvas": 40}
    bigger = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    pamc.train({**frozen, "data": data, "epochs": 1, "out": str(tmp_path / "bigger")}, bundle=bigger)
    # larger maps than those of the same backbone at the first size (the cache is shared with other tests)
    assert len(computed) == 6 and np.load(computed[-1], mmap_mode="r").shape[-1] > np.load(
        computed[0], mmap_mode="r").shape[-1]


def test_a_resume_mid_epoch_equals_the_uninterrupted_frozen_run(frozen, tiny_bundle, tmp_path):
    """LL-Cp (label edits), EMA, a cosine schedule with warm-up: stopped by a signal after step 4
    (of 6 an epoch), resumed, the same results, best/ weights and metric lines."""
    import signal
    config = {**frozen, "epochs": 2, "method": "ll-cp", "loss": {"delta": 5.0}, "ema": 0.8, "schedule": "cosine",
              "warmup_steps": 2, "alpha": 2.0}
    straight = pamc.train({**config, "out": str(tmp_path / "straight")}, bundle=tiny_bundle)
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        pamc.train({**config, "out": str(out)}, bundle=tiny_bundle, hooks=[SignalAt(4, signal.SIGUSR1)])
    resumed = pamc.train({"out": str(out)}, bundle=tiny_bundle, resume=True)
    assert resumed.results == straight.results
    for which in ("best", "last"):
        assert_same_weights(load_file(str(out / which / "model.safetensors")),
                            load_file(str(tmp_path / "straight" / which / "model.safetensors")))
    assert without_timing(metric_lines(out)) == without_timing(metric_lines(tmp_path / "straight"))


@pytest.mark.parametrize("extra, message", [
    ({"backbone_weights": None}, "freeze_backbone trains only the head .* set --backbone-weights"),
    ({"linear_init": {"epochs": 1}}, "freeze_backbone and linear_init do not go together"),
    ({"augment": "randaugment"}, "augment 'randaugment' changes the images"),
    ({"method": "ignore"}, "method 'ignore' computes its loss on other views of the images"),
])
def test_what_the_frozen_protocol_refuses_is_a_one_line_error(frozen, tiny_bundle, extra, message, monkeypatch):
    monkeypatch.setattr(features, "_compute", lambda *a, **k: pytest.fail("features computed before the check"))
    with pytest.raises(PamcError, match=message) as error:
        pamc.train({**frozen, **extra, "epochs": 1}, bundle=tiny_bundle)
    assert "\n" not in str(error.value)


def test_the_cli_flag(frozen, tiny_bundle):
    assert make_config({**TrainConfig().to_dict(), **frozen}).freeze_backbone is True
    from pamc.apps.cli.train import add_config_flags
    import argparse
    p = argparse.ArgumentParser()
    add_config_flags(p)
    assert p.parse_args(["--freeze-backbone"]).cfg_freeze_backbone is True
