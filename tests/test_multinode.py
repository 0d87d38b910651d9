"""torchrun beyond one node, as far as one machine allows (gloo on the CPU, `pamc train` as launched
on a cluster):

- two "nodes" of one process each, meeting through a c10d rendezvous on localhost, train exactly
  what two processes of one node train (the same weights, metrics and results, bit for bit);
- elastic: one of two workers is killed (SIGKILL) mid-epoch; with `--max-restarts 1` torchrun
  restarts the group, `--resume auto` continues from the last checkpoint, and the run ends exactly
  as the uninterrupted one.

docs/cluster.md shows the same launch on Slurm (srun + torchrun, one agent per node).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import pamc
from pamc.checkpoint import MODEL_FILE, RunFolder

SETTINGS = {"data": {"name": "scenes", "source": "digits", "n_train": 320, "n_val": 32, "n_test": 32, "canvas": 32,
                     "object_scale": [10, 14], "seed": 0},
            "backbone": "scene-cnn-gn", "method": "ll-r", "loss": {"delta": 5}, "epochs": 2, "batch_size": 8,
            "lr": 3e-4, "device": "cpu", "num_workers": 0, "eval_batch_size": 16, "progress": False,
            "tensorboard": "off", "checkpoint_every_steps": 4, "log_every": 2}
#: metrics.jsonl keys that measure the machine, not the training
TIMINGS = ("train_images_per_s", "seconds", "epoch_seconds", "train_seconds", "time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], config: Path, out: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args, "-m", "pamc", "train", "--config",
                             str(config), "--out", str(out), "--resume", "auto"],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(procs: list[subprocess.Popen], log: Path, timeout: float = 400) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), log.read_text()[-4000:]


def c10d(nnodes: int, nproc: int, port: int, *extra: str) -> list[str]:
    return ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"pamc-{port}", *extra]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    (root / "config.yaml").write_text(yaml.safe_dump(SETTINGS))
    return root


@pytest.fixture(scope="module")
def one_node(root):
    """The reference: two processes on one node, uninterrupted."""
    out, log = root / "one-node", root / "one-node.log"
    finish([torchrun(c10d(1, 2, free_port()), root / "config.yaml", out, log)], log)
    return out


def same_run(a: Path, b: Path, unlogged: tuple[str, ...] = ()) -> None:
    """Same results, weights (best/ and last/) and metrics.jsonl (but for timings and `unlogged`)."""
    ra, rb = RunFolder(a).read_results(), RunFolder(b).read_results()
    assert ra == rb and ra["world_size"] == 2
    skip = TIMINGS + unlogged
    strip = lambda records: [{k: v for k, v in r.items() if k not in skip} for r in records]  # noqa: E731
    assert strip(RunFolder(a).read_metrics()) == strip(RunFolder(b).read_metrics())
    for which in ("best", "last"):
        wa, wb = load_file(a / which / MODEL_FILE), load_file(b / which / MODEL_FILE)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_two_nodes_of_one_process_train_as_two_processes_of_one_node(root, one_node):
    out, log, port = root / "two-nodes", root / "two-nodes.log", free_port()
    nodes = [torchrun(c10d(2, 1, port), root / "config.yaml", out, log.with_suffix(f".{n}.log")) for n in range(2)]
    try:
        finish(nodes, log.with_suffix(".0.log"))
    finally:
        print(log.with_suffix(".1.log").read_text()[-2000:])
    same_run(out, one_node)


def workers(agent: int) -> dict[int, int]:
    """rank -> pid of the worker processes a torchrun agent started."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    ranks = {}
    for pid in children:
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(pid)
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through Linux's /proc")
def test_a_killed_worker_restarts_the_group_which_resumes_to_the_same_result(root, one_node):
    out, log = root / "elastic", root / "elastic.log"
    agent = torchrun(c10d(1, 2, free_port(), "--max-restarts", "1"), root / "config.yaml", out, log)
    try:
        start = time.monotonic()
        while True:  # a mid-epoch checkpoint of epoch 1 exists: kill rank 1 after it
            status = RunFolder(out).read_status() or {}
            if status.get("step", 0) >= 8 and status.get("epoch") == 1:
                break
            assert agent.poll() is None and time.monotonic() - start < 300, log.read_text()[-3000:]
            time.sleep(0.02)
        os.kill(workers(agent.pid)[1], signal.SIGKILL)
        finish([agent], log)
    finally:
        if agent.poll() is None:
            agent.kill()
    text = log.read_text()
    assert "failed (exitcode: -9) local_rank: 1" in text, text[-3000:]  # the kill, seen by torchrun
    assert text.count("test mAP") == 2  # the restarted group finished: `pamc train` printed once per rank
    status = RunFolder(out).read_status()
    assert status["status"] == "finished" and status["attempts"] == 2, status
    same_run(out, one_node)  # the interrupted epoch's train_loss and selected too: the checkpoint holds every process's sums
