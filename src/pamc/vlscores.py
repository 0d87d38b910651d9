"""Vision-language class scores of the training images, computed once and stored (spec since-2024 §2).

    s_c(v) = softmax_c(cos(f_img(v), f_txt(c)) / T)    for the whole image (v = 0) and g x g tiles

The scorer is frozen and the scores depend only on the image and the scorer, so pamc computes them
once per (dataset, scorer, prompts, views) and keeps them as fp16 N x V x C (`scores.npy`) in a
folder named by a hash of all of those: a change of any recomputes, the same call reuses.  The
references instead run CLIP on every training step (VLPL: 1 pass, AEVLP: 17 per image per step).

Scorers (all loaded from local files; pamc downloads nothing):

* `open_clip_scorer`: open_clip (``open_clip_torch``), an architecture name -- built in, or a
  model-config ``.json`` -- and a checkpoint file;
* `hf_clip_scorer`: Hugging Face ``transformers``, a local ``CLIPModel`` folder;
* `scene_scorer`: for the scenes, the scene backbone pretrained on single objects with its object
  classifier (`pretrain.pretrained_scene_classifier`): it has never seen a multi-label image, as
  CLIP has never seen the dataset -- a stand-in, not CLIP.

Views: images are read at g * R (R the scorer's input size); the global view is the whole image
resized to R, the tiles are its g x g blocks of R x R.  Normalisation: the scorer's own mean/std by
default; ``imagenet`` reproduces the references' (they feed CLIP with ImageNet statistics).
Interrupted runs resume: rows are written in order to ``scores.partial.npy`` with the count done
in ``progress.json``; the finished file is renamed into place, so ``scores.npy`` is always whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import PamcError
from .files import atomic_write

#: OpenAI CLIP's image statistics (the default of open_clip and transformers' CLIP processors)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
NORMALIZATIONS = ("model", "imagenet")
DEFAULT_TEMPLATE = "a photo of a {}."
#: spec §2: T = 0.01 in both references (0.1 for CUB in AEVLP)
DEFAULT_TEMPERATURE = 0.01
SCORES_FILE, META_FILE, PARTIAL_FILE, PROGRESS_FILE = "scores.npy", "meta.json", "scores.partial.npy", "progress.json"
#: spelled-together VOC names, as a photo caption would write them
READABLE = {"tvmonitor": "tv monitor", "pottedplant": "potted plant", "diningtable": "dining table",
            "aeroplane": "aeroplane", "motorbike": "motorbike"}


@dataclass
class Scorer:
    """A frozen image-text scorer: `logits(x)` maps normalised B x 3 x R x R images to B x C
    class similarities already divided by the temperature (the softmax's input)."""

    identity: dict  # what the key hashes: model files, prompts, temperature
    resolution: int
    mean: tuple
    std: tuple
    logits: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


# -- class names and prompts --------------------------------------------------------------------

def prompt_name(name: str) -> str:
    """A dataset's class name as a caption would say it: CUB's ``001.Black_footed_Albatross`` ->
    ``Black footed Albatross``, CUB attributes ``has_bill_shape::curved`` -> ``bill shape curved``,
    VOC ``tvmonitor`` -> ``tv monitor``; underscores become spaces."""
    name = READABLE.get(name, name)
    name = re.sub(r"^\d+\.", "", name)
    name = re.sub(r"^has_", "", name).replace("::", " ").replace("_", " ")
    return re.sub(r"\s+", " ", name).strip()


def read_class_names(path: str | Path, class_names: Sequence[str]) -> list[str]:
    """The names to put in the prompts, from a file: ``.txt`` one per line in the dataset's class
    order, or ``.json`` / ``.yaml`` mapping the dataset's class names to prompt names (classes not
    named keep `prompt_name`)."""
    from .files import read_yaml

    path = Path(path)
    if not path.is_file():
        raise PamcError(f"class-name file {path} does not exist")
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        mapping = json.loads(path.read_text(encoding="utf-8")) if path.suffix.lower() == ".json" else read_yaml(path)
        if not isinstance(mapping, dict):
            raise PamcError(f"{path} must map the dataset's class names to prompt names")
        unknown = sorted(set(map(str, mapping)) - set(class_names))
        if unknown:
            raise PamcError(f"{path} names classes the dataset does not have ({', '.join(unknown[:3])}); "
                            f"its keys must be the dataset's class names (classes.txt)")
        return [str(mapping.get(c, prompt_name(c))) for c in class_names]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(class_names):
        raise PamcError(f"{path} lists {len(names)} class names, the dataset has {len(class_names)}; "
                        f"write one per line in the order of classes.txt")
    return names


def prompts(class_names: Sequence[str], template: str = DEFAULT_TEMPLATE, names: Optional[Sequence[str]] = None) -> list[str]:
    if "{}" not in template:
        raise PamcError(f"the prompt template must contain {{}} for the class name (got {template!r})")
    return [template.format(n) for n in (names if names is not None else map(prompt_name, class_names))]


# -- scorers ------------------------------------------------------------------------------------

def _local_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise PamcError(f"{what} {path} is not a local file or folder; pamc downloads nothing: "
                        f"download the model yourself and pass its local path")
    return p


def _file_identity(path: Path) -> dict:
    from .models.weights import file_sha256

    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return {str(f.relative_to(path) if path.is_dir() else f.name): file_sha256(f) for f in files}


def _text_matrix(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.float(), dim=-1)


def _cosine_logits(encode_image, text: torch.Tensor, temperature: float):
    def logits(x: torch.Tensor) -> torch.Tensor:
        return _text_matrix(encode_image(x)) @ text.T / temperature
    return logits


def open_clip_scorer(arch: str, checkpoint: str | Path, texts: Sequence[str], temperature: float = DEFAULT_TEMPERATURE,
                     device: str = "cpu") -> Scorer:
    """open_clip: `arch` a built-in architecture name or a model-config ``.json`` (its stem becomes
    the name), `checkpoint` a local weights file."""
    from .optional import available

    if not available("open_clip"):
        raise PamcError("open_clip is not installed; pip install 'pamc[clip]'")
    import open_clip

    if arch.startswith(("hf-hub:", "local-dir:")):
        raise PamcError(f"architecture {arch!r}: give a built-in open_clip name or a model-config .json, and the "
                        f"weights as a local --checkpoint file (pamc downloads nothing)")
    identity: dict = {"kind": "open_clip", "arch": arch}
    if arch.endswith(".json"):
        config = _local_file(arch, "model config")
        open_clip.add_model_config(config)
        identity["config"] = _file_identity(config)
        arch = config.stem
    elif arch not in open_clip.list_models():
        raise PamcError(f"unknown open_clip architecture {arch!r}; give a built-in name (e.g. ViT-B-16) or a model-config .json")
    weights = _local_file(checkpoint, "checkpoint")
    if not weights.is_file():
        raise PamcError(f"checkpoint {checkpoint} is a folder; open_clip needs the weights file itself")
    identity["checkpoint"] = _file_identity(weights)
    dev = torch.device(device)
    try:
        model = open_clip.create_model(arch, pretrained=str(weights), device=dev)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:  # OSError: a part it would download
        raise PamcError(f"{weights} does not load into open_clip {arch!r} offline: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    model.eval()
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except (OSError, ValueError, RuntimeError) as exc:
        raise PamcError(f"the tokenizer of open_clip {arch!r} is not available offline ({str(exc).splitlines()[0][:150]}); "
                        f"use an architecture with open_clip's own tokenizer, or a transformers folder (--hf)") from None
    with torch.no_grad():
        text = _text_matrix(model.encode_text(tokenizer(list(texts)).to(dev)))
    size = getattr(model.visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = tuple(getattr(model.visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or CLIP_STD)
    identity.update(texts=list(texts), temperature=temperature)
    return Scorer(identity, int(size), mean, std, _cosine_logits(model.encode_image, text, temperature), dev)


def hf_clip_scorer(folder: str | Path, texts: Sequence[str], temperature: float = DEFAULT_TEMPERATURE,
                   device: str = "cpu") -> Scorer:
    """Hugging Face transformers: a local `CLIPModel` folder (config, weights, tokenizer files)."""
    from .optional import available

    if not available("transformers"):
        raise PamcError("transformers is not installed; pip install 'pamc[clip]'")
    path = _local_file(folder, "CLIP model")
    if not (path / "config.json").is_file():
        raise PamcError(f"{path} is not a saved CLIPModel folder (no config.json); save one with "
                        f"CLIPModel.save_pretrained and its tokenizer beside it")
    from transformers import AutoTokenizer, CLIPModel

    dev = torch.device(device)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).to(dev).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise PamcError(f"{path} does not load as a CLIPModel with its tokenizer: {str(exc).splitlines()[0][:200]}") from None
    mean, std = CLIP_MEAN, CLIP_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():
        cfg = json.loads(processor.read_text(encoding="utf-8"))
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    with torch.no_grad():
        tokens = tokenizer(list(texts), padding=True, return_tensors="pt").to(dev)
        text = _text_matrix(_features(model.get_text_features(**tokens)))

    def encode_image(x):
        return _features(model.get_image_features(pixel_values=x))

    identity = {"kind": "transformers", "model": _file_identity(path), "texts": list(texts), "temperature": temperature}
    return Scorer(identity, int(model.config.vision_config.image_size), mean, std,
                  _cosine_logits(encode_image, text, temperature), dev)


def _features(out) -> torch.Tensor:
    """transformers returns the embeddings as a tensor (older) or inside a model output (newer)."""
    return out if torch.is_tensor(out) else out.pooler_output


def scene_scorer(data: dict, temperature: float = 1.0, seed: int = 0, device: str = "cpu") -> Scorer:
    """The scenes' stand-in for CLIP: the scene backbone pretrained on single objects and its object
    classifier, softmax(classifier logits / T) -- T = 1 by default, the classifier's own scale."""
    from safetensors.torch import load_file

    from .models import build_backbone
    from .pretrain import pretrained_scene_classifier

    if data.get("name") != "scenes":
        raise PamcError("the stand-in scorer is the scene backbone pretrained on scene objects; it needs data name=scenes")
    params = {k: data[k] for k in ("source", "canvas", "object_scale") if k in data}
    backbone_file, head_file = pretrained_scene_classifier(seed=seed, **params)
    dev = torch.device(device)
    net = build_backbone("scene-cnn")
    net.load_state_dict(load_file(str(backbone_file)))
    head_state = load_file(str(head_file))
    head = torch.nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
    head.load_state_dict(head_state)
    net, head = net.to(dev).eval(), head.to(dev).eval()

    def logits(x):
        return head(net(x).mean(dim=(2, 3))) / temperature

    identity = {"kind": "scene-stand-in", "backbone": _file_identity(backbone_file), "head": _file_identity(head_file),
                "temperature": temperature}
    # pretrained on ImageNet-normalised canvases (`runtime.prepare`): its "own" statistics are those
    return Scorer(identity, int(data.get("canvas", 64)), IMAGENET_MEAN, IMAGENET_STD, logits, dev)


# -- views and the stored scores ---------------------------------------------------------------

def views(images: torch.Tensor, resolution: int, grid: int) -> torch.Tensor:
    """uint8 B x 3 x H x W -> float [0, 1] B x V x 3 x R x R: the whole image, then g x g tiles
    (row by row), from the image resized to g * R (no resize where it has that size already)."""
    x = images.float() / 255.0
    side = resolution * max(grid, 1)
    if tuple(x.shape[-2:]) != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    whole = x if grid <= 1 else F.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                              align_corners=False, antialias=True)
    out = [whole]
    if grid > 1:
        b = x.shape[0]
        tiles = x.unfold(2, resolution, resolution).unfold(3, resolution, resolution)  # B x 3 x g x g x R x R
        out.append(tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, grid * grid, 3, resolution, resolution))
    return torch.cat([out[0].unsqueeze(1)] + out[1:], dim=1)


def score_key(dataset: dict, scorer: Scorer, grid: int, normalization: str) -> str:
    """The hash naming a score folder: everything the scores depend on."""
    text = json.dumps({"dataset": dataset, "scorer": scorer.identity, "grid": grid, "resolution": scorer.resolution,
                       "normalization": normalization, "version": 1}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _normalizer(scorer: Scorer, normalization: str):
    if normalization not in NORMALIZATIONS:
        raise PamcError(f"normalization must be one of {', '.join(NORMALIZATIONS)} (got {normalization!r})")
    mean, std = (scorer.mean, scorer.std) if normalization == "model" else (IMAGENET_MEAN, IMAGENET_STD)
    m = torch.tensor(mean, device=scorer.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=scorer.device).view(1, 3, 1, 1)
    return lambda x: (x - m) / s


@torch.no_grad()
def score_batch(images: torch.Tensor, scorer: Scorer, grid: int, normalization: str = "model") -> torch.Tensor:
    """B x V x C softmax scores of one uint8 batch."""
    v = views(images.to(scorer.device), scorer.resolution, grid)
    b, n_views = v.shape[:2]
    flat = _normalizer(scorer, normalization)(v.flatten(0, 1))
    return scorer.logits(flat).float().softmax(dim=-1).view(b, n_views, -1)


def compute_scores(images, scorer: Scorer, folder: str | Path, dataset: dict, grid: int = 0,
                   normalization: str = "model", batch_size: int = 32, progress: bool = True,
                   chunk: Optional[int] = None) -> Path:
    """Score every image of `images` (a Dataset of uint8 images) into `folder`/KEY/scores.npy and
    return its path: reused when present, resumed when a previous call was interrupted."""
    from tqdm.auto import tqdm

    from .data.loading import image_batches

    if grid < 0 or batch_size < 1:
        raise PamcError(f"grid must be >= 0 and batch_size >= 1 (got {grid}, {batch_size})")
    key = score_key(dataset, scorer, grid, normalization)
    out = Path(folder) / key[:16]
    final = out / SCORES_FILE
    if final.is_file():
        return final
    n = len(images)
    probe = score_batch(image_batches(images, [torch.arange(min(1, n))]).__next__(), scorer, grid, normalization)
    shape = (n, probe.shape[1], probe.shape[2])
    out.mkdir(parents=True, exist_ok=True)
    partial, progress_file = out / PARTIAL_FILE, out / PROGRESS_FILE
    done = 0
    if partial.is_file() and progress_file.is_file():
        state = json.loads(progress_file.read_text(encoding="utf-8"))
        if state.get("key") == key and tuple(state.get("shape", ())) == shape:
            done = int(state["done"])
    rows = (np.lib.format.open_memmap(partial, mode="r+") if done else
            np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape))
    batches = list(torch.split(torch.arange(done, n), batch_size))
    chunk = chunk or max(1, 2048 // batch_size)  # batches between progress records
    start = time.perf_counter()
    bar = tqdm(total=n, initial=done, desc="scores", unit="img", disable=not progress)
    for i, x in enumerate(image_batches(images, batches)):
        index = batches[i]
        rows[int(index[0]):int(index[-1]) + 1] = score_batch(x, scorer, grid, normalization).cpu().numpy().astype(np.float16)
        bar.update(len(index))
        if (i + 1) % chunk == 0 or i + 1 == len(batches):
            rows.flush()
            end = int(index[-1]) + 1
            atomic_write(progress_file, lambda tmp: Path(tmp).write_text(
                json.dumps({"key": key, "shape": list(shape), "done": end}), encoding="utf-8"))
    bar.close()
    rows.flush()
    del rows
    seconds = time.perf_counter() - start
    meta = {"key": key, "shape": list(shape), "dataset": dataset, "scorer": scorer.identity, "grid": grid,
            "resolution": scorer.resolution, "normalization": normalization, "seconds": seconds,
            "images_scored_now": n - done}
    atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8"))
    os.replace(partial, final)
    progress_file.unlink(missing_ok=True)
    return final


def dataset_identity(data: dict, class_names: Sequence[str], names: Optional[Sequence[str]], num_images: int) -> dict:
    """What identifies the training images: the data settings (less where they are cached), the
    class names, and the image list (a hash) where the dataset has one."""
    keep = {k: v for k, v in data.items() if k not in ("cache", "cache_dir")}
    listing = hashlib.sha256("\n".join(names).encode()).hexdigest() if names is not None else None
    return {"data": keep, "classes": list(class_names), "num_images": num_images, "images": listing}


# -- a dataset's training images, end to end ---------------------------------------------------

def _training_set(data: dict, image_size: Optional[int] = None):
    """The data mapping's bundle; a prepared dataset is read at the scorer's g * R (no image cache)."""
    from .data import load_bundle

    if data.get("name") == "prepared" and image_size is not None:
        data = {**{k: v for k, v in data.items() if k not in ("cache",)}, "image_size": image_size}
    return load_bundle(data)


def rule_quality(scores: torch.Tensor, bundle) -> dict:
    """The quality of both rules' pseudo-positives (default settings) on the training set's observed
    labels (the dataset's default observation), where it has full labels."""
    from . import pseudo
    from .labels import observe

    train = bundle.train
    if train.full is None:
        return {}
    observed = observe(train.full, train.observed, "auto", what="the training set")
    if hasattr(observed, "batch"):
        return {}
    out = {"vlpl (threshold 0.3)": pseudo.pseudo_label_quality(pseudo.vlpl_pseudo_labels(scores), observed, train.full)}
    if scores.shape[1] > 1:
        out["aevlp (eta0 0, tau 0.5, top-k 3)"] = pseudo.pseudo_label_quality(
            pseudo.aevlp_pseudo_labels(scores, observed), observed, train.full)
    return out


def check_score_file(data: dict, path: str | Path) -> dict:
    """A user's own score file checked against the dataset: {path, shape, quality}."""
    from .pseudo import load_scores

    bundle = _training_set(data)
    scores = load_scores(path, len(bundle.train), bundle.num_classes)
    return {"path": str(path), "shape": list(scores.shape), "quality": rule_quality(scores, bundle), "seconds": None}


def score_training_images(data: dict, scorer: str, arch: Optional[str] = None, checkpoint: Optional[str] = None,
                          model: Optional[str] = None, template: str = DEFAULT_TEMPLATE,
                          class_names: Optional[str] = None, grid: int = 4, temperature: Optional[float] = None,
                          normalization: str = "model", batch_size: int = 32, out: Optional[str] = None,
                          device: str = "cpu", progress: bool = True) -> dict:
    """Scores of every training image of `data`, from ``scorer`` = open_clip (`arch`, `checkpoint`),
    transformers (`model`: a local folder) or stand-in (the scenes); stored under `out` (default:
    the prepared folder's ``vl-scores/``, else the cache's).  Returns {path, shape, quality, seconds}."""
    from .files import cache_dir
    from .pseudo import as_views

    if normalization not in NORMALIZATIONS:
        raise PamcError(f"normalization must be one of {', '.join(NORMALIZATIONS)} (got {normalization!r})")
    bundle = _training_set(data)
    names = read_class_names(class_names, bundle.class_names) if class_names else None
    texts = prompts(bundle.class_names, template, names)
    if scorer == "open_clip":
        if not arch or not checkpoint:
            raise PamcError("open_clip needs an architecture (--open-clip ARCH) and a local --checkpoint FILE")
        made = open_clip_scorer(arch, checkpoint, texts, temperature or DEFAULT_TEMPERATURE, device)
    elif scorer == "transformers":
        made = hf_clip_scorer(model, texts, temperature or DEFAULT_TEMPERATURE, device)
    elif scorer == "stand-in":
        made = scene_scorer(data, temperature or 1.0, device=device)
    else:
        raise PamcError(f"scorer must be open_clip, transformers or stand-in (got {scorer!r})")
    if data.get("name") == "prepared":
        bundle = _training_set(data, made.resolution * max(grid, 1))
    root = Path(out) if out else (Path(data["path"]) / "vl-scores" if data.get("name") == "prepared"
                                  else cache_dir() / "vl-scores")
    identity = dataset_identity({k: v for k, v in data.items() if k != "image_size"}, bundle.class_names,
                                bundle.train.names, len(bundle.train))
    start = time.perf_counter()
    path = compute_scores(bundle.train.images, made, root, identity, grid, normalization, batch_size, progress)
    elapsed = time.perf_counter() - start
    scores = as_views(np.load(path))
    meta = json.loads((path.parent / META_FILE).read_text(encoding="utf-8"))
    return {"path": str(path), "shape": list(scores.shape), "quality": rule_quality(scores, bundle),
            "seconds": elapsed, "scored_seconds": meta.get("seconds")}


#: `scores: stand-in` in a run's config: the scenes' stand-in, global view + 2 x 2 tiles, T 1
STAND_IN, STAND_IN_GRID = "stand-in", 2


def scores_for_run(option: str, data: dict, num_images: int, num_classes: int) -> torch.Tensor:
    """The run's ``scores`` setting as a checked N x V x C tensor: a .npy file, or ``stand-in``
    (the scenes: computed once with `scene_scorer` and cached, like ``backbone_weights: scenes``)."""
    from .pseudo import load_scores

    if option == STAND_IN:
        option = score_training_images(data, "stand-in", grid=STAND_IN_GRID, progress=False)["path"]
    return load_scores(option, num_images, num_classes)


def describe_scores(option: str) -> dict:
    """What a run's ``scores`` came from, for results.json and `pamc table` (an extra resource):
    {"short": CLIP | scene stand-in | own scores, "what": one line}."""
    if option == STAND_IN:
        return {"short": "scene stand-in", "what": "the scene backbone pretrained on single objects with its "
                "object classifier, global view + 2 x 2 tiles (a stand-in for CLIP, not CLIP)"}
    meta_file = Path(option).parent / META_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    scorer = meta.get("scorer", {}) if meta.get("key", "")[:16] == Path(option).parent.name else {}
    views = f"global view + {meta.get('grid')} x {meta.get('grid')} tiles" if meta.get("grid", 0) > 1 else "global view"
    if scorer.get("kind") == "open_clip":
        return {"short": "CLIP", "what": f"open_clip {scorer.get('arch')} (frozen), {views}"}
    if scorer.get("kind") == "transformers":
        return {"short": "CLIP", "what": f"transformers CLIPModel (frozen), {views}"}
    if scorer.get("kind") == "scene-stand-in":
        return describe_scores(STAND_IN)
    return {"short": "own scores", "what": f"class scores from {option}"}
