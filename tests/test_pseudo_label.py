"""`pamc pseudo-label` end to end: tiny CLIP models built from a configuration with random weights,
saved to local files in both formats (open_clip checkpoint, transformers folder), scored on a
miniature VOC after `pamc prepare`, checked against the models run by hand; resumption; the
stand-in of the scenes; a user's own score file; and every bad input as one line, nothing written."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fixtures_datasets as fx
from pamc.apps.cli import main
from pamc.data import load_bundle
from pamc.vlscores import describe_scores, scores_for_run

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch (pamc[clip]) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (pamc[clip]) is not installed")

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RES, GRID = 32, 2


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_line_error(args, needle):
    code, _, err = run_cli(args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pamc: error: ") and needle in lines[0], err


@pytest.fixture(scope="module")
def voc(tmp_path_factory, pamc_cache):
    base = tmp_path_factory.mktemp("voc")
    root, out = fx.make_voc(base / "raw", extra_train=10), base / "prepared"
    assert run_cli(["prepare", "voc", "--root", root, "--out", out])[0] == 0
    return out


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip")
    config = {"embed_dim": 16, "vision_cfg": {"image_size": RES, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (folder / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "tiny-clip.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip").state_dict(), folder / "tiny.pt")
    return folder / "tiny-clip.json", folder / "tiny.pt"


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,'()-")
    vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=RES, patch_size=16),
                        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return folder


def by_hand_views(image: torch.Tensor) -> list[torch.Tensor]:
    """The global view and 2 x 2 tiles of one uint8 image read at 64 px, CLIP-normalised."""
    x = image.float().unsqueeze(0) / 255
    whole = F.interpolate(x, size=(RES, RES), mode="bilinear", align_corners=False, antialias=True)
    tiles = [x[..., r * RES:(r + 1) * RES, c * RES:(c + 1) * RES] for r in range(GRID) for c in range(GRID)]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return [(v - mean) / std for v in [whole] + tiles]


def check_against_model(path, voc, encode_image, text):
    scores = np.load(path)
    bundle = load_bundle({"name": "prepared", "path": str(voc), "image_size": RES * GRID})
    assert scores.dtype == np.float16 and scores.shape == (len(bundle.train), 1 + GRID * GRID, 20)
    for i in (0, len(bundle.train) - 1):
        with torch.no_grad():
            for v, view in enumerate(by_hand_views(bundle.train.images[i])):
                cos = F.normalize(encode_image(view), dim=-1) @ F.normalize(text, dim=-1).T
                expected = (cos / 0.01).softmax(dim=-1)[0].numpy()
                np.testing.assert_allclose(scores[i, v].astype(np.float32), expected, atol=2e-3)


def test_open_clip_scores_end_to_end(voc, tiny_open_clip, tmp_path):
    config, checkpoint = tiny_open_clip
    args = ["pseudo-label", "--data", f"path={voc}", "--open-clip", config, "--checkpoint", checkpoint,
            "--grid", GRID, "--out", tmp_path, "--no-progress"]
    code, out, err = run_cli(args)
    assert code == 0, err
    path = Path(out.split("scores: ")[1].split()[0])
    assert path.parent.parent == tmp_path and "precision" in out and "--scores " + str(path) in out
    model = open_clip.create_model("tiny-clip", pretrained=str(checkpoint)).eval()
    names = [n.replace("tvmonitor", "tv monitor").replace("pottedplant", "potted plant").replace("diningtable", "dining table")
             for n in fx.VOC_CLASSES]
    tokens = open_clip.get_tokenizer("tiny-clip")([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        text = model.encode_text(tokens)
    check_against_model(path, voc, model.encode_image, text)
    assert describe_scores(str(path)) == {"short": "CLIP", "what": f"open_clip {config} (frozen), global view + 2 x 2 tiles"}
    # the same call reuses the stored scores; another prompt is another key
    stamp = path.stat().st_mtime_ns
    code, again, _ = run_cli(args)
    assert code == 0 and Path(again.split("scores: ")[1].split()[0]) == path and path.stat().st_mtime_ns == stamp
    code, other, _ = run_cli(args + ["--template", "a picture of a {}."])
    assert code == 0 and Path(other.split("scores: ")[1].split()[0]) != path


def test_transformers_scores_end_to_end(voc, tiny_hf_clip, tmp_path):
    from transformers import AutoTokenizer, CLIPModel

    code, out, err = run_cli(["pseudo-label", "--data", f"path={voc}", "--hf", tiny_hf_clip, "--grid", GRID,
                              "--out", tmp_path, "--no-progress", "--template", "{}."])
    assert code == 0, err
    path = Path(out.split("scores: ")[1].split()[0])
    model = CLIPModel.from_pretrained(tiny_hf_clip).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_clip)
    names = [n.replace("tvmonitor", "tv monitor").replace("pottedplant", "potted plant").replace("diningtable", "dining table")
             for n in fx.VOC_CLASSES]
    with torch.no_grad():
        out_text = model.get_text_features(**tokenizer([f"{n}." for n in names], padding=True, return_tensors="pt"))
        text = out_text if torch.is_tensor(out_text) else out_text.pooler_output

    def encode_image(x):
        out_image = model.get_image_features(pixel_values=x)
        return out_image if torch.is_tensor(out_image) else out_image.pooler_output

    check_against_model(path, voc, encode_image, text)


def test_an_interrupted_scoring_resumes_where_it_stopped(voc, tiny_open_clip, tmp_path):
    from pamc import vlscores

    config, checkpoint = tiny_open_clip
    bundle = load_bundle({"name": "prepared", "path": str(voc), "image_size": RES * GRID})
    texts = vlscores.prompts(bundle.class_names)
    scorer = vlscores.open_clip_scorer(str(config), checkpoint, texts)
    whole = vlscores.compute_scores(bundle.train.images, scorer, tmp_path / "whole", {"d": 1}, GRID, batch_size=2,
                                    progress=False)
    calls = {"n": 0}
    plain = scorer.logits

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 5:  # the probe, then batches 1-3 are written, the 4th fails
            raise KeyboardInterrupt
        return plain(x)

    scorer.logits = failing
    with pytest.raises(KeyboardInterrupt):
        vlscores.compute_scores(bundle.train.images, scorer, tmp_path / "cut", {"d": 1}, GRID, batch_size=2,
                                progress=False, chunk=1)
    folder = next((tmp_path / "cut").iterdir())
    assert not (folder / "scores.npy").exists()
    assert json.loads((folder / "progress.json").read_text())["done"] == 6
    scorer.logits = plain
    resumed = vlscores.compute_scores(bundle.train.images, scorer, tmp_path / "cut", {"d": 1}, GRID, batch_size=2,
                                      progress=False)
    assert json.loads((resumed.parent / "meta.json").read_text())["images_scored_now"] == len(bundle.train) - 6
    np.testing.assert_array_equal(np.load(resumed), np.load(whole))
    assert not (resumed.parent / "progress.json").exists() and not (resumed.parent / "scores.partial.npy").exists()


def test_the_scenes_stand_in_and_a_users_own_scores(voc, tmp_path):
    data = {"name": "scenes", "source": "digits", "n_train": 40, "n_val": 16, "n_test": 16, "canvas": 32,
            "object_scale": [10, 14], "seed": 0}
    code, out, err = run_cli(["pseudo-label", *[f"--data={k}={json.dumps(v)}" for k, v in data.items()],
                              "--stand-in", "--no-progress"])
    assert code == 0, err
    path = out.split("scores: ")[1].split()[0]
    scores = np.load(path)
    assert scores.shape == (40, 5, 10)  # the global view and 2 x 2 tiles
    np.testing.assert_allclose(scores.astype(np.float32).sum(-1), 1.0, atol=1e-2)
    # the file a run with `--scores stand-in` uses: the same one, made once
    assert torch.equal(scores_for_run("stand-in", data, 40, 10), torch.from_numpy(scores).float())
    assert describe_scores(path)["short"] == describe_scores("stand-in")["short"] == "scene stand-in"
    # a user's own score file, checked against the miniature VOC
    n = len(load_bundle({"name": "prepared", "path": str(voc)}).train)
    own = tmp_path / "own.npy"
    np.save(own, np.random.default_rng(0).dirichlet(np.ones(20) * 0.2, size=(n, 5)).astype(np.float16))
    code, out, err = run_cli(["pseudo-label", "--data", f"path={voc}", "--scores", own])
    assert code == 0 and "precision" in out, err


#: dataset -> (miniature, `pamc prepare` arguments, the preset's data folder name)
MINIATURES = {"voc": (lambda root: fx.make_voc(root, extra_train=6), ["voc"]), "coco": (fx.make_coco, ["coco"]),
              "nuswide": (fx.make_nuswide_formatted, ["nuswide", "--option", "variant=formatted"]),
              "cub": (fx.make_cub, ["cub", "--val-fraction", "0.5"])}


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory, pamc_cache):
    base = tmp_path_factory.mktemp("miniatures")
    out = {}
    for name, (make, args) in MINIATURES.items():
        folder = base / name / "prepared"
        assert run_cli(["prepare", args[0], "--root", make(base / name / "raw"), "--out", folder, *args[1:]])[0] == 0
        out[name] = folder
    return out


@pytest.mark.parametrize("dataset", MINIATURES)
def test_every_preset_trains_on_the_miniature_datasets(dataset, miniatures, tmp_path):
    folder = miniatures[dataset]
    bundle = load_bundle({"name": "prepared", "path": str(folder)})
    for method in ("aevlp", "vlpl", "ignore"):
        preset = f"{dataset}-{method}"
        flags = []
        if method != "ignore":  # scores for the views the preset's command line names (--grid G)
            grid = preset_grid(preset)
            scores = np.random.default_rng(1).dirichlet(np.ones(bundle.num_classes) * 0.3,
                                                        size=(len(bundle.train), 1 + grid * grid))
            np.save(tmp_path / f"{method}.npy", scores.astype(np.float16))
            flags = ["--scores", tmp_path / f"{method}.npy"]
        run = tmp_path / preset
        code, _, err = run_cli(["train", "--preset", preset, "--data", f"path={folder}", "--data", "image_size=32",
                                "--backbone", "scene-cnn", "--backbone-weights", "none", "--epochs", "1",
                                "--batch-size", "2", "--device", "cpu", "--num-workers", "0", "--no-progress",
                                *flags, "--out", run])
        assert code == 0, err
        results = json.loads((run / "results.json").read_text())
        assert results["method"] == {"aevlp": "gpr", "vlpl": "vlpl", "ignore": "ignore"}[method]
        if method != "ignore":
            assert "pseudo_labels" in results and results["extra_resources"]["short"] == "own scores"


def preset_grid(preset: str) -> int:
    """The --grid of the `pamc pseudo-label` command a preset's description gives."""
    from pamc.config import preset_descriptions

    match = re.search(r"--grid (\d+)", preset_descriptions()[preset])
    assert match, preset
    return int(match.group(1))


