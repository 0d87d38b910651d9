"""Run configuration: one dataclass, loaded from YAML presets/files and overridden by flags.

Every field can be set from the command line (`--batch-size 32`, `--set data.source=fashion`);
the resolved configuration is saved as `config.yaml` in the run folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import PamcError


@dataclass
class TrainConfig:
    # data
    data: dict = field(default_factory=lambda: {"name": "scenes", "source": "digits"})
    observation: str = "auto"  # auto (as-given if the data has observed labels, else single-positive) | single-positive | fraction:P | as-given | full
    observation_seed: int = 1200
    # model
    backbone: str = "scene-cnn"
    backbone_weights: Optional[str] = None  # None | path | imagenet | scenes (pretrain on scene objects)
    alpha: float = 1.0  # BoostLU in training
    eval_alpha: Optional[float] = None  # BoostLU at validation/test (None = alpha)
    # method
    method: str = "an"
    loss: dict = field(default_factory=dict)  # loss parameters, e.g. {delta: 0.5}
    linear_init: Optional[dict] = None  # "+ LI": {epochs: 25, lr: 1e-3, batch_size: 16} (spec 5.1)
    # optimisation (spec 5)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-5
    lr_mult: float = 10.0  # head lr = lr * lr_mult
    selection: str = "full"  # full | observed: which validation labels select the best epoch
    seed: int = 0
    # speed
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    compile: str = "off"  # off | default | reduce-overhead | max-autotune
    fused_adam: str = "auto"
    cudnn_benchmark: bool = True
    num_workers: int = 4
    eval_batch_size: int = 128
    # run folder
    out: str = "runs/default"
    overwrite: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def test_alpha(self) -> float:
        return self.alpha if self.eval_alpha is None else self.eval_alpha


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_value(text: str) -> Any:
    """YAML scalar parsing for command-line values: 1e-4 -> float, null -> None, [1,2] -> list."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _is_float(value):
        return float(value)
    return value


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_overrides(base: dict, overrides: dict) -> dict:
    """Merge `overrides` (keys may be dotted: data.source) into a copy of `base`.

    A dotted `data.name` naming another dataset starts a fresh data mapping: the base's other
    data keys (the default scenes' `source`) belong to the old dataset and would not fit the new one.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    if "data.name" in overrides and (out.get("data") or {}).get("name") != overrides["data.name"]:
        out["data"] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in FIELDS:
            raise PamcError(f"unknown setting {head!r}; valid: {', '.join(FIELDS)}")
        if rest:
            if not isinstance(out.get(head), dict):
                out[head] = {}
            out[head][rest] = value
        else:
            out[head] = value
    return out


def make_config(values: dict) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise PamcError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    cfg = TrainConfig(**values)
    for name in ("epochs", "batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise PamcError(f"{name} must be a positive integer (got {getattr(cfg, name)!r})")
    if cfg.selection not in ("full", "observed"):
        raise PamcError(f"selection must be 'full' or 'observed' (got {cfg.selection!r})")
    from .boostlu import check_alpha
    from .losses import LOSSES
    from .models import BACKBONES

    LOSSES.get(cfg.method), BACKBONES.get(cfg.backbone)  # unknown names fail here, before any work
    check_alpha(cfg.alpha)
    if cfg.eval_alpha is not None:
        check_alpha(cfg.eval_alpha)
    if not isinstance(cfg.data, dict) or "name" not in cfg.data:
        raise PamcError("data must be a mapping with a 'name' (e.g. {name: scenes, source: digits})")
    return cfg


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"config file {path} not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PamcError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise PamcError(f"config file {path} must hold a mapping of settings")
    values.pop("description", None)
    return values


def preset_files() -> dict[str, Path]:
    folder = resources.files("pamc") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def load_preset(name: str) -> dict:
    presets = preset_files()
    if name not in presets:
        raise PamcError(f"unknown preset {name!r}; valid: {', '.join(sorted(presets))} (see `pamc presets`)")
    return load_yaml(presets[name])


def preset_descriptions() -> dict[str, str]:
    out = {}
    for name, path in sorted(preset_files().items()):
        raw = yaml.safe_load(path.read_text()) or {}
        out[name] = str(raw.get("description", ""))
    return out


def resolve(config: Optional[str] = None, preset: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Defaults <- preset <- YAML file <- overrides (later wins)."""
    values = TrainConfig().to_dict()
    if preset:
        values = apply_overrides(values, load_preset(preset))
    if config:
        values = apply_overrides(values, load_yaml(config))
    return make_config(apply_overrides(values, overrides or {}))

