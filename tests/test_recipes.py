"""Training recipes: each option against a hand computation, and the defaults unchanged.

Schedules: the lr of every step of a real run (read by a hook) against the formulas.  EMA: the
averaged weights of a real run against an EMA computed here from the weights after every step.
Weight decay (Adam's L2, AdamW's decoupled) and gradient clipping: one step against the update
rule.  Augmentation: per image, reproducible from (seed, epoch, index) alone.
"""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import pamc
from pamc.config import TrainConfig, make_config, resolve
from pamc.data.augment import BatchAugment
from pamc.errors import PamcError
from pamc.hooks import Hook
from pamc.losses import build as build_loss
from pamc.models import CamClassifier
from pamc.recipes import build_ema, build_optimizer, build_scheduler, clip_gradients
from pamc.runtime import Runtime

from test_engine import sklearn_map


class Recorder(Hook):
    """Each step's learning rates, and copies of the weights at the start and after every step."""

    def __init__(self, weights: bool = False):
        self.lrs, self.weights, self.keep, self.logs = [], [], weights, []

    def snapshot(self, run):
        return {k: v.detach().clone().double() for k, v in run.model.state_dict().items() if v.is_floating_point()}

    def before_train(self, run):
        if self.keep:
            self.weights.append(self.snapshot(run))

    def after_step(self, run, step):
        self.lrs.append(step.lrs)
        self.logs += step.logs
        if self.keep:
            self.weights.append(self.snapshot(run))


def config(values: dict) -> TrainConfig:
    return make_config({**TrainConfig().to_dict(), **values})


# ----------------------------------------------------------------------------- schedules


def onecycle(s: int, max_lr: float, total: int, pct: float) -> float:
    """torch's OneCycleLR (cos annealing, two phases) by hand, after s scheduler steps."""
    initial, minimum = max_lr / 25.0, max_lr / 25.0 / 1e4
    end1, end2 = pct * total - 1, total - 1

    def anneal(start, end, t):
        return end + (start - end) / 2.0 * (math.cos(math.pi * t) + 1)

    return anneal(initial, max_lr, s / end1) if s <= end1 else anneal(max_lr, minimum, (s - end1) / (end2 - end1))


@pytest.mark.parametrize("schedule, extra", [("cosine", {"warmup_epochs": 0.5, "warmup_steps": 1}),
                                             ("onecycle", {"pct_start": 0.3, "schedule_epochs": 3}),
                                             ("constant", {"warmup_steps": 5})])
def test_lr_of_every_step(schedule, extra, tiny_config, tiny_bundle):
    hook = Recorder()
    pamc.train({**tiny_config, "schedule": schedule, **extra, "tensorboard": "off"}, bundle=tiny_bundle, hooks=[hook])
    steps, lr = 12, tiny_config["lr"]  # 2 epochs of 6 batches
    assert len(hook.lrs) == steps
    for s, lrs in enumerate(hook.lrs):  # s scheduler steps before this optimiser step
        for name, base in (("backbone", lr), ("head", lr * 10)):
            if schedule == "onecycle":
                expected = onecycle(s, base, 18, 0.3)
            elif schedule == "cosine":  # warm-up 3 + 1 steps, then cosine over the other 8 of 12
                expected = base * (s + 1) / 4 if s < 4 else base * 0.5 * (1 + math.cos(math.pi * (s - 4) / 8))
            else:
                expected = base * (s + 1) / 5 if s < 5 else base
            assert lrs[name] == pytest.approx(expected, rel=1e-9, abs=1e-15), (s, name)


def test_the_paper_recipe_builds_what_pamc_always_built():
    cfg = config({"device": "cpu"})
    model, loss_fn = CamClassifier("scene-cnn", 10), build_loss("an")
    optimizer = build_optimizer(model, loss_fn, cfg, Runtime.create("cpu"))
    assert type(optimizer) is torch.optim.Adam
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        ("backbone", 1e-5, 0), ("head", 1e-4, 0)]
    assert build_scheduler(optimizer, cfg, 10) is None and build_ema(model, cfg.ema) is None
    assert BatchAugment.from_config(cfg) is None


