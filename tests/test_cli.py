"""The `pamc` command line, in-process through `pamc.apps.cli.main` and as a real `python -m pamc`.

User errors must end as one `pamc: error: ...` line on stderr with exit status 2, no traceback.
"""
import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score

from pamc import CamClassifier
from pamc.checkpoint import load_model
from pamc.apps.cli import main
from pamc.config import preset_files
from pamc.data.transforms import normalize_uint8


def data_flags(data: dict) -> list[str]:
    return [f"--data={key}={json.dumps(value)}" for key, value in data.items()]


def train_args(out, data: dict, epochs: int = 2) -> list[str]:
    """Flags of every kind: typed fields, a boolean, --loss/--data mappings and --set (dotted too)."""
    return ["train", "--out", str(out), "--method", "ll-r", "--loss", "delta=2", "--alpha", "2",
            "--epochs", str(epochs), "--batch-size", "16", "--lr", "1e-4", "--device", "cpu",
            "--num-workers", "0", "--no-progress", *data_flags(data), "--set", "seed=3", "--set", "data.max_objects=4"]


def run_main(args) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(a) for a in args])
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_settings):
    out = tmp_path_factory.mktemp("cli") / "run"
    code, stdout = run_main(train_args(out, tiny_settings["data"]))
    return out, code, stdout


def scores_of(folder, images: torch.Tensor, alpha: float) -> np.ndarray:
    model, _ = load_model(folder)
    with torch.no_grad():
        return torch.sigmoid(model(normalize_uint8(images), alpha=alpha)).numpy()


def class_aps(scores: np.ndarray, full: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(full[:, c], scores[:, c]) if full[:, c].any() else 0.0
                     for c in range(full.shape[1])])


def test_train_writes_the_resolved_config(cli_run, tiny_settings):
    out, code, stdout = cli_run
    assert code == 0
    assert stdout.startswith("test mAP ") and f"run folder {out}" in stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "ll-r" and config["loss"] == {"delta": 2}
    assert config["alpha"] == 2 and config["epochs"] == 2 and config["seed"] == 3 and config["progress"] is False
    assert config["lr"] == pytest.approx(1e-4) and isinstance(config["lr"], float)
    assert config["data"] == {**tiny_settings["data"], "max_objects": 4}
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 3 and results["train_alpha"] == 2
    assert f"test mAP {results['test_map']:.2f}" in stdout