@pytest.mark.parametrize("case", ["shape", "classes", "range", "names-count", "names-key", "checkpoint", "hub",
                                  "hub-open-clip", "no-scores"])
def test_bad_input_is_one_line_and_writes_nothing(case, voc, tiny_open_clip, tmp_path):
    config, checkpoint = tiny_open_clip
    n = len(load_bundle({"name": "prepared", "path": str(voc)}).train)
    base = ["pseudo-label", "--data", f"path={voc}", "--out", tmp_path / "store", "--no-progress"]
    clip = ["--open-clip", config, "--checkpoint", checkpoint]
    if case in ("shape", "classes", "range"):
        array = {"shape": np.zeros((n + 1, 20)), "classes": np.zeros((n, 3, 19)), "range": np.full((n, 20), 3.0)}[case]
        np.save(tmp_path / "s.npy", array)
        needle = {"shape": f"the training set needs {n} images x 20 classes", "classes": "x 20 classes",
                  "range": "in [0, 1]"}[case]
        one_line_error(base[:3] + ["--scores", tmp_path / "s.npy"], needle)
    elif case == "names-count":
        (tmp_path / "names.txt").write_text("cat\ndog\n")
        one_line_error(base + clip + ["--class-names", tmp_path / "names.txt"], "lists 2 class names, the dataset has 20")
    elif case == "names-key":
        (tmp_path / "names.json").write_text(json.dumps({"kitten": "small cat"}))
        one_line_error(base + clip + ["--class-names", tmp_path / "names.json"], "does not have (kitten)")
    elif case == "checkpoint":
        one_line_error(base + ["--open-clip", config, "--checkpoint", tmp_path / "absent.pt"], "pamc downloads nothing")
    elif case == "hub":
        one_line_error(base + ["--hf", "openai/clip-vit-base-patch16"], "pass its local path")
    elif case == "hub-open-clip":
        one_line_error(base + ["--open-clip", "ViT-B-16", "--checkpoint", "openai"], "pamc downloads nothing")
    else:
        run = tmp_path / "run"
        one_line_error(["train", "--preset", "voc-vlpl", "--data", f"path={voc}", "--backbone", "scene-cnn",
                        "--backbone-weights", "none", "--device", "cpu", "--out", run], "--scores")
        assert not run.exists()
    assert not (tmp_path / "store").exists()


def test_prompt_names_and_views():
    from pamc.vlscores import prompt_name, prompts, views

    assert prompt_name("has_bill_shape::curved_(up_or_down)") == "bill shape curved (up or down)"
    assert prompt_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert prompts(["tvmonitor", "cat"]) == ["a photo of a tv monitor.", "a photo of a cat."]
    # a 4 x 4 image of four constant quadrants -> the global view (resized to 2) and the 2 x 2 tiles, row by row
    image = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    image[..., :2, 2:], image[..., 2:, :2], image[..., 2:, 2:] = 51, 102, 255
    v = views(image, resolution=2, grid=2)
    assert v.shape == (1, 5, 3, 2, 2)
    assert [float(t.mean()) for t in v[0, 1:]] == pytest.approx([0.0, 0.2, 0.4, 1.0])
    whole = v[0, 0, 0].flatten()  # the whole image at half size, antialiased: each pixel mostly its quadrant
    assert whole.argsort().tolist() == [0, 1, 2, 3] and float(whole.mean()) == pytest.approx(0.4)
