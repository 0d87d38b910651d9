"""Preemption-safe runs: mid-epoch checkpoints, stop signals, `--resume auto`, status.json.

The exactness claim is tested end to end: a `python -m pamc train` process on the tiny scenes is
killed (SIGKILL, or SIGTERM and its clean stop) at a random moment after its first mid-epoch
checkpoint, resumed, and compared with the same command run without interruption: results.json,
the weights of last/ and best/, the metric lines (timings aside) and the TensorBoard curves.  The
recipe exercises every piece of state a resume must restore: label edits (LL-Cp), EMA, OneCycle,
RandAugment + Cutout, AdamW with weight decay, gradient clipping.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import pamc
from pamc.checkpoint import RunFolder
from pamc.apps.cli import main
from pamc.engine import Run
from pamc.errors import PamcError
from pamc.hooks import Hook
from pamc.optional import tensorboard_available
from pamc.preemption import EXIT_PREEMPTED, Preempted

from test_engine import assert_same_weights, metric_lines, without_timing

RECIPE = ["--method", "ll-cp", "--loss", "delta=5", "--ema", "0.9", "--schedule", "onecycle", "--augment",
          "randaugment+cutout", "--optimizer", "adamw", "--weight-decay", "1e-4", "--grad-clip", "1.0"]


def command(out: Path, data: dict, *extra: str) -> list[str]:
    flags = [f"--data={k}={json.dumps(v)}" for k, v in data.items()]
    return ["train", "--out", str(out), *flags, "--epochs", "4", "--batch-size", "16", "--lr", "1e-4",
            "--device", "cpu", "--num-workers", "0", "--no-progress", "--log-every", "2",
            "--checkpoint-every-steps", "2", *RECIPE, *extra]


def env() -> dict:
    src = str(Path(pamc.__file__).parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pamc", *args], env=env(), stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def wait_for_mid_epoch_checkpoint(proc: subprocess.Popen, out: Path, epoch: int, timeout: float = 240) -> None:
    """Until last/ holds a checkpoint taken inside epoch `epoch` or later (model.json has a step)."""
    meta = out / "last" / "model.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            values = json.loads(meta.read_text())
            if values.get("step") and values["epoch"] + 1 >= epoch:
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared")


def scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_run(a: Path, b: Path) -> None:
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())
    for folder in ("last", "best"):
        assert_same_weights(load_file(str(a / folder / "model.safetensors")), load_file(str(b / folder / "model.safetensors")))
    assert without_timing(metric_lines(a)) == without_timing(metric_lines(b))
    if not tensorboard_available():  # the test extra installs it; without it there are no curves
        return
    sa, sb = scalars(a), scalars(b)
    assert sa.keys() == sb.keys()
    for tag in sa:
        if "images_per_s" in tag:  # timings, logged at every sync point (a stop adds one)
            steps = [s for s, _ in sb[tag]]
            assert len(set(steps)) == len(steps) and {s for s, _ in sa[tag]} <= set(steps), tag
        else:
            assert sa[tag] == sb[tag], tag  # the same points, none twice


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_settings):
    """The uninterrupted run of the command (in this process: the same code as `python -m pamc`)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(command(out, tiny_settings["data"])) == 0
    return out


def test_checkpoints_do_not_change_the_run(straight, tiny_settings, tmp_path):
    """Mid-epoch checkpoints and logging are observers: without them the run is the same."""
    out = tmp_path / "plain"
    args = [a for a in command(out, tiny_settings["data"]) if a not in ("--checkpoint-every-steps",)]
    args.remove("2")  # the value of --checkpoint-every-steps (the first "2"; --log-every's stays)
    args += ["--tensorboard", "off", "--log-every", "20"]
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
    assert_same_weights(load_file(str(out / "last/model.safetensors")), load_file(str(straight / "last/model.safetensors")))
    assert not (out / "tensorboard").exists()


def test_sigkill_mid_epoch_then_resume_equals_the_straight_run(straight, tiny_settings, tmp_path):
    out = tmp_path / "run"
    proc = start(command(out, tiny_settings["data"]), tmp_path / "log.txt")
    wait_for_mid_epoch_checkpoint(proc, out, epoch=2)
    time.sleep(random.Random(0).uniform(0.0, 0.3))  # an arbitrary moment: maybe inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert not (out / "results.json").exists()
    killed = RunFolder(out).read_status()
    assert killed["status"] == "running"  # nobody could say otherwise: `pamc table` shows it as running

    assert main(["train", "--resume", str(out)]) == 0
    assert_same_run(straight, out)
    status = RunFolder(out).read_status()
    assert status["status"] == "finished" and status["attempts"] == 2 and "ended" in status


