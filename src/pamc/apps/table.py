"""`pamc table`: the paper-style table of many runs.

    pamc table runs/                      # every run folder under runs/ (searched recursively)
    pamc table 'runs/*/seed-*' --format markdown --metric val_map

One row per method (BoostLU variants as their own rows: `LL-R + BoostLU` when trained with
alpha > 1, `AN + BoostLU (inference only)` when only evaluated with it), one column per dataset,
each cell the mean +- sample standard deviation over the runs (seeds) and their number n; the best
cell of each column is bold; where the runs follow a preset that reproduces a published cell
(`pamc.published`), the published number and the difference are printed beside it.

Nothing is dropped silently: runs that failed, were preempted, are still running or never
finished are listed under the table with their folder, status and reason (status.json); cells
whose runs differ in a setting (other than the seed and where/how they ran: `TrainConfig.incidental_settings`) are
flagged with the keys that differ, and so are cells with a seed twice and runs that changed their
preset's settings (those get no published comparison).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..checkpoint import RunFolder
from ..errors import PamcError
from ..published import DATASET_NAMES, METHODS, Published, published_cell, row_label

FORMATS = ("terminal", "markdown", "csv", "latex")

@dataclass
class RunRecord:
    """One run folder as the table reads it."""

    folder: Path
    status: str  # finished | running | failed | preempted | unfinished | unreadable
    reason: str = ""
    config: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    value: Optional[float] = None
    row: str = ""
    dataset: str = ""

    @property
    def seed(self):
        return self.results.get("seed", self.config.get("seed"))


@dataclass
class Cell:
    row: str
    dataset: str
    runs: list[RunRecord]
    published: Optional[Published] = None
    notes: list[str] = field(default_factory=list)
    best: bool = False

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def diff(self) -> Optional[float]:
        return None if self.published is None else self.mean - self.published.value


@dataclass
class Table:
    metric: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    problems: list[RunRecord]

    @property
    def notes(self) -> list[tuple[int, Cell, str]]:
        """(number, cell, text) of every flagged cell, numbered in table order."""
        out = []
        for row in self.rows:
            for col in self.columns:
                cell = self.cells.get((row, col))
                for text in cell.notes if cell else ():
                    out.append((len(out) + 1, cell, text))
        return out


# ----------------------------------------------------------------------------- finding and reading runs


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders named by `paths`: run folders themselves, folders searched recursively for run
    folders, or glob patterns (quoted, so that pamc expands them; ** recurses)."""
    found: list[Path] = []
    for item in paths:
        text = str(item)
        matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        matches = [Path(m) for m in matches if Path(m).is_dir()]
        if not matches:
            raise PamcError(f"{text}: no such folder (pass run folders, folders holding runs, or a quoted glob)")
        for path in matches:
            found.extend(_walk(path))
    unique, seen = [], set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _walk(path: Path) -> list[Path]:
    if RunFolder(path).is_run_folder():
        return [path]  # a run's own subfolders (best/, last/, tensorboard/) hold no runs
    out = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            out.extend(_walk(child))
    return out


