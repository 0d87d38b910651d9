"""A checkpoint as a model that leaves Python: ONNX, with everything needed to use it inside.

The graph takes ``images`` (float32, B x 3 x H x W, normalised as in training: x / 255, minus the
ImageNet mean, over its std; the batch dimension is dynamic) and returns ``scores`` (B x C
probabilities: sigmoid of the mean of BoostLU(CAM) at the checkpoint's evaluation alpha, which
is baked into the graph) and, with ``cams=True``, ``cams`` (B x C x h x w, the raw maps before
BoostLU, as `CamClassifier.cams`).  The model's metadata (``metadata_props``, read by
``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``) holds, as JSON strings:
``pamc.class_names``, ``pamc.alpha``, ``pamc.thresholds`` (the calibrated per-class thresholds of
the checkpoint, or null), ``pamc.image_size``, ``pamc.mean``, ``pamc.std``, ``pamc.input``
(what the input must be) and ``pamc.checkpoint`` (where it came from).

The exporter is torch.onnx's (the torch.export-based one, torch's default since 2.9), opset 18.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .activation import Alpha, alpha_value, as_form, check_alpha
from .checkpoint import CheckpointMeta, load_model, resolve_checkpoint
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .errors import PamcError
from .files import atomic_write
from .thresholds import stored_thresholds

OPSET = 18
INPUT = "images"
OUTPUTS = ("scores", "cams")


class ScoringGraph(nn.Module):
    """What the ONNX file computes: normalised images -> (probabilities, raw CAMs) at a fixed alpha."""

    def __init__(self, model: nn.Module, alpha: Alpha, with_cams: bool):
        super().__init__()
        self.model, self.alpha, self.with_cams = model, check_alpha(alpha), with_cams

    def forward(self, images: torch.Tensor):
        maps = self.model.cams(images)
        scores = torch.sigmoid(self.model.logits_from_cams(maps, self.alpha))
        return (scores, maps) if self.with_cams else scores


def metadata(meta: CheckpointMeta, alpha: Alpha, image_size: int, source: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model (every value a JSON string)."""
    names = meta.class_names or [f"class_{c}" for c in range(meta.num_classes)]
    thresholds = stored_thresholds(meta)
    values = {"class_names": list(names), "alpha": alpha_value(alpha), "activation": as_form(meta.activation).spec(),
              "thresholds": None if thresholds is None else [float(t) for t in thresholds],
              "image_size": [int(image_size), int(image_size)], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "input": "float32 B x 3 x H x W RGB, (x / 255 - mean) / std, resized to image_size",
              "checkpoint": source, "method": meta.method, "dataset": meta.dataset}
    return {f"pamc.{k}": json.dumps(v) for k, v in values.items()}


def export_onnx(checkpoint: str | Path, out: str | Path, cams: bool = False, alpha: Optional[float] = None,
                image_size: Optional[int] = None, opset: int = OPSET) -> Path:
    """Write the checkpoint as an ONNX file at `out` (see the module docstring); returns the path.

    `alpha` defaults to the checkpoint's evaluation alpha, `image_size` to its training size (the
    graph accepts other sizes; the size is the one the metadata recommends)."""
    import onnx  # the `export` extra

    out = Path(out)
    if out.suffix != ".onnx":
        raise PamcError(f"--out {out}: the exported file must end in .onnx")
    folder = resolve_checkpoint(checkpoint)
    model, meta = load_model(folder)
    alpha = meta.test_alpha if alpha is None else check_alpha(alpha)
    size = int(image_size or meta.image_size or 448)
    graph = ScoringGraph(model, alpha, cams).eval()
    example = torch.zeros(2, 3, size, size)
    outputs = list(OUTPUTS if cams else OUTPUTS[:1])
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(graph, (example,), input_names=[INPUT], output_names=outputs, opset_version=opset,
                                dynamo=True, dynamic_shapes={"images": {0: batch}}, verbose=False,
                                optimize=True)
    proto = program.model_proto
    for key, value in metadata(meta, alpha, size, str(folder)).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return out


def read_metadata(path: str | Path) -> dict:
    """The pamc metadata of an exported ONNX file, decoded (keys without the ``pamc.`` prefix)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[5:]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("pamc.")}
