"""The packaged presets: every one resolves and builds, and the paper's settings are where the spec puts them."""
import re

import pytest
import torch

import pamc
from pamc import losses
from pamc.apps.cli import main as cli_main
from pamc.config import preset_descriptions, preset_files, resolve
from pamc.data import LOADERS
from pamc.data.sources.base import BENCHMARK_FACTS
from pamc.engine import build_loss
from pamc.linear_init import LinearInit
from pamc.models import BACKBONES

PRESETS = sorted(preset_files())
DATASETS_4 = ("voc", "coco", "nuswide", "cub")
#: every row of spec 6.1 (and WAN, EPR, LS + LI of the LL paper) for each of the four datasets
METHODS = ("full", "an", "an-ls", "an-ls-li", "asl", "wan", "epr", "role", "role-li", "em", "em-apl",
           "ll-r", "ll-r-boostlu", "ll-ct", "ll-ct-boostlu", "ll-cp", "ll-cp-boostlu",
           "gr", "hill", "splc", "focal-margin")  # the last four: spec since-2023, sections 1-3
#: methods without a published number on this protocol: "(paper [unverified]"
UNPUBLISHED = ("hill", "splc", "focal-margin")


def _info(cfg):
    if cfg.data["name"] == "scenes":
        return {"num_classes": 10, "expected_positives": 2.5}
    return BENCHMARK_FACTS[cfg.data["path"].split("/")[1].split("-")[0]]


def test_every_table_cell_has_a_preset():
    expected = {f"{d}-{m}" for d in DATASETS_4 for m in METHODS}
    expected |= {f"openimages-ll-{s}{b}" for s in ("r", "ct", "cp") for b in ("", "-boostlu")}
    assert expected <= set(PRESETS)
    assert {p for p in PRESETS if p.startswith("scenes-")}  # at least one quick preset


@pytest.mark.parametrize("name", PRESETS)
def test_preset_resolves_and_builds(name):
    cfg = resolve(preset=name)
    assert cfg.method in losses.names() and cfg.backbone in BACKBONES.names() and cfg.data["name"] in LOADERS.names()
    # the loss accepts the preset's parameters and the dataset's shape (k <= C, warmup < epochs, ...)
    info = _info(cfg)
    num_classes = info["num_classes"]
    build_loss(cfg, 4, num_classes, torch.zeros(4, num_classes), info["expected_positives"])
    if cfg.linear_init is not None:
        LinearInit.from_config(cfg.linear_init)
    description = preset_descriptions()[name]
    assert description
    if not name.startswith(("scenes-", "recipe-")):  # recipe-*: base presets of a training recipe, no data
        assert re.search(r"\(paper (\d+\.\d+|\[unverified\])", description), description
        assert cfg.backbone_weights == "imagenet" and cfg.data["path"].startswith("data/")
        assert "pamc prepare" in description


@pytest.mark.parametrize("name, values", [
    ("voc-ll-r-boostlu", dict(method="ll-r", lr=1e-5, lr_mult=10.0, batch_size=16, epochs=10, alpha=5.0,
                              loss={"delta": 0.5}, backbone="resnet50")),
    ("coco-ll-ct", dict(method="ll-ct", alpha=1.0, loss={"delta": 0.2}, lr=1e-5, lr_mult=10.0, batch_size=16)),
    ("nuswide-ll-cp-boostlu", dict(alpha=5.0, loss={"delta": 0.1})),
    ("voc-em-apl", dict(method="em-apl", batch_size=8, lr=1e-5, lr_mult=1.0, epochs=10,
                        loss={"alpha": 0.2, "beta": 0.02, "warmup": 5, "neg_proportion": 0.9})),
    ("coco-em-apl", dict(batch_size=16, lr=1e-5, loss={"alpha": 0.1, "beta": 0.9, "warmup": 5, "neg_proportion": 0.9})),
    ("nuswide-em-apl", dict(batch_size=16, lr=1e-5, loss={"alpha": 0.1, "beta": 0.2, "warmup": 4, "neg_proportion": 0.9})),
    ("cub-em", dict(method="em", batch_size=8, lr=1e-4, lr_mult=1.0, loss={"alpha": 0.01})),
    ("cub-epr", dict(method="epr", loss={})),
    ("coco-role", dict(method="role", loss={"lr_mult": 10.0}, lr_mult=1.0, linear_init=None)),
    ("voc-role-li", dict(method="role", loss={"lr_mult": 10.0},
                         linear_init={"epochs": 25, "lr": 1e-3, "batch_size": 16})),
    ("cub-role-li", dict(linear_init={"epochs": 25, "lr": 1e-3, "batch_size": 8})),
    ("nuswide-an-ls-li", dict(method="an-ls", linear_init={"epochs": 25, "lr": 1e-4, "batch_size": 16})),
    ("voc-an-ls-li", dict(linear_init={"epochs": 25, "lr": 1e-4, "batch_size": 8})),
    ("voc-gr", dict(method="gr", batch_size=8, lr=1e-5, lr_mult=10.0, epochs=8, alpha=1.0,
                    loss={"beta": [0.0, 2.0, -2.0, -2.0], "gauss": [0.5, 2.0, 0.8, 0.5], "q2": 0.01, "q3": 1.0})),
    ("coco-splc", dict(method="splc", batch_size=8, lr=1e-5, lr_mult=1.0, epochs=10,
                       loss={"tau": 0.6, "change_epoch": 2, "margin": 1.0, "gamma": 2.0, "reduction": "sum"})),
    ("nuswide-hill", dict(method="hill", loss={"lamb": 1.5, "margin": 1.0, "gamma": 2.0, "reduction": "sum"},
                          data={"name": "prepared", "path": "data/nuswide-official"})),
    ("cub-focal-margin", dict(method="focal-margin", loss={"margin": 1.0, "gamma": 2.0, "reduction": "sum"})),
    ("openimages-ll-cp-boostlu", dict(method="ll-cp", backbone="resnet101", alpha=5.0, selection="observed",
                                      data={"name": "prepared", "path": "data/openimages"})),
])
def test_spec_values(name, values):
    cfg = resolve(preset=name)
    for key, value in values.items():
        assert getattr(cfg, key) == value, key


