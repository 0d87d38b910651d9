"""Training recipes: optimiser, learning-rate schedule, gradient clipping, EMA of the weights.

The defaults are the BoostLU paper's recipe and build exactly what pamc always built: Adam with a
backbone group (lr) and a head group (lr * lr_mult), constant lr, no decay, no clipping, no EMA.
The ASL family (ASL, Hill, SPLC; spec since-2023 section 2) trains with Adam, weight decay 1e-4,
OneCycle stepped every batch, RandAugment + Cutout and an EMA of 0.9997: every piece is a
`TrainConfig` setting here, opt-in, named by the `recipe-asl` base preset.

- `weight_decay` applies to conv/linear weights (tensors of 2+ dimensions), not to biases, norm
  parameters or a loss's own parameters, as ASL's `add_weight_decay`; with `optimizer: adam` it is
  the coupled L2 term of `torch.optim.Adam` (grad + wd * w, the ASL/Hill code), with `adamw` the
  decoupled decay (w -= lr * wd * w).
- `schedule` is stepped after every optimiser step.  `constant` / `cosine` take a linear warm-up
  (`warmup_epochs` + `warmup_steps`): the lr of step s (0-based) is lr * (s + 1) / W during the W
  warm-up steps; cosine then falls as lr * (1 + cos(pi * (s - W) / (T - W))) / 2 over the T steps
  of `schedule_epochs` (default `epochs`).  `onecycle` is `torch.optim.lr_scheduler.OneCycleLR`
  with max_lr = each group's lr, total_steps T, pct_start, and torch's other defaults (as ASL: the
  momentum, Adam's beta1, cycles 0.95 -> 0.85 -> 0.95).
- `ema` keeps `torch.optim.swa_utils.AveragedModel` with `get_ema_multi_avg_fn(decay)` over the
  parameters and buffers, started from the weights training starts from (as ASL's `ModelEma`) and
  updated after every optimiser step; validation, the best checkpoint and test use it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import PamcError
from .runtime import Runtime, unwrap

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")


def _groups(name: str, params: list, lr: float, weight_decay: float) -> list[dict]:
    if not weight_decay:  # the paper's recipe: exactly the groups pamc has always built
        return [{"params": params, "lr": lr, "name": name}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name},
                        {"params": rest, "lr": lr, "weight_decay": 0.0, "name": f"{name}/no_decay"}) if g["params"]]


def build_optimizer(model: torch.nn.Module, loss_fn: torch.nn.Module, cfg, rt: Runtime) -> torch.optim.Optimizer:
    """Adam/AdamW with a backbone group (lr), a head group (lr * lr_mult) and the loss's own parameters
    (lr * the loss's param_lr_mult, never decayed); each group is named (`name`) for the logs."""
    plain = unwrap(model)
    wd = float(cfg.weight_decay)
    groups = _groups("backbone", list(plain.backbone.parameters()), cfg.lr, wd)
    groups += _groups("head", list(plain.head.parameters()), cfg.lr * cfg.lr_mult, wd)
    own = [p for p in loss_fn.parameters() if p.requires_grad]
    if own:
        groups.append({"params": own, "lr": cfg.lr * loss_fn.param_lr_mult, "weight_decay": 0.0, "name": "loss"})
    fused = {"auto": rt.device.type == "cuda", "on": True, "off": False}[cfg.fused_adam]  # checked in make_config
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=0.0, fused=fused or None)
    return torch.optim.Adam(groups, fused=fused or None)


def group_names(optimizer: torch.optim.Optimizer) -> list[str]:
    """The groups' names (state saved by an older pamc has none: group0, group1, ...)."""
    return [g.get("name", f"group{i}") for i, g in enumerate(optimizer.param_groups)]


def schedule_steps(cfg, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps of the schedule, warm-up steps)."""
    total = (cfg.schedule_epochs or cfg.epochs) * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch)) + int(cfg.warmup_steps)
    return total, warmup


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """The per-batch lr schedule, or None for a constant lr without warm-up (the paper's recipe)."""
    total, warmup = schedule_steps(cfg, steps_per_epoch)
    if cfg.schedule == "constant" and not warmup:
        return None
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total, pct_start=cfg.pct_start)
    if warmup >= total and cfg.schedule == "cosine":
        raise PamcError(f"the warm-up ({warmup} steps) must be shorter than the schedule ({total} steps); "
                        "lower warmup_epochs/warmup_steps")
    cosine = cfg.schedule == "cosine"

    def factor(step: int) -> float:  # `step` optimiser steps done: the factor of the next one
        if step < warmup:
            return (step + 1) / warmup
        if cosine:
            return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(model: torch.nn.Module, loss_fn: torch.nn.Module, max_norm: Optional[float]) -> Optional[torch.Tensor]:
    """Clip the global gradient norm of the model's and the loss's parameters; returns the norm before
    clipping (a device tensor, not synchronised), or None when clipping is off."""
    if max_norm is None:
        return None
    params = [p for p in list(unwrap(model).parameters()) + list(loss_fn.parameters()) if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, float(max_norm))


def build_ema(model: torch.nn.Module, decay: Optional[float]):
    """An `AveragedModel` EMA of the plain model (parameters and buffers), or None."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)
