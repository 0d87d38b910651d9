"""Post-hoc BoostLU conversion of torchvision-style GAP + linear classifiers."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from pamc.errors import PamcError
from pamc.posthoc import boost, boost_torchvision_file


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5).eval()


def resnet_features(m, x):
    for layer in (m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x)
    return x


@torch.no_grad()
def test_resnet_equivalent_at_alpha_1_and_boosted_matches_manual(resnet):
    x = torch.randn(2, 3, 64, 64)
    at_one = boost(resnet, 1.0)
    assert torch.allclose(at_one(x), resnet(x), atol=1e-5)
    cam = torch.einsum("kc,nchw->nkhw", resnet.fc.weight, resnet_features(resnet, x)) + resnet.fc.bias[:, None, None]
    manual = torch.where(cam > 0, 3.0 * cam, cam).mean(dim=(2, 3))
    boosted = boost(resnet, 3.0)
    assert torch.allclose(boosted(x), manual, atol=1e-5)
    assert not torch.allclose(boosted(x), resnet(x), atol=1e-3)  # boosting does change the logits
    assert torch.allclose(boosted.cams(x), cam, atol=1e-5)


@torch.no_grad()
def test_features_classifier_models_are_equivalent():
    torch.manual_seed(0)
    dense = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=4)
    mobile = torchvision.models.mobilenet_v2(weights=None, num_classes=4, width_mult=0.25)
    x = torch.randn(2, 3, 64, 64)
    for model in (dense.eval(), mobile.eval()):
        assert torch.allclose(boost(model, 1.0)(x), model(x), atol=1e-5)


def test_training_mode_is_kept(resnet):
    resnet.train()
    try:
        converted = boost(resnet, 2.0)
        assert resnet.training and resnet.layer1.training and converted.training
    finally:
        resnet.eval()


class HiddenLayerHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.fc(self.avgpool(self.body(x)).flatten(1))


class ExtraForwardOp(HiddenLayerHead):
    """Looks like avgpool + fc, but its forward squares the features first."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.avgpool(self.body(x) ** 2).flatten(1))


@pytest.mark.parametrize("make", [HiddenLayerHead, ExtraForwardOp, lambda: torchvision.models.mobilenet_v3_small(weights=None),
                                  lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())])
def test_unsupported_heads_are_refused(make):
    with pytest.raises(PamcError, match="cannot be boosted post hoc"):
        boost(make().eval(), 2.0)


@torch.no_grad()
def test_boost_torchvision_file(tmp_path, resnet):
    state = resnet.state_dict()
    torch.save(state, tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    x = torch.randn(2, 3, 64, 64)
    for name in ("r18.pth", "r18.safetensors"):
        model = boost_torchvision_file("resnet18", tmp_path / name, alpha=1.0)  # 5 classes read from the file
        assert model.num_classes == 5 and not model.training
        assert torch.allclose(model(x), resnet(x), atol=1e-5)
    with pytest.raises(PamcError, match="unknown torchvision classifier"):
        boost_torchvision_file("resnet-18", tmp_path / "r18.pth", 2.0)
    with pytest.raises(PamcError, match="does not fit"):
        boost_torchvision_file("resnet18", tmp_path / "r18.pth", 2.0, num_classes=7)
    with pytest.raises(PamcError, match="alpha must be >= 1"):
        boost_torchvision_file("resnet18", tmp_path / "r18.pth", 0.5)


# ----------------------------------------------------------------------------- timm classifiers


def timm_model(name: str, **kwargs):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "regnetx_002"])
@torch.no_grad()
def test_timm_gap_linear_classifiers_are_equivalent_and_boost_where_positive(name):
    model = timm_model(name, num_classes=6)
    x = torch.randn(2, 3, 64, 64)
    at_one = boost(model, 1.0)
    assert at_one.backbone_name == f"timm:{name}"
    torch.testing.assert_close(at_one(x), model(x), rtol=1e-4, atol=1e-5)
    fc = model.get_classifier()
    cam = torch.einsum("kc,nchw->nkhw", fc.weight, model.forward_features(x)) + fc.bias[:, None, None]
    torch.testing.assert_close(at_one.cams(x), cam, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(boost(model, 4.0)(x), torch.where(cam > 0, 4.0 * cam, cam).mean(dim=(2, 3)),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, why", [
    ("test_convnext", "normalises after the pooling"),
    ("test_vit", "class token"),
    ("mobilenetv3_small_050", "hidden layer after the pooling"),
])
def test_timm_heads_that_are_not_gap_linear_are_refused_with_the_reason(name, why):
    with pytest.raises(PamcError) as err:
        boost(timm_model(name), 2.0)
    message = str(err.value)
    assert "cannot be boosted post hoc" in message and why in message
    assert f"--backbone timm:{name}" in message  # what to do instead


def test_timm_max_pooling_is_refused():
    with pytest.raises(PamcError, match="global pooling is 'max', not an average"):
        boost(timm_model("test_resnet", global_pool="max"), 2.0)
