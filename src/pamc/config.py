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
from .files import read_yaml


@dataclass
class TrainConfig:
    # data
    data: dict = field(default_factory=lambda: {"name": "scenes", "source": "digits"})
    observation: str = "auto"  # auto | as-given | full | single-positive | fraction:P (see pamc.labels)
    observation_seed: int = 1200
    # model
    backbone: str = "scene-cnn"
    backbone_weights: Optional[str] = None  # none | path | imagenet/pretrained (published) | scenes (pretrain on scene objects)
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
    sync_batchnorm: bool = False  # SyncBatchNorm under DDP on CUDA (global-batch statistics); CPU: not applied
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


#: accepted values of the speed settings (checked before any work)
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
SWITCHES = ("auto", "on", "off")


def make_config(values: dict) -> TrainConfig:
    """A checked `TrainConfig`: every setting that can be wrong is refused here, before data loads."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise PamcError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(FIELDS)}")
    values = dict(values)
    if isinstance(values.get("backbone_weights"), str) and values["backbone_weights"].lower() == "none":
        values["backbone_weights"] = None  # `--backbone-weights none` clears a preset's weights
    cfg = TrainConfig(**values)
    for name in ("epochs", "batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise PamcError(f"{name} must be a positive integer (got {getattr(cfg, name)!r})")
    if cfg.selection not in ("full", "observed"):
        raise PamcError(f"selection must be 'full' or 'observed' (got {cfg.selection!r})")
    from .activation import check_alpha
    from .labels import Observation
    from .losses import LOSSES
    from .models import BACKBONES
    from .runtime import AMP_MODES, CHANNELS_LAST_MODES, check_mode

    cfg.observation = str(Observation.parse(cfg.observation))
    check_mode("amp", cfg.amp, AMP_MODES)
    check_mode("channels_last", cfg.channels_last, CHANNELS_LAST_MODES)
    check_mode("compile", cfg.compile, dict.fromkeys(COMPILE_MODES))
    check_mode("fused_adam", cfg.fused_adam, dict.fromkeys(SWITCHES))

    LOSSES.get(cfg.method), BACKBONES.get(cfg.backbone)  # unknown names fail here, before any work
    check_alpha(cfg.alpha)
    if cfg.eval_alpha is not None:
        check_alpha(cfg.eval_alpha)
    if not isinstance(cfg.data, dict) or "name" not in cfg.data:
        raise PamcError("data must be a mapping with a 'name' (e.g. {name: scenes, source: digits})")
    return cfg


def load_yaml(path: str | Path) -> dict:
    """Settings from a YAML file (its `description` is documentation, not a setting)."""
    values = read_yaml(path)
    values.pop("description", None)
    return values


def preset_files() -> dict[str, Path]:
    folder = resources.files("pamc") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def merge(base: dict, child: dict) -> dict:
    """`child` over `base`; mappings (data, loss, linear_init) merge key by key, as `_BASE_` does."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset's settings with its `base:` chain resolved (the base's keys, overridden by its own).

    A changed `data.name` replaces the base's data mapping instead of merging into it (its keys
    belong to another dataset), as `--set data.name=...` does."""
    presets = preset_files()
    if name not in presets:
        raise PamcError(f"unknown preset {name!r}; valid: {', '.join(sorted(presets))} (see `pamc presets`)")
    if name in _seen:
        raise PamcError(f"preset {name!r} inherits from itself through {' -> '.join(_seen + (name,))}; fix its base:")
    values = load_yaml(presets[name])
    base = values.pop("base", None)
    if base is None:
        return values
    inherited = load_preset(str(base), _seen + (name,))
    data = values.get("data")
    if isinstance(data, dict) and "name" in data and data["name"] != (inherited.get("data") or {}).get("name"):
        inherited.pop("data", None)
    return merge(inherited, values)


def preset_descriptions() -> dict[str, str]:
    out = {}
    for name, path in sorted(preset_files().items()):
        raw = yaml.safe_load(path.read_text()) or {}
        out[name] = str(raw.get("description", ""))
    return out


def resolve(config: Optional[str] = None, preset: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Defaults <- preset <- YAML file <- overrides (later wins).  A YAML file may name a
    `base:` preset too."""
    values = TrainConfig().to_dict()
    if preset:
        values = apply_overrides(values, load_preset(preset))
    if config:
        own = load_yaml(config)
        if "base" in own:
            values = apply_overrides(values, load_preset(str(own.pop("base"))))
        values = apply_overrides(values, own)
    return make_config(apply_overrides(values, overrides or {}))


def resume_config(run_folder: str | Path, overrides: Optional[dict] = None) -> TrainConfig:
    """The settings of a run being resumed: its saved config.yaml, with `overrides` (dotted keys
    allowed) on top, and `out` the run folder itself -- the same for `pamc train --resume` and
    `pamc.train(..., resume=True)`."""
    from .checkpoint import RunFolder

    folder = RunFolder(run_folder)
    if not folder.can_resume():
        raise PamcError(f"nothing to resume in {folder.path} (no {folder.LAST}/{folder.STATE}); start a new run")
    values = folder.read_config()
    return make_config(apply_overrides(values, {**(overrides or {}), "out": str(run_folder)}))

