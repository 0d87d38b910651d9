"""Run folders and checkpoints: the layout of a run, typed checkpoint metadata, safe save/load.

A run folder (`RunFolder`) holds ``config.yaml`` (the resolved settings), ``status.json`` (running
/ finished / failed / preempted, with timestamps), ``metrics.jsonl`` and ``metrics.csv`` (one line
per epoch), ``tensorboard/`` (event files), ``results.json``, and the checkpoints ``best/`` and
``last/``.  A checkpoint folder holds ``model.safetensors`` (weights) and ``model.json`` (a
`CheckpointMeta`); ``last/`` also holds ``state.pt``, read with ``weights_only=True``: everything
a resumed run needs (weights, optimiser, schedule, EMA, label edits, loss state, RNG states, the
position inside an interrupted epoch), in one file, so that resuming never mixes two
checkpoints.  Every file is written atomically (`pamc.files`), so an interrupted write never
leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from .errors import PamcError
from .reference import REFERENCE_SEED
from .files import atomic_write, read_yaml, write_json, write_text
from .models import CamClassifier
from .models.weights import load_state, read_state_dict
from .runtime import unwrap

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
#: the model.json layout this pamc writes; files without a version field are version 1
CHECKPOINT_VERSION = 1


@dataclass
class CheckpointMeta:
    """What ``model.json`` holds: enough to rebuild the model and to re-read its data."""

    backbone: str
    num_classes: int
    alpha: float = 1.0  # BoostLU in training (a list of one per class: per-class alpha)
    #: BoostLU at evaluation (tuned or configured): a float, or a list of one per class (per-class
    #: alpha, `pamc tune-alpha --per-class`); None = alpha
    eval_alpha: Optional[float | list[float]] = None
    class_names: Optional[list[str]] = None
    image_size: Optional[int] = None
    method: Optional[str] = None
    epoch: Optional[int] = None
    dataset: Optional[str] = None
    data: Optional[dict] = None  # the data settings that rebuild the training dataset
    observation: str = "auto"
    observation_seed: int = REFERENCE_SEED
    #: the backbone weights the run started from: None (random init), {"name": file name, "sha256": ...}
    #: for a file, {"name": "imagenet"/"pretrained", "tag": ...} for published weights, {"name": "scenes", ...}
    weights: Optional[dict] = None
    #: the form of BoostLU, `pamc.activation`: {"name": "boostlu-threshold", "tau": 0.5}; None (and
    #: every model.json written before forms existed) = the paper's boostlu
    activation: Optional[dict] = None
    version: int = CHECKPOINT_VERSION
    extra: dict = field(default_factory=dict)  # keys of other tools, kept as they are

    @property
    def test_alpha(self) -> float | tuple[float, ...]:
        """The alpha the checkpoint is evaluated with (a tuple for per-class alpha)."""
        from .activation import check_alpha

        return check_alpha(self.alpha if self.eval_alpha is None else self.eval_alpha)

    @classmethod
    def from_dict(cls, values: dict, source: str = "model.json") -> "CheckpointMeta":
        version = values.get("version", 1)
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise PamcError(f"{source} has checkpoint version {version!r}; this pamc reads version "
                            f"{CHECKPOINT_VERSION} and older: upgrade pamc")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key in ("backbone", "num_classes"):
            if key not in values:
                raise PamcError(f"{source} lacks {key!r}; it was not written by pamc")
        known = {k: v for k, v in values.items() if k in names}
        extra = {**values.get("extra", {}), **{k: v for k, v in values.items() if k not in names and k != "extra"}}
        return cls(**{**known, "version": CHECKPOINT_VERSION}, extra=extra)

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**out, **self.extra}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's tensors on the CPU, contiguous (as safetensors stores them)."""
    return {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_model(folder: Path, model: torch.nn.Module, meta: CheckpointMeta | dict) -> None:
    """Write `model.safetensors` + `model.json` into `folder`."""
    meta = meta if isinstance(meta, CheckpointMeta) else CheckpointMeta.from_dict(meta)
    folder = Path(folder)
    state = model_state(model)
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, tmp))
    write_meta(folder, meta)


def write_meta(folder: Path, meta: CheckpointMeta) -> Path:
    write_json(Path(folder) / MODEL_META, meta.to_dict())
    return Path(folder) / MODEL_META


