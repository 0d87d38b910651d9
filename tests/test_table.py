"""`pamc table`: mean / std / n per method and dataset, bold best, published numbers and their
difference, failed / unfinished / mismatched runs shown, every output format; run folders are
written here by hand (config.yaml, results.json, status.json), plus one real `--seeds` sweep."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import statistics

import pytest
import yaml

from pamc.checkpoint import RunFolder
from pamc.apps.cli import main
from pamc.config import TrainConfig, preset_files, resolve
from pamc.errors import PamcError
from pamc.published import PUBLISHED, fill_description, published_cell, row_label
from pamc.apps.table import build_table, collect, find_runs, read_run, render


def fake_run(folder, preset=None, seed=0, value=None, status=None, reason=None, **settings):
    """A run folder as `pamc train` leaves it: config.yaml; results.json when `value` is given."""
    run = RunFolder(folder)
    run.path.mkdir(parents=True)
    cfg = resolve(preset=preset).to_dict() if preset else TrainConfig().to_dict()
    cfg.update(settings, seed=seed, out=str(folder))
    run.write_config(cfg)
    if value is not None:
        name = cfg["data"]["path"].split("/")[-1] if cfg["data"]["name"] == "prepared" else "scenes-digits"
        run.write_results({"method": cfg["method"], "train_alpha": cfg["alpha"],
                           "eval_alpha": cfg["eval_alpha"] if cfg["eval_alpha"] is not None else cfg["alpha"],
                           "test_map": value, "val_map": value + 1.0, "best_epoch": 3, "epochs": cfg["epochs"],
                           "seed": seed, "dataset": name, "test_metrics": {"OF1": value / 2}})
    if status:
        run.write_status(status, reason=reason, epoch=2)
    elif value is not None:
        run.write_status("finished")
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, value in enumerate([72.0, 73.0, 74.0]):
        fake_run(root / "coco-ll-r-boostlu" / f"seed-{seed}", "coco-ll-r-boostlu", seed, value)
    for seed, value in enumerate([70.0, 71.0]):
        fake_run(root / "coco-ll-r" / f"seed-{seed}", "coco-ll-r", seed, value, compile="default", num_workers=1)
    fake_run(root / "voc-an-infer" / "seed-0", "voc-an", 0, 86.0, eval_alpha=5.0)
    fake_run(root / "voc-ll-r" / "seed-0", "voc-ll-r", 0, 88.0)
    fake_run(root / "voc-ll-r" / "seed-1", "voc-ll-r", 1, 89.0, lr=2e-5)
    fake_run(root / "voc-ll-r-fast" / "seed-0", "voc-ll-r-boostlu-fast", 0, 89.5, data={"name": "prepared",
             "path": "/scratch/voc", "cache": "/scratch/voc/cache"})
    fake_run(root / "dup-a", "coco-an", 0, 65.0)
    fake_run(root / "dup-b", "coco-an", 0, 66.0)
    fake_run(root / "coco-ll-ct" / "seed-0", "coco-ll-ct", 0, status="failed",
             reason="NonFiniteLoss: the loss became nan in epoch 2 (step 20)")
    fake_run(root / "coco-ll-ct" / "seed-1", "coco-ll-ct", 1, status="running")
    fake_run(root / "coco-ll-ct" / "seed-2", "coco-ll-ct", 2, status="preempted", reason="stopped by SIGTERM")
    fake_run(root / "coco-ll-ct" / "seed-3", "coco-ll-ct", 3)  # killed before a status.json existed
    (root / "notes").mkdir()  # not a run: skipped
    return root


def test_cells_mean_std_n_and_best(runs):
    table = collect([runs])
    assert table.columns == ["voc", "coco"]
    assert table.rows == ["AN", "AN + BoostLU (inference only)", "LL-R", "LL-R + BoostLU"]
    cell = table.cells[("LL-R + BoostLU", "coco")]
    assert (cell.n, cell.mean, cell.std) == (3, 73.0, 1.0) and cell.best
    other = table.cells[("LL-R", "coco")]
    assert other.mean == 70.5 and other.std == pytest.approx(statistics.stdev([70, 71])) and not other.best
    assert table.cells[("AN + BoostLU (inference only)", "voc")].std is None  # one run
    voc_best = [c for (_, col), c in table.cells.items() if col == "voc" and c.best]
    assert [c.row for c in voc_best] == ["LL-R + BoostLU"]  # the fast preset's 89.5


def test_published_numbers_and_differences(runs):
    table = collect([runs])
    cell = table.cells[("LL-R + BoostLU", "coco")]
    assert cell.published.text == "72.89" and cell.diff == pytest.approx(73.0 - 72.89)
    # compile and num_workers change nothing: still the preset's protocol
    assert table.cells[("LL-R", "coco")].published.text == "70.70"
    # a -fast preset keeps the paper's protocol, and moving the data elsewhere changes nothing
    assert table.cells[("LL-R + BoostLU", "voc")].published.text == "89.29"
    # the inference-only run changed its preset's eval_alpha: no comparison, a note
    infer = table.cells[("AN + BoostLU (inference only)", "voc")]
    assert infer.published is None and any("changed eval_alpha" in n for n in infer.notes)


def test_mismatched_and_duplicate_runs_are_flagged(runs):
    table = collect([runs])
    notes = {(c.row, c.dataset): text for _, c, text in table.notes}
    ll_r = [t for _, c, t in table.notes if (c.row, c.dataset) == ("LL-R", "voc")]
    assert any(t.startswith("settings differ between the runs: lr (1e-05 in 1, 2e-05 in 1)") for t in ll_r)
    assert table.cells[("LL-R", "voc")].published is None  # one run changed the preset's lr
    assert "seed 0 appears 2 times" in notes[("AN", "coco")]
    assert ("LL-R", "coco") not in notes  # compile / num_workers are not settings of the method


def test_failed_and_unfinished_runs_are_listed(runs):
    table = collect([runs])
    problems = {str(r.folder.relative_to(runs)): (r.status, r.reason) for r in table.problems}
    assert problems["coco-ll-ct/seed-0"] == ("failed", "NonFiniteLoss: the loss became nan in epoch 2 (step 20)")
    assert problems["coco-ll-ct/seed-1"][0] == "running" and "epoch 2" in problems["coco-ll-ct/seed-1"][1]
    assert problems["coco-ll-ct/seed-2"][0] == "preempted"
    assert "pamc train --resume" in problems["coco-ll-ct/seed-2"][1]
    assert problems["coco-ll-ct/seed-3"] == ("unfinished", "no status.json and no results.json; 0 of 10 epochs logged")
    text = render(table, "terminal")
    assert "Not in the table (4 runs):" in text and "NonFiniteLoss" in text


def test_markdown(runs):
    text = render(collect([runs / "coco-ll-r-boostlu", runs / "coco-ll-r"]), "markdown")
    assert text.splitlines()[2:6] == [
        "| method | COCO |",
        "|---|---:|",
        "| LL-R | 70.50 ± 0.71 (n=2), paper 70.70 (-0.20) |",
        "| LL-R + BoostLU | **73.00 ± 1.00** (n=3), paper 72.89 (+0.11) |",
    ]
    assert text.startswith("test_map: mean ± sample std over seeds")


def test_csv(runs):
    rows = list(csv.DictReader(io.StringIO(render(collect([runs]), "csv"))))
    cell = next(r for r in rows if r["method"] == "LL-R + BoostLU" and r["dataset"] == "coco")
    assert (float(cell["mean"]), float(cell["std"]), cell["n"], cell["seeds"], cell["best"], cell["published"]) == (
        73.0, 1.0, "3", "0 1 2", "1", "72.89")
    assert float(cell["diff"]) == pytest.approx(0.11)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["note"].startswith("NonFiniteLoss") and failed[0]["method"] == "LL-Ct"
    assert {r["status"] for r in rows} == {"ok", "failed", "running", "preempted", "unfinished"}


def test_latex(runs):
    text = render(collect([runs]), "latex")
    assert r"\begin{tabular}{lrr}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"\textbf{73.00 $\pm$ 1.00} \scriptsize{(3)} \scriptsize{[72.89, +0.11]}" in text
    assert "% Not in the table" in text
    body = [line for line in text.splitlines() if not line.startswith("%")]
    assert all("±" not in line for line in body)


def test_terminal_bold(runs):
    plain = render(collect([runs / "coco-ll-r-boostlu"]), "terminal")
    assert "**73.00 ± 1.00** (n=3)" in plain
    ansi = render(collect([runs / "coco-ll-r-boostlu"]), "terminal", color=True, unicode=False)
    assert "\x1b[1m73.00 +- 1.00\x1b[0m (n=3)" in ansi and "±" not in ansi
    lines = plain.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert set(lines[header + 1]) <= {"-", " "}  # aligned columns


def test_metric_option_and_globs(runs):
    table = collect([str(runs / "coco-*" / "seed-*")], metric="val_map")
    assert table.cells[("LL-R + BoostLU", "coco")].mean == 74.0
    assert len(find_runs([str(runs / "coco-ll-r*" / "seed-*")])) == 5
    assert len(find_runs([runs])) == 15
    nested = collect([runs / "coco-ll-r-boostlu"], metric="test_metrics.OF1")
    assert nested.cells[("LL-R + BoostLU", "coco")].mean == 36.5 and nested.metric == "test_metrics.OF1"
    missing = collect([runs / "coco-ll-r"], metric="nope")
    assert not missing.cells and "no numeric 'nope'" in missing.problems[0].reason
    with pytest.raises(PamcError, match="no such folder"):
        find_runs([str(runs / "nothing-*")])


def test_cli_table(runs, capsys):
    assert main(["table", str(runs), "--format", "markdown", "--best", "min"]) == 0
    out = capsys.readouterr().out
    assert "**65.50 ± 0.71** (n=2)" in out and "| 70.50 ± 0.71 (n=2)" in out  # min: the lowest is bold
    assert main(["table", str(runs / "notes")]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_row_labels():
    assert row_label("ll-r", 5.0) == "LL-R + BoostLU"
    assert row_label("an", 1.0, 5.0) == "AN + BoostLU (inference only)"
    assert row_label("an", 1.0, 3.0) == "AN + BoostLU (inference only, alpha 3)"
    assert row_label("ll-ct", 3.0, 3.0) == "LL-Ct + BoostLU (alpha 3)"
    assert row_label("role", linear_init=True) == "ROLE + LI" and row_label("an-ls", linear_init=True) == "LS + LI"
    assert row_label("some-new-loss") == "some-new-loss"


def test_published_numbers_live_in_one_place():
    """Preset descriptions quote the published cells only through {paper} placeholders."""
    for name, path in preset_files().items():
        raw = str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
        assert not re.search(r"\(paper \d", raw), f"{name}: quote the number as {{paper}} (pamc/published.py)"
        fill_description(name, raw)  # every placeholder names a published cell
    assert published_cell("coco-ll-r-boostlu-fast") is PUBLISHED["coco-ll-r-boostlu"]
    assert published_cell("coco-ll-r-boostlu-fast64") is None  # changes the protocol
    assert published_cell("coco-asl-recipe") is None and published_cell(None) is None
    assert PUBLISHED["openimages-ll-cp-boostlu"].text == "84.04" and PUBLISHED["coco-an-ls-li"].text == "69.2"


def test_read_run_of_an_unreadable_folder(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / RunFolder.CONFIG).write_text("a: [")
    assert read_run(folder).status == "unreadable"
    assert build_table([read_run(folder)]).problems


def test_seeds_sweep_prints_the_table(tiny_settings, tmp_path):
    data = [f"--data={k}={v!r}".replace("'", '"') for k, v in tiny_settings["data"].items()]
    args = ["train", "--out", str(tmp_path / "sweep"), *data, "--epochs", "1", "--lr", "1e-4", "--device", "cpu",
            "--num-workers", "0", "--no-progress", "--tensorboard", "off", "--method", "ll-r", "--alpha", "5",
            "--seeds", "0", "1"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    out = stdout.getvalue()
    assert "seed 0: test mAP" in out and "seed 1: test mAP" in out
    # not a terminal: bold as **x**; no encoding that has "±": "+-"
    assert re.search(r"LL-R \+ BoostLU\s+\*\*\d+\.\d\d (±|\+-) \d+\.\d\d\*\* \(n=2\)", out), out
    for seed in (0, 1):
        assert yaml.safe_load((tmp_path / "sweep" / f"seed-{seed}" / "config.yaml").read_text())["seed"] == seed
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # rerun with --resume auto: both seeds are done
        assert main(args + ["--resume", "auto"]) == 0
    assert "(n=2)" in stdout.getvalue()


def test_runs_whose_auto_chose_other_precisions_are_told_apart(tmp_path):
    """`amp: auto` is bf16 on one CPU and fp32 on another: the cell compares what each run used."""
    for seed, amp in ((0, "bf16"), (1, "off")):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        (folder / "config.yaml").write_text(f"method: an\nseed: {seed}\namp: auto\ndata: {{name: scenes, source: digits}}\n")
        (folder / "results.json").write_text(json.dumps({"method": "an", "test_map": 50.0 + seed, "seed": seed,
                                                         "dataset": "scenes-digits", "train_alpha": 1.0,
                                                         "runtime": {"device": "cpu", "amp": amp}}))
    records = [read_run(tmp_path / f"seed-{s}") for s in (0, 1)]
    assert [r.config["amp"] for r in records] == ["bf16", "off"]
    table = build_table(records)
    assert any("amp" in text for _, _, text in table.notes)
