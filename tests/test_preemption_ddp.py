"""Under torchrun every process stops at the same step: a signal that reaches one process only
(rank 1, during step 3) stops both at the next sync point (log_every 4: step 4), after rank 0 has
written the checkpoint; the run then resumes on one process and ends as the uninterrupted run
(the DDP tolerance of test_distributed: the split batches differ by float rounding only)."""
from __future__ import annotations

import json
import os
import signal
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
from pamc.preemption import Preempted

SCENES = {"n_train": 95, "n_val": 33, "n_test": 31, "canvas": 32, "object_scale": [10, 14]}
TOLERANCE = 1e-4


def config(out: Path, cache: Path):
    return make_config({**TrainConfig().to_dict(), "data": {"name": "scenes", **SCENES, "cache_dir": str(cache)},
                        "backbone": "scene-cnn-gn", "method": "ll-cp", "loss": {"delta": 5}, "epochs": 2,
                        "batch_size": 16, "lr": 3e-4, "device": "cpu", "num_workers": 0, "eval_batch_size": 8,
                        "amp": "off", "channels_last": "off",  # exact across process counts: fp32 NCHW, as auto under DDP
                        "out": str(out), "progress": False, "log_every": 4, "tensorboard": "off"})


def worker(root: Path) -> None:
    rank = int(os.environ["RANK"])
    run = Run(config(root / "two", root / "cache"))
    forward, calls = run.loss_fn.forward, []

    def signalled(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # this process only
        return forward(*args, **kwargs)

    run.loss_fn.forward = signalled
    try:
        run.fit()
    except Preempted as exc:
        (root / f"stop-{rank}.json").write_text(json.dumps({"global_step": run.global_step, "step": exc.step}))
        sys.exit(exc.exit_code)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    from test_distributed import free_port

    root = tmp_path_factory.mktemp("ddp-stop")
    make_scenes(**SCENES, cache_dir=root / "cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    log = root / "torchrun.log"
    with open(log, "w") as out:
        launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(root)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = Run(config(root / "one", root / "cache")).fit()
        launch.wait(timeout=600)
    finally:
        torch.set_num_threads(threads)
        if launch.poll() is None:
            launch.kill()
    return root, straight, log.read_text()


def test_every_process_stops_at_the_same_step(stopped):
    root, _, log = stopped
    stops = [json.loads((root / f"stop-{r}.json").read_text()) for r in range(2)]
    assert stops[0] == stops[1] == {"global_step": 4, "step": 4}, log[-3000:]
    state = RunFolder(root / "two").load_state()
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 4, 4)
    assert RunFolder(root / "two").read_status()["status"] == "preempted"


def test_resumed_on_one_process_it_ends_as_the_straight_run(stopped):
    root, straight, _ = stopped
    torch.set_num_threads(1)
    resumed = Run(config(root / "two", root / "cache"), resume=True).fit()
    for key in ("val_map", "test_map"):
        assert resumed.results[key] == pytest.approx(straight.results[key], abs=TOLERANCE)
    assert resumed.results["stored_label_edits"] == straight.results["stored_label_edits"]
    assert resumed.results["best_epoch"] == straight.results["best_epoch"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    worker(Path(sys.argv[1]))
