"""Reviewing suggested labels: the review page, and merging the decisions into a new label file.

The page is the explanation viewer (`pamc.explain.viewer`) on the suggested images, one row per
suggested class, with a ``review`` block: accept / reject from the keyboard, a class filter, and
an export of the decisions as CSV (columns `DECISION_COLUMNS`).

Merging (`merge_decisions`) never changes the user's files: it writes a **new** label file (the
format of its suffix, .csv or .jsonl, as `pamc.data.sources.own` reads them) with every accepted
pair as an observed positive (and, on request, every rejected one as an observed negative), and
beside it ``NEW.provenance.json``: per changed label, which run suggested it and when, who
accepted it and when, from which decisions file.  Every image and class of the decisions is
checked first; an unknown one is a one-line error and nothing is written.  Both files are written
atomically (`pamc.files`), the provenance first, so a label file never exists without it.
"""
from __future__ import annotations

import csv
import datetime
import getpass
import hashlib
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import PamcError

DECISION_COLUMNS = ["image", "class", "decision", "score", "rank", "split", "index", "run", "suggested_at",
                    "reviewer", "decided_at"]
DECISIONS = ("accept", "reject")


def review_data(checkpoint, suggestions: Sequence[dict], data: Optional[dict] = None, count: int = 100,
                device: str = "auto") -> dict:
    """The viewer's data for the first `count` suggestions (rows of `pamc.suggest.Suggestions`)."""
    from .checkpoint import read_meta, resolve_checkpoint
    from .explain.viewer import view_data
    from .inference import load_split

    if int(count) < 1:
        raise PamcError(f"--review-count must be >= 1 (got {count})")
    chosen = list(suggestions)[:int(count)]
    if not chosen:
        raise PamcError("there are no suggestions to review (every label is observed)")
    folder = resolve_checkpoint(checkpoint)
    meta = read_meta(folder)
    lookup = {name: c for c, name in enumerate(meta.class_names or [f"class_{c}" for c in range(meta.num_classes)])}
    by_split: dict[str, dict[int, list[int]]] = {}
    for s in chosen:  # image positions per split, in order of first suggestion
        by_split.setdefault(s["split"], {}).setdefault(int(s["index"]), []).append(lookup[s["class"]])
    data_out, offset, place = None, 0, {}
    for split, images in by_split.items():
        part = load_split(split, data, str(folder))
        rows = [list(dict.fromkeys(cs)) for cs in images.values()]
        page = view_data([folder], part, labels=["suggesting model"], split_name=split, device=device,
                         indices=list(images), rows_per_image=rows, max_images=len(part),
                         title=f"Suggested labels from {folder}")
        for position, (index, classes) in enumerate(zip(images, rows)):
            for k, c in enumerate(classes):
                place[(split, index, c)] = (offset + position, k)
        if data_out is None:
            data_out = page
        else:
            data_out["images"] += page["images"]
            data_out["source"] += "; " + page["source"]
        offset += len(images)
    items = []
    for s in chosen:
        c = lookup[s["class"]]
        image, row = place[(s["split"], int(s["index"]), c)]
        items.append({"image": image, "row": row, "class": c, "name": s["image"], "score": s["score"],
                      "rank": s["rank"], "split": s["split"], "index": int(s["index"]),
                      "peak": [float(s["peak_x"]), float(s["peak_y"])]})
    data_out["review"] = {"run": str(folder), "suggested_at": chosen[0]["suggested_at"], "items": items}
    return data_out


def write_review(checkpoint, suggestions: Sequence[dict], out: str | Path, **options) -> Path:
    """Write the review page (one offline HTML file) for `suggestions`; `options`: `review_data`."""
    from .explain.viewer import render_page
    from .files import write_text

    write_text(out, render_page(review_data(checkpoint, suggestions, **options)))
    return Path(out)


