"""CamClassifier (CAM head + BoostLU + GAP) and the backbone registry with weight files."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from pamc import CamClassifier
from pamc.errors import PamcError
from pamc.models import BACKBONES, build_backbone
from pamc.models.scene_cnn import SceneCNN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = CamClassifier("scene-cnn", 4, alpha=5.0).eval()
    with torch.no_grad():  # a bias that makes some CAM entries positive and some negative
        net.head.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    return net


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def hand_cams(net: CamClassifier, x: torch.Tensor) -> torch.Tensor:
    """CAM_c(h, w) = w_c . F(h, w) + b_c (spec 2.1), written out with einsum."""
    features = net.backbone(x)
    weight = net.head.weight[:, :, 0, 0]
    return torch.einsum("bkhw,ck->bchw", features, weight) + net.head.bias.view(1, -1, 1, 1)


@torch.no_grad()
def test_cams_are_the_raw_one_by_one_conv_maps(model, x):
    cams = model.cams(x)
    assert cams.shape == (3, 4, 4, 4)  # 32 px through three stride-2 stages
    torch.testing.assert_close(cams, hand_cams(model, x), rtol=1e-5, atol=1e-5)
    assert (cams < 0).any() and (cams > 0).any()  # raw: negatives are not clipped, positives not boosted


@torch.no_grad()
def test_logits_are_the_mean_of_the_boosted_cam(model, x):
    cams = hand_cams(model, x)
    boosted = torch.where(cams > 0, 5.0 * cams, cams)
    torch.testing.assert_close(model(x), boosted.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_alpha_one_equals_gap_then_linear_with_the_same_weights(model, x):
    features = model.backbone(x)
    gap_linear = F.linear(features.mean(dim=(2, 3)), model.head.weight[:, :, 0, 0], model.head.bias)
    torch.testing.assert_close(model(x, alpha=1.0), gap_linear, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(x), gap_linear, atol=1e-3)  # alpha 5 is not a GAP + linear model


@torch.no_grad()
def test_forward_alpha_overrides_the_training_alpha_for_one_call(x):
    torch.manual_seed(0)
    net = CamClassifier("scene-cnn", 4, alpha=1.0).eval()
    cams = net.cams(x)
    torch.testing.assert_close(net(x, alpha=5), torch.maximum(cams, 5 * cams).mean(dim=(2, 3)))
    assert net.alpha == 1.0
    torch.testing.assert_close(net(x), cams.mean(dim=(2, 3)))
    with pytest.raises(PamcError, match="alpha"):
        net(x, alpha=0.5)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(PamcError) as err:
        CamClassifier("resnet-9000", 3)
    message = str(err.value)
    assert "unknown backbone 'resnet-9000'" in message
    for name in ("resnet18", "resnet50", "scene-cnn", "scene-cnn-gn"):
        assert name in message and name in BACKBONES


def test_bad_class_count_and_backbone_without_channels():
    with pytest.raises(PamcError, match="num_classes"):
        CamClassifier("scene-cnn", 0)
    with pytest.raises(PamcError, match="out_channels"):
        CamClassifier(nn.Sequential(nn.Conv2d(3, 8, 3)), 2)


def test_resnet18_without_weights_builds_and_gives_a_cam():
    net = CamClassifier("resnet18", 5, weights=None).eval()
    assert net.backbone.out_channels == 512
    with torch.no_grad():
        assert net.cams(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 2, 2)


@pytest.fixture(scope="module")
def resnet18_reference():
    torch.manual_seed(3)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_local_resnet18_weights_file_loads(tmp_path, resnet18_reference, x, suffix):
    state = resnet18_reference.state_dict()  # includes fc, which the backbone drops
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = build_backbone("resnet18", weights=str(path)).eval()
    with torch.no_grad():
        # backbone + the file's own GAP and fc reproduce the complete torchvision network
        logits = F.linear(backbone(x[:1]).mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])
        torch.testing.assert_close(logits, resnet18_reference(x[:1]), rtol=1e-4, atol=1e-4)


def test_wrong_weight_files_are_user_errors(tmp_path):
    scene = tmp_path / "scene.pth"
    torch.save(SceneCNN().state_dict(), scene)
    with pytest.raises(PamcError, match="does not fit resnet18"):
        build_backbone("resnet18", weights=str(scene))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PamcError, match="cannot read weights file"):
        build_backbone("resnet18", weights=str(garbage))
    with pytest.raises(PamcError, match="not found"):
        build_backbone("scene-cnn", weights=str(tmp_path / "missing.safetensors"))


def test_scene_cnn_weights_round_trip(tmp_path):
    torch.manual_seed(5)
    source = SceneCNN()
    with torch.no_grad():  # non-default BatchNorm statistics must travel too
        source[1].running_mean.uniform_()
    path = tmp_path / "scene.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = build_backbone("scene-cnn", weights=str(path))
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(PamcError, match="does not fit this scene CNN"):
        build_backbone("scene-cnn-gn", weights=str(path))  # GroupNorm has no running statistics
