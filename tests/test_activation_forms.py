"""The forms of BoostLU (`pamc.activation`): each against its formula computed here in numpy, the
identity at alpha 1, per-class alpha, bad input as one-line errors; and the form carried
everywhere BoostLU goes: CamClassifier, model.json (old files load as boostlu), config, post-hoc
`pamc.boost`, `pamc tune-alpha` (per-class alpha against scikit-learn's AP), `pamc eval`,
`pamc explain`, `pamc list`, and the viewer's script in headless Chromium."""
import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch import nn

from pamc import activation
from pamc.activation import BoostLU, as_form, boostlu, build, form_text
from pamc.apps.cli import main
from pamc.checkpoint import CheckpointMeta, load_model, read_meta, save_model
from pamc.config import resolve
from pamc.data.transforms import normalize_uint8
from pamc.errors import PamcError
from pamc.explain import tune_alpha, tune_alpha_command
from pamc.models import CamClassifier
from pamc.posthoc import boost

FORMS = {"boostlu": {}, "boostlu-threshold": {"tau": 0.4}, "boostlu-smooth": {"beta": 2.5}}


def reference(name: str, x: np.ndarray, alpha, **params) -> np.ndarray:
    """The spec's formulas (since-2024 6) in float64 numpy; alpha per class broadcast on axis -3."""
    a = np.asarray(alpha, dtype=np.float64)
    a = a.reshape(-1, 1, 1) if a.ndim else a
    if name == "boostlu":
        return np.where(x > 0, a * x, x)
    if name == "boostlu-threshold":
        return x + (a - 1) * np.maximum(x - params["tau"], 0)
    beta = params["beta"]
    return x + (a - 1) * np.logaddexp(0, beta * x) / beta


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- the functions


