"""Checkpoints: weights as safetensors + a JSON description, resume state via weights_only load.

Every file is written to a temporary name and moved into place (os.replace), so an interrupted
write never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import PamcError
from .models import CamClassifier

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, write)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_model(folder: Path, model: CamClassifier, meta: dict) -> None:
    """Write `model.safetensors` + `model.json` (backbone name, classes, alphas, ...) into `folder`."""
    folder = Path(folder)
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(model_state(model), tmp))
    write_json(folder / MODEL_META, meta)


def read_meta(folder: Path) -> dict:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    meta_path = folder / MODEL_META
    if not meta_path.is_file():
        raise PamcError(f"{folder} is not a pamc checkpoint (no {MODEL_META}); pass a run folder or its best/ or last/ folder")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise PamcError(f"checkpoint description {meta_path} is corrupt ({exc}); retrain or restore it") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run folder (uses its best checkpoint), a checkpoint folder, or its model file."""
    path = Path(path)
    if not path.exists():
        raise PamcError(f"checkpoint {path} not found; pass a run folder made by `pamc train`")
    if path.is_file():
        path = path.parent
    if (path / "best" / MODEL_META).is_file():
        return path / "best"
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CamClassifier, dict]:
    """Rebuild a `CamClassifier` from a checkpoint folder; returns (model in eval mode, meta)."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    for key in ("backbone", "num_classes"):
        if key not in meta:
            raise PamcError(f"checkpoint {folder} lacks {key!r} in {MODEL_META}; it was not written by pamc")
    model = CamClassifier(meta["backbone"], meta["num_classes"], alpha=meta.get("alpha", 1.0))
    load_weights(model, folder / MODEL_FILE)
    return model.to(device).eval(), meta


def load_weights(model: torch.nn.Module, file: Path) -> None:
    if not Path(file).is_file():
        raise PamcError(f"weights {file} not found; the checkpoint is incomplete")
    try:
        state = load_file(str(file))
    except Exception as exc:
        raise PamcError(f"weights {file} are corrupt ({exc.__class__.__name__}); use another checkpoint") from None
    try:
        unwrap(model).load_state_dict(state)
    except RuntimeError as exc:
        raise PamcError(f"weights {file} are from another model: {str(exc).splitlines()[0][:200]}") from None


def save_resume_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PamcError(f"resume state {path} is corrupt or unsafe ({exc.__class__.__name__}); start over with --overwrite") from None
