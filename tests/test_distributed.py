"""Two processes (torchrun, gloo on CPU) must compute what one process computes.

The same global batches are trained once in this process and once by `torchrun --nproc_per_node 2`
running this file as a script.  Compared: LL-Cp's selected entries at every step (each rank's
share concatenated in rank order), its permanent label corrections (in the store and in
last/state.pt), the logged epoch numbers, losses and val/test mAP (also of Hill, whose default
reduction is a sum over the global batch), and ROLE's label estimates (a loss parameter outside
DDP).  The scene-cnn-gn backbone normalises per image, so splitting a batch changes nothing but
float rounding.  95 training images in batches of 16 end with a partial
batch (split 8/7), and 33/31 val/test images shard unevenly for evaluation.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pamc
from pamc.checkpoint import RunFolder
from pamc.config import TrainConfig, make_config
from pamc.data.scenes import make_scenes
from pamc.engine import Run
from pamc.losses import build as build_loss

SCENES = {"n_train": 95, "n_val": 33, "n_test": 31, "canvas": 32, "object_scale": [10, 14]}
EPOCHS = 3
METHODS = {"ll-cp": {"delta": 5}, "role": {"k": 1.5}, "hill": {}}
TOLERANCE = 1e-4


def config(method: str, out: Path, cache: Path):
    return make_config({**TrainConfig().to_dict(),
                        "data": {"name": "scenes", **SCENES, "cache_dir": str(cache)},
                        "backbone": "scene-cnn-gn", "method": method, "loss": METHODS[method],
                        "epochs": EPOCHS, "batch_size": 16, "lr": 3e-4, "device": "cpu", "num_workers": 0,
                        "amp": "off", "channels_last": "off",  # exact across process counts: fp32 NCHW, as auto under DDP
                        "eval_batch_size": 8, "out": str(out), "progress": False})


def train_recording(method: str, out: Path, cache: Path) -> list[dict]:
    """Train, recording each step's epoch, dataset indices and selected entries (this process's share)."""
    run = Run(config(method, out, cache))
    steps, forward = [], run.loss_fn.forward

    def recording(logits, observed, epoch=1, index=None, gather=None):
        loss = forward(logits, observed, epoch=epoch, index=index, gather=gather)
        steps.append({"epoch": epoch, "index": index.cpu(), "selected": run.loss_fn.last_selected.cpu()})
        return loss

    run.loss_fn.forward = recording
    run.fit()
    return steps


WRITE_EVENTS = ("open", "os.mkdir", "os.rename", "os.remove", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def watch_writes(prefix: str) -> list[str]:
    """Paths starting with `prefix` that this process creates, opens for writing, renames or
    removes from now on (Python audit events: open(), os.open, mkdir, os.replace, rmtree)."""
    seen = []

    def hook(event, args):
        if event not in WRITE_EVENTS or not args or not str(args[0]).startswith(prefix):
            return
        if event == "open":  # open(): (path, mode, flags); os.open: (path, None, flags)
            _, mode, flags = args
            if not (set(mode or "") & set("wax+") or (mode is None and flags & WRITE_FLAGS)):
                return
        seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def worker(root: Path) -> None:
    """One torchrun process: run every method into root/two-METHOD, save what it saw per rank."""
    writes = watch_writes(str(root / "two-"))
    record = {m: train_recording(m, root / f"two-{m}", root / "cache") for m in METHODS}
    torch.save({**record, "writes": writes}, root / f"records-{os.environ['RANK']}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    make_scenes(**SCENES, cache_dir=root / "cache")  # built once, read by every process
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    log = root / "torchrun.log"
    with open(log, "w") as out:
        launch = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), __file__, str(root)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    # the one-process runs share the CPU with the launch, which is mostly interpreter start-up;
    # one thread, as in each launched process, so that every image meets the same kernels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = {m: train_recording(m, root / f"one-{m}", root / "cache") for m in METHODS}
        launch.wait(timeout=600)
    finally:
        torch.set_num_threads(threads)
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, log.read_text()[-4000:]
    two = [torch.load(root / f"records-{r}.pt", weights_only=False) for r in range(2)]
    return root, one, two


def combined(two: list[dict], method: str) -> list[dict]:
    """Each step's shares of both ranks, concatenated in rank order: the global batch."""
    steps0, steps1 = two[0][method], two[1][method]
    assert len(steps0) == len(steps1)
    return [{"epoch": a["epoch"], "index": torch.cat([a["index"], b["index"]]),
             "selected": torch.cat([a["selected"], b["selected"]])} for a, b in zip(steps0, steps1)]


