"""`pamc view`: one self-contained HTML page comparing the CAMs of several checkpoints.

Why a page rather than more PNGs: the question BoostLU raises -- same regions, weaker
attribution? -- is answered by moving alpha and watching the scores and the maps of every model
change together, on one absolute colour scale per class.  So the page carries the *raw* CAMs and
recomputes BoostLU, the scores and the colours itself; it needs no server and no network (open it
from disk, attach it to a CI run or a mail).

What the page holds (the JSON block `<script id="pamc-data" type="application/json">`):

* `models`: per checkpoint its label, path, method, form of BoostLU (`activation`, the spec dict of
  `pamc.activation`, and `form`, its text), training alpha and evaluation (tuned) alpha (each a
  number, or a list of one per class);
* `class_names`, `colormap` (RdBu_r from matplotlib, as the PNG figures: 256 x RGB uint8, base64);
* `images`: per image its `name`, `src` (a PNG data URI up to 128 x 128 px -- exact and small --,
  JPEG quality 90 above), `width`/`height`, the `classes` shown (indices), `truth` (ground-truth
  class indices, or null), `observed` ({"positive": [...], "negative": [...]} of the training
  labels, only for the train split, else null), `boxes` ([[class, x0, y0, x1, y1], ...] in pixels
  of `box_canvas` = [H, W] of the split's images, or null), `cam_shape` [h, w] and `cams`: base64
  of little-endian float32, C-order shape (models, classes, h, w) -- the raw CAMs, i.e.
  `CamClassifier.cams`, the 1x1 conv *with its bias*, so the head bias is not stored apart.

Size: about 5.4 bytes per CAM value (base64 float32: models x classes x h x w per image) plus the
images; 50 images x 10 classes x 3 ResNet-18 checkpoints at 448 px (14 x 14 CAMs) make 2.1 MB.
float16 would halve the maps but move the recomputed scores by ~1e-3, so they stay float32.

In the page, for a model at alpha a: BoostLU(CAM) = CAM + (a - 1) * g(CAM) with g of the model's
form (`pamc.activation`; boostlu: a*CAM where CAM > 0, else CAM); the class score is
sigmoid(mean over the h x w positions of BoostLU(CAM)), as `CamClassifier.forward`.  The slider's
alpha is one for all classes; "tuned" scores use the model's evaluation alpha of each class.
"""
from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..activation import alpha_value, describe_alpha, form_text
from ..errors import PamcError
from ..labels import label_store
from .cams import as_size, cams, file_images, resolve_classes, split_image_names, split_images, top_classes
from .gap import load_models

COLORMAP = "RdBu_r"  # diverging, centred on 0; the signed PNG overlays use it too
PNG_MAX_PIXELS = 128 * 128
ALPHA_RANGE = {"min": 1.0, "max": 10.0, "step": 0.1}


def image_uri(image: torch.Tensor) -> str:
    """A uint8 3 x H x W image as a data URI: grey images stored with one channel; PNG (exact)
    when small, JPEG (a tenth of the bytes on photos) when large."""
    array = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if (array == array[..., :1]).all() else array)
    buffer = io.BytesIO()
    kind = "png" if array.shape[0] * array.shape[1] <= PNG_MAX_PIXELS else "jpeg"
    picture.save(buffer, format=kind, **({"optimize": True} if kind == "png" else {"quality": 90}))
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def float32_b64(values: torch.Tensor) -> str:
    return base64.b64encode(values.numpy().astype("<f4").tobytes()).decode()


def colormap_lut(name: str = COLORMAP) -> str:
    """The 256 colours of a matplotlib colour map as base64 RGB bytes; value t in [0, 1] -> entry
    min(255, floor(256 t)), as matplotlib indexes its own table."""
    from matplotlib import colormaps

    rgb = colormaps[name](np.arange(256))[:, :3]
    return base64.b64encode(np.round(rgb * 255).astype(np.uint8).tobytes()).decode()


def class_list(indices) -> list[int]:
    return [int(c) for c in np.flatnonzero(np.asarray(indices))]