def read_meta(folder: Path) -> CheckpointMeta:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    meta_path = folder / MODEL_META
    if not meta_path.is_file():
        raise PamcError(f"{folder} is not a pamc checkpoint (no {MODEL_META}); pass a run folder or its best/ or last/ folder")
    try:
        values = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise PamcError(f"checkpoint description {meta_path} is corrupt ({exc}); retrain or restore it") from None
    if not isinstance(values, dict):
        raise PamcError(f"checkpoint description {meta_path} is not a mapping; retrain or restore it")
    return CheckpointMeta.from_dict(values, str(meta_path))


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run folder (uses its best checkpoint), a checkpoint folder, or its model file."""
    path = Path(path)
    if not path.exists():
        raise PamcError(f"checkpoint {path} not found; pass a run folder made by `pamc train`")
    if path.is_file():
        path = path.parent
    return RunFolder(path).best if (RunFolder(path).best / MODEL_META).is_file() else path


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """A checkpoint's weights into `model` (which must be the same architecture)."""
    if not Path(file).is_file():
        raise PamcError(f"weights {file} not found; the checkpoint is incomplete")
    load_state(unwrap(model), read_state_dict(file, "checkpoint weights"), f"checkpoint weights {file}",
               hint="they are from another model; use the checkpoint's own model.json and weights")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CamClassifier, CheckpointMeta]:
    """Rebuild a `CamClassifier` from a checkpoint; returns (model in eval mode, meta)."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    model = CamClassifier(meta.backbone, meta.num_classes, alpha=meta.alpha, activation=meta.activation)
    load_weights(model, folder / MODEL_FILE)
    return model.to(device).eval(), meta


class RunFolder:
    """The layout of one training run's folder; the only place its file names are spelled."""

    CONFIG, METRICS, RESULTS, BEST, LAST, STATE = "config.yaml", "metrics.jsonl", "results.json", "best", "last", "state.pt"
    METRICS_CSV, STATUS, TENSORBOARD = "metrics.csv", "status.json", "tensorboard"
    #: the run of one seed inside a sweep's folder (`pamc train --seeds`)
    SEED = "seed-{seed}"
    #: the values of status.json's "status"
    STATUSES = ("running", "finished", "failed", "preempted")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / self.CONFIG)
    metrics = property(lambda self: self.path / self.METRICS)
    results = property(lambda self: self.path / self.RESULTS)
    best = property(lambda self: self.path / self.BEST)
    last = property(lambda self: self.path / self.LAST)
    state = property(lambda self: self.last / self.STATE)
    metrics_csv = property(lambda self: self.path / self.METRICS_CSV)
    status = property(lambda self: self.path / self.STATUS)
    tensorboard = property(lambda self: self.path / self.TENSORBOARD)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def seed_run(self, seed: int) -> "RunFolder":
        """The folder of seed `seed`'s run when this folder holds a sweep over seeds."""
        return RunFolder(self.path / self.SEED.format(seed=seed))

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def can_resume(self) -> bool:
        return self.state.is_file()

    def require_resumable(self) -> None:
        if not self.can_resume():
            raise PamcError(f"nothing to resume in {self.path} (no {self.LAST}/{self.STATE}); start a new run")

    def is_run_folder(self) -> bool:
        """Whether pamc made this folder (it has a config.yaml or a status.json)."""
        return self.config.is_file() or self.status.is_file()

    def read_config(self) -> dict:
        if not self.config.is_file():
            raise PamcError(f"{self.path} holds no {self.CONFIG}; it is not a pamc run folder")
        return read_yaml(self.config, "run config")

    def write_config(self, values: dict) -> None:
        import yaml

        write_text(self.config, yaml.safe_dump(values, sort_keys=False))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict]) -> None:
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    def write_metrics_csv(self, records: list[dict]) -> None:
        """metrics.csv: the metrics.jsonl records as a table (columns in first-seen order)."""
        import csv
        import io

        columns = list(dict.fromkeys(k for r in records for k in r))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        write_text(self.metrics_csv, text.getvalue())

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def read_status(self) -> Optional[dict]:
        """status.json, or None where there is none (runs of an older pamc) or it is unreadable."""
        try:
            values = json.loads(self.status.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return values if isinstance(values, dict) else None

    def write_status(self, status: str, **fields) -> dict:
        """Update status.json: `status`, the given fields, `updated` now (UTC, ISO 8601); the fields
        of earlier writes stay unless given again (None removes one)."""
        import datetime

        if status not in self.STATUSES:
            raise ValueError(f"status must be one of {self.STATUSES} (got {status!r})")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        values = {**(self.read_status() or {}), **fields, "status": status, "updated": now}
        values.setdefault("created", now)
        values = {k: v for k, v in values.items() if v is not None}
        write_json(self.status, values)
        return values

    def read_results(self) -> dict:
        return json.loads(self.results.read_text())

    def write_results(self, results: dict) -> None:
        write_json(self.results, results)

    def save_checkpoint(self, which: str, model: torch.nn.Module, meta: CheckpointMeta) -> None:
        save_model(self.path / which, model, meta)

    def save_state(self, state: dict) -> None:
        atomic_write(self.state, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> dict:
        try:
            return torch.load(self.state, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise PamcError(f"resume state {self.state} is corrupt or unsafe ({exc.__class__.__name__}); "
                            "start over with --overwrite") from None
