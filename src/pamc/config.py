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
from .reference import REFERENCE_SEED
from .files import read_yaml
from .registry import closest


#: marks a setting that does not change what a run computes (where and how fast it runs, its seed,
#: its folder): runs that differ only in such settings are the same experiment (`pamc table`)
INCIDENTAL = {"incidental": True}


@dataclass
class TrainConfig:
    # data (its incidental keys say where the data or its cache lives, not what it holds)
    data: dict = field(default_factory=lambda: {"name": "scenes", "source": "digits"},
                       metadata={"incidental_keys": ("path", "cache", "cache_dir")})
    observation: str = "auto"  # auto | as-given | full | single-positive | fraction:P [+false-positive:P | +flip-negative:P] (pamc.labels)
    observation_seed: int = REFERENCE_SEED  # which labels are observed (the reference code's seed by default)
    # model
    backbone: str = "scene-cnn"  # scene-cnn | scene-cnn-gn | resnet18 | resnet50 | resnet101 | timm:NAME (`pamc list`)
    backbone_weights: Optional[str] = None  # none | path | imagenet/pretrained (published) | scenes (pretrain on scene objects)
    alpha: float = 1.0  # BoostLU in training
    eval_alpha: Optional[float] = None  # BoostLU at validation/test (None = alpha)
    activation: Optional[Any] = None  # the form of BoostLU: {name: boostlu-threshold, tau: 0.5} or NAME[:KEY=VALUE]; None = boostlu
    # method
    method: str = "an"  # the loss: an | ll-r | ll-ct | ll-cp | gr | role | ... (`pamc list`)
    loss: dict = field(default_factory=dict)  # loss parameters, e.g. {delta: 0.5}
    scores: Optional[str] = None  # vlpl / gpr: class scores of the training images, .npy N x C or N x V x C (`pamc pseudo-label`), or stand-in (scenes)
    linear_init: Optional[dict] = None  # "+ LI": {epochs: 25, lr: 1e-3, batch_size: 16} (spec 5.1)
    freeze_backbone: bool = False  # the "linear" protocol: only the CAM head trains, on cached feature maps (pamc.frozen)
    # optimisation (spec 5)
    epochs: int = 10  # training epochs
    batch_size: int = 16  # images per optimiser step, over all processes
    lr: float = 1e-5  # the backbone's learning rate
    lr_mult: float = 10.0  # head lr = lr * lr_mult
    selection: str = "full"  # full | observed: which validation labels select the best epoch
    seed: int = field(default=0, metadata=INCIDENTAL)  # initialisation, batch order, flips
    # training recipe (pamc.recipes); the defaults are the paper's: Adam, constant lr, no decay, flips only
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0  # on conv/linear weights, not biases/norms (Adam: L2 in the gradient; AdamW: decoupled)
    schedule: str = "constant"  # constant | cosine | onecycle, stepped every batch
    warmup_epochs: float = 0.0  # constant/cosine: linear warm-up over this many epochs ...
    warmup_steps: int = 0  # ... plus this many steps
    pct_start: float = 0.2  # onecycle: share of the schedule spent rising to lr (ASL: 0.2)
    schedule_epochs: Optional[int] = None  # cosine/onecycle length (None = epochs); longer = stopped early (ASL/Hill 80)
    grad_clip: Optional[float] = None  # max gradient norm; None = off
    ema: Optional[float] = None  # EMA decay of the weights (ASL/Hill 0.9997); selects, tests and fills best/
    augment: str = "none"  # none | randaugment | randaugment+cutout (per image, on the device; flips always)
    # speed
    device: str = field(default="auto", metadata=INCIDENTAL)  # auto (CUDA if visible) | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA; on a CPU with native bf16 for one process, see pamc.runtime) | bf16 | off
    channels_last: str = field(default="auto", metadata=INCIDENTAL)  # auto (as amp) | on | off
    compile: str = field(default="off", metadata=INCIDENTAL)  # off | default | reduce-overhead | max-autotune
    fused_adam: str = field(default="auto", metadata=INCIDENTAL)  # auto (on CUDA) | on | off: the fused Adam kernel
    sync_batchnorm: bool = False  # SyncBatchNorm under DDP on CUDA (global-batch statistics); CPU: not applied
    cudnn_benchmark: bool = field(default=True, metadata=INCIDENTAL)  # let cuDNN time and pick convolution algorithms
    num_workers: Any = field(default="auto", metadata=INCIDENTAL)  # image-decoding workers: N | auto (the cores available per process)
    eval_batch_size: int = field(default=128, metadata=INCIDENTAL)  # images per batch in validation and test
    # run folder, logging, preemption
    out: str = field(default="runs/default", metadata=INCIDENTAL)  # the run folder
    overwrite: bool = field(default=False, metadata=INCIDENTAL)  # replace what an existing run folder holds
    progress: bool = field(default=True, metadata=INCIDENTAL)  # progress bars
    log_every: int = field(default=20, metadata=INCIDENTAL)  # steps between host syncs: non-finite check, per-step logs flushed, stop signals agreed
    tensorboard: str = field(default="auto", metadata=INCIDENTAL)  # auto (if installed) | on | off: RUN/tensorboard event files
    checkpoint_every_steps: Optional[int] = field(default=None, metadata=INCIDENTAL)  # a resumable last/ every N steps as well as every epoch
    checkpoint_every_minutes: Optional[float] = field(default=None, metadata=INCIDENTAL)  # ... or every M minutes
    preset: Optional[str] = field(default=None, metadata=INCIDENTAL)  # the preset the settings started from (set by resolve; read by `pamc table`)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def incidental_settings(cls) -> frozenset[str]:
        """The settings marked INCIDENTAL, and the incidental keys of `data` as ``data.KEY``."""
        fields = dataclasses.fields(cls)
        data = next(f for f in fields if f.name == "data")
        return frozenset([f.name for f in fields if f.metadata.get("incidental")]
                         + [f"data.{k}" for k in data.metadata["incidental_keys"]])

    @property
    def test_alpha(self) -> float:
        return self.alpha if self.eval_alpha is None else self.eval_alpha


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def setting_notes() -> dict[str, str]:
    """Each setting's trailing comment in `TrainConfig`'s source, by name: the one description of a
    setting, which `pamc train --help` shows beside its flag."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.getsource(TrainConfig)
    except OSError:  # no source shipped (a zipped or frozen install): flags without notes
        return {}
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        lines.setdefault(token.start[0], []).append(token)
    notes = {}
    for tokens in lines.values():
        words = [t for t in tokens if t.type not in (tokenize.INDENT, tokenize.DEDENT)]
        if (len(words) > 2 and words[0].string in FIELDS and words[1].string == ":"
                and words[-2].type == tokenize.COMMENT):
            notes[words[0].string] = words[-2].string.lstrip("#").strip()
    return notes


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
    for name in ("amp", "channels_last", "compile", "fused_adam", "tensorboard"):  # YAML reads off/on as booleans
        if isinstance(values.get(name), bool):
            values[name] = "on" if values[name] else "off"
    for name in OPTIONAL_NUMBERS:  # `--ema none` / `--grad-clip off` switch a preset's setting off
        if isinstance(values.get(name), str) and values[name].lower() in ("none", "off", "null"):
            values[name] = None
    cfg = TrainConfig(**values)
    for name in ("epochs", "batch_size", "log_every"):
        if not _is_int(getattr(cfg, name)) or getattr(cfg, name) < 1:
            raise PamcError(f"{name} must be a positive integer (got {getattr(cfg, name)!r})")
    check_recipe(cfg)
    if cfg.selection not in ("full", "observed"):
        raise PamcError(f"selection must be 'full' or 'observed' (got {cfg.selection!r})")
    from .activation import as_form, check_alpha
    from .labels import Observation
    from .losses import check_params
    from .models import BACKBONES
    from .runtime import AMP_MODES, CHANNELS_LAST_MODES, check_mode

    cfg.observation = str(Observation.parse(cfg.observation))
    check_mode("amp", cfg.amp, AMP_MODES)
    check_mode("channels_last", cfg.channels_last, CHANNELS_LAST_MODES)
    check_mode("compile", cfg.compile, dict.fromkeys(COMPILE_MODES))
    check_mode("fused_adam", cfg.fused_adam, dict.fromkeys(SWITCHES))
    check_mode("tensorboard", cfg.tensorboard, dict.fromkeys(SWITCHES))
    if cfg.tensorboard == "on":
        from .optional import tensorboard_available

        if not tensorboard_available():
            raise PamcError("tensorboard: on needs the tensorboard package: pip install 'pamc[tensorboard]' "
                            "(or set tensorboard auto/off)")
    if cfg.num_workers != "auto" and not (_is_int(cfg.num_workers) and cfg.num_workers >= 0):
        raise PamcError(f"num_workers must be a number >= 0 or auto (got {cfg.num_workers!r})")
    for name in ("checkpoint_every_steps",):
        value = getattr(cfg, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise PamcError(f"{name} must be a positive integer or none (got {value!r})")
    if cfg.checkpoint_every_minutes is not None and not _positive(cfg.checkpoint_every_minutes):
        raise PamcError(f"checkpoint_every_minutes must be a positive number or none (got {cfg.checkpoint_every_minutes!r})")
    if cfg.preset is not None and not isinstance(cfg.preset, str):
        raise PamcError(f"preset must be a preset name (got {cfg.preset!r})")

    if cfg.loss is not None and not isinstance(cfg.loss, dict):
        raise PamcError(f"loss must be a mapping of loss parameters, e.g. {{delta: 0.2}} (got {cfg.loss!r})")
    check_params(cfg.method, cfg.loss or {})  # unknown names and values out of range fail here, before any work
    BACKBONES.get(cfg.backbone)
    check_alpha(cfg.alpha)
    cfg.activation = None if cfg.activation is None else as_form(cfg.activation).spec()
    if cfg.eval_alpha is not None:
        check_alpha(cfg.eval_alpha)
    if not isinstance(cfg.data, dict) or "name" not in cfg.data:
        raise PamcError("data must be a mapping with a 'name' (e.g. {name: scenes, source: digits})")
    return cfg


#: settings that take a number or none
OPTIONAL_NUMBERS = ("schedule_epochs", "grad_clip", "ema", "checkpoint_every_steps", "checkpoint_every_minutes")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value) -> bool:
    return _is_number(value) and value > 0


def check_recipe(cfg: TrainConfig) -> None:
    """The optimiser / schedule / EMA / augmentation settings, each refused in one line."""
    from .data.augment import AUGMENTS
    from .recipes import OPTIMIZERS, SCHEDULES
    from .runtime import check_mode

    check_mode("optimizer", cfg.optimizer, dict.fromkeys(OPTIMIZERS))
    check_mode("schedule", cfg.schedule, dict.fromkeys(SCHEDULES))
    check_mode("augment", cfg.augment, dict.fromkeys(AUGMENTS))
    if not _is_number(cfg.lr) or cfg.lr <= 0:
        raise PamcError(f"lr must be a positive number (got {cfg.lr!r})")
    if not _is_number(cfg.weight_decay) or cfg.weight_decay < 0:
        raise PamcError(f"weight_decay must be a number >= 0 (got {cfg.weight_decay!r})")
    if not _is_number(cfg.warmup_epochs) or cfg.warmup_epochs < 0:
        raise PamcError(f"warmup_epochs must be a number >= 0 (got {cfg.warmup_epochs!r})")
    if not _is_int(cfg.warmup_steps) or cfg.warmup_steps < 0:
        raise PamcError(f"warmup_steps must be an integer >= 0 (got {cfg.warmup_steps!r})")
    if cfg.schedule == "onecycle" and (cfg.warmup_epochs or cfg.warmup_steps):
        raise PamcError("warmup_epochs/warmup_steps apply to schedule constant or cosine; onecycle warms up "
                        "over its pct_start share")
    if not _is_number(cfg.pct_start) or not 0 < cfg.pct_start < 1:
        raise PamcError(f"pct_start must be between 0 and 1 (got {cfg.pct_start!r})")
    if cfg.schedule_epochs is not None:
        if not _is_int(cfg.schedule_epochs) or cfg.schedule_epochs < cfg.epochs:
            raise PamcError(f"schedule_epochs must be an integer >= epochs ({cfg.epochs}) or none "
                            f"(got {cfg.schedule_epochs!r})")
    length = cfg.schedule_epochs or cfg.epochs
    if cfg.warmup_epochs >= length and cfg.schedule != "constant":
        raise PamcError(f"warmup_epochs ({cfg.warmup_epochs:g}) must be shorter than the schedule ({length} epochs)")
    if cfg.grad_clip is not None and not _positive(cfg.grad_clip):
        raise PamcError(f"grad_clip must be a positive max norm or none (got {cfg.grad_clip!r})")
    if cfg.ema is not None and not (_is_number(cfg.ema) and 0 < cfg.ema < 1):
        raise PamcError(f"ema must be a decay between 0 and 1 (e.g. 0.9997) or none (got {cfg.ema!r})")


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
        near = closest(name, presets)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise PamcError(f"unknown preset {name!r}; {hint}`pamc presets` lists all {len(presets)}")
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
    """Each preset's description, its {paper} placeholders filled from `pamc.published`."""
    from .published import fill_description

    out = {}
    for name, path in sorted(preset_files().items()):
        raw = yaml.safe_load(path.read_text()) or {}
        out[name] = fill_description(name, str(raw.get("description", "")))
    return out


def resolve(config: Optional[str] = None, preset: Optional[str] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Defaults <- preset <- YAML file <- overrides (later wins).  A YAML file may name a
    `base:` preset too.  The preset's name is kept as the `preset` setting (config.yaml), so
    `pamc table` can tell which published cell a run reproduces."""
    values = TrainConfig().to_dict()
    if preset:
        values = apply_overrides(values, {**load_preset(preset), "preset": preset})
    if config:
        own = load_yaml(config)
        if "base" in own:
            base = str(own.pop("base"))
            values = apply_overrides(values, {**load_preset(base), "preset": base})
        values = apply_overrides(values, own)
    return make_config(apply_overrides(values, overrides or {}))


def resume_config(run_folder: str | Path, overrides: Optional[dict] = None) -> TrainConfig:
    """The settings of a run being resumed: its saved config.yaml, with `overrides` (dotted keys
    allowed) on top, and `out` the run folder itself -- the same for `pamc train --resume` and
    `pamc.train(..., resume=True)`."""
    from .checkpoint import RunFolder

    folder = RunFolder(run_folder)
    folder.require_resumable()
    values = folder.read_config()
    return make_config(apply_overrides(values, {**(overrides or {}), "out": str(run_folder)}))