def view_data(checkpoints: Sequence[str | Path], images, labels: Optional[Sequence[str]] = None,
              classes: Optional[Sequence[int | str]] = None, top_k: int = 3, max_images: int = 24,
              split_name: Optional[str] = None, image_size=None, device: str = "auto", batch_size: int = 32,
              title: Optional[str] = None, indices: Optional[Sequence[int]] = None,
              rows_per_image: Optional[Sequence[Sequence[int]]] = None) -> dict:
    """What `write_view` puts in the page (see the module docstring), as a JSON-ready dict.

    `images`: a dataset `Split` (its first `max_images` images, with its labels and boxes) or
    image files / folders.  Images are resized to `image_size` (default: the first checkpoint's).
    Classes per image: `classes` (names or indices) for every image, else the union of its
    ground-truth classes and the first model's `top_k` (scored at its evaluation alpha, as
    `pamc explain`), best first.  `split_name` is shown; "train" also shows the observed labels.
    """
    if int(max_images) < 1:
        raise PamcError(f"max_images must be >= 1 (got {max_images})")
    names, models, class_names = load_models(checkpoints, labels, device)
    first, first_meta = models[0]
    size = as_size(image_size or first_meta.image_size)
    truth = boxes = observed = canvas = None
    if hasattr(images, "images"):  # a dataset split
        count = min(int(max_images), len(images))
        if count == 0:
            raise PamcError("the split has no images to view")
        index = list(range(count)) if indices is None else [int(i) for i in indices]
        pictures = split_images(images, index, size, batch_size)
        image_names = [split_image_names(images, len(images))[i] for i in index]
        source = (f"{split_name or 'given'} split: " + (f"first {count} of {len(images)} images" if indices is None
                                                         else f"{len(index)} of {len(images)} images"))
        truth = None if images.full is None else np.asarray(images.full)[index]
        if images.boxes is not None:
            boxes, canvas = [images.boxes[i] for i in index], list(images.images[0].shape[-2:])
        if split_name == "train" and images.observed is not None:
            observed = label_store(images.observed).batch(torch.tensor(index)).numpy()
    else:
        files, pictures = file_images([images] if isinstance(images, (str, Path)) else images, size, int(max_images))
        image_names = [str(f) for f in files]
        source = f"{len(files)} image files"
    per_model = [cams(model, pictures, batch_size=batch_size) if torch.is_tensor(pictures)
                 else [cams(model, p)[0] for p in pictures] for model, _ in models]
    first_alpha = first_meta.test_alpha
    probs = torch.stack([torch.sigmoid(first.logits_from_cams(m[None], first_alpha)[0]) for m in per_model[0]])
    if rows_per_image is not None:
        picked = [[int(c) for c in shown] for shown in rows_per_image]
        rows = "the suggested classes"
    elif classes is not None:
        picked = [resolve_classes(classes, class_names, first.num_classes)] * len(pictures)
        rows = "the classes asked for"
    else:
        rows = (f"{'ground truth and ' if truth is not None else ''}the top {top_k} of {names[0]} "
                f"(at its tuned \u03b1 {describe_alpha(first_alpha)}), best first")
        picked = [sorted(set(top) | set(class_list(truth[i]) if truth is not None else ()),
                         key=lambda c, i=i: -float(probs[i, c]))
                  for i, top in enumerate(top_classes(probs, top_k))]
    entries = []
    for i, (picture, shown) in enumerate(zip(pictures, picked)):
        maps = torch.stack([maps[i][shown] for maps in per_model])
        entries.append({
            "name": image_names[i], "src": image_uri(picture), "height": int(picture.shape[-2]),
            "width": int(picture.shape[-1]), "classes": shown,
            "truth": None if truth is None else class_list(truth[i]),
            "observed": None if observed is None else {"positive": class_list(observed[i] == 1),
                                                       "negative": class_list(observed[i] < 0)},
            "boxes": None if boxes is None else [[int(v) for v in box] for box in boxes[i]],
            "box_canvas": canvas, "cam_shape": list(maps.shape[-2:]), "cams": float32_b64(maps),
        })
    return {
        "format": "pamc-view/1", "title": title or "CAMs of " + ", ".join(names), "source": source,
        "split": split_name, "rows": rows, "class_names": class_names,
        "models": [{"label": name, "checkpoint": str(path), "method": meta.method,
                    "activation": model.activation.form.spec(), "form": form_text(model.activation.form),
                    "train_alpha": alpha_value(model.alpha), "eval_alpha": alpha_value(meta.test_alpha),
                    "dataset": meta.dataset}
                   for name, path, (model, meta) in zip(names, checkpoints, models)],
        "alpha": ALPHA_RANGE, "colormap": {"name": COLORMAP, "lut": colormap_lut()},
        "cam_encoding": "base64 float32 little-endian, shape (models, classes, h, w)", "images": entries,
    }


def render_page(data: dict) -> str:
    """The page template with the viewer script and the data inlined: one file, no requests."""
    package = resources.files(__package__)
    script = (package / "viewer.js").read_text()
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # cannot close the <script>
    page = (package / "viewer.html").read_text().replace("{{TITLE}}", html.escape(data["title"]))
    return page.replace("{{SCRIPT}}", script, 1).replace("{{DATA}}", payload, 1)


def write_view(checkpoints: Sequence[str | Path], images, out: str | Path, **options) -> Path:
    """Write the viewer page for `checkpoints` on `images` to `out` (one HTML file); `options`:
    see `view_data`.  Returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_page(view_data(checkpoints, images, **options)), encoding="utf-8")
    return out
