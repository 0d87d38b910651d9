"""`pamc grid`: a grid of training runs (presets x methods x BoostLU modes x datasets x seeds x any
setting), run here by N worker processes or on Slurm as one job array (through submitit).

A spec is one YAML file; every axis is optional and the grid is their product::

    base: voc-ll-r                 # preset the settings start from (or `config: settings.yaml`)
    settings: {epochs: 8}          # shared by every run (dotted keys allowed: data.path)
    presets: [voc-an, voc-ll-r]    # an axis of presets (instead of base)
    methods: [an, ll-r]
    boostlu: [off, inference, train]   # alpha 1 / eval alpha 5 only / alpha 5 in training and test
    datasets: {voc: {name: prepared, path: data/voc}, coco: {name: prepared, path: data/coco}}
    seeds: [0, 1, 2]
    grid: {lr: [1e-5, 3e-5]}       # any other setting, a list of values each
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 240}   # --launcher slurm

OUT/grid.json lists the runs (name -> settings); run NAME trains into OUT/runs/NAME, a readable
name made of the axis values (`voc_ll-r_boostlu-train_lr=3e-05_seed-0`).  Rerunning the same command
is safe: finished runs are skipped, preempted or failed ones resume from their last checkpoint
(`pamc.train(..., resume="auto")`), and a lock per run (OUT/.locks/NAME.lock, an flock that the
kernel drops when its process dies) keeps a run from training twice at once.

Preemption: a run stopped by SIGTERM / SIGINT / SIGUSR1 writes its checkpoint (`pamc.preemption`).
Locally the grid forwards such a signal to its workers and exits 75 (rerun to continue); on Slurm
the job requeues itself through submitit's checkpointing (`scontrol requeue`) and resumes, and
submitit's own warning signal before the time limit (USR2) is turned into the same clean stop.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ..checkpoint import RunFolder
from ..errors import PamcError
from ..files import read_yaml, write_json
from ..preemption import EXIT_PREEMPTED, Preempted, StopRequest

#: BoostLU modes: (alpha in training, alpha at evaluation), each `boostlu_alpha` where true, else 1
BOOSTLU_MODES = {"off": (False, False), "inference": (False, True), "train": (True, True)}
#: the keys a spec may hold
SPEC_KEYS = ("base", "config", "settings", "presets", "methods", "boostlu", "boostlu_alpha", "datasets", "seeds",
             "grid", "slurm")
LAUNCHERS = ("local", "slurm", "submitit-local")
RUNS, LOCKS, SLURM_LOGS, INDEX = "runs", ".locks", "slurm", "grid.json"


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its folder name and its complete settings (a `TrainConfig` as a mapping)."""

    name: str
    settings: dict


@dataclass
class Outcome:
    """How one run ended in this invocation: finished | skipped | failed | preempted | running."""

    name: str
    state: str
    detail: str = ""
    test_map: Optional[float] = None


@dataclass
class GridReport:
    out: Path
    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # Slurm job ids (submitit)

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)


class GridStopped(PamcError):
    """The local grid was stopped by a signal; its runs wrote resumable checkpoints."""

    exit_code = EXIT_PREEMPTED


# ----------------------------------------------------------------------------- the spec


def load_spec(path: str | Path) -> dict:
    """A grid spec from YAML; `config:` paths are read relative to the spec's folder."""
    spec = read_yaml(path, "grid spec")
    if not isinstance(spec, dict):
        raise PamcError(f"grid spec {path} is not a mapping; see `pamc grid --help` for its keys")
    if isinstance(spec.get("config"), str):
        spec["config"] = str((Path(path).parent / spec["config"]).resolve())
    return spec


def _axis(spec: dict, key: str, kind=str) -> list:
    values = spec.get(key)
    if values is None:
        return []
    if not isinstance(values, list) or not values or not all(isinstance(v, kind) for v in values):
        raise PamcError(f"grid spec: {key} must be a non-empty list of {kind.__name__}s (got {values!r})")
    if len(set(map(str, values))) != len(values):
        raise PamcError(f"grid spec: {key} lists a value twice ({values})")
    return values


def _slug(value) -> str:
    """A value as part of a folder name: letters, digits and . _ = - only."""
    text = format(value, "g") if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "x"