def test_resume_with_more_epochs_equals_a_longer_run(cli_run, tiny_settings, tmp_path):
    out, _, _ = cli_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    assert run_main(["train", "--resume", resumed, "--epochs", "3"])[0] == 0
    straight = tmp_path / "straight"
    assert run_main(train_args(straight, tiny_settings["data"], epochs=3))[0] == 0
    for folder in ("last", "best"):
        a, b = load_file(str(resumed / folder / "model.safetensors")), load_file(str(straight / folder / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
    assert yaml.safe_load((resumed / "config.yaml").read_text())["epochs"] == 3  # the config in force


def test_eval_prints_a_table_per_alpha_and_writes_per_class_ap(cli_run, tiny_bundle, tmp_path):
    out, _, _ = cli_run
    table = tmp_path / "ap.csv"
    code, stdout = run_main(["eval", out, "--alpha", "1", "5", "--per-class-csv", table, "--device", "cpu"])
    assert code == 0
    test = tiny_bundle.test
    images = test.images.take(torch.arange(len(test)))
    aps = {a: class_aps(scores_of(out / "best", images, a), test.full) for a in (1.0, 5.0)}
    assert "| alpha | mAP |" in stdout
    assert f"| 1 | {100 * aps[1.0].mean():.2f} |" in stdout and f"| 5 | {100 * aps[5.0].mean():.2f} |" in stdout
    with open(table) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", "ap_alpha_1", "ap_alpha_5"]
    assert [r[0] for r in rows[1:]] == tiny_bundle.class_names
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(got, 100 * np.stack([aps[1.0], aps[5.0]], axis=1), atol=1e-3)


def test_eval_and_results_hold_the_standard_metrics(cli_run, tiny_bundle, tmp_path):
    from sklearn.metrics import precision_score, recall_score

    out, _, _ = cli_run
    test = tiny_bundle.test
    images = test.images.take(torch.arange(len(test)))
    scores = scores_of(out / "best", images, 1.0)
    predicted = (scores >= 0.5).astype(int)
    want = {"CP": precision_score(test.full, predicted, average="macro", zero_division=0) * 100,
            "CR": recall_score(test.full, predicted, average="macro", zero_division=0) * 100,
            "OP": precision_score(test.full, predicted, average="micro", zero_division=0) * 100,
            "OR": recall_score(test.full, predicted, average="micro", zero_division=0) * 100}
    code, stdout = run_main(["eval", out, "--alpha", "1", "--out", tmp_path / "eval.json", "--device", "cpu"])
    assert code == 0 and "| alpha | mAP | CP | CR | CF1 | OP | OR | OF1 | CF1@3 | OF1@3 |" in stdout
    row = json.loads((tmp_path / "eval.json").read_text())["rows"][0]
    for key, value in want.items():
        assert row[key] == pytest.approx(value, abs=1e-6), key
    assert row["CF1"] == pytest.approx(2 * want["CP"] * want["CR"] / (want["CP"] + want["CR"]), abs=1e-6)
    # results.json of the run: the same metrics on the test split at the run's evaluation alpha
    results = json.loads((out / "results.json").read_text())
    assert set(results["test_metrics"]) == {k for k in row if k not in ("alpha", "map", "threshold")}
    assert results["test_metrics"]["CP"] == pytest.approx(want["CP"], abs=1e-4)
    assert run_main(["eval", out, "--out", tmp_path / "eval.txt", "--device", "cpu"])[0] == 2


def test_predict_writes_one_score_column_per_class(cli_run, tiny_bundle, tmp_path):
    out, _, _ = cli_run
    folder = tmp_path / "images"
    folder.mkdir()
    grey = tiny_bundle.test.images.images[:4].numpy()
    for n, image in enumerate(grey):
        Image.fromarray(image).save(folder / f"scene{n}.png")
    target = tmp_path / "scores.csv"
    code, stdout = run_main(["predict", out, folder, "--out", target, "--device", "cpu"])
    assert code == 0 and "scores for 4 images" in stdout
    with open(target) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", *tiny_bundle.class_names, "predicted"]
    assert [r[0] for r in rows[1:]] == [str(folder / f"scene{n}.png") for n in range(4)]
    got = np.array([[float(v) for v in r[1:-1]] for r in rows[1:]])
    expected = scores_of(out / "best", tiny_bundle.test.images.take(torch.arange(4)), alpha=2.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for row, score in zip(rows[1:], got):
        assert row[-1] == ";".join(n for n, s in zip(tiny_bundle.class_names, score) if s >= 0.5)


def test_presets_and_list_run(capsys):
    assert main(["presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(preset_files()) and names
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "backbones: " in out and "scene-cnn" in out and "resnet50" in out
    assert "losses: " in out and "ll-cp" in out and "datasets: " in out and "scenes" in out
    assert names[0] in out.split("presets:")[1]


def one_line_error(capsys, args, *needles) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pamc: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize("flags,needles", [
    (["--method", "ll-x"], ["unknown loss 'll-x'", "ll-cp", "an"]),
    (["--backbone", "vgg"], ["unknown backbone 'vgg'", "scene-cnn"]),
    (["--alpha", "0.5"], ["alpha must be >= 1"]),
    (["--set", "colour=blue"], ["unknown setting 'colour'"]),
    (["--config", "missing.yaml"], ["config file missing.yaml not found"]),
    (["--loss", "gamma=1"], ["loss 'an' takes no parameter gamma"]),  # found only while setting up the run
    (["--data", "colour=red"], ["dataset 'scenes' takes no setting colour"]),
])
def test_bad_training_input_is_one_line_and_creates_nothing(capsys, tmp_path, tiny_settings, flags, needles):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--out", out, "--device", "cpu", *data_flags(tiny_settings["data"]), *flags], *needles)
    assert not out.exists()


def test_an_existing_run_folder_is_not_replaced_without_overwrite(capsys, cli_run):
    out, _, _ = cli_run
    before = (out / "results.json").read_text()
    one_line_error(capsys, ["train", "--out", out, "--device", "cpu"], "already exists", "--overwrite")
    assert (out / "results.json").read_text() == before


def test_bad_checkpoints_are_one_line_errors(capsys, cli_run, tmp_path):
    out, _, _ = cli_run
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out / "best", corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    one_line_error(capsys, ["eval", corrupt, "--device", "cpu"], "corrupt")

    foreign = tmp_path / "foreign"
    shutil.copytree(out / "best", foreign)
    other = CamClassifier("scene-cnn", 3)  # 3 classes where model.json says 10
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(foreign / "model.safetensors"))
    one_line_error(capsys, ["eval", foreign, "--device", "cpu"], "from another model")
    one_line_error(capsys, ["predict", foreign, tmp_path, "--device", "cpu"], "from another model")
    one_line_error(capsys, ["eval", tmp_path / "nowhere", "--device", "cpu"], "not found")


def test_predict_with_a_missing_image_is_one_line(capsys, cli_run, tmp_path):
    out, _, _ = cli_run
    one_line_error(capsys, ["predict", out, tmp_path / "missing.png", "--device", "cpu"], "missing.png not found")


def test_the_real_command_exits_2_with_one_line_on_stderr(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pamc", "train", "--method", "nope", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("pamc: error: unknown loss 'nope'; valid: ") and "ll-r" in proc.stderr
    assert proc.stdout == "" and not out.exists()


def test_warnings_print_as_one_clean_line():
    """No source file, line number or `warnings.warn(...)` source line reaches the user (run in a
    process of its own: pytest records warnings instead of printing them)."""
    import subprocess
    import sys

    code = """
import dataclasses, warnings
from pamc.apps.cli import build_parser, main
from pamc.apps.cli.base import COMMANDS
build_parser()
def warns(args):
    warnings.warn("the last global batch is skipped; choose a batch size that avoids it")
    return 0
COMMANDS["list"] = dataclasses.replace(COMMANDS["list"], run=warns)
code = main(["list"])
assert warnings.formatwarning.__name__ != "one_line_warning"  # callers of the library keep their own format
raise SystemExit(code)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "pamc: warning: the last global batch is skipped; choose a batch size that avoids it\n"


def test_an_unknown_preset_names_the_closest_ones(capsys):
    assert main(["train", "--preset", "voc-ll-r-boost"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pamc: error: unknown preset 'voc-ll-r-boost'; did you mean voc-ll-r-boostlu,")
    assert "\n" not in err and err.count(",") < 10 and "lists all" in err


def test_train_help_describes_each_setting_from_its_comment_in_config(capsys):
    from pamc.config import FIELDS, setting_notes

    notes = setting_notes()
    assert set(FIELDS) - set(notes) == {"data"}  # a new setting needs its comment (data's flag has its own help)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the notes
    assert "--freeze-backbone, --no-freeze-backbone the \"linear\" protocol: only the CAM head trains" in text
    assert "--lr-mult LR_MULT head lr = lr * lr_mult" in text
