"""Reading weight files safely and loading them into modules with errors that say what differs.

One place for every weight file pamc reads: backbone weights a user passes, scene pretraining,
and checkpoints.  Files are safetensors or torch files read with ``weights_only=True``, so a
weight file can never run code.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import PamcError
from ..registry import Registry


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file (a `state_dict`/`model` entry is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"{what} {path} not found; pass an existing .safetensors/.pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise PamcError(f"cannot read {what} {path} ({exc.__class__.__name__}: {str(exc)[:160]}); "
                        f"pass an uncorrupted .safetensors/.pth file") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PamcError(f"{what} {path} does not hold a state dict of tensors")
    return state


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, computed once per (path, size, modification time) in this process."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def weights_record(weights: Optional[str], **details) -> Optional[dict]:
    """What a model started from, as model.json records it: None (random init), ``{"name": file
    name, "sha256": ...}`` for a file, ``{"name": option, **details}`` for a named option
    (``imagenet`` with torchvision's tag, ``pretrained`` with timm's, ``scenes``)."""
    if weights is None:
        return None
    path = Path(str(weights))
    if path.is_file():
        return {"name": path.name, "sha256": file_sha256(path), **details}
    return {"name": str(weights), **details}


def strip_wrapper_prefix(state: dict[str, torch.Tensor], own: Iterable[str],
                         prefixes: tuple[str, ...] = ("module.", "model.")) -> dict[str, torch.Tensor]:
    """Drop a prefix that wraps every key (DDP's ``module.``, a wrapper's ``model.``) when the
    stripped names fit `own` better than the names as they are."""
    own = set(own)
    best, hits = state, len(own.intersection(state))
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if len(own.intersection(stripped)) > hits:
                best, hits = stripped, len(own.intersection(stripped))
    return best


def few(keys: Iterable[str], n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str,
               ignore_prefixes: tuple[str, ...] = (), hint: str = "pass weights made for this architecture",
               target: str = "") -> None:
    """Load `state` into `module` by name; keys under `ignore_prefixes` (a classifier the CAM head
    replaces) are skipped on both sides.  Anything else missing, unexpected or of another shape is
    one error naming the keys."""
    def kept(key: str) -> bool:
        return not key.startswith(ignore_prefixes) if ignore_prefixes else True

    state = {k: v for k, v in state.items() if kept(k)}
    own = {k: v for k, v in module.state_dict().items() if kept(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({few(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({few(shapes, 2)})" if shapes else ""]
        raise PamcError(f"{source} does not fit {target or type(module).__name__}: " + "; ".join(p for p in parts if p)
                        + f"; {hint}")
    module.load_state_dict(state, strict=not ignore_prefixes)


def load_file_into(module: nn.Module, path: str | Path, target: str, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """A weights file into `module` (named `target` in errors)."""
    load_state(module, read_state_dict(path), f"weights file {path}", ignore_prefixes, target=target)


@dataclass(frozen=True)
class MadeWeights:
    name: str  # the backbone_weights option ("scenes")
    file: str  # the weights file it made (or found in the cache)


#: backbone_weights options that are made on demand rather than read from a file:
#: name -> maker(backbone=, seed=, data=) -> path; registered by the module that makes them
#: (`pamc.pretrain`: ``scenes``)
NAMED_WEIGHTS: Registry = Registry("named weights")


def named_weights(option, backbone: str, seed: int, data: dict) -> Optional[MadeWeights]:
    """The file a named weights option makes for this backbone, seed and data; None for any other
    option (a file path, a family's own names such as timm's ``imagenet``, or none)."""
    if not isinstance(option, str) or option not in NAMED_WEIGHTS:
        return None
    return MadeWeights(option, str(NAMED_WEIGHTS.get(option)(backbone=backbone, seed=seed, data=data)))