# ----------------------------------------------------------------------------- weight decay, clipping


def one_step(optimizer_name: str, weight_decay: float):
    torch.manual_seed(0)
    cfg = config({"device": "cpu", "lr": 1e-3, "lr_mult": 3.0, "optimizer": optimizer_name,
                  "weight_decay": weight_decay, "fused_adam": "off"})
    model, loss_fn = CamClassifier("scene-cnn", 10), build_loss("an")
    optimizer = build_optimizer(model, loss_fn, cfg, Runtime.create("cpu"))
    x, y = torch.randn(4, 3, 32, 32), (torch.rand(4, 10) < 0.2).float()
    loss_fn(model(x), y).backward()
    before = {id(p): (p.detach().clone(), p.grad.clone()) for p in model.parameters()}
    optimizer.step()
    return optimizer, before


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_weight_decay_one_step_by_hand(name):
    wd, eps = 0.5, 1e-8
    optimizer, before = one_step(name, wd)
    effect = 0.0
    names = {g["name"] for g in optimizer.param_groups}
    assert names == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    for group in optimizer.param_groups:
        lr, decays = group["lr"], not group["name"].endswith("no_decay")
        for p in group["params"]:
            w, g = before[id(p)]
            assert (p.ndim > 1) == decays  # conv/linear weights decay; biases and norms do not
            if name == "adam":  # L2 in the gradient; Adam's first step moves by lr * g / (|g| + eps)
                g = g + wd * w if decays else g
                expected = w - lr * g / (g.abs() + eps)
            else:  # decoupled: w (1 - lr wd) - lr g / (|g| + eps)
                expected = w * (1 - lr * wd if decays else 1.0) - lr * g / (g.abs() + eps)
            # 1e-6: where g is near 0, g / (|g| + eps) is sensitive to the last bit of g
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
            if decays:
                plain = w - lr * before[id(p)][1] / (before[id(p)][1].abs() + eps)
                effect = max(effect, float((expected - plain).abs().max()))
    assert effect > 1e-5  # the decay term is far above the tolerance


def test_weight_decay_changes_the_step():
    plain, _ = one_step("adam", 0.0)
    decayed, _ = one_step("adam", 0.1)
    a = plain.param_groups[0]["params"][0].detach()
    b = decayed.param_groups[0]["params"][0].detach()
    assert not torch.equal(a, b)


def test_grad_clip_by_hand():
    torch.manual_seed(0)
    model, loss_fn = CamClassifier("scene-cnn", 10), build_loss("an")
    loss_fn(model(torch.randn(4, 3, 32, 32)), (torch.rand(4, 10) < 0.2).float()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    assert clip_gradients(model, loss_fn, None) is None
    assert float(clip_gradients(model, loss_fn, 1e3)) == pytest.approx(float(norm), rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))  # under the limit: untouched
    max_norm = float(norm) / 4
    clip_gradients(model, loss_fn, max_norm)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g * (max_norm / float(norm)), rtol=1e-4, atol=1e-10)


def test_grad_clip_in_a_run_logs_the_norm(tiny_config, tiny_bundle):
    hook = Recorder()
    free = pamc.train({**tiny_config, "out": tiny_config["out"] + "-free", "tensorboard": "off"}, bundle=tiny_bundle)
    clipped = pamc.train({**tiny_config, "grad_clip": 1e-3, "tensorboard": "off", "log_every": 3}, bundle=tiny_bundle,
                         hooks=[hook])
    assert [log["global_step"] for log in hook.logs] == list(range(1, 13))
    assert all(log["grad_norm"] > 1e-3 for log in hook.logs)  # every step was clipped
    assert clipped.results["test_map"] != free.results["test_map"]


# ----------------------------------------------------------------------------- EMA