def expand(spec: dict) -> list[GridRun]:
    """Every run of `spec`, each with its complete, checked settings; names follow the axes in the
    order presets, datasets, methods, boostlu, grid keys, seed."""
    from ..config import apply_overrides, make_config, resolve

    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise PamcError(f"grid spec: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SPEC_KEYS)}")
    if spec.get("base") and spec.get("presets"):
        raise PamcError("grid spec: give either base (one preset) or presets (an axis of them), not both")
    presets = _axis(spec, "presets")
    methods = _axis(spec, "methods")
    if isinstance(spec.get("boostlu"), list):  # YAML reads a bare `off` as false
        spec = {**spec, "boostlu": ["off" if m is False else m for m in spec["boostlu"]]}
    modes = _axis(spec, "boostlu")
    bad = [m for m in modes if m not in BOOSTLU_MODES]
    if bad:
        raise PamcError(f"grid spec: unknown BoostLU mode(s) {', '.join(bad)}; valid: {', '.join(BOOSTLU_MODES)}")
    seeds = _axis(spec, "seeds", int)
    datasets = spec.get("datasets") or {}
    if not isinstance(datasets, dict) or not all(isinstance(v, dict) for v in datasets.values()):
        raise PamcError("grid spec: datasets must map a name to its data settings ({voc: {name: prepared, path: ...}})")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise PamcError("grid spec: grid must map a setting to a list of values ({lr: [1e-5, 3e-5]})")
    for key in grid:
        _axis(grid, key, object)
    settings = spec.get("settings") or {}
    alpha = float(spec.get("boostlu_alpha", 5.0))

    axes = [[("preset", p) for p in presets] or [None], [("dataset", d) for d in datasets] or [None],
            [("method", m) for m in methods] or [None], [("boostlu", b) for b in modes] or [None],
            *[[(key, v) for v in values] for key, values in grid.items()], [("seed", s) for s in seeds] or [None]]
    runs, names = [], {}
    for combo in itertools.product(*axes):
        choice = dict(c for c in combo if c is not None)
        overrides = dict(settings)
        if "dataset" in choice:
            overrides = {k: v for k, v in overrides.items() if not k.startswith("data.")}
        values = resolve(spec.get("config"), spec.get("base") or choice.get("preset"), overrides).to_dict()
        if "dataset" in choice:  # the dataset's settings replace the base's data, then shared data.* keys apply
            values["data"] = dict(datasets[choice["dataset"]])
            values = apply_overrides(values, {k: v for k, v in settings.items() if k.startswith("data.")})
        if "method" in choice and choice["method"] != values["method"]:
            # the base's loss parameters belong to its own method; shared ones (settings: loss.*) apply
            values["method"] = choice["method"]
            values["loss"] = {}
            values = apply_overrides(values, {k: v for k, v in settings.items() if k == "loss" or k.startswith("loss.")})
        if "boostlu" in choice:
            train, test = BOOSTLU_MODES[choice["boostlu"]]
            values["alpha"], values["eval_alpha"] = (alpha if train else 1.0), (alpha if test else 1.0)
        values = apply_overrides(values, {k: v for k, v in choice.items() if k in grid})
        if "seed" in choice:
            values["seed"] = choice["seed"]
        name = "_".join(_slug(v) if k in ("preset", "dataset", "method") else
                        f"boostlu-{v}" if k == "boostlu" else f"seed-{v}" if k == "seed" else f"{_slug(k)}={_slug(v)}"
                        for k, v in choice.items()) or "run"
        if name in names:
            raise PamcError(f"grid spec: two runs are both named {name!r} ({names[name]} and {choice}); "
                            "make their values differ after the name's character clean-up")
        names[name] = choice
        values["progress"] = False
        checked = make_config(values).to_dict()
        runs.append(GridRun(name, {k: v for k, v in checked.items() if k != "out"}))  # out: OUT/runs/NAME
    return runs


# ----------------------------------------------------------------------------- one run


def run_folder(out: Path, name: str) -> RunFolder:
    return RunFolder(Path(out) / RUNS / name)


