"""`pamc grid` through submitit: the jobs it submits train the runs, and a job stopped by a signal
checkpoints, requeues itself and ends exactly as an uninterrupted run.

A job cancelled with `scancel` is not requeued.  Twice: with submitit's LocalExecutor (`--launcher submitit-local`, wherever submitit is installed:
the same pickled jobs, the same requeue machinery, processes started here), and on a real Slurm
cluster (`--launcher slurm`, one job array) where one is up -- CI starts a one-node cluster with
`.ci/slurm-up.sh`; elsewhere these tests skip, saying why.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import pamc
from pamc.apps.grid import SLURM_LOGS, expand, grid_status, run_folder, run_grid
from pamc.errors import PamcError

submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install 'pamc[slurm]')")

TINY = {"name": "scenes", "source": "digits", "n_train": 160, "n_val": 16, "n_test": 16, "canvas": 32,
        "object_scale": [10, 14], "seed": 0}
#: 2 epochs of 20 steps, a checkpoint every 4: long enough to be stopped mid-epoch, seconds in all
SETTINGS = {"data": TINY, "epochs": 2, "batch_size": 8, "lr": 1e-4, "device": "cpu", "num_workers": 0,
            "tensorboard": "off", "checkpoint_every_steps": 4, "log_every": 2}
SPEC = {"settings": SETTINGS, "seeds": [0, 1], "slurm": {"cpus_per_task": 1, "timeout_min": 20}}


def reference(seed: int, out: Path) -> dict:
    return pamc.train({**SETTINGS, "seed": seed, "out": str(out), "progress": False}).results


def wait_for(condition, timeout: float = 240.0, what: str = ""):
    start = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def stepping(out: Path, name: str):
    """status.json of a run that is inside an epoch (a mid-epoch checkpoint was written)."""
    status = run_folder(out, name).read_status() or {}
    return status if status.get("status") == "running" and status.get("step") else None


def finished(out: Path, name: str) -> bool:
    return (run_folder(out, name).read_status() or {}).get("status") == "finished"


def check_requeued_run(out: Path, name: str, seed: int, tmp_path: Path, attempts: int = 2) -> None:
    status = run_folder(out, name).read_status()
    assert status["status"] == "finished" and status["attempts"] == attempts, status
    expected = reference(seed, tmp_path / f"ref-{seed}")
    results = run_folder(out, name).read_results()
    for key in ("test_map", "val_map", "best_epoch"):
        assert results[key] == expected[key]


def test_submitit_local_job_requeues_after_usr2_and_after_sigterm(tmp_path):
    """submitit's warning signal (USR2) in epoch 1, then a plain SIGTERM to the requeued job in
    epoch 2: each time the run stops at the next step with a checkpoint, submitit requeues the
    job, and the third attempt ends as the uninterrupted run."""
    out = tmp_path / "grid"
    spec = {**SPEC, "seeds": [0]}
    report = run_grid(expand(spec), out, launcher="submitit-local", wait=False, report=None)
    assert len(report.jobs) == 1
    for attempt, epoch, sig in ((1, 1, signal.SIGUSR2), (2, 2, signal.SIGTERM)):
        status = wait_for(lambda: (s := stepping(out, "seed-0")) and s["attempts"] == attempt and s["epoch"] == epoch
                          and s, what=f"attempt {attempt} to train in epoch {epoch}")
        os.kill(status["pid"], sig)
    wait_for(lambda: finished(out, "seed-0"), what="the run to finish")
    logs = "".join(p.read_text() for p in (out / SLURM_LOGS).rglob("*.out"))
    assert logs.count("Requeued job") == 2
    assert [s.state for s in grid_status(out)] == ["finished"]
    check_requeued_run(out, "seed-0", 0, tmp_path, attempts=3)


def test_submitit_local_wait_returns_outcomes_and_skips_finished_runs(tmp_path):
    spec = {**SPEC, "settings": {**SETTINGS, "data": {**TINY, "n_train": 32}, "epochs": 1}, "seeds": [0]}
    report = run_grid(expand(spec), tmp_path / "grid", launcher="submitit-local", report=None)
    (outcome,) = report.outcomes
    assert outcome.state == "finished"
    assert outcome.test_map == run_folder(tmp_path / "grid", "seed-0").read_results()["test_map"]
    again = run_grid(expand(spec), tmp_path / "grid", launcher="submitit-local", report=None)
    assert [o.state for o in again.outcomes] == ["skipped"] and not again.jobs


def slurm_cluster() -> str:
    """Why the Slurm tests cannot run here, or "" where a cluster is up."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "no Slurm client here (sinfo/sbatch); CI starts a one-node cluster with .ci/slurm-up.sh"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s: the Slurm controller is down"
    if states.returncode != 0:
        return f"the Slurm cluster is down (sinfo: {states.stderr.strip()[:200]})"
    if not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        return f"no Slurm node is up (node states: {' '.join(states.stdout.split()) or 'none'})"
    return ""


@pytest.mark.skipif(bool(slurm_cluster()), reason=slurm_cluster() or "a Slurm cluster is up")
def test_slurm_job_array_requeues_a_signalled_job_and_not_a_cancelled_one(tmp_path):
    """One job array of two runs, both stopped mid-epoch: seed-1 by `scancel --signal=TERM` (a
    signal: the job checkpoints, requeues itself with `scontrol requeue` and resumes to the
    uninterrupted result), seed-0 by a plain `scancel` (a cancel: it checkpoints and stays
    preempted); `pamc grid --wait` reports both and exits 75."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    grid = subprocess.Popen([sys.executable, "-m", "pamc", "grid", str(spec), "--out", str(out), "--launcher", "slurm",
                             "--wait"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for task, command in ((1, ["scancel", "--signal=TERM"]), (0, ["scancel"])):  # array task K trains seed-K
            wait_for(lambda: stepping(out, f"seed-{task}"), what=f"seed-{task} to train")
            (job,) = [p.name for p in (out / SLURM_LOGS).iterdir() if p.name.endswith(f"_{task}")]
            subprocess.run([*command, job], check=True)
        log, _ = grid.communicate(timeout=300)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 75, log
    assert "seed-1: finished" in log and "seed-0: preempted" in log and "job cancelled (SIGTERM)" in log
    cancelled = run_folder(out, "seed-0").read_status()
    assert (cancelled["status"], cancelled["attempts"]) == ("preempted", 1) and run_folder(out, "seed-0").can_resume()
    check_requeued_run(out, "seed-1", 1, tmp_path)


def test_slurm_launcher_without_slurm_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / srun
    with pytest.raises(PamcError, match="found no Slurm here"):
        run_grid(expand({**SPEC, "seeds": [0]}), tmp_path / "grid", launcher="slurm", report=None)
