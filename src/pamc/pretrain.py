"""Single-object pretraining of the scene backbone: the embedded stand-in for ImageNet weights.

The paper fine-tunes an ImageNet-pretrained ResNet-50 at a small learning rate; on the scenes,
training from scratch behaves differently (BoostLU in training hurts there).  So the scene
backbone is first trained to classify single training objects, once per (source, canvas,
scale, seed), and cached on disk like the scenes themselves.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .checkpoint import model_state
from .distributed import Dist
from .files import atomic_write, cache_dir
from .models import build_backbone
from .models.weights import NAMED_WEIGHTS
from .runtime import Runtime

PRETRAIN_VERSION = 2  # 2: channels_last (about 15 % faster on CPU; other rounding, so other weights)


def pretrained_scene_backbone(source: str = "digits", canvas: int = 64, object_scale=(16, 28),
                              backbone: str = "scene-cnn", n: int = 4000, epochs: int = 3,
                              batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                              cache: str | None = None, device: str = "cpu", progress: bool = False) -> Path:
    """Path to backbone weights pretrained on single train objects of `source` (cached)."""
    return pretrained_scene_classifier(source, canvas, object_scale, backbone, n, epochs, batch_size, lr, seed,
                                       cache, device)[0]


def head_file(backbone_file: Path) -> Path:
    """Where the pretraining's object classifier (a linear layer on pooled features) is kept."""
    return backbone_file.with_name(backbone_file.name.replace(".safetensors", ".head.safetensors"))


def pretrained_scene_classifier(source: str = "digits", canvas: int = 64, object_scale=(16, 28),
                                backbone: str = "scene-cnn", n: int = 4000, epochs: int = 3,
                                batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                                cache: str | None = None, device: str = "cpu") -> tuple[Path, Path]:
    """(backbone weights, object-classifier head) pretrained on single train objects (cached).

    The head scores every class of a canvas it has seen only single objects on: the
    vision-language stand-in of `pamc.vlscores` for the scenes, as CLIP is for photos."""
    from .data.scenes import load_object_bank, pretraining_objects

    torch.manual_seed(seed)
    net = build_backbone(backbone).to(device, memory_format=torch.channels_last)
    shapes = [[k, list(v.shape)] for k, v in net.state_dict().items()]  # a changed architecture misses the cache
    # torch's thread count is in the key: the CPU sums in another order with another count, and
    # after 3 epochs the weights differ (the scenes' stand-in for CLIP, which reads them, scores
    # 48.7 % precise pseudo-positives with 1 thread's weights and 22.8 % with 2 threads'), so a
    # cache made under one count would otherwise change what a later run under another computes
    key = json.dumps([PRETRAIN_VERSION, source, canvas, list(object_scale) if not isinstance(object_scale, int)
                      else object_scale, backbone, shapes, n, epochs, batch_size, lr, seed, torch.get_num_threads()],
                     sort_keys=True)
    path = cache_dir(cache) / "backbones" / f"{backbone}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"
    if path.is_file() and head_file(path).is_file():
        return path, head_file(path)
    bank = load_object_bank(source)
    images, labels = pretraining_objects(bank, canvas, object_scale, n, seed)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels).long()
    head = torch.nn.Linear(net.out_channels, len(bank.class_names)).to(device)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=lr)
    g = torch.Generator().manual_seed(seed)
    rt = Runtime(torch.device(device), amp_dtype=None, channels_last=True, dist=Dist())  # one process, fp32
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=g)
        flips = torch.rand(len(labels), generator=g) < 0.5
        for idx in torch.split(order, batch_size):
            x = rt.prepare(images[idx].unsqueeze(1).expand(-1, 3, -1, -1), flips[idx])
            loss = F.cross_entropy(head(net(x).mean(dim=(2, 3))), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    atomic_write(head_file(path), lambda tmp: save_file(model_state(head), tmp))
    atomic_write(path, lambda tmp: save_file(model_state(net), tmp))
    return path, head_file(path)


@NAMED_WEIGHTS.register("scenes")
def scene_weights(backbone: str, seed: int, data: dict) -> Path:
    """``backbone_weights: scenes``: the backbone pretrained on the objects of the run's scenes."""
    from .errors import PamcError

    if data.get("name") != "scenes":
        raise PamcError("backbone_weights 'scenes' pretrains on scene objects; it needs data.name: scenes")
    params = {k: data[k] for k in ("source", "canvas", "object_scale") if k in data}
    return pretrained_scene_backbone(backbone=backbone, seed=seed, **params)
