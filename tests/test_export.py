"""`pamc export`: the ONNX model computes what the PyTorch model computes (onnxruntime, 1e-4),
for any batch size, with the alpha, class names, thresholds and preprocessing in its metadata."""
import contextlib
import io

import numpy as np
import pytest
import torch

import pamc
from pamc.apps.cli import main
from pamc.checkpoint import CheckpointMeta, load_model, save_model
from pamc.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pamc.models import CamClassifier

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'pamc[export]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'pamc[export]')")

from pamc.export import export_onnx, read_metadata  # noqa: E402


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def random_checkpoint(folder, backbone: str, num_classes: int, alpha: float, size: int):
    torch.manual_seed(0)
    model = CamClassifier(backbone, num_classes, alpha=alpha)
    for m in model.modules():  # non-trivial batch-norm statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    meta = CheckpointMeta(backbone=backbone, num_classes=num_classes, alpha=alpha, eval_alpha=alpha + 1,
                          class_names=[f"c{i}" for i in range(num_classes)], image_size=size)
    save_model(folder, model, meta)
    return folder


def check_against_torch(path, checkpoint, size: int, cams: bool) -> None:
    model, meta = load_model(checkpoint)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == (["scores", "cams"] if cams else ["scores"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        outputs = session.run(None, {"images": x})
        with torch.no_grad():
            expected = torch.sigmoid(model(torch.from_numpy(x), alpha=meta.test_alpha)).numpy()
            expected_cams = model.cams(torch.from_numpy(x)).numpy()
        assert outputs[0].shape == (batch, meta.num_classes)
        np.testing.assert_allclose(outputs[0], expected, atol=1e-4, rtol=0)
        if cams:
            np.testing.assert_allclose(outputs[1], expected_cams, atol=1e-4, rtol=1e-4)


def test_trained_scene_cnn_exports_with_its_metadata(tiny_config, tmp_path):
    run = pamc.train({**tiny_config, "epochs": 1, "alpha": 3.0}).out
    code, stdout, stderr = run_cli(["export", run, "--out", tmp_path / "tagger.onnx", "--cams"])
    assert code == 0, stderr
    assert "alpha 3" in stdout and "thresholds none" in stdout
    check_against_torch(tmp_path / "tagger.onnx", run, 32, cams=True)
    info = read_metadata(tmp_path / "tagger.onnx")
    _, meta = load_model(run)
    assert info["class_names"] == meta.class_names and info["alpha"] == 3.0
    assert info["image_size"] == [32, 32] and info["thresholds"] is None
    assert info["mean"] == list(IMAGENET_MEAN) and info["std"] == list(IMAGENET_STD)
    # calibrated thresholds travel with the model
    code, _, stderr = run_cli(["calibrate", run, "--device", "cpu"])
    assert code == 0, stderr
    export_onnx(run, tmp_path / "calibrated.onnx")
    _, meta = load_model(run)
    assert read_metadata(tmp_path / "calibrated.onnx")["thresholds"] == meta.extra["thresholds"]["values"]


@pytest.mark.parametrize("backbone,size", [("resnet18", 64), ("timm:test_convnext", 64)])
def test_resnet_and_timm_backbones_match_onnxruntime(backbone, size, tmp_path):
    checkpoint = random_checkpoint(tmp_path / "ckpt", backbone, num_classes=5, alpha=2.0, size=size)
    path = export_onnx(checkpoint, tmp_path / "model.onnx", cams=backbone == "resnet18")
    assert read_metadata(path)["alpha"] == 3.0  # the evaluation alpha is the one in the graph
    check_against_torch(path, checkpoint, size, cams=backbone == "resnet18")


def test_alpha_override_and_bad_output_name(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "ckpt", "scene-cnn", num_classes=4, alpha=1.0, size=32)
    path = export_onnx(checkpoint, tmp_path / "a5.onnx", alpha=5.0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(x), alpha=5.0)).numpy()
    np.testing.assert_allclose(session.run(None, {"images": x})[0], expected, atol=1e-4, rtol=0)
    code, _, stderr = run_cli(["export", checkpoint, "--out", tmp_path / "model.pt"])
    assert code == 2 and "must end in .onnx" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "model.pt").exists()