def test_ema_by_hand(tiny_config, tiny_bundle):
    decay = 0.8
    hook = Recorder(weights=True)
    result = pamc.train({**tiny_config, "ema": decay, "tensorboard": "off"}, bundle=tiny_bundle, hooks=[hook])
    ema = dict(hook.weights[0])  # the EMA starts from the initial weights (as ASL's ModelEma)
    at_epoch_end = {}
    for k, weights in enumerate(hook.weights[1:], start=1):
        ema = {name: e + (1 - decay) * (weights[name] - e) for name, e in ema.items()}
        if k % 6 == 0:
            at_epoch_end[k // 6] = ema
    saved = pamc.checkpoint.RunFolder(result.out).load_state()["ema"]
    for name, value in at_epoch_end[2].items():
        torch.testing.assert_close(saved[f"module.{name}"].double(), value, rtol=1e-5, atol=1e-6)
    best = load_file(str(result.out / "best" / "model.safetensors"))
    for name, value in at_epoch_end[result.results["best_epoch"]].items():  # best/ holds the EMA weights
        torch.testing.assert_close(best[name].double(), value, rtol=1e-5, atol=1e-6)
    meta = pamc.checkpoint.read_meta(result.out / "best")
    assert meta.extra["ema_decay"] == decay
    # selection and test use the EMA model
    lines = [__import__("json").loads(x) for x in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert lines[result.results["best_epoch"] - 1]["val_map"] == pytest.approx(
        sklearn_map(result.out / "best", tiny_bundle.val, 1.0), abs=1e-6)
    assert result.results["test_map"] == pytest.approx(sklearn_map(result.out / "best", tiny_bundle.test, 1.0), abs=1e-6)
    raw = load_file(str(result.out / "last" / "model.safetensors"))  # last/ keeps the trained weights
    assert any(not torch.allclose(raw[n].double(), v) for n, v in at_epoch_end[2].items())


# ----------------------------------------------------------------------------- augmentation


def batch(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("kind", ["randaugment", "randaugment+cutout"])
def test_augmentation_is_per_image_and_reproducible(kind):
    aug = BatchAugment(kind, seed=3)
    x, index = batch(), torch.tensor([10, 11, 12, 13, 14, 15])
    rng = torch.get_rng_state()
    a = aug(x, index, epoch=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, aug(x, index, epoch=1))  # reproducible
    assert not torch.equal(a, aug(x, index, epoch=2))  # another epoch, other draws
    assert not torch.equal(a, BatchAugment(kind, seed=4)(x, index, epoch=1))  # another seed
    # an image's augmentation depends on its index only, not on its batch or position
    order = torch.tensor([3, 0, 5])
    torch.testing.assert_close(aug(x[order], index[order], epoch=1), a[order], rtol=0, atol=0)
    # the same image under different indices gets different ops (not one op for the batch)
    same = x[:1].repeat(6, 1, 1, 1)
    out = aug(same, index, epoch=1)
    assert len({bytes(o.numpy().tobytes()) for o in out}) > 1


def test_cutout_fills_a_square_of_half_the_side():
    aug = BatchAugment("randaugment+cutout", seed=0)
    aug.randaugment = lambda img: img  # cutout alone
    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    out = aug(x, torch.arange(8), epoch=1)
    for img in out:
        changed = (img != 0).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        if len(rows):  # a random colour of 0 on every channel is possible, if unlikely
            assert rows.max() - rows.min() + 1 <= 16 and cols.max() - cols.min() + 1 <= 16


def test_augmented_runs_are_reproducible(tiny_config, tiny_bundle, tmp_path):
    config = {**tiny_config, "epochs": 1, "augment": "randaugment+cutout", "tensorboard": "off"}
    a = pamc.train({**config, "out": str(tmp_path / "a")}, bundle=tiny_bundle)
    b = pamc.train({**config, "out": str(tmp_path / "b")}, bundle=tiny_bundle)
    plain = pamc.train({**config, "augment": "none", "out": str(tmp_path / "c")}, bundle=tiny_bundle)
    assert a.results == b.results and a.results["test_map"] != plain.results["test_map"]


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "sgd"}, "optimizer must be adam, adamw"),
    ({"weight_decay": -1}, "weight_decay must be a number >= 0"),
    ({"schedule": "step"}, "schedule must be constant, cosine, onecycle"),
    ({"schedule": "onecycle", "warmup_epochs": 1}, "warmup_epochs/warmup_steps apply to schedule constant or cosine"),
    ({"warmup_steps": 1.5}, "warmup_steps must be an integer"),
    ({"pct_start": 1.0}, "pct_start must be between 0 and 1"),
    ({"schedule_epochs": 5, "epochs": 10}, "schedule_epochs must be an integer >= epochs"),
    ({"schedule": "cosine", "warmup_epochs": 10}, "warmup_epochs (10) must be shorter than the schedule"),
    ({"grad_clip": 0}, "grad_clip must be a positive max norm"),
    ({"ema": 1.5}, "ema must be a decay between 0 and 1"),
    ({"augment": "mixup"}, "augment must be none, randaugment, randaugment+cutout"),
    ({"log_every": 0}, "log_every must be a positive integer"),
    ({"tensorboard": "maybe"}, "tensorboard must be auto, on, off"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps must be a positive integer"),
    ({"checkpoint_every_minutes": -1}, "checkpoint_every_minutes must be a positive number"),
])
def test_settings_are_checked_in_one_line(values, message):
    with pytest.raises(PamcError, match=re_escape(message)) as err:
        config(values)
    assert "\n" not in str(err.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_none_and_off_switch_settings_off():
    cfg = config({"ema": "none", "grad_clip": "off", "tensorboard": False, "compile": False})
    assert cfg.ema is None and cfg.grad_clip is None and cfg.tensorboard == "off" and cfg.compile == "off"


def test_warmup_longer_than_the_data_is_refused(tiny_config, tiny_bundle):
    with pytest.raises(PamcError, match="warm-up \\(20 steps\\) must be shorter than the schedule \\(12 steps\\)"):
        pamc.train({**tiny_config, "schedule": "cosine", "warmup_steps": 20}, bundle=tiny_bundle)


def test_recipe_presets(tiny_settings, tmp_path):
    cfg = resolve(preset="coco-asl-recipe")
    assert (cfg.method, cfg.optimizer, cfg.lr, cfg.lr_mult, cfg.weight_decay, cfg.schedule, cfg.pct_start, cfg.epochs,
            cfg.schedule_epochs, cfg.batch_size, cfg.augment, cfg.ema) == (
        "asl", "adam", 1e-4, 1.0, 1e-4, "onecycle", 0.2, 30, 80, 128, "randaugment+cutout", 0.9997)
    assert cfg.data == {"name": "prepared", "path": "data/coco"} and cfg.preset == "coco-asl-recipe"
    assert resolve(preset="coco-asl").schedule == "constant"  # the paper's preset keeps the paper's recipe
    for method in ("hill", "splc"):  # the since-2023 losses with their reference recipe
        paper, recipe = resolve(preset=f"voc-{method}"), resolve(preset=f"voc-{method}-recipe")
        assert (recipe.method, recipe.loss, recipe.data) == (paper.method, paper.loss, paper.data)
        assert (recipe.schedule, recipe.ema, recipe.augment, paper.schedule, paper.ema, paper.augment) == (
            "onecycle", 0.9997, "randaugment+cutout", "constant", None, "none")
    # the base recipe trains (one batch of 96 per epoch on the tiny scenes)
    tiny = {**{f"data.{k}": v for k, v in tiny_settings["data"].items() if k != "name"}, "epochs": 2,
            "device": "cpu", "num_workers": 0, "progress": False, "out": str(tmp_path / "run"), "tensorboard": "off"}
    result = pamc.train(resolve(preset="recipe-asl", overrides=tiny))
    assert pamc.checkpoint.read_meta(result.out / "best").extra["ema_decay"] == 0.9997