def read_decisions(path: str | Path) -> list[dict]:
    """The rows of a decisions CSV (the review page's export); each needs image, class, decision."""
    path = Path(path)
    if not path.is_file():
        raise PamcError(f"decisions file {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    missing = {"image", "class", "decision"} - set(rows[0] if rows else ())
    if missing:
        raise PamcError(f"{path}: the header needs the columns image, class, decision (missing {', '.join(sorted(missing))})")
    for line, row in enumerate(rows, 2):
        if row["decision"] not in DECISIONS:
            raise PamcError(f"{path}:{line}: decision {row['decision']!r} is not accept or reject")
    return rows


def _few(items) -> str:
    items = sorted(items)
    return ", ".join(repr(i) for i in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def merge_decisions(labels: str | Path, decisions: str | Path, out: str | Path, by: Optional[str] = None,
                    reject_as_negative: bool = False) -> dict:
    """Write a new label file `out`: `labels` with the accepted pairs of `decisions` as observed
    positives (and, with `reject_as_negative`, the rejected ones as observed negatives), plus
    ``out.provenance.json``.  Returns a summary {"accepted", "already", "rejected", "written"}."""
    from .data.sources.own import FORMATS, read_table
    from .files import write_json, write_text

    labels, decisions, out = Path(labels), Path(decisions), Path(out)
    if out.suffix.lower() not in FORMATS:
        raise PamcError(f"--out {out}: label files are .csv or .jsonl")
    if out.resolve() == labels.resolve():
        raise PamcError(f"--out {out} is the original label file; pamc writes a new file and keeps the original")
    paths, names, matrix = read_table(labels)
    rows = read_decisions(decisions)
    row_of = {p: i for i, p in enumerate(paths)}
    col_of = {n: c for c, n in enumerate(names)}
    unknown_images = {r["image"] for r in rows} - set(row_of)
    if unknown_images:
        raise PamcError(f"{decisions}: {len(unknown_images)} image(s) not in {labels}: {_few(unknown_images)}")
    unknown_classes = {r["class"] for r in rows} - set(col_of)
    if unknown_classes:
        raise PamcError(f"{decisions}: unknown class(es) {_few(unknown_classes)}; {labels} has {', '.join(names)}")
    final: dict[tuple[str, str], dict] = {}
    for r in rows:  # the last decision on a pair wins (a reviewer changing their mind)
        final[(r["image"], r["class"])] = r
    merged = matrix.copy()
    reviewer = by or getpass.getuser()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    changes, already = [], 0
    for (image, name), r in final.items():
        value = 1.0 if r["decision"] == "accept" else (-1.0 if reject_as_negative else None)
        if value is None:
            continue
        i, c = row_of[image], col_of[name]
        if merged[i, c] == value:
            already += 1
            continue
        changes.append({"image": image, "class": name, "label": int(value), "was": int(merged[i, c]),
                        "decision": r["decision"], "run": r.get("run") or None,
                        "suggested_at": r.get("suggested_at") or None, "score": r.get("score") or None,
                        "reviewer": r.get("reviewer") or reviewer, "decided_at": r.get("decided_at") or now})
        merged[i, c] = value
    provenance = {"format": "pamc-label-provenance/1", "labels": str(out), "original": str(labels),
                  "original_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(), "decisions": str(decisions),
                  "merged_by": reviewer, "merged_at": now, "changes": changes}
    text = _table_text(out.suffix.lower(), paths, names, merged)
    write_json(f"{out}.provenance.json", provenance)
    write_text(out, text)
    accepted = sum(1 for ch in changes if ch["label"] == 1)
    return {"accepted": accepted, "negatives": len(changes) - accepted, "already": already,
            "rejected": sum(1 for r in final.values() if r["decision"] == "reject"), "written": str(out)}


def _table_text(suffix: str, paths: list[str], names: list[str], matrix: np.ndarray) -> str:
    """A label table in pamc's own format: 1 positive, 0 negative, empty / absent unobserved."""
    cell = {1.0: "1", -1.0: "0", 0.0: ""}
    if suffix == ".csv":
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["image", *names])
        for p, row in zip(paths, matrix):
            w.writerow([p, *(cell[float(v)] for v in row)])
        return text.getvalue()
    return "".join(json.dumps({"image": p, "labels": {n: int(v > 0) for n, v in zip(names, row) if v != 0}}) + "\n"
                   for p, row in zip(paths, matrix))