def test_same_global_batches_and_selected_entries_every_step(runs):
    _, one, two = runs
    single, double = one["ll-cp"], combined(two, "ll-cp")
    assert len(single) == len(double) == EPOCHS * 6
    assert [len(s["index"]) for s in single[:6]] == [16] * 5 + [15]
    assert [len(s["index"]) for s in two[0]["ll-cp"][:6]] == [8] * 6
    assert [len(s["index"]) for s in two[1]["ll-cp"][:6]] == [8] * 5 + [7]
    for a, b in zip(single, double):
        assert a["epoch"] == b["epoch"]
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["selected"], b["selected"])
    # LL-Cp selects k = ceil(B*C*delta%) entries per global batch from epoch 2 (no ties here)
    assert all(not s["selected"].any() for s in single if s["epoch"] == 1)
    later = [s for s in single if s["epoch"] > 1]
    assert [int(s["selected"].sum()) for s in later] == [-(-s["selected"].numel() * 5 // 100) for s in later]


def test_label_corrections_identical_in_store_and_checkpoint(runs):
    root, one, _ = runs
    state1 = RunFolder(root / "one-ll-cp").load_state()["labels"]
    state2 = RunFolder(root / "two-ll-cp").load_state()["labels"]
    assert torch.equal(state1["initial"], state2["initial"])
    assert torch.equal(state1["observed"], state2["observed"])
    # independent reference: the initial labels with every selected entry set to 1
    expected = state1["initial"].clone()
    for step in one["ll-cp"]:
        rows = expected[step["index"]]
        rows[step["selected"]] = 1.0
        expected[step["index"]] = rows
    assert torch.equal(state2["observed"], expected)
    assert int((expected != state1["initial"]).sum()) > 0


@pytest.mark.parametrize("method", list(METHODS))
def test_logged_epochs_and_map_match(runs, method):
    root, _, _ = runs
    results = [json.loads((root / f"{k}-{method}" / "results.json").read_text()) for k in ("one", "two")]
    assert (results[0]["world_size"], results[1]["world_size"]) == (1, 2)
    for key in ("val_map", "test_map"):
        assert results[1][key] == pytest.approx(results[0][key], abs=TOLERANCE)
    assert results[1]["best_epoch"] == results[0]["best_epoch"]
    logs = [[json.loads(line) for line in (root / f"{k}-{method}" / "metrics.jsonl").read_text().splitlines()]
            for k in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == EPOCHS
    for a, b in zip(*logs):
        for key in ("val_map", "train_loss"):
            assert b[key] == pytest.approx(a[key], abs=TOLERANCE), (method, a["epoch"], key)
        for key in ("selected", "label_edits", "stored_label_edits"):
            assert b[key] == a[key], (method, a["epoch"], key)


def test_role_label_estimates_identical(runs):
    root, _, _ = runs
    theta = [RunFolder(root / f"{k}-role").load_state()["loss"]["logits"] for k in ("one", "two")]
    torch.testing.assert_close(theta[1], theta[0], atol=TOLERANCE, rtol=0)
    labels = RunFolder(root / "one-role").load_state()["labels"]["initial"]
    start = build_loss("role", num_images=95, num_classes=10, k=1.5, init_observed=labels, seed=0).logits
    assert (theta[0] - start).abs().max() > 100 * TOLERANCE  # the estimates did train


def test_only_rank_zero_writes(runs):
    _, _, two = runs
    assert two[1]["writes"] == []
    written = "\n".join(two[0]["writes"])
    for name in ("config.yaml", "metrics.jsonl", "results.json", "state.pt", "model.safetensors"):
        assert name in written


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