def test_sigterm_stops_cleanly_and_resume_auto_continues(straight, tiny_settings, tmp_path):
    out = tmp_path / "run"
    args = command(out, tiny_settings["data"], "--resume", "auto")  # the job script's one command
    proc = start(args, tmp_path / "log.txt")
    wait_for_mid_epoch_checkpoint(proc, out, epoch=2)
    time.sleep(random.Random(1).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    log = (tmp_path / "log.txt").read_text()
    assert code == EXIT_PREEMPTED == 75, log
    assert "stopped by SIGTERM" in log and f"pamc train --resume {out}" in log and "--resume auto" in log
    status = RunFolder(out).read_status()
    assert status["status"] == "preempted" and status["reason"] == "stopped by SIGTERM"
    assert status["resume_command"] == f"pamc train --resume {out}"
    assert RunFolder(out).can_resume() and not (out / "results.json").exists()

    proc = start(args, tmp_path / "log2.txt")  # rerun unchanged
    assert proc.wait(240) == 0, (tmp_path / "log2.txt").read_text()
    assert_same_run(straight, out)

    # a third run of the same command finds the run finished and repeats nothing
    before = (out / "results.json").stat().st_mtime_ns, (out / "metrics.jsonl").stat().st_mtime_ns
    assert main(args) == 0
    assert ((out / "results.json").stat().st_mtime_ns, (out / "metrics.jsonl").stat().st_mtime_ns) == before


class SignalAt(Hook):
    """Sends this process `sig` right after global step `at` (as a scheduler would, mid-step)."""

    def __init__(self, at: int, sig: int):
        self.at, self.sig = at, sig

    def after_step(self, run, step):
        if step.global_step == self.at:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig, at", [(signal.SIGUSR1, 3), (signal.SIGINT, 8), (signal.SIGTERM, 5)])
def test_a_signal_stops_at_the_next_step_and_resumes_exactly(sig, at, tiny_config, tiny_bundle, tmp_path):
    """In process: the stop comes at the next step boundary (step at + 1), also at an epoch's last step."""
    config = {**tiny_config, "epochs": 3, "method": "ll-cp", "loss": {"delta": 5.0}, "ema": 0.8, "schedule": "cosine",
              "warmup_steps": 3, "augment": "randaugment", "tensorboard": "off"}
    straight = pamc.train({**config, "out": str(tmp_path / "straight")}, bundle=tiny_bundle)
    out = tmp_path / "run"
    with pytest.raises(Preempted) as err:
        pamc.train({**config, "out": str(out)}, bundle=tiny_bundle, hooks=[SignalAt(at, sig)])
    assert err.value.exit_code == 75 and err.value.signal_name == signal.Signals(sig).name
    state = RunFolder(out).load_state()
    # stopped after step at + 1 (6 steps an epoch); at an epoch's last step the checkpoint is taken
    # before validation (step 6 of the epoch), so a preempted job leaves at once
    assert state["global_step"] == at + 1 and (state["epoch"], state["step"]) == (at // 6, at % 6 + 1)
    assert signal.getsignal(sig) is not None and RunFolder(out).read_status()["status"] == "preempted"
    resumed = pamc.train({"out": str(out)}, bundle=tiny_bundle, resume=True)
    assert resumed.results == straight.results
    assert_same_weights(load_file(str(out / "best/model.safetensors")),
                        load_file(str(tmp_path / "straight/best/model.safetensors")))
    assert without_timing(metric_lines(out)) == without_timing(metric_lines(tmp_path / "straight"))


def test_signal_handlers_are_restored(tiny_config, tiny_bundle):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    pamc.train({**tiny_config, "epochs": 1, "tensorboard": "off"}, bundle=tiny_bundle)
    assert {s: signal.getsignal(s) for s in before} == before


def test_checkpoint_every_minutes(tiny_config, tiny_bundle, monkeypatch):
    saved = []
    original = Run.save

    def recording(self, epoch, is_best, step=0, partial=None):
        saved.append((epoch, step))
        return original(self, epoch, is_best, step, partial)

    monkeypatch.setattr(Run, "save", recording)
    pamc.train({**tiny_config, "epochs": 1, "checkpoint_every_minutes": 1e-9, "tensorboard": "off"}, bundle=tiny_bundle)
    assert saved == [(0, s) for s in range(1, 6)] + [(1, 0)]  # every step, the last one by the epoch's own


def test_resume_auto_starts_resumes_and_refuses_foreign_folders(tiny_config, tiny_bundle, tmp_path):
    config = {**tiny_config, "epochs": 1, "tensorboard": "off"}
    first = pamc.train(config, bundle=tiny_bundle, resume="auto")  # nothing there: a new run
    assert RunFolder(first.out).read_status()["status"] == "finished"
    again = pamc.train(config, bundle=tiny_bundle, resume="auto")  # finished: returned as it is
    assert again.results == first.results
    longer = pamc.train({**config, "epochs": 2}, bundle=tiny_bundle, resume="auto")  # more epochs: resumed
    assert len(metric_lines(longer.out)) == 2

    # killed before its first checkpoint: only config.yaml and status.json; auto starts it again
    early = tmp_path / "early"
    RunFolder(early).path.mkdir()
    RunFolder(early).write_config({"epochs": 1})
    RunFolder(early).write_status("running")
    result = pamc.train({**config, "out": str(early)}, bundle=tiny_bundle, resume="auto")
    assert result.out == early and (early / "results.json").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PamcError, match="not made by pamc"):
        pamc.train({**config, "out": str(foreign)}, bundle=tiny_bundle, resume="auto")
    with pytest.raises(PamcError, match="resume must be"):
        pamc.train(config, bundle=tiny_bundle, resume="yes")


def test_a_failure_is_written_to_status(tiny_config, tiny_bundle, monkeypatch):
    from pamc.losses.assume_negative import AssumeNegative

    def broken(self, logits, observed, epoch, index):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")

    monkeypatch.setattr(AssumeNegative, "compute", broken)
    with pytest.raises(RuntimeError):
        pamc.train({**tiny_config, "tensorboard": "off"}, bundle=tiny_bundle)
    status = RunFolder(tiny_config["out"]).read_status()
    assert status["status"] == "failed"
    assert status["reason"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" and "ended" in status


def test_a_resume_with_another_schedule_length_is_refused(tiny_config, tiny_bundle):
    config = {**tiny_config, "epochs": 1, "schedule": "cosine", "tensorboard": "off"}
    pamc.train(config, bundle=tiny_bundle)
    with pytest.raises(PamcError, match="lr schedule is 6 steps long; resuming with 12"):
        pamc.train({"out": tiny_config["out"], "epochs": 2}, bundle=tiny_bundle, resume=True)