@pytest.mark.parametrize("name", FORMS)
def test_each_form_matches_its_formula_on_random_cams(name):
    x = torch.randn(4, 5, 7, 7, generator=torch.Generator().manual_seed(0)) * 3
    out = build(name, alpha=3.5, **FORMS[name])(x)
    np.testing.assert_allclose(out.numpy(), reference(name, x.double().numpy(), 3.5, **FORMS[name]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FORMS)
def test_each_form_is_the_identity_at_alpha_one(name):
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(build(name, alpha=1.0, **FORMS[name])(x), x)
    assert torch.equal(build(name, alpha=[1.0, 1.0, 1.0], **FORMS[name])(x), x)


@pytest.mark.parametrize("name", FORMS)
def test_per_class_alpha_boosts_each_class_with_its_own_alpha(name):
    alphas = [1.0, 2.0, 4.5]
    x = torch.randn(2, 3, 4, 6)
    out = build(name, alpha=alphas, **FORMS[name])(x)
    assert out.shape == x.shape
    for c, a in enumerate(alphas):  # class c equals the scalar form at its alpha
        torch.testing.assert_close(out[:, c], build(name, alpha=a, **FORMS[name])(x)[:, c])
    one = build(name, alpha=alphas, **FORMS[name])(x[0])  # one image's C x h x w maps
    torch.testing.assert_close(one, out[0])
    np.testing.assert_allclose(out.numpy(), reference(name, x.double().numpy(), alphas, **FORMS[name]), rtol=1e-5, atol=1e-5)
    with pytest.raises(PamcError, match="per-class alpha has 3 values but the maps have shape"):
        build(name, alpha=alphas, **FORMS[name])(torch.randn(2, 4, 3, 3))


def test_smooth_form_is_differentiable_and_tends_to_boostlu():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: build("boostlu-smooth", alpha=3.0, beta=1.5)(t), (x,))
    y = torch.randn(3, 4, 4)
    torch.testing.assert_close(build("boostlu-smooth", alpha=3.0, beta=1e4)(y), boostlu(y, 3.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(build("boostlu-threshold", alpha=3.0, tau=0.0)(y), boostlu(y, 3.0))


def test_names_texts_and_specs():
    assert activation.names() == ["boostlu", "boostlu-smooth", "boostlu-threshold"]
    assert as_form("boostlu-threshold:tau=0.5").spec() == {"name": "boostlu-threshold", "tau": 0.5}
    assert as_form({"name": "boostlu-smooth", "beta": 2}).spec() == {"name": "boostlu-smooth", "beta": 2.0}
    assert as_form(None).spec() == {"name": "boostlu"}
    assert form_text({"name": "boostlu-threshold", "tau": 0.25}) == "boostlu-threshold:tau=0.25"
    assert repr(BoostLU(2.0, "boostlu-smooth", beta=3)) == "BoostLU(boostlu-smooth:beta=3, alpha=2.0)"
    assert repr(BoostLU([1, 2])) == "BoostLU(alpha=per-class 1-2 (mean 1.5))"
    assert BoostLU(torch.tensor([1.0, 2.0])).alpha == (1.0, 2.0) and BoostLU(np.array([3.0])).alpha == (3.0,)
    assert BoostLU(torch.tensor(4.0)).alpha == 4.0  # a 0-d tensor is one alpha


@pytest.mark.parametrize("make, message", [
    (lambda: build("boostlu-cubic"), "unknown BoostLU form 'boostlu-cubic'; valid: boostlu, boostlu-smooth, boostlu-threshold"),
    (lambda: build("boostlu-threshold", tau=-0.1), "tau must be >= 0"),
    (lambda: build("boostlu-threshold", tau=float("nan")), "tau must be finite"),
    (lambda: build("boostlu-smooth", beta=0), "beta must be > 0"),
    (lambda: build("boostlu-smooth", beta=float("inf")), "beta must be finite"),
    (lambda: build("boostlu", tau=1.0), "takes no parameter tau; valid: none"),
    (lambda: build("boostlu-smooth", tau=1.0), "takes no parameter tau; valid: beta"),
    (lambda: as_form("boostlu-smooth:beta"), "write NAME:KEY=VALUE"),
    (lambda: as_form({"tau": 1}), "needs a name"),
    (lambda: build("boostlu", alpha=[1.0, 0.5]), "alpha must be >= 1"),
    (lambda: build("boostlu", alpha=[]), "per-class BoostLU alpha is empty"),
    (lambda: build("boostlu", alpha="five"), "must be a number >= 1 or one per class"),
])
def test_bad_forms_and_parameters_are_one_line_errors(make, message):
    with pytest.raises(PamcError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- model, checkpoint, config, post hoc


class PixelBackbone(nn.Identity):
    out_channels = 3


def pixel_model(**kwargs) -> CamClassifier:
    torch.manual_seed(0)
    return CamClassifier(PixelBackbone(), 4, **kwargs)


@pytest.mark.parametrize("name", FORMS)
def test_cam_classifier_pools_its_form(name):
    model = pixel_model(alpha=2.0, activation={"name": name, **FORMS[name]})
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        maps = model.cams(x).double().numpy()
        for alpha in (2.0, [1.0, 3.0, 1.5, 6.0]):
            want = reference(name, maps, alpha if alpha != 2.0 else 2.0, **FORMS[name]).mean(axis=(2, 3))
            got = model(x) if alpha == 2.0 else model(x, alpha=alpha)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == set(pixel_model().state_dict())  # the form adds no weights


def test_model_json_records_the_form_and_old_files_load_as_boostlu(tmp_path):
    model = CamClassifier("scene-cnn", 3, alpha=2.0, activation="boostlu-threshold:tau=0.5")
    meta = CheckpointMeta(backbone="scene-cnn", num_classes=3, alpha=2.0, eval_alpha=[1.0, 2.0, 3.0],
                          activation=model.activation.form.spec())
    save_model(tmp_path / "new", model, meta)
    loaded, read = load_model(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "model.json").read_text())["activation"] == {"name": "boostlu-threshold", "tau": 0.5}
    assert form_text(loaded.activation.form) == "boostlu-threshold:tau=0.5" and read.test_alpha == (1.0, 2.0, 3.0)
    old = {k: v for k, v in meta.to_dict().items() if k not in ("activation", "eval_alpha")}
    (tmp_path / "new" / "model.json").write_text(json.dumps(old))  # as written before forms existed
    loaded, read = load_model(tmp_path / "new")
    assert read.activation is None and loaded.activation.form.name == "boostlu" and read.test_alpha == 2.0
    (tmp_path / "new" / "model.json").write_text(json.dumps({**old, "activation": {"name": "boostlu-x"}}))
    with pytest.raises(PamcError, match="unknown BoostLU form 'boostlu-x'"):
        load_model(tmp_path / "new")


def test_config_takes_a_form_by_text_or_mapping():
    assert resolve(overrides={"activation": "boostlu-smooth:beta=2"}).activation == {"name": "boostlu-smooth", "beta": 2.0}
    assert resolve(overrides={"activation": {"name": "boostlu-threshold", "tau": 0.5}}).activation == \
        {"name": "boostlu-threshold", "tau": 0.5}
    assert resolve().activation is None
    with pytest.raises(PamcError, match="tau must be >= 0"):
        resolve(overrides={"activation": "boostlu-threshold:tau=-1"})


def test_post_hoc_boost_takes_a_form():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    classifier = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    converted = boost(classifier, 3.0, activation="boostlu-smooth:beta=2")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(converted(x, alpha=1.0), classifier(x), rtol=1e-4, atol=1e-5)
        maps = converted.cams(x).double().numpy()
        want = reference("boostlu-smooth", maps, 3.0, beta=2.0).mean(axis=(2, 3))
        np.testing.assert_allclose(converted(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_tune_alpha_sweeps_the_form_and_tunes_per_class_alpha():
    model = pixel_model(activation="boostlu-threshold:tau=0.3")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(60, 3, 5, 5, generator=g)
    targets = (torch.rand(60, 4, generator=g) < 0.4).long().numpy()
    targets[:, 3] = 0  # a class without a positive takes the shared best alpha
    alphas = [1, 2, 4, 8]
    result = tune_alpha(model, images, targets, alphas, per_class=True)
    with torch.no_grad():
        ap = np.array([[average_precision_score(targets[:, c], model(images, alpha=float(a))[:, c].numpy())
                        if targets[:, c].any() else 0.0 for c in range(4)] for a in alphas]) * 100
    np.testing.assert_allclose([r["map"] for r in result["table"]], ap.mean(axis=1), atol=1e-6)
    shared = alphas[int(np.argmax(ap.mean(axis=1)))]
    per_class = [alphas[int(np.argmax(ap[:, c]))] for c in range(3)] + [shared]
    assert result["form"] == "boostlu-threshold:tau=0.3" and result["shared_alpha"] == shared
    assert result["best_alpha"] == per_class
    assert result["best_map"] == pytest.approx(np.mean([ap[alphas.index(a), c] for c, a in enumerate(per_class)]))
    other = tune_alpha(model, images, targets, alphas, form="boostlu-smooth:beta=2")  # another form, same model
    with torch.no_grad():
        smooth = CamClassifier(model.backbone, 4, activation="boostlu-smooth:beta=2")
        smooth.head = model.head
        want = [100 * np.mean([average_precision_score(targets[:, c], smooth(images, alpha=float(a))[:, c].numpy())
                               for c in range(3)] + [0.0]) for a in alphas]
    np.testing.assert_allclose([r["map"] for r in other["table"]], want, atol=1e-6)


# ----------------------------------------------------------------------------- end to end: train, tune, eval, explain, view


@pytest.fixture(scope="module")
def threshold_run(tmp_path_factory, tiny_settings):
    """A tiny run trained with boostlu-threshold at alpha 3, through `pamc train`."""
    out = tmp_path_factory.mktemp("forms") / "threshold"
    code, stdout, stderr = run_cli(["train", "--method", "an", "--alpha", "3", "--activation", "boostlu-threshold:tau=0.2",
                                    "--epochs", "1", "--out", out, "--device", "cpu", "--num-workers", "0",
                                    "--no-progress", "--lr", "1e-4", "--tensorboard", "off",
                                    *[f"--data={k}={json.dumps(v) if isinstance(v, list) else v}"
                                      for k, v in tiny_settings["data"].items()]])
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def smooth_checkpoint(threshold_run, tmp_path_factory):
    """The same weights as a model trained at alpha 1 that took on boostlu-smooth with per-class
    alpha, as `pamc tune-alpha --activation ... --per-class --store` records it."""
    out = tmp_path_factory.mktemp("forms") / "smooth"
    shutil.copytree(threshold_run / "best", out)
    meta = read_meta(out)
    meta.alpha, meta.activation = 1.0, None
    (out / "model.json").write_text(json.dumps(meta.to_dict()))
    code, stdout, stderr = run_cli(["tune-alpha", out, "--out", out / "tuning", "--per-class", "--store",
                                    "--activation", "boostlu-smooth:beta=2", "--device", "cpu"])
    assert code == 0, stderr
    assert stdout.startswith("boostlu-smooth:beta=2\n") and "best alpha per-class" in stdout
    assert re.search(r"mAP \d+\.\d\d with per-class alpha, \d+\.\d\d with the best shared alpha \d", stdout)
    return out


def test_training_records_the_form_and_every_command_uses_it(threshold_run, tmp_path):
    meta = read_meta(threshold_run / "best")
    assert meta.activation == {"name": "boostlu-threshold", "tau": 0.2} and meta.alpha == 3.0
    model, _ = load_model(threshold_run)
    assert form_text(model.activation.form) == "boostlu-threshold:tau=0.2"
    code, stdout, stderr = run_cli(["eval", threshold_run, "--split", "val", "--alpha", "1", "3", "--out", tmp_path / "e.json",
                                    "--device", "cpu"])
    assert code == 0, stderr
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["alpha"] for r in rows] == [1.0, 3.0]
    code, stdout, stderr = run_cli(["explain", threshold_run, "--split", "test", "--max-images", "2", "--boosted",
                                    "--out", tmp_path / "explain", "--device", "cpu"])
    assert code == 0, stderr
    with pytest.raises(PamcError, match="trained with boostlu-threshold:tau=0.2 at alpha 3; only a model trained at alpha 1"):
        tune_alpha_command(threshold_run, None, tmp_path / "t", form="boostlu-smooth:beta=2", store=True)


def test_per_class_alpha_is_stored_and_evaluated(smooth_checkpoint, tmp_path):
    meta = read_meta(smooth_checkpoint)
    assert meta.activation == {"name": "boostlu-smooth", "beta": 2.0}
    assert isinstance(meta.eval_alpha, list) and len(meta.eval_alpha) == meta.num_classes
    code, stdout, stderr = run_cli(["eval", smooth_checkpoint, "--split", "test", "--out", tmp_path / "e.json", "--device", "cpu"])
    assert code == 0, stderr
    assert "| per-class " in stdout
    assert json.loads((tmp_path / "e.json").read_text())["rows"][0]["alpha"] == meta.eval_alpha


def test_pamc_list_shows_the_forms():
    code, stdout, _ = run_cli(["list"])
    assert code == 0
    assert "boostlu, boostlu-smooth:beta=2, boostlu-threshold:tau=0.5" in stdout


def test_the_viewer_computes_each_models_form(threshold_run, smooth_checkpoint, tmp_path):
    from test_viewer import CHROMIUM, CHROMIUM_ARGS, page_data

    from pamc.explain import write_view
    from pamc.inference import load_split

    split = load_split("test", None, threshold_run)
    view = write_view([threshold_run, smooth_checkpoint], split, tmp_path / "view.html", max_images=3,
                      split_name="test", device="cpu")
    data = page_data(view)
    assert [m["form"] for m in data["models"]] == ["boostlu-threshold:tau=0.2", "boostlu-smooth:beta=2"]
    assert data["models"][1]["eval_alpha"] == read_meta(smooth_checkpoint).eval_alpha
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright); the browser check needs it")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PAMC_CHROMIUM)")
    models = [load_model(threshold_run)[0], load_model(smooth_checkpoint)[0]]
    tuned = read_meta(smooth_checkpoint).eval_alpha
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(view.resolve().as_uri())
        page.wait_for_function("window.pamcView && window.pamcView.ready", timeout=30_000)
        for image, alpha in ((0, 2.7), (2, 6.0)):
            page.evaluate(f"pamcView.setImage({image}); pamcView.setAlpha({alpha})")
            x = normalize_uint8(split.images.take(torch.tensor([image])))
            with torch.no_grad():
                at_slider = [torch.sigmoid(m(x, alpha=alpha))[0] for m in models]
                at_tuned = torch.sigmoid(models[1](x, alpha=tuned))[0]
            for k, c in enumerate(data["images"][image]["classes"]):
                for m in range(2):
                    assert page.evaluate(f"pamcView.score({m}, {k}).p") == pytest.approx(float(at_slider[m][c]), abs=1e-5)
                assert page.evaluate(f"pamcView.tunedScore(1, {k}).p") == pytest.approx(float(at_tuned[c]), abs=1e-5)
        browser.close()
    assert not errors, errors


def test_table_rows_name_the_form_and_per_class_alpha():
    from pamc.published import row_label

    assert row_label("an", 5.0, 5.0) == "AN + BoostLU"
    assert row_label("an", 5.0, 5.0, activation={"name": "boostlu-threshold", "tau": 0.5}) == \
        "AN + BoostLU [boostlu-threshold:tau=0.5]"
    assert row_label("an", 1.0, [1.0, 3.0]) == "AN + BoostLU (inference only, alpha per-class 1-3 (mean 2))"


def test_training_with_per_class_alpha(tiny_settings, tmp_path):
    from pamc import train

    alphas = [1.0 + c for c in range(10)]
    result = train({**tiny_settings, "method": "an", "epochs": 1, "alpha": alphas, "activation": "boostlu-smooth",
                    "out": str(tmp_path / "run")})
    meta = read_meta(tmp_path / "run" / "best")
    assert meta.alpha == alphas and meta.test_alpha == tuple(alphas) and result.results["eval_alpha"] == alphas
    assert meta.activation == {"name": "boostlu-smooth", "beta": 2.0}


def test_per_class_alpha_and_form_reach_thresholds_and_export(smooth_checkpoint, tmp_path):
    from pamc.thresholds import resolve_threshold

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(smooth_checkpoint, checkpoint)  # calibrate edits model.json
    code, stdout, stderr = run_cli(["calibrate", checkpoint, "--device", "cpu"])
    assert code == 0, stderr
    assert "alpha per-class " in stdout
    meta = read_meta(checkpoint)
    assert meta.extra["thresholds"]["alpha"] == meta.eval_alpha  # tuned at the per-class alpha
    assert len(resolve_threshold("auto", meta, meta.test_alpha)) == meta.num_classes
    with pytest.raises(PamcError, match="tuned at alpha per-class .* not 5;"):
        resolve_threshold("auto", meta, 5.0)
    code, stdout, stderr = run_cli(["eval", checkpoint, "--threshold", "auto", "--device", "cpu"])
    assert code == 0, stderr
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'pamc[export]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'pamc[export]')")
    from test_export import check_against_torch

    from pamc.export import export_onnx, read_metadata

    export_onnx(checkpoint, tmp_path / "smooth.onnx")  # the form and the per-class alpha inside the graph
    check_against_torch(tmp_path / "smooth.onnx", checkpoint, 32, cams=False)
    info = read_metadata(tmp_path / "smooth.onnx")
    assert info["activation"] == {"name": "boostlu-smooth", "beta": 2.0} and info["alpha"] == meta.eval_alpha