class RunLock:
    """An exclusive, non-blocking flock on OUT/.locks/NAME.lock: held while the run trains, dropped
    by the kernel when its process exits (a killed job leaves no stale lock)."""

    def __init__(self, out: Path, name: str):
        self.path = Path(out) / LOCKS / f"{name}.lock"
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (its run is training)."""
        if not self.path.is_file():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def _finished(folder: RunFolder) -> Optional[dict]:
    """results.json of a finished run, or None."""
    if (folder.read_status() or {}).get("status") != "finished" or not folder.results.is_file():
        return None
    try:
        return folder.read_results()
    except (OSError, json.JSONDecodeError):
        return None


def train_run(run: GridRun, out: Path) -> Outcome:
    """Train one run of a grid into OUT/runs/NAME under its lock: skipped when it finished before or
    trains elsewhere now, resumed from its checkpoint when there is one.  A stop signal raises
    `Preempted` (after the checkpoint is written); a failure is an outcome (status.json has it)."""
    from ..config import make_config
    from ..engine import train

    folder = run_folder(out, run.name)
    lock = RunLock(out, run.name)
    if not lock.acquire():
        return Outcome(run.name, "running", "trains in another process (its lock is held)")
    try:
        done = _finished(folder)
        if done is not None:
            return Outcome(run.name, "skipped", "finished earlier", done.get("test_map"))
        try:
            result = train(make_config({**run.settings, "out": str(folder.path)}), resume="auto")
        except Preempted:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            if (folder.read_status() or {}).get("status") != "failed":  # it failed before training started
                folder.path.mkdir(parents=True, exist_ok=True)
                folder.write_status("failed", reason=reason)
            return Outcome(run.name, "failed", reason)
        return Outcome(run.name, "finished", "", result.results["test_map"])
    finally:
        lock.release()


# ----------------------------------------------------------------------------- the grid


def prepare(runs: Sequence[GridRun], out: str | Path) -> Path:
    """Record the runs in OUT/grid.json (merged with the runs already there) and refuse a run whose
    folder was trained with other settings than the spec now gives it (a run not started yet takes
    the new ones)."""
    from .table import settings as table_settings

    out = Path(out)
    index = out / INDEX
    known = {}
    if index.is_file():
        try:
            known = json.loads(index.read_text())["runs"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise PamcError(f"{index} is unreadable; remove it (the run folders stay) and rerun") from None
    for run in runs:
        folder = run_folder(out, run.name)
        if not folder.config.is_file():
            continue
        old, new = table_settings(folder.read_config()), table_settings(run.settings)
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            raise PamcError(f"run {run.name} in {out} was made with other settings ({', '.join(differ[:5])} differ); "
                            "choose another --out or remove that run's folder")
    write_json(index, {"runs": {**known, **{r.name: r.settings for r in runs}}})
    return out


def pending(runs: Sequence[GridRun], out: Path) -> tuple[list[GridRun], list[Outcome]]:
    """(runs to launch, outcomes of those that need nothing: finished, or training elsewhere now)."""
    todo, settled = [], []
    for run in runs:
        results = _finished(run_folder(out, run.name))
        if results is not None:
            settled.append(Outcome(run.name, "skipped", "finished earlier", results.get("test_map")))
        elif RunLock(out, run.name).held_elsewhere():
            settled.append(Outcome(run.name, "running", "trains in another process (its lock is held)"))
        else:
            todo.append(run)
    return todo, settled


def run_grid(runs: Sequence[GridRun], out: str | Path, workers: int = 1, launcher: str = "local",
             slurm: Optional[dict] = None, wait: bool = True, report: Optional[Callable[[str], None]] = print
             ) -> GridReport:
    """Train `runs` into OUT/runs/NAME: `launcher` local (`workers` processes at a time), slurm (one
    submitit job array; `slurm` holds its resources: partition, timeout_min, gpus_per_node, ... any
    submitit parameter) or submitit-local (the same jobs through submitit's LocalExecutor).  With
    `wait` False a Slurm grid returns once submitted.  Finished runs are skipped; the others resume."""
    if launcher not in LAUNCHERS:
        raise PamcError(f"unknown launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    if int(workers) < 1:
        raise PamcError(f"--workers must be at least 1 (got {workers})")
    out = prepare(runs, out)
    todo, settled = pending(runs, out)
    grid = GridReport(out, list(settled))
    say = report or (lambda line: None)
    for o in settled:
        say(_line(o))
    if not todo:
        return grid
    say(f"pamc grid: {len(todo)} of {len(runs)} runs to train ({launcher}"
        + (f", {workers} worker{'s' if workers > 1 else ''}" if launcher == "local" else "") + f") into {out / RUNS}")
    if launcher == "local":
        grid.outcomes += _run_local(todo, out, int(workers), say)
    else:
        _run_submitit(todo, out, grid, slurm or {}, "local" if launcher == "submitit-local" else None, wait, say)
    return grid


def run_configs(configs: Mapping[str, object], out: str | Path, workers: int = 1,
                report: Optional[Callable[[str], None]] = print) -> dict[str, Outcome]:
    """Named runs (name -> `TrainConfig` or settings mapping) into OUT/runs/NAME with `workers`
    local processes, as `pamc grid` runs a spec: for programs that make their own list of runs
    (`pamc demo --grid`).  Returns each name's outcome; results are in each run's results.json."""
    from ..config import TrainConfig, make_config

    runs = [GridRun(name, (cfg if isinstance(cfg, TrainConfig) else make_config(
        {**TrainConfig().to_dict(), **dict(cfg)})).to_dict()) for name, cfg in configs.items()]
    grid = run_grid(runs, out, workers=workers, report=report)
    return {o.name: o for o in grid.outcomes}


def _line(o: Outcome) -> str:
    score = f"test mAP {o.test_map:.2f}" if o.test_map is not None else ""
    return f"  {o.name}: {o.state}" + "".join(f"  {t}" for t in (score, o.detail) if t)


def _worker(run: GridRun, out: str, threads: Optional[int], outcome) -> None:
    """One local worker process: train `run` and send its outcome back through the pipe `outcome`;
    exit 75 when preempted (the parent reads the rest from the run folder)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        outcome.send(train_run(run, Path(out)))
    except Preempted:
        raise SystemExit(EXIT_PREEMPTED)


def _run_local(runs: list[GridRun], out: Path, workers: int, say) -> list[Outcome]:
    """`workers` processes at a time, a new one per run, so that a run that crashes its process
    (out of memory, a segfault) costs only itself; they fork from a server process that imported
    the engine once (multiprocessing's forkserver), so a run does not pay torch's import again.  A
    stop signal goes on to the workers as SIGTERM (each writes its checkpoint); no new run starts,
    and GridStopped is raised at the end."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pamc.engine"])
    # each worker gets its share of the cores, unless OMP_NUM_THREADS says otherwise
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // workers)
    queue, active, outcomes, forwarded = list(runs), {}, [], False
    with StopRequest() as stop:
        while queue or active:
            while queue and len(active) < workers and not stop.requested:
                run = queue.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(run, str(out), threads, send), name=f"pamc-grid {run.name}")
                proc.start()
                send.close()  # the worker holds the sending end now
                active[proc.sentinel] = (proc, run, receive)
            if stop.requested and not forwarded:
                for proc, _, _ in active.values():
                    os.kill(proc.pid, signal.SIGTERM)
                forwarded = True
            if not active:
                break
            for sentinel in multiprocessing.connection.wait(list(active), timeout=0.5):
                proc, run, receive = active.pop(sentinel)
                proc.join()
                try:
                    outcome = receive.recv()
                except EOFError:  # it sent nothing: preempted, or the process died
                    outcome = _ended(run, out, proc.exitcode)
                receive.close()
                outcomes.append(outcome)
                say(_line(outcome))
    if stop.requested:
        raise GridStopped(f"stopped by {stop.name}: {sum(o.state == 'preempted' for o in outcomes)} run(s) preempted, "
                          f"{len(queue)} not started; rerun the same command to continue")
    return outcomes


def _ended(run: GridRun, out: Path, exitcode: Optional[int]) -> Outcome:
    """The outcome of a worker that sent none: preempted, or its process died."""
    status = run_folder(out, run.name).read_status() or {}
    if exitcode == EXIT_PREEMPTED:
        return Outcome(run.name, "preempted", status.get("reason", ""))
    if exitcode is not None and exitcode < 0:
        return Outcome(run.name, "failed", f"worker killed by {signal.Signals(-exitcode).name}")
    return Outcome(run.name, "failed", f"worker exited with status {exitcode}")


# ----------------------------------------------------------------------------- Slurm (submitit)


#: submitit's parameters that are not Slurm-specific (the others get its `slurm_` prefix)
GENERIC = {"timeout_min", "mem_gb", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "name",
           "stderr_to_stdout"}


def executor_parameters(slurm: dict) -> dict:
    """A spec's / the flags' resources as submitit.AutoExecutor parameters: `partition` ->
    `slurm_partition`, `array_parallelism` -> `slurm_array_parallelism`, generic ones as they are."""
    params = {"name": "pamc-grid", "timeout_min": 60, "tasks_per_node": 1, "nodes": 1}
    for key, value in slurm.items():
        key = str(key).replace("-", "_")
        params[key if key in GENERIC or key.startswith("slurm_") else f"slurm_{key}"] = value
    if params["nodes"] != 1 or params["tasks_per_node"] != 1:
        raise PamcError("a grid's job trains one run in one process (nodes 1, tasks_per_node 1); a run on "
                        "several GPUs or nodes is launched with srun + torchrun (docs/cluster.md)")
    return params


class SlurmRun:
    """A grid run as a submitit job: trains with `train_run`; a stop signal ends in a requeue.

    submitit requeues a job whose callable has `checkpoint()` when its warning signal (USR2 by
    default) arrives.  Here that signal first stops training the pamc way (a checkpoint at the next
    step), and so do SIGTERM / SIGUSR1; the job then calls submitit's handler, which resubmits this
    same call (`scontrol requeue` on Slurm), and the requeued job resumes from the checkpoint.
    A job cancelled by `scancel` (which sends SIGTERM too) is not requeued: its run stays preempted."""

    def __call__(self, run: GridRun, out: str) -> Outcome:
        from submitit import JobEnvironment

        usr = JobEnvironment._usr_sig()
        requeue = signal.getsignal(usr)  # submitit's: checkpoint (below), requeue, exit

        def stop_first(signum, frame):
            current = signal.getsignal(signal.SIGUSR1)
            if isinstance(getattr(current, "__self__", None), StopRequest):  # training: stop at the next step
                current(signal.SIGUSR1, frame)
            elif callable(requeue):
                requeue(signum, frame)

        if usr != signal.SIGUSR1 and callable(requeue):
            signal.signal(usr, stop_first)
        try:
            return train_run(run, Path(out))
        except Preempted as exc:
            if not callable(requeue):
                raise
            if _cancelled(JobEnvironment().job_id):
                return Outcome(run.name, "preempted", f"job cancelled ({exc.signal_name}); rerun the grid to resume")
            requeue(getattr(signal, exc.signal_name, usr), None)  # exits (SystemExit) once the job is requeued
            raise

    def checkpoint(self, *args, **kwargs):
        """The resubmission: the same run; its run folder holds the state it resumes from."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _cancelled(job_id: str) -> bool:
    """Whether Slurm is ending this job (`scancel`: state COMPLETING or CANCELLED), as opposed to a
    signal to a running job (`--signal`, `scancel --signal`); Slurm would requeue an ending job too."""
    import shutil
    import subprocess

    if not shutil.which("scontrol"):
        return False  # submitit's LocalExecutor: no Slurm
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    state = re.search(r"JobState=(\w+)", shown.stdout)
    return state is not None and state.group(1) in ("COMPLETING", "CANCELLED")


def _run_submitit(runs: list[GridRun], out: Path, grid: GridReport, slurm: dict, cluster: Optional[str],
                  wait: bool, say) -> None:
    try:
        import submitit
    except ImportError:
        raise PamcError("--launcher slurm submits through submitit: pip install 'pamc[slurm]'") from None
    executor = submitit.AutoExecutor(folder=out / SLURM_LOGS / "%j", cluster=cluster)
    params = executor_parameters(slurm)
    if cluster == "local":  # submitit's LocalExecutor knows only the generic parameters
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as exc:
        raise PamcError(f"Slurm resources: {str(exc).splitlines()[0]}") from None
    if cluster is None and executor.cluster != "slurm":
        raise PamcError("--launcher slurm found no Slurm here (no sbatch on PATH); use --launcher local")
    with executor.batch():
        jobs = [executor.submit(SlurmRun(), run, str(out)) for run in runs]
    grid.jobs = [job.job_id for job in jobs]
    say(f"pamc grid: submitted {len(jobs)} job(s) ({jobs[0].job_id.split('_')[0]}{'' if len(jobs) == 1 else '_*'}); "
        f"logs in {out / SLURM_LOGS}; follow with: pamc grid status {out}")
    if not wait:
        return
    for outcome in _wait(jobs, runs, slurm=cluster is None):
        grid.outcomes.append(outcome)
        say(_line(outcome))


def _wait(jobs, runs: list[GridRun], slurm: bool, poll_s: float = 1.0):
    """Each job's outcome as it ends.  A job has ended when its result file exists, or, on Slurm,
    when squeue no longer lists it (read before the file, so no result can fall between the two):
    submitit's own wait asks sacct, which a cluster without an accounting database lacks."""
    import subprocess

    left = dict(zip(jobs, runs))
    while left:
        queued = None
        if slurm:
            listing = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
            queued = set(listing.stdout.split()) if listing.returncode == 0 else None
        for job, run in list(left.items()):
            has_result = job.paths.result_pickle.exists()
            gone = (queued is not None and job.job_id not in queued) if slurm else job.done()
            if not (has_result or gone):
                continue
            del left[job]
            if not has_result and not job.paths.result_pickle.exists():
                yield Outcome(run.name, "failed", f"job {job.job_id} ended without a result; see {job.paths.stderr}")
                continue
            try:
                yield job.result()
            except Exception as exc:  # the callable raised (it records failures itself: rare)
                yield Outcome(run.name, "failed", f"job {job.job_id}: {str(exc).strip().splitlines()[-1][:300]}")
        if left:
            time.sleep(poll_s)


# ----------------------------------------------------------------------------- status


@dataclass
class RunState:
    """One run as `pamc grid status` shows it."""

    name: str
    state: str  # pending | running | finished | preempted | failed | interrupted
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    test_map: Optional[float] = None
    reason: str = ""


def grid_status(out: str | Path) -> list[RunState]:
    """Every run of the grid in OUT (OUT/grid.json), read from its status.json and results.json.
    A run whose status says running but whose lock nobody holds was killed outright: interrupted."""
    out = Path(out)
    index = out / INDEX
    if not index.is_file():
        raise PamcError(f"{out} holds no {INDEX}; pass the --out folder of a `pamc grid` run")
    try:
        runs = json.loads(index.read_text())["runs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise PamcError(f"{index} is unreadable; rerun `pamc grid SPEC --out {out}` to rewrite it") from None
    states = []
    for name, settings in runs.items():
        folder = run_folder(out, name)
        status = folder.read_status()
        epochs = settings.get("epochs")
        if status is None:
            states.append(RunState(name, "pending", epochs=epochs))
            continue
        state = RunState(name, status.get("status", "?"), status.get("epoch"), epochs, reason=status.get("reason", ""))
        if state.state == "finished":
            state.test_map = (_finished(folder) or {}).get("test_map")
        elif state.state == "running" and not RunLock(out, name).held_elsewhere():
            state.state = "interrupted"
            state.reason = f"killed without a checkpoint write (last update {status.get('updated', '?')}); rerun to resume"
        if state.state == "running" and status.get("step"):
            state.reason = f"step {status['step']} of epoch {status.get('epoch')}"
        states.append(state)
    return states


STATE_ORDER = ("finished", "running", "preempted", "failed", "interrupted", "pending")


def render_status(states: Sequence[RunState]) -> str:
    """Counts on top, then one line per run: name, state, epoch, test mAP, reason."""
    counts = {s: sum(r.state == s for r in states) for s in STATE_ORDER}
    lines = [f"{len(states)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    width = max((len(r.name) for r in states), default=0)
    for r in states:
        epoch = f"epoch {r.epoch if r.epoch is not None else '-'}/{r.epochs}"
        score = f"test mAP {r.test_map:6.2f}" if r.test_map is not None else " " * 15
        lines.append(f"{r.name:{width}s}  {r.state:11s}  {epoch:11s}  {score}  {r.reason}".rstrip())
    return "\n".join(lines) + "\n"


def spec_slurm(spec: dict) -> dict:
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise PamcError("grid spec: slurm must map a resource to its value ({partition: gpu, timeout_min: 240})")
    return dict(slurm)

