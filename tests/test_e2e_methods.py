"""Every method row trained end to end through `pamc.apps.cli.main`, on the tiny scenes and on a
miniature copy of every official dataset layout after `pamc prepare`.

The rows are the demo's (spec 6.1: Full, AN, LS, ASL, ROLE, EM, EM + APL, LL-R/Ct/Cp with and
without BoostLU, plus WAN and EPR of spec 6.3 and AN + BoostLU at inference only / train and
inference) and ROLE + LI, given to the CLI as a user would.  Each run must exit 0 and write a
results.json whose numbers match the flags; methods a dataset cannot support must end as one
`pamc: error:` line.  Caches go to the session folder of conftest's `pamc_cache` ($PAMC_CACHE).
"""
import contextlib
import io
import json
import math
import re
from dataclasses import replace

import pytest
import yaml

import fixtures_datasets as fx
from pamc import losses
from pamc.apps.cli import main
from pamc.apps.demo import CORE_ROWS, baseline_rows

K = 2.0  # EPR / ROLE expected positives, given explicitly: the miniature formats have few classes
DEMO = {row.slug: row for row in CORE_ROWS + baseline_rows()}
DEMO.update({slug: replace(DEMO[slug], loss={**DEMO[slug].loss, "k": K}) for slug in ("epr", "role", "role-li")})
# with 2 epochs the demo's warmup of 2 would leave EM + APL without a pseudo-labelling round
DEMO["em-apl"] = replace(DEMO["em-apl"], loss={"warmup": 1})
#: slug -> (the row, more flags); ROLE + LI once with --linear-init and once with a dotted --set
ROWS = {slug: (row, []) for slug, row in DEMO.items()}
ROWS["role-li"] = (DEMO["role"], ["--linear-init", "{epochs: 2, batch_size: 8}"])
ROWS["role-li-set"] = (DEMO["role"], ["--set", "linear_init.epochs=2"])
# the robust losses once more with their mean reduction and an explicit tau
ROWS["focal-margin-mean"] = (replace(DEMO["focal-margin"], loss={"reduction": "mean"}), [])
ROWS["splc-tau"] = (replace(DEMO["splc"], loss={"tau": 0.65}), [])
# VLPL and AEVLP: pseudo-labels from the scenes' stand-in for CLIP, which a prepared dataset lacks
ROWS.update({slug: (row, ["--scores", row.settings["scores"]]) for slug, row in DEMO.items() if "scores" in row.settings})
REPRESENTATIVE = ["full", "an", "ll-cp-boost", "role", "em-apl"]


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def row_flags(slug: str) -> list[str]:
    """The row as a user types it: method, training and evaluation alpha, loss parameters."""
    row, extra = ROWS[slug]
    flags = ["--method", row.method, "--alpha", f"{row.alpha:g}", "--eval-alpha", f"{row.eval_alpha:g}"]
    return flags + [f"--loss={key}={value}" for key, value in row.loss.items()] + extra


def check_run(out, slug: str, code: int, stdout: str, stderr: str) -> dict:
    """The run exited 0, printed its results.json, and trained what the row's flags asked for."""
    assert code == 0, stderr
    row = ROWS[slug][0]
    results = json.loads((out / "results.json").read_text())
    assert math.isfinite(results["test_map"]) and 0.0 <= results["test_map"] <= 100.0
    assert (results["method"], results["train_alpha"], results["eval_alpha"], results["epochs"]) == (
        row.method, row.alpha, row.eval_alpha, 2)
    assert stdout.startswith(f"test mAP {results['test_map']:.2f} (alpha {row.eval_alpha:g}")
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"] == row.loss
    if slug.startswith("role-li"):
        phase1 = json.loads((out / "linear_init.json").read_text())
        assert phase1["epochs"] == 2 and len(phase1["history"]) == 2
    else:
        assert not (out / "linear_init.json").exists()
    return results