def flatten(values: dict, prefix: str = "") -> dict:
    """{data: {name: x}} -> {data.name: x}; lists become tuples so that values can be counted."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def settings(config: dict) -> dict:
    """The settings that define what a run computes: flattened, defaults filled, the incidental ones
    (`TrainConfig.incidental_settings`) left out."""
    from ..config import TrainConfig

    incidental = TrainConfig.incidental_settings()
    return {k: v for k, v in flatten({**TrainConfig().to_dict(), **config}).items() if k not in incidental}


def _dataset_of(config: dict) -> str:
    data = config.get("data") or {}
    if data.get("name") == "scenes":
        return f"scenes-{data.get('source', 'digits')}"
    if data.get("name") == "prepared" and data.get("path"):
        return Path(str(data["path"])).name
    return str(data.get("name", "?"))


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_run(path: str | Path, metric: str = "test_map") -> RunRecord:
    folder = RunFolder(path)
    record = RunRecord(Path(path), "unreadable")
    try:
        record.config = folder.read_config() if folder.config.is_file() else {}
    except PamcError as exc:
        record.reason = str(exc)
        return record
    status = folder.read_status() or {}
    if folder.results.is_file():
        try:
            record.results = folder.read_results()
        except (OSError, json.JSONDecodeError) as exc:
            record.reason = f"results.json is unreadable ({exc.__class__.__name__})"
            return record
    cfg, res = record.config, record.results
    ran = res.get("runtime") or {}
    if cfg.get("amp", "auto") == "auto" and "amp" in ran:  # auto differs between machines: what the run used
        record.config = cfg = {**cfg, "amp": ran["amp"]}
    record.dataset = str(res.get("dataset") or _dataset_of(cfg))
    record.row = row_label(res.get("method", cfg.get("method", "?")), res.get("train_alpha", cfg.get("alpha", 1.0)),
                           res.get("eval_alpha", cfg.get("eval_alpha")), bool(cfg.get("linear_init")),
                           cfg.get("activation"))
    if cfg.get("freeze_backbone"):  # the linear protocol: only the head was trained
        record.row += " [frozen backbone]"
    extra = res.get("extra_resources")
    if extra:  # trained with more than the images and labels (a frozen vision-language scorer)
        record.row += f" [uses {extra.get('short', 'extra')}]"
    state = status.get("status")
    where = ", ".join(f"{k} {status[k]}" for k in ("epoch", "step") if status.get(k) is not None)
    if state == "running":
        record.status = "running"
        record.reason = (f"since {status.get('started', '?')}, last update {status.get('updated', '?')}"
                         + (f" ({where})" if where else "") + "; a run killed outright stays 'running'")
    elif state in ("failed", "preempted"):
        record.status = state
        record.reason = status.get("reason", "")
        if state == "preempted":
            record.reason += f"{'; ' if record.reason else ''}continue with: pamc train --resume {path}"
    elif res:
        flat = flatten(res)  # nested results by dotted key: test_metrics.OF1
        value = _number(flat.get(metric))
        if value is None or not math.isfinite(value):
            numeric = sorted(k for k, v in flat.items() if _number(v) is not None)
            record.status = "finished"
            record.reason = (f"results.json has no numeric {metric!r} (numeric keys: {', '.join(numeric)})"
                             if value is None else f"{metric} is {value}")
        else:
            record.status, record.value = "finished", value
    else:
        epochs = len(folder.read_metrics()) if folder.metrics.is_file() else 0
        record.status = "unfinished"
        record.reason = (("status.json says finished, but" if state == "finished" else "no status.json and")
                         + f" no results.json; {epochs} of {cfg.get('epochs', '?')} epochs logged")
    return record


# ----------------------------------------------------------------------------- the table


def _row_key(label: str) -> tuple:
    names = list(METHODS.values())
    base = label.split(" + ")[0]
    index = names.index(base) if base in names else len(names)
    return (index, base if index == len(names) else "", " + LI" in label, "BoostLU" in label,
            "inference only" in label, label)


def _column_key(name: str) -> tuple:
    order = list(DATASET_NAMES)
    return (order.index(name), "") if name in order else (len(order), name)


def _differences(runs: list[RunRecord]) -> dict[str, list]:
    flat = [settings(r.config) for r in runs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k, "<unset>") for f in flat] for k in keys if len({repr(f.get(k, "<unset>")) for f in flat}) > 1}


def _describe(values: list) -> str:
    counts: dict[str, int] = {}
    for v in values:
        text = "none" if v is None else (list(v).__repr__() if isinstance(v, tuple) else f"{v}")
        counts[text] = counts.get(text, 0) + 1
    return ", ".join(f"{text} in {n}" for text, n in counts.items())


def _preset_check(cell: Cell) -> None:
    """The published cell, where every run follows one preset that reproduces one (else a note)."""
    from ..config import resolve

    presets = {r.config.get("preset") for r in cell.runs}
    if len(presets) != 1 or None in presets:
        return
    preset = presets.pop()
    published = published_cell(preset)
    if published is None:
        return
    try:
        expected = settings(resolve(preset=preset).to_dict())
    except PamcError:
        cell.notes.append(f"preset {preset} is unknown to this pamc; no published comparison")
        return
    differ = sorted({k for r in cell.runs for k, v in settings(r.config).items() if expected.get(k, "<unset>") != v}
                    | {k for r in cell.runs for k in set(expected) - set(settings(r.config))})
    if differ:
        cell.notes.append(f"the runs started from preset {preset} but changed {', '.join(differ)}; "
                          f"not compared with the published {published.text}")
        return
    cell.published = published


def build_table(records: Sequence[RunRecord], metric: str = "test_map", best: str = "max") -> Table:
    if best not in ("max", "min", "none"):
        raise PamcError(f"best must be max, min or none (got {best!r})")
    good = [r for r in records if r.status == "finished" and r.value is not None]
    problems = [r for r in records if r not in good]
    cells: dict[tuple[str, str], Cell] = {}
    for r in good:
        cells.setdefault((r.row, r.dataset), Cell(r.row, r.dataset, [])).runs.append(r)
    for cell in cells.values():
        differ = _differences(cell.runs)
        if differ:
            cell.notes.append("settings differ between the runs: "
                              + "; ".join(f"{k} ({_describe(v)})" for k, v in differ.items()))
        seeds: dict = {}
        for r in cell.runs:
            seeds.setdefault(r.seed, []).append(str(r.folder))
        for seed, folders in seeds.items():
            if len(folders) > 1:
                cell.notes.append(f"seed {seed} appears {len(folders)} times ({', '.join(folders)})")
        _preset_check(cell)
    rows = sorted({row for row, _ in cells}, key=_row_key)
    columns = sorted({col for _, col in cells}, key=_column_key)
    if best != "none":
        pick = max if best == "max" else min
        for col in columns:
            column = [c for (_, cc), c in cells.items() if cc == col]
            top = pick(c.mean for c in column)
            for c in column:
                c.best = c.mean == top
    return Table(metric, rows, columns, cells, problems)


def collect(paths: Sequence[str | Path], metric: str = "test_map", best: str = "max") -> Table:
    folders = find_runs(paths)
    if not folders:
        raise PamcError(f"no run folders (with a config.yaml or status.json) under {', '.join(map(str, paths))}")
    return build_table([read_run(f, metric) for f in folders], metric, best)


# ----------------------------------------------------------------------------- output


def column_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _cell_parts(cell: Cell, pm: str) -> tuple[str, str]:
    """(the number -- what is bold, the rest: n, published and difference)."""
    number = f"{cell.mean:.2f}" + (f" {pm} {cell.std:.2f}" if cell.std is not None else "")
    rest = f" (n={cell.n})"
    if cell.published is not None:
        rest += f", paper {_published_text(cell.published)} ({cell.diff:+.2f})"
    return number, rest


def _published_text(published: Published) -> str:
    """The published number, starred where it used an extra resource (a frozen CLIP)."""
    return published.text + ("*" if published.extra else "")


def _note_marks(table: Table, cell: Cell) -> str:
    numbers = [n for n, c, _ in table.notes if c is cell]
    return "".join(f" [{n}]" for n in numbers)


def _caption(table: Table, bold: str) -> str:
    text = f"{table.metric}: mean ± sample std over seeds (n = number of runs); best per column {bold}"
    if any(c.published is not None for c in table.cells.values()):
        text += "; 'paper X (+d)' = the published cell that the runs' preset reproduces, and the difference"
    if any("[uses " in row for row in table.rows):
        text += "; '[uses X]' = trained with an extra resource X (a frozen vision-language scorer's pseudo-labels)"
    if any(c.published is not None and c.published.extra for c in table.cells.values()):
        text += "; 'paper X*' = a published number that used a frozen CLIP"
    return text


def render(table: Table, fmt: str = "terminal", color: bool = False, unicode: bool = True) -> str:
    """The table as text: terminal (aligned columns; bold through ANSI when `color`, else **x**),
    markdown, csv (one row per cell, then one per run not in the table) or latex (booktabs)."""
    if fmt not in FORMATS:
        raise PamcError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    return {"terminal": _terminal, "markdown": _markdown, "csv": _csv, "latex": _latex}[fmt](table, color, unicode)


def _grid(table: Table, bold, pm: str) -> list[list[str]]:
    lines = [["method"] + [column_name(c) for c in table.columns]]
    for row in table.rows:
        line = [row]
        for col in table.columns:
            cell = table.cells.get((row, col))
            if cell is None:
                line.append("-")
                continue
            number, rest = _cell_parts(cell, pm)
            line.append((bold(number) if cell.best else number) + rest + _note_marks(table, cell))
        lines.append(line)
    return lines


def _footer(table: Table, bullet: str = "  ") -> list[str]:
    out = []
    if table.notes:
        out += ["", "Notes:"] + [f"{bullet}[{n}] {c.row}, {column_name(c.dataset)}: {text}" for n, c, text in table.notes]
    if table.problems:
        out += ["", f"Not in the table ({len(table.problems)} run{'s' if len(table.problems) != 1 else ''}):"]
        width = max(len(str(r.folder)) for r in table.problems)
        out += [f"{bullet}{str(r.folder):{width}s}  {r.status:10s}  {r.reason}" for r in table.problems]
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _terminal(table: Table, color: bool, unicode: bool) -> str:
    pm = "±" if unicode else "+-"
    bold = (lambda s: f"\x1b[1m{s}\x1b[0m") if color else (lambda s: f"**{s}**")
    grid = _grid(table, bold, pm)
    widths = [max(len(_ANSI.sub("", line[i])) for line in grid) for i in range(len(grid[0]))]

    def fmt(line):
        return "  ".join(text + " " * (w - len(_ANSI.sub("", text))) for text, w in zip(line, widths)).rstrip()

    caption = _caption(table, "in bold" if color else "in **bold**")
    out = [caption if unicode else caption.replace("±", "+-"), "", fmt(grid[0]),
           "  ".join("-" * w for w in widths)] + [fmt(line) for line in grid[1:]]
    return "\n".join(out + _footer(table)) + "\n"


def _markdown(table: Table, color: bool, unicode: bool) -> str:
    grid = _grid(table, lambda s: f"**{s}**", "±")
    out = [_caption(table, "in **bold**"), "", "| " + " | ".join(grid[0]) + " |",
           "|---|" + "---:|" * len(table.columns)] + ["| " + " | ".join(line) + " |" for line in grid[1:]]
    if table.notes:
        out += ["", "Notes:", ""] + [f"{n}. {c.row}, {column_name(c.dataset)}: {text}" for n, c, text in table.notes]
    if table.problems:
        out += ["", "Runs not in the table:", "", "| run folder | status | reason |", "|---|---|---|"]
        out += [f"| {r.folder} | {r.status} | {r.reason.replace('|', '/')} |" for r in table.problems]
    return "\n".join(out) + "\n"


def _csv(table: Table, color: bool, unicode: bool) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["method", "dataset", "metric", "mean", "std", "n", "seeds", "best", "published", "diff",
                     "status", "folder", "note"])
    notes = {id(c): [t for _, cc, t in table.notes if cc is c] for c in table.cells.values()}
    for row in table.rows:
        for col in table.columns:
            cell = table.cells.get((row, col))
            if cell is None:
                continue
            writer.writerow([row, col, table.metric, repr(cell.mean), "" if cell.std is None else repr(cell.std), cell.n,
                             " ".join(str(r.seed) for r in cell.runs), int(cell.best),
                             _published_text(cell.published) if cell.published else "",
                             "" if cell.diff is None else repr(cell.diff), "ok",
                             " ".join(str(r.folder) for r in cell.runs), "; ".join(notes[id(cell)])])
    for r in table.problems:
        writer.writerow([r.row, r.dataset, table.metric, "", "", "", "" if r.seed is None else r.seed, "", "", "",
                         r.status, str(r.folder), r.reason])
    return text.getvalue()


def _tex(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")


def _latex(table: Table, color: bool, unicode: bool) -> str:
    out = [f"% {_caption(table, 'in bold')}", r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
           " & ".join(["Method"] + [_tex(column_name(c)) for c in table.columns]) + r" \\", r"\midrule"]
    for row in table.rows:
        line = [_tex(row)]
        for col in table.columns:
            cell = table.cells.get((row, col))
            if cell is None:
                line.append("--")
                continue
            number = f"{cell.mean:.2f}" + (rf" $\pm$ {cell.std:.2f}" if cell.std is not None else "")
            text = (rf"\textbf{{{number}}}" if cell.best else number) + rf" \scriptsize{{({cell.n})}}"
            if cell.published is not None:
                text += rf" \scriptsize{{[{_published_text(cell.published)}, {cell.diff:+.2f}]}}"
            marks = _note_marks(table, cell).strip().replace(" ", "")
            line.append(text + (rf"$^{{{marks}}}$" if marks else ""))
        out.append(" & ".join(line) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [f"% {line}" for line in _footer(table) if line]
    return "\n".join(out) + "\n"
