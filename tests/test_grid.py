"""`pamc grid`: a spec expands into the product of its axes with readable names and complete
settings; local workers train each run exactly as `pamc.train` does; rerunning trains nothing
twice (finished runs skipped, a locked run left to its owner); a SIGTERM preempts the grid (exit
75) and the rerun resumes to the uninterrupted result; `pamc grid status` and `pamc table` read
the grid's folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import pamc
from pamc.apps.cli import main
from pamc.apps.grid import (BOOSTLU_MODES, RUNS, GridRun, RunLock, executor_parameters, expand, grid_status,
                            render_status, run_configs, run_grid, run_folder)
from pamc.config import TrainConfig, resolve
from pamc.errors import PamcError

TINY = {"name": "scenes", "source": "digits", "n_train": 48, "n_val": 16, "n_test": 16, "canvas": 32,
        "object_scale": [10, 14], "seed": 0}
SETTINGS = {"data": TINY, "epochs": 1, "batch_size": 16, "lr": 1e-4, "device": "cpu", "num_workers": 0,
            "tensorboard": "off"}


def trained(settings: dict, out: Path) -> dict:
    """The uninterrupted reference: `pamc.train` in this process (one thread, as each worker)."""
    return pamc.train({**settings, "out": str(out), "progress": False}).results


def test_expand_is_the_product_of_the_axes_with_readable_names():
    fashion = {**TINY, "source": "fashion"}
    spec = {"base": "scenes-ll-r", "settings": {"epochs": 1, "data.n_train": 40}, "methods": ["an", "ll-r"],
            "boostlu": ["off", "inference", "train"], "boostlu_alpha": 4.0,
            "datasets": {"digits": TINY, "fashion": fashion}, "seeds": [0, 1], "grid": {"lr": [1e-4, 3e-4]}}
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 3 * 2 * 2 == len({r.name for r in runs})
    assert runs[0].name == "digits_an_boostlu-off_lr=0.0001_seed-0"
    assert runs[-1].name == "fashion_ll-r_boostlu-train_lr=0.0003_seed-1"
    preset = resolve(None, "scenes-ll-r", {"epochs": 1}).to_dict()
    for run in runs:
        dataset, method, mode, lr, seed = run.name.split("_")
        s = run.settings
        data = TINY if dataset == "digits" else fashion
        assert s["data"] == {**data, "n_train": 40}  # the dataset's settings, then the shared data.* keys
        assert s["method"] == method and f"lr={s['lr']:g}" == lr and f"seed-{s['seed']}" == seed
        train, test = BOOSTLU_MODES[mode.removeprefix("boostlu-")]
        assert (s["alpha"], s["eval_alpha"]) == (4.0 if train else 1.0, 4.0 if test else 1.0)
        # everything else is the preset's, with the shared settings
        # a method of the axis other than the preset's drops the preset's loss parameters (LL-R's delta)
        assert s["loss"] == ({"delta": 0.5} if method == "ll-r" else {})
        same = {k for k in preset if k not in ("data", "method", "loss", "alpha", "eval_alpha", "lr", "seed", "out",
                                               "progress")}
        assert {k: s[k] for k in same} == {k: preset[k] for k in same}
        assert s["preset"] == "scenes-ll-r" and s["epochs"] == 1 and "out" not in s


def test_presets_axis_records_each_preset():
    runs = expand({"presets": ["scenes-an", "scenes-ll-r-boostlu"], "seeds": [3]})
    assert [r.name for r in runs] == ["scenes-an_seed-3", "scenes-ll-r-boostlu_seed-3"]
    assert [(r.settings["preset"], r.settings["method"], r.settings["alpha"]) for r in runs] == [
        ("scenes-an", "an", 1.0), ("scenes-ll-r-boostlu", "ll-r", 5.0)]


@pytest.mark.parametrize("spec, message", [
    ({"method": ["an"]}, "unknown key(s) method"),
    ({"base": "scenes-an", "presets": ["scenes-an"]}, "either base"),
    ({"boostlu": ["sometimes"]}, "unknown BoostLU mode(s) sometimes"),
    ({"seeds": [0, 0]}, "lists a value twice"),
    ({"seeds": []}, "non-empty list"),
    ({"presets": ["nope"]}, "unknown preset 'nope'"),
    ({"grid": {"lr": 1e-4}}, "lr must be a non-empty list"),
])
def test_spec_errors_name_the_problem(spec, message):
    with pytest.raises(PamcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(spec)


def test_executor_parameters_map_resources_to_submitit():
    params = executor_parameters({"partition": "gpu", "array_parallelism": 8, "gpus_per_node": 1, "timeout_min": 240,
                                  "mem-gb": 32, "constraint": "a100"})
    assert params == {"name": "pamc-grid", "timeout_min": 240, "tasks_per_node": 1, "nodes": 1,
                      "slurm_partition": "gpu", "slurm_array_parallelism": 8, "gpus_per_node": 1, "mem_gb": 32,
                      "slurm_constraint": "a100"}
    with pytest.raises(PamcError, match="srun \\+ torchrun"):
        executor_parameters({"nodes": 2})


def test_local_workers_train_as_pamc_train_and_a_rerun_trains_nothing(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"settings": SETTINGS, "methods": ["an", "ll-r"], "boostlu": ["train"],
                                    "seeds": [0]}))
    out = tmp_path / "grid"
    assert main(["grid", str(spec), "--out", str(out), "--workers", "2"]) == 0
    names = ["an_boostlu-train_seed-0", "ll-r_boostlu-train_seed-0"]
    assert sorted(p.name for p in (out / RUNS).iterdir()) == names
    reference = trained({**SETTINGS, "method": "ll-r", "alpha": 5.0, "eval_alpha": 5.0}, tmp_path / "ref")
    results = run_folder(out, names[1]).read_results()
    for key in ("test_map", "val_map", "best_epoch", "stored_label_edits"):
        assert results[key] == reference[key]
    stamp = run_folder(out, names[0]).results.stat().st_mtime_ns
    capsys.readouterr()

    assert main(["grid", str(spec), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 2 and "runs to train" not in printed and "AN + BoostLU" in printed
    assert run_folder(out, names[0]).results.stat().st_mtime_ns == stamp

    assert main(["grid", "status", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 runs: 2 finished"
    assert lines[2].split()[:4] == [names[1], "finished", "epoch", "1/1"]
    assert f"test mAP {results['test_map']:6.2f}" in lines[2]
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "AN + BoostLU" in table and "LL-R + BoostLU" in table and "(n=1)" in table


def test_a_locked_run_is_left_to_its_owner_and_status_tells_running_from_killed(tmp_path):
    runs = [GridRun(name, {**TrainConfig().to_dict(), **SETTINGS, "seed": seed}) for name, seed in (("a", 0), ("b", 1))]
    runs = [GridRun(r.name, {k: v for k, v in r.settings.items() if k != "out"}) for r in runs]
    out = tmp_path / "grid"
    lock = RunLock(out, "a")
    assert lock.acquire()
    try:
        report = run_grid(runs, out, report=None)
        assert {o.name: o.state for o in report.outcomes} == {"a": "running", "b": "finished"}
        assert not run_folder(out, "a").path.exists()
        assert train_count(out, "b") == 1
        run_folder(out, "a").path.mkdir(parents=True)
        run_folder(out, "a").write_status("running", epoch=1, step=2)
        states = {s.name: s for s in grid_status(out)}
        assert states["a"].state == "running" and states["a"].reason == "step 2 of epoch 1"
    finally:
        lock.release()
    states = {s.name: s for s in grid_status(out)}  # nobody holds a's lock: its process died
    assert states["a"].state == "interrupted" and "rerun to resume" in states["a"].reason
    assert states["b"].state == "finished" and states["b"].test_map == run_folder(out, "b").read_results()["test_map"]
    assert render_status(list(states.values())).splitlines()[0] == "2 runs: 1 finished, 1 interrupted"


def train_count(out: Path, name: str) -> int:
    return (run_folder(out, name).read_status() or {}).get("attempts", 0)


def test_a_failed_run_is_recorded_with_its_reason(tmp_path, capsys):
    bad = {**SETTINGS, "data": {"name": "prepared", "path": str(tmp_path / "missing")}}
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"settings": bad, "seeds": [0]}))
    assert main(["grid", str(spec), "--out", str(tmp_path / "grid")]) == 1
    assert "1 run(s) failed" in capsys.readouterr().err
    (state,) = grid_status(tmp_path / "grid")
    assert state.state == "failed" and "missing" in state.reason


def test_run_configs_for_programs_with_their_own_runs(tmp_path):
    """The entry point of `pamc demo --grid`: named configs, workers, one folder."""
    configs = {"an/seed-0": TrainConfig(**{**SETTINGS, "method": "an"}), "an-boost/seed-0": {**SETTINGS, "alpha": 5.0}}
    outcomes = run_configs(configs, tmp_path / "demo", workers=2, report=None)
    assert sorted(outcomes) == ["an-boost/seed-0", "an/seed-0"] and all(o.state == "finished" for o in outcomes.values())
    assert (tmp_path / "demo" / "runs" / "an" / "seed-0" / "results.json").is_file()  # the demo's own layout
    for name, o in outcomes.items():
        assert o.test_map == run_folder(tmp_path / "demo", name).read_results()["test_map"]


def test_settings_changed_under_an_existing_run_are_refused(tmp_path):
    runs = expand({"settings": SETTINGS, "seeds": [0]})
    run_grid(runs, tmp_path / "grid", report=None)
    changed = expand({"settings": {**SETTINGS, "lr": 3e-4}, "seeds": [0]})
    with pytest.raises(PamcError, match="seed-0 .* made with other settings \\(lr differ\\)"):
        run_grid(changed, tmp_path / "grid", report=None)


def test_sigterm_preempts_the_grid_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    settings = {**SETTINGS, "data": {**TINY, "n_train": 256}, "epochs": 2, "batch_size": 8,
                "checkpoint_every_steps": 4, "log_every": 2}
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"settings": settings, "seeds": [0]}))
    out = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    grid = subprocess.Popen([sys.executable, "-m", "pamc", "grid", str(spec), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = run_folder(out, "seed-0")
    try:
        wait_for(lambda: (folder.read_status() or {}).get("step"), grid)
        grid.send_signal(signal.SIGTERM)  # to the grid only: it passes the stop on to its worker
        log, _ = grid.communicate(timeout=120)
    finally:
        if grid.poll() is None:
            grid.kill()
    assert grid.returncode == 75, log
    assert "stopped by SIGTERM: 1 run(s) preempted" in log
    status = folder.read_status()
    assert status["status"] == "preempted" and folder.can_resume()

    (outcome,) = run_grid(expand({"settings": settings, "seeds": [0]}), out, report=None).outcomes
    assert outcome.state == "finished" and folder.read_status()["attempts"] == 2
    reference = trained(settings, tmp_path / "ref")
    results = folder.read_results()
    for key in ("test_map", "val_map", "best_epoch"):
        assert results[key] == reference[key]


def wait_for(condition, process, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended first: {process.communicate()[0][-3000:]}")
        if time.monotonic() - start > timeout:
            pytest.fail("timed out")
        time.sleep(0.05)


def test_grid_cli_errors(tmp_path, capsys):
    assert main(["grid", "status"]) == 2
    assert "needs the grid's folder" in capsys.readouterr().err
    spec = tmp_path / "g.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0]}))
    assert main(["grid", str(spec)]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
    assert main(["grid", "status", str(tmp_path)]) == 2
    assert "holds no grid.json" in capsys.readouterr().err
    assert main(["grid", str(spec), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_two_commands_on_one_grid_train_each_run_once(tmp_path):
    """The same grid launched twice at once (a rerun while the first still works): every run
    trains in exactly one of them; the other finds it locked or finished."""
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({"settings": SETTINGS, "seeds": [0, 1, 2]}))
    out = tmp_path / "grid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(pamc.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    commands = [subprocess.Popen([sys.executable, "-m", "pamc", "grid", str(spec), "--out", str(out)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [c.communicate(timeout=300)[0] for c in commands]
    assert [c.returncode for c in commands] == [0, 0], logs
    trained_here = [sum(f"seed-{s}: finished" in log for log in logs) for s in range(3)]
    assert trained_here == [1, 1, 1], logs
    assert [(run_folder(out, f"seed-{s}").read_status() or {}).get("attempts") for s in range(3)] == [1, 1, 1]