def one_line_error(code: int, stderr: str, needle: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pamc: error: ") and needle in lines[0], stderr


def test_the_rows_cover_every_registered_loss():
    assert set(losses.names()) <= {row.method for row, _ in ROWS.values()}


# ------------------------------------------------------------------------------------- scenes

SCENES = {"name": "scenes", "source": "digits", "n_train": 64, "n_val": 24, "n_test": 24, "canvas": 32,
          "object_scale": [10, 14], "seed": 0}
TRAIN = ["--backbone", "scene-cnn", "--epochs", "2", "--num-workers", "0", "--no-progress", "--device", "cpu",
         "--lr", "1e-4"]


@pytest.mark.parametrize("slug", ROWS)
def test_every_row_trains_through_the_cli_on_scenes(slug, tmp_path, pamc_cache):
    out = tmp_path / "run"
    data = [f"--data={key}={json.dumps(value)}" for key, value in SCENES.items()]
    code, stdout, stderr = run_cli(["train", *data, *TRAIN, "--batch-size", "16", *row_flags(slug), "--out", out])
    results = check_run(out, slug, code, stdout, stderr)
    assert results["dataset"].startswith("scenes")


# ------------------------------------------------------------------------ official dataset formats

def make_own(root):
    return fx.make_own(root, ["a.jpg", "sub/b.jpg", "c.jpg", "d.jpg"])


#: format -> (fixture, `pamc prepare` arguments, (official train, train, val, test) images).
#: n_val = round(val_fraction * N) of the official train set (spec 1.2), test = the official
#: val/test set.  The two smallest get val_fraction 0.5, else their val split would be empty.
FORMATS = {
    # 3 fixture images with a positive (2008_000008 has none) + 20 extra; n_val = round(4.6)
    "voc": (lambda root: fx.make_voc(root, extra_train=20), ["voc"], (23, 18, 5, 2)),
    # 4 annotated train images (555 has no annotation); test: 42 and 7
    "coco": (fx.make_coco, ["coco"], (4, 3, 1, 2)),
    "nuswide-formatted": (fx.make_nuswide_formatted, ["nuswide", "--option", "variant=formatted"], (3, 2, 1, 2)),
    # beach\0002_22.jpg has no positive and is left out
    "nuswide-official": (fx.make_nuswide_official,
                         ["nuswide", "--option", "variant=official", "--val-fraction", "0.5"], (2, 1, 1, 2)),
    "cub": (fx.make_cub, ["cub", "--val-fraction", "0.5"], (2, 1, 1, 2)),
    # train a1, b2 (c3 has only a class outside the list); official validation and test sets
    "openimages": (fx.make_openimages, ["openimages"], (2, 2, 2, 2)),
    # no test file: test = round(0.2 * 4) rows first, then val = round(0.2 * 3) of the rest
    "own": (make_own, ["own"], (4, 2, 1, 1)),
}
PARTIAL = {"openimages", "own"}  # partial labels only: no `full` method, selection on observed labels
EXPECTED_ERRORS = {
    ("openimages", "full"): "needs full training labels",
    ("own", "full"): "needs full training labels",
    ("openimages", "em-apl"): "needs dense training labels",  # OpenImages' labels are sparse
    ("voc", "vlpl"): "needs data name=scenes",  # the stand-in scores the scenes; CLIP: tests/test_pseudo_label.py
    ("voc", "aevlp"): "needs data name=scenes",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, pamc_cache):
    """format -> (prepared folder, what `pamc prepare` printed) for its miniature."""
    base = tmp_path_factory.mktemp("formats")
    done = {}
    for name, (make, args, _) in FORMATS.items():
        root, out = make(base / name / "raw"), base / name / "prepared"
        code, stdout, stderr = run_cli(["prepare", args[0], "--root", root, "--out", out, *args[1:]])
        assert code == 0, stderr
        done[name] = (out, stdout)
    return done


def format_flags(name: str, folder) -> list[str]:
    flags = ["--data", "name=prepared", "--data", f"path={folder}", "--data", "image_size=32"]
    if name in PARTIAL:
        flags += ["--selection", "observed"]
    if name == "openimages":  # the fixture's b2.jpg is a truncated download
        flags += ["--data", "on_error=skip"]
    return flags


@pytest.mark.parametrize("name", FORMATS)
def test_prepare_prints_the_split_counts(name, prepared):
    out, stdout = prepared[name]
    official, train, val, test = FORMATS[name][2]
    match = re.search(r"official train (\d+) -> train (\d+) / val (\d+); test (\d+);", stdout)
    assert match and tuple(map(int, match.groups())) == (official, train, val, test), stdout
    meta = json.loads((out / "meta.json").read_text())
    for split, count in zip(("train", "val", "test"), (train, val, test)):
        assert meta["splits"][split]["images"] == count
        assert len((out / f"images_{split}.txt").read_text().splitlines()) == count


FORMAT_RUNS = [(name, slug) for name in FORMATS for slug in (ROWS if name == "voc" else REPRESENTATIVE)]


@pytest.mark.parametrize("name,slug", FORMAT_RUNS)
def test_rows_train_on_every_prepared_format(name, slug, prepared, tmp_path):
    out = tmp_path / "run"
    skips = pytest.warns(UserWarning, match="train: skipped 1 unreadable images") if name == "openimages" else (
        contextlib.nullcontext())
    with skips:
        code, stdout, stderr = run_cli(["train", *format_flags(name, prepared[name][0]), *TRAIN, "--batch-size", "4",
                                        *row_flags(slug), "--out", out])
    if (name, slug) in EXPECTED_ERRORS:
        one_line_error(code, stderr, EXPECTED_ERRORS[name, slug])
        return
    results = check_run(out, slug, code, stdout, stderr)
    assert results["dataset"] == name.split("-")[0]
    # --data name=prepared replaces the default data mapping: no `source` of the default scenes left
    data = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert data == {"name": "prepared", "path": str(prepared[name][0]), "image_size": 32,
                    **({"on_error": "skip"} if name == "openimages" else {})}
    if name == "openimages":
        # AP over annotated test entries only: t2 is the one (positive) annotation of Dog, t1 the
        # one (negative) annotation of Tree, so APs are 100 and 0 whatever the scores; the other
        # classes have no annotated test image and do not count
        assert results["test_map"] == pytest.approx(50.0)


@pytest.mark.parametrize("name,extra,needle", [
    ("own", [], "validation has no full labels; use --selection observed"),
    ("openimages", ["--selection", "observed"], "cannot read image"),
])
def test_partial_formats_without_their_flags_are_one_line_errors(name, extra, needle, prepared, tmp_path):
    folder = prepared[name][0]
    data = ["--data", "name=prepared", "--data", f"path={folder}", "--data", "image_size=32"]
    code, _, stderr = run_cli(["train", *data, *extra, *TRAIN, "--method", "an", "--out", tmp_path / "run"])
    one_line_error(code, stderr, needle)
