"""`pamc demo`: which rows it trains, and `--grid`: every method with and without BoostLU, tabled
against the seed spread."""
import json
import math

import pytest
import yaml

from pamc.apps.demo import (CORE_ROWS, GRID_VARIANTS, VIEWED_ROWS, baseline_rows, demo_rows, effect, grid_methods,
                       grid_reading, grid_table, precision, run_demo, run_grid)
from pamc.errors import PamcError

TINY = {"n_train": 48, "n_val": 16, "n_test": 16, "canvas": 32, "object_scale": [10, 14]}


def test_quick_demo_trains_the_rows_its_report_and_viewer_read():
    quick = [r.label for r in demo_rows(quick=True, all_methods=False)]
    read = set(VIEWED_ROWS) | {"AN + BoostLU (inference only)", "AN + BoostLU (train + inference)"}
    assert read <= set(quick) and len(quick) == 6 and not {"LL-Ct", "LL-Cp"} & set(quick)
    assert demo_rows(quick=False, all_methods=False) == CORE_ROWS
    # --all trains everything, --quick or not
    assert demo_rows(quick=True, all_methods=True) == demo_rows(quick=False, all_methods=True) == CORE_ROWS + baseline_rows()


def test_quick_demo_writes_table_report_figures_and_viewer(tmp_path, pamc_cache):
    """The README's first command, end to end on tiny scenes: every file the report links exists,
    the viewer compares the three models it names, and the runs trained in channels_last."""
    out = tmp_path / "demo"
    results = run_demo(out=str(out), quick=True, device="cpu", epochs=1, data_overrides=TINY,
                       settings={"backbone_weights": None})
    rows = [r.label for r in demo_rows(quick=True, all_methods=False)]
    assert list(results) == rows and all(0 <= r["test_map"] <= 100 for r in results.values())
    assert json.loads((out / "results.json").read_text()) == results
    report = (out / "report.md").read_text()
    for name in ("cams.png", "view.html", "explanations/report.md", "explanations/an-boosted/report.md"):
        assert (out / name).is_file() and name in report
    assert all(f"| {label} |" in report for label in rows) and "Reading: the AN model" in report
    assert set(json.loads((out / "explanations.json").read_text())["gap"]) >= {"AN", "AN + BoostLU(5)"}
    page = (out / "view.html").read_text()
    assert all(label in page for label in VIEWED_ROWS)
    config = yaml.safe_load((out / "runs" / "full" / "seed-0" / "config.yaml").read_text())
    assert config["channels_last"] == "on" and config["amp"] == "auto" and config["epochs"] == 1
    runtime = json.loads((out / "runs" / "full" / "seed-0" / "results.json").read_text())["runtime"]
    assert precision(runtime) in report  # the report says how the runs computed (bf16 or fp32)
    with pytest.raises(PamcError, match="already exists"):
        run_demo(out=str(out), quick=True)  # refused before anything is trained


def test_grid_trains_each_variant_and_tables_it(tmp_path, pamc_cache):
    grid = run_grid(out=str(tmp_path / "grid"), seeds=[0, 1], device="cpu", epochs=1, methods=["an", "ll-r"],
                    data_overrides=TINY, settings={"backbone_weights": None})
    assert list(grid) == ["AN", "LL-R"]
    for cells in grid.values():
        assert list(cells) == [name for name, _, _ in GRID_VARIANTS]
        assert all(len(v) == 2 and all(0 <= x <= 100 for x in v) for v in cells.values())
    # each variant trained with its own alphas
    results = json.loads((tmp_path / "grid" / "runs" / "an-boostlu-train-+-inference" / "seed-1" / "results.json").read_text())
    assert (results["train_alpha"], results["eval_alpha"], results["seed"]) == (5.0, 5.0, 1)
    inference = json.loads((tmp_path / "grid" / "runs" / "an-boostlu-inference-only" / "seed-0" / "results.json").read_text())
    assert (inference["train_alpha"], inference["eval_alpha"]) == (1.0, 5.0)
    text = (tmp_path / "grid" / "grid.md").read_text()
    assert "| AN |" in text and "**" in text and f"Precision: {precision(results['runtime'])}." in text and json.loads((tmp_path / "grid" / "grid.json").read_text())["seeds"] == [0, 1]


def test_grid_covers_every_method_once(tmp_path):
    methods = [r.method for r in grid_methods()]
    assert len(methods) == len(set(methods)) and {"an", "ll-r", "role", "em-apl"} <= set(methods)
    with pytest.raises(PamcError, match="unknown grid method"):
        run_grid(methods=["nope"], out=str(tmp_path / "grid"))
    assert not (tmp_path / "grid").exists()  # refused before anything is made


def test_table_marks_the_best_cell_and_judges_against_the_spread():
    names = [name for name, _, _ in GRID_VARIANTS]
    grid = {"AN": dict(zip(names, ([77.0, 78.0, 76.0], [85.0, 86.0, 84.0], [77.5, 77.0, 77.6])))}
    table = grid_table(grid)
    assert "| AN | 77.00 +- 1.00 | **85.00 +- 1.00** | 77.37 +- 0.32 |" in table
    diff, ratio = effect(grid["AN"], names[1])
    assert diff == pytest.approx(8.0) and ratio == pytest.approx(8.0 / math.sqrt((1 + 1) / 3))
    reading = grid_reading(grid)
    assert "+8.00 (+9.8): helps" in reading and "+0.37 (+0.6): no clear effect" in reading
