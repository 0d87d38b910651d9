"""`pamc view`: the self-contained HTML page, checked in Python and in headless Chromium.

Two tiny scene checkpoints (AN at alpha 1, and AN trained and tuned at alpha 5) are viewed on the
test split.  Python side: the file makes no request, stays small, and its data decode to the CAMs
the models compute.  Browser side (skipped where Chromium or Playwright is missing): the scores
the page shows and recomputes when the alpha slider moves equal the models' own forward pass,
keyboard and pickers switch image and class, and the painted colours are matplotlib's RdBu_r of
the values Python computes.  One browser per module; screenshots go to tmp_path (and
$PAMC_ARTIFACTS when set).
"""
import base64
import contextlib
import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from pamc import train
from pamc.activation import boostlu
from pamc.checkpoint import load_model
from pamc.apps.cli import main
from pamc.data.transforms import normalize_uint8
from pamc.explain import cams, upsample, write_view
from pamc.inference import load_split
from pamc.labels import single_positive

CHROMIUM = Path(os.environ.get("PAMC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LABELS = ["AN", "AN + BoostLU"]
IMAGES = 6


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def page_data(path: Path) -> dict:
    """The JSON block of a written page, read independently of the viewer's code."""
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="pamc-data">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def decoded_cams(entry: dict, models: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["cams"]), dtype="<f4").reshape(models, len(entry["classes"]),
                                                                              *entry["cam_shape"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_settings):
    base = tmp_path_factory.mktemp("view-runs")
    settings = {"an": {}, "boosted": {"alpha": 5.0, "eval_alpha": 5.0}}
    return [train({**tiny_settings, "method": "an", **extra, "out": str(base / name)}).out
            for name, extra in settings.items()]


@pytest.fixture(scope="module")
def test_split(runs):
    return load_split("test", None, runs[0])


@pytest.fixture(scope="module")
def view(runs, test_split, tmp_path_factory):
    path = tmp_path_factory.mktemp("view") / "view.html"
    return write_view(runs, test_split, path, labels=LABELS, max_images=IMAGES, split_name="test", device="cpu")


@pytest.fixture(scope="module")
def data(view) -> dict:
    return page_data(view)


@pytest.fixture(scope="module")
def models(runs):
    return [load_model(r)[0] for r in runs]


def probabilities(model, images: torch.Tensor, alpha: float) -> torch.Tensor:
    """What `pamc predict` computes: the model's forward pass at `alpha`, then the sigmoid."""
    with torch.no_grad():
        return torch.sigmoid(model(normalize_uint8(images), alpha=alpha))


def test_the_page_is_one_file_that_requests_nothing(view, data):
    text = view.read_text()
    assert text.startswith("<!doctype html>")
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', text)  # nothing loaded from elsewhere
    assert all(entry["src"].startswith("data:image/png;base64,") for entry in data["images"])  # 32 px: PNG
    assert view.stat().st_size < 100_000


def test_a_view_of_all_classes_stays_small(runs, test_split, tmp_path):
    """32 images x 10 classes x 2 models at 4 x 4 CAMs; the bytes are mostly the page itself."""
    path = write_view(runs, test_split, tmp_path / "all.html", classes=list(range(10)), max_images=32, device="cpu")
    data = page_data(path)
    assert len(data["images"]) == 32 and all(e["classes"] == list(range(10)) for e in data["images"])
    assert path.stat().st_size < 300_000


def test_the_data_decode_to_the_models_cams(data, models, test_split):
    images = test_split.images.take(torch.arange(IMAGES))
    assert [m["label"] for m in data["models"]] == LABELS
    assert [m["eval_alpha"] for m in data["models"]] == [1.0, 5.0]
    assert data["class_names"] == [str(c) for c in range(10)]
    raw = [cams(model, images) for model in models]
    first = probabilities(models[0], images, alpha=1.0)  # the first model at its evaluation alpha
    for i, entry in enumerate(data["images"]):
        truth = set(np.flatnonzero(test_split.full[i]).tolist())
        top3 = set(first[i].topk(3).indices.tolist())
        assert set(entry["classes"]) == truth | top3
        assert entry["classes"] == sorted(entry["classes"], key=lambda c: -float(first[i, c]))  # best first
        assert entry["truth"] == sorted(truth) and entry["observed"] is None  # observed: train split only
        assert entry["boxes"] == [list(b) for b in test_split.boxes[i]] and entry["box_canvas"] == [32, 32]
        expected = np.stack([r[i, entry["classes"]].numpy() for r in raw])
        np.testing.assert_array_equal(decoded_cams(entry, len(models)), expected)


def test_the_train_split_shows_the_observed_training_labels(runs, tmp_path):
    train_split = load_split("train", None, runs[0])
    data = page_data(write_view(runs[:1], train_split, tmp_path / "train.html", max_images=4, split_name="train",
                                device="cpu"))
    observed = single_positive(train_split.full, seed=1200)  # the tiny runs' protocol
    for i, entry in enumerate(data["images"]):
        assert entry["observed"] == {"positive": np.flatnonzero(observed[i] == 1).tolist(),
                                     "negative": np.flatnonzero(observed[i] < 0).tolist()}
        assert len(entry["observed"]["positive"]) == 1


def test_the_command_views_image_files(runs, test_split, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for n, image in enumerate(test_split.images.images[:3].numpy()):
        Image.fromarray(image).save(folder / f"scene{n}.png")
    out = tmp_path / "files.html"
    code, stdout, stderr = run_cli(["view", *runs, "--images", folder, "--classes", "3", "7", "--out", out,
                                    "--labels", *LABELS, "--device", "cpu"])
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} (")
    data = page_data(out)
    assert [e["name"] for e in data["images"]] == [str(folder / f"scene{n}.png") for n in range(3)]
    assert all(e["classes"] == [3, 7] and e["truth"] is None and e["boxes"] is None for e in data["images"])


def test_bad_input_is_a_one_line_error(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs[0], other)
    meta_file = other / "best" / "model.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "class_names": [f"c{i}" for i in range(10)]}))
    (tmp_path / "empty").mkdir()
    cases = {"unknown class 'cat'": ["--classes", "cat"], "not found": ["--images", tmp_path / "nothing"],
             "no images": ["--images", tmp_path / "empty"]}
    for needle, extra in cases.items():
        code, _, stderr = run_cli(["view", *runs, *extra, "--out", tmp_path / "x.html", "--device", "cpu"])
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr
    for checkpoints, needle in (([runs[0], other], "other classes than"), ([tmp_path / "missing"], "not found")):
        code, _, stderr = run_cli(["view", *checkpoints, "--out", tmp_path / "x.html", "--device", "cpu"])
        assert code == 2 and stderr.startswith("pamc: error: ") and needle in stderr, stderr
    assert not (tmp_path / "x.html").exists()


# ----------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright); the browser tests need it")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PAMC_CHROMIUM)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def opened(browser, path: Path):
    """The page at `path` opened from disk; fails the test on any console error, page error or
    request that leaves the file."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    errors = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: errors.append(f"request: {r.url}")
            if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.pamcView && window.pamcView.ready", timeout=30_000)
    yield page
    page.close()
    assert not errors, errors


@pytest.fixture
def page(browser, view):
    with opened(browser, view) as page:
        yield page


def state(page) -> dict:
    return page.evaluate("pamcView.state()")


def shown_score(page, model: int, row: int) -> float:
    return float(page.text_content(f'.score[data-model="{model}"][data-row="{row}"]'))


def check_scores(page, data, models, test_split) -> None:
    """Every score on the page (all models, all rows of the image) vs the models' forward pass."""
    now = state(page)
    i, alpha = now["image"], now["alpha"]
    expected = [probabilities(m, test_split.images.take(torch.tensor([i])), alpha)[0] for m in models]
    for row, c in enumerate(data["images"][i]["classes"]):
        for m in range(len(models)):
            assert shown_score(page, m, row) == pytest.approx(float(expected[m][c]), abs=1e-4)


def set_slider(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def save_screenshot(page, tmp_path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("PAMC_ARTIFACTS"):
        folder = Path(os.environ["PAMC_ARTIFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, folder / name)


def test_scores_follow_the_alpha_slider(page, data, models, test_split, tmp_path):
    assert state(page)["alpha"] == 1
    check_scores(page, data, models, test_split)
    set_slider(page, "#alpha", 3.7)
    assert state(page)["alpha"] == pytest.approx(3.7) and page.text_content("#alpha-value") == "3.7"
    check_scores(page, data, models, test_split)
    page.click("#jumps button:has-text('2: α 5.0')")  # the second checkpoint's tuned alpha
    assert state(page)["alpha"] == 5.0
    check_scores(page, data, models, test_split)
    save_screenshot(page, tmp_path, "view-alpha5.png")


def test_keys_and_pickers_switch_image_and_class(page, data, models, test_split):
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    now = state(page)
    assert (now["image"], now["row"]) == (1, 1)
    assert now["className"] == data["class_names"][data["images"][1]["classes"][1]]
    assert page.eval_on_selector("#class-picker", "el => el.value") == "1"
    page.keyboard.press("Shift+Equal")  # "+" with Shift: alpha + 1
    assert state(page)["alpha"] == 2.0
    check_scores(page, data, models, test_split)
    page.select_option("#image-picker", "4")
    page.select_option("#class-picker", "2")
    now = state(page)
    assert (now["image"], now["row"]) == (4, 2)
    assert page.locator(".row.current").get_attribute("data-row") == "2"
    check_scores(page, data, models, test_split)
    page.keyboard.press("Escape")  # the focused picker would take the arrow keys itself
    page.keyboard.press("ArrowLeft")
    assert state(page)["image"] == 3 and state(page)["row"] == 0


def test_painted_colours_are_rdbu_of_the_python_values(page, data, models, test_split, tmp_path):
    alpha, row, image = 2.5, 1, 2
    page.evaluate(f"pamcView.setImage({image}); pamcView.setRow({row}); pamcView.setOpacity(1); pamcView.setBoxes(false)")
    set_slider(page, "#alpha", alpha)
    entry = data["images"][image]
    c = entry["classes"][row]
    raw = [cams(m, test_split.images.take(torch.tensor([image])))[0, c] for m in models]
    boosted = [boostlu(r, alpha) for r in raw]
    vmax = max(float(b.abs().max()) for b in boosted)  # one scale for the whole row
    assert page.evaluate(f"pamcView.scale({row})") == pytest.approx(vmax, rel=1e-5)
    lut = colormaps["RdBu_r"]
    for m in range(len(models)):
        canvas = f'canvas.map[data-model="{m}"][data-row="{row}"]'
        width, height = page.eval_on_selector(canvas, "el => [el.width, el.height]")
        values = upsample(boosted[m], (height, width)).numpy()
        pixels = np.array(page.eval_on_selector(
            canvas, "el => Array.from(el.getContext('2d').getImageData(0, 0, el.width, el.height).data)"),
            dtype=float).reshape(height, width, 4)
        expected = np.round(lut((values / vmax + 1) / 2)[..., :3] * 255)
        # neighbouring entries of the 256-colour table differ by at most 4 levels
        assert np.abs(pixels[..., :3] - expected).max() <= 5
        for x, y in ((0, 0), (width // 3, height // 2), (width - 1, height - 1)):
            drawn = page.evaluate(f"pamcView.mapValue({m}, {row}, {x}, {y})")
            assert drawn == pytest.approx(float(values[y, x]), abs=1e-5)
    save_screenshot(page, tmp_path, "view-colours.png")


# ----------------------------------------------------------------------------- the review page


@pytest.fixture(scope="module")
def review(runs, tmp_path_factory):
    """The review page of the first run's 8 best suggestions on its training and validation images."""
    from pamc.review import write_review
    from pamc.suggest import suggest_labels

    folder = tmp_path_factory.mktemp("review")
    ranked = suggest_labels(runs[0], how="rank", device="cpu", out=folder / "suggestions.csv").rows
    chosen = sorted([r for r in ranked if r["split"] == "train"][:4] + [r for r in ranked if r["split"] == "val"][:4],
                    key=lambda r: r["rank"])  # both splits on one page
    return write_review(runs[0], chosen, folder / "review.html", count=8, device="cpu"), chosen


def test_review_page_holds_the_suggestions_with_their_maps(review, models):
    path, suggestions = review
    data = page_data(path)
    items = data["review"]["items"]
    assert [(i["name"], data["class_names"][i["class"]], i["rank"]) for i in items] == \
        [(s["image"], s["class"], s["rank"]) for s in suggestions]
    assert {i["split"] for i in items} == {"train", "val"}
    for item in items:  # each suggestion is a row of its image; training images show their labels
        entry = data["images"][item["image"]]
        assert entry["name"] == item["name"] and entry["classes"][item["row"]] == item["class"]
        if item["split"] == "train":
            assert item["class"] not in entry["observed"]["positive"] + entry["observed"]["negative"]


def review_state(page) -> dict:
    return page.evaluate("pamcView.review.state()")


def test_review_from_the_keyboard_then_export_and_merge(browser, review, tmp_path):
    path, suggestions = review
    data = page_data(path)
    items = data["review"]["items"]
    with opened(browser, path) as page:
        assert review_state(page)["item"] == 0 and page.is_visible("#review")
        now = state(page)
        assert (now["image"], now["row"]) == (items[0]["image"], items[0]["row"])
        page.keyboard.press("a")  # accept, and on to the next
        page.keyboard.press("r")
        assert review_state(page) == {"item": 2, "position": 2, "visible": 8, "filter": "", "decision": None,
                                      "accepted": 1, "rejected": 1}
        page.keyboard.press("k")
        page.keyboard.press("u")  # undo the rejection of item 1
        page.keyboard.press("j")
        page.keyboard.press("a")
        assert review_state(page)["accepted"] == 2 and review_state(page)["rejected"] == 0
        now = state(page)
        assert (now["image"], now["row"]) == (items[3]["image"], items[3]["row"])
        # the class filter shows only that class's suggestions
        c = items[4]["class"]
        page.select_option("#review-class", str(c))
        wanted = [j for j, item in enumerate(items) if item["class"] == c]
        assert review_state(page)["visible"] == len(wanted) and review_state(page)["item"] == wanted[0]
        page.keyboard.press("r")  # the picker gave the keys back
        page.fill("#reviewer", "ana")
        with page.expect_download() as download:
            page.click("#review-export")
        exported = tmp_path / "decisions.csv"
        download.value.save_as(exported)
        assert exported.read_text() == page.evaluate("pamcView.review.csv()")
        save_screenshot(page, tmp_path, "review.png")
    with open(exported, newline="") as f:
        rows = list(csv.DictReader(f))
    decided = {0: "accept", 2: "accept", wanted[0]: "reject"}
    assert [(r["image"], r["class"], r["decision"], r["reviewer"]) for r in rows] == \
        [(items[j]["name"], data["class_names"][items[j]["class"]], d, "ana") for j, d in sorted(decided.items())]
    # merged into a label file of these training images: accepted pairs become observed positives
    names = sorted({r["image"] for r in rows})
    labels = tmp_path / "labels.csv"
    labels.write_text("image," + ",".join(data["class_names"]) + "\n" +
                      "".join(f"{n}," + ",".join([""] * len(data["class_names"])) + "\n" for n in names))
    code, _, stderr = run_cli(["labels", "merge", "--labels", labels, "--decisions", exported, "--out", tmp_path / "new.csv"])
    assert code == 0, stderr
    with open(tmp_path / "new.csv", newline="") as f:
        merged = {(r["image"], c) for r in csv.DictReader(f) for c in data["class_names"] if r[c] == "1"}
    assert merged == {(r["image"], r["class"]) for r in rows if r["decision"] == "accept"}