@pytest.mark.parametrize("dataset", DATASETS_4)
def test_expected_positives_match_the_dataset(dataset):
    """k has one home, the dataset's facts: presets do not repeat it, the engine passes it on."""
    k, num_classes = BENCHMARK_FACTS[dataset]["expected_positives"], BENCHMARK_FACTS[dataset]["num_classes"]
    for method in ("epr", "role", "role-li"):
        cfg = resolve(preset=f"{dataset}-{method}")
        assert "k" not in cfg.loss
        assert build_loss(cfg, 4, num_classes, torch.zeros(4, num_classes), k).k == k


def test_descriptions_quote_the_paper_table():
    text = preset_descriptions()
    assert "(paper 89.29;" in text["voc-ll-r-boostlu"]
    assert "(paper 21.84;" in text["cub-em-apl"]
    assert "(paper 69.12;" in text["coco-role-li"]
    assert "(paper 84.04 " in text["openimages-ll-cp-boostlu"]
    assert "(paper 73.17;" in text["coco-gr"] and "(paper 21.64;" in text["cub-gr"]


@pytest.mark.parametrize("dataset", DATASETS_4)
def test_robust_loss_presets_follow_the_an_protocol_and_say_what_is_unverified(dataset):
    an = resolve(preset=f"{dataset}-an")
    for method in UNPUBLISHED:
        cfg = resolve(preset=f"{dataset}-{method}")
        assert (cfg.batch_size, cfg.lr, cfg.lr_mult, cfg.epochs, cfg.data) == (an.batch_size, an.lr, an.lr_mult,
                                                                                an.epochs, an.data)
        description = preset_descriptions()[f"{dataset}-{method}"]
        assert "(paper [unverified]" in description and "not applied" in description


def test_presets_command_lists_every_preset(capsys):
    assert cli_main(["presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == PRESETS


def test_scene_preset_trains(tmp_path):
    tiny = {"data.n_train": 64, "data.n_val": 32, "data.n_test": 32, "data.canvas": 32, "data.object_scale": [10, 14],
            "backbone_weights": None, "epochs": 1, "out": str(tmp_path / "run"), "progress": False, "device": "cpu"}
    cfg = resolve(preset="scenes-ll-r-boostlu", overrides=tiny)
    assert cfg.alpha == 5.0 and cfg.method == "ll-r"
    result = pamc.train(cfg)
    assert 0.0 <= result.test_map <= 100.0


def test_presets_inherit_from_a_base_and_stay_complete(tmp_path, capsys):
    from pamc.config import load_preset

    child, base = load_preset("voc-ll-r-boostlu-fast64"), load_preset("voc-ll-r-boostlu-fast")
    assert (child["batch_size"], child["lr"]) == (64, 4e-05)
    assert {k: v for k, v in child.items() if k not in ("batch_size", "lr")} == {
        k: v for k, v in base.items() if k not in ("batch_size", "lr")}
    assert child["data"] == {"name": "prepared", "path": "data/voc", "cache": "data/voc/cache"}  # merged key by key
    # the preset file itself holds only what differs
    own = preset_files()["voc-ll-r-boostlu-fast64"].read_text()
    assert "base: voc-ll-r-boostlu-fast" in own and "backbone" not in own
    # a YAML config may name a base too; its own keys win
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text("base: voc-ll-ct\nepochs: 3\nloss:\n  delta: 0.3\n")
    cfg = resolve(config=str(cfg_file))
    assert (cfg.method, cfg.epochs, cfg.loss, cfg.backbone) == ("ll-ct", 3, {"delta": 0.3}, "resnet50")
    # the resolved settings are printed complete
    assert cli_main(["presets", "--show", "voc-ll-r-boostlu-fast64"]) == 0
    shown = capsys.readouterr().out
    assert "batch_size: 64" in shown and "backbone: resnet50" in shown and "method: ll-r" in shown


def test_a_preset_cycle_or_unknown_base_is_one_error(tmp_path, monkeypatch):
    import pamc.config as config

    (tmp_path / "a.yaml").write_text("base: b\nepochs: 2\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    (tmp_path / "c.yaml").write_text("base: nowhere\n")
    monkeypatch.setattr(config, "preset_files", lambda: {p.stem: p for p in tmp_path.glob("*.yaml")})
    with pytest.raises(pamc.errors.PamcError, match="inherits from itself through a -> b -> a"):
        config.load_preset("a")
    with pytest.raises(pamc.errors.PamcError, match="unknown preset 'nowhere'"):
        config.load_preset("c")
