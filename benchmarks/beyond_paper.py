"""Past the paper, measured: the forms of BoostLU, and BoostLU under label noise (not a test).

    python benchmarks/beyond_paper.py forms --out results/forms-digits                   # the forms tables
    python benchmarks/beyond_paper.py forms --source fashion --out results/forms-fashion
    python benchmarks/beyond_paper.py noise --out results/noise --figure docs/beyond-noise.png

Every number is a real training run through `pamc.train` on the quick demo's scenes and settings
(`pamc.apps.demo`, quick=True: 1000/200/400 train/val/test scenes of 64 px, scene-cnn pretrained
on single objects, 4 epochs, lr 1e-4 with the head x10, best epoch by full-label val mAP), in
float32 (amp off), one run per seed.  A finished run (its results.json) is reused, so an interrupted command picks up
where it stopped.

forms: AN, LL-R, GR and ROLE (`--methods`), each trained without BoostLU and then boosted at inference
only -- every form at alpha 5, and every form with per-class alpha tuned on the validation
split's *observed* labels (`pamc tune-alpha --per-class --mode observed`, alphas 1 ... 10) -- and
each trained and evaluated with every form at alpha 5.  Writes forms.json and forms.md.

noise: AN under each label-noise protocol at each rate P (`--rates`): false-positive on the
single-positive observation, flip-negative on fraction:0.5 (which observes negatives); each trained
without BoostLU (evaluated at alpha 1 and, inference only, at alpha 5) and with BoostLU at alpha 5
in training.  Writes noise.json, noise.md and the figure of BoostLU's gain against P.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

#: the forms measured (the registry's defaults: tau 0.5 and beta 2 in the scenes' CAM units)
FORMS = {"boostlu": "boostlu", "threshold": "boostlu-threshold:tau=0.5", "smooth": "boostlu-smooth:beta=2"}
#: AN, LL-R, GR, and ROLE: the best method of `pamc demo --grid` without BoostLU and with it at inference only
METHODS = {"an": "AN", "ll-r": "LL-R", "gr": "GR", "role": "ROLE"}
BOOST = 5.0
#: protocol -> its observation with the noise at rate P
PROTOCOLS = {"false-positive": "single-positive+false-positive:{p:g}", "flip-negative": "fraction:0.5+flip-negative:{p:g}"}


def machine() -> str:
    return f"{platform.machine()} {torch.get_num_threads()} thread(s), torch {torch.__version__}, CPU"


def setup(source: str, out: Path):
    """(quick demo scenes, the quick demo's base run settings)."""
    from pamc.apps.demo import base_config, scene_settings
    from pamc.data.scenes import make_scenes

    data = scene_settings(source, quick=True)
    bundle = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    # float32 (amp off): the precision these tables were measured in; `auto` picks bf16 on CPUs with native bf16
    base = {**base_config(data, quick=True, device="cpu"), "amp": "off", "overwrite": False}
    out.mkdir(parents=True, exist_ok=True)
    return bundle, base


def trained(base: dict, bundle, folder: Path, **settings) -> Path:
    """Train one run into `folder`, unless it finished there before."""
    from pamc import train

    if not (folder / "results.json").is_file():
        t0 = time.perf_counter()
        result = train({**base, **settings, "out": str(folder), "overwrite": True}, bundle=bundle)
        print(f"  {folder.name}: test mAP {result.test_map:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return folder


def test_map(folder: Path) -> float:
    return json.loads((folder / "results.json").read_text())["test_map"]


def boosted_maps(folder: Path, bundle, forms: dict[str, str], alpha: float) -> dict[str, dict[str, float]]:
    """Test mAP of a model trained at alpha 1, per form: at `alpha`, at the alpha tuned on the
    validation split's observed labels, and with per-class alpha tuned on them."""
    from pamc.checkpoint import load_model
    from pamc.explain import tune_alpha
    from pamc.explain.alpha import DEFAULT_ALPHAS, pooled_cams
    from pamc.labels import observe
    from pamc.metrics import mean_average_precision

    model, meta = load_model(folder)
    val_observed = observe(bundle.val.full, bundle.val.observed, meta.observation, meta.observation_seed)
    out = {}
    for name, form in forms.items():
        mean, part = pooled_cams(model, bundle.test.images, form=form)
        tuned = tune_alpha(model, bundle.val.images, val_observed, DEFAULT_ALPHAS, mode="observed", per_class=True, form=form)
        per_class = torch.tensor(tuned["best_alpha"])
        out[name] = {f"alpha {alpha:g}": mean_average_precision(torch.sigmoid(mean + (alpha - 1) * part), bundle.test.full)}
        for column, tuned_alpha in (("tuned alpha", tuned["shared_alpha"]), ("per-class alpha", per_class)):
            out[name][column] = mean_average_precision(torch.sigmoid(mean + (tuned_alpha - 1) * part), bundle.test.full)
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def markdown(rows: dict[str, dict[str, list[float]]], columns: list[str], first: str) -> str:
    """Rows x columns of mean ± std over seeds; the best mean of each row in bold."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, cells in rows.items():
        best = max(columns, key=lambda c: statistics.fmean(cells[c]))
        lines.append(f"| {label} | " + " | ".join(f"**{mean_std(cells[c])}**" if c == best else mean_std(cells[c])
                                                 for c in columns) + " |")
    return "\n".join(lines)


def forms_command(args) -> None:
    out = Path(args.out)
    bundle, base = setup(args.source, out)
    start = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {}  # method -> training column -> per seed
    inference: dict[str, dict[str, list[float]]] = {}  # "method, form" -> inference column -> per seed
    for method in args.methods:
        cells = rows.setdefault(METHODS[method], {})
        for seed in args.seeds:
            plain = trained(base, bundle, out / "runs" / f"{method}-seed{seed}", method=method, seed=seed)
            cells.setdefault("none", []).append(test_map(plain))
            for name, values in boosted_maps(plain, bundle, FORMS, BOOST).items():
                row = inference.setdefault(f"{METHODS[method]}, {name}", {})
                row.setdefault("none", []).append(test_map(plain))
                for column, value in values.items():
                    row.setdefault(column, []).append(value)
            for name, form in FORMS.items():
                run = trained(base, bundle, out / "runs" / f"{method}-{name}-seed{seed}", method=method, seed=seed,
                              alpha=BOOST, eval_alpha=BOOST, activation=form)
                cells.setdefault(f"{name} (training)", []).append(test_map(run))
    seconds = time.perf_counter() - start
    training = ["none"] + [f"{n} (training)" for n in FORMS]
    text = (f"Test mAP (%) on {bundle.name} scenes, mean ± std over seeds {args.seeds}; forms: "
            + ", ".join(f"{k} = {v}" for k, v in FORMS.items()) + f"; {machine()}; {seconds / 60:.0f} min in this command (finished runs are reused).\n\n"
            f"BoostLU at inference only on the models trained without it (alpha {BOOST:g}; tuned and per-class "
            "alpha: chosen from 1 ... 10 on the validation split's observed labels):\n\n"
            + markdown(inference, ["none", f"alpha {BOOST:g}", "tuned alpha", "per-class alpha"], "method, form")
            + f"\n\nBoostLU in training and inference (alpha {BOOST:g}):\n\n"
            + markdown(rows, training, "method") + "\n")
    (out / "forms.json").write_text(json.dumps({"source": args.source, "seeds": args.seeds, "forms": FORMS, "alpha": BOOST,
                                                "test_map": {"training": rows, "inference": inference},
                                                "seconds": seconds, "machine": machine()}, indent=2))
    (out / "forms.md").write_text(text)
    print("\n" + text)


def noise_command(args) -> None:
    out = Path(args.out)
    bundle, base = setup(args.source, out)
    start = time.perf_counter()
    gains: dict[str, dict[str, dict[float, list[float]]]] = {}
    table: dict[str, dict[str, list[float]]] = {}
    for protocol, pattern in PROTOCOLS.items():
        for p in args.rates:
            observation = pattern.format(p=p)
            cells = table.setdefault(observation, {})
            for seed in args.seeds:
                stem = f"{protocol}-{p:g}-seed{seed}"
                plain = trained(base, bundle, out / "runs" / f"an-{stem}", method="an", seed=seed, observation=observation)
                boost = trained(base, bundle, out / "runs" / f"an-boost-{stem}", method="an", seed=seed,
                                observation=observation, alpha=BOOST, eval_alpha=BOOST)
                none = test_map(plain)
                inference = boosted_maps(plain, bundle, {"boostlu": FORMS["boostlu"]}, BOOST)["boostlu"][f"alpha {BOOST:g}"]
                for name, value in (("AN", none), ("AN + BoostLU (inference)", inference), ("AN + BoostLU (training)", test_map(boost))):
                    cells.setdefault(name, []).append(value)
                series = gains.setdefault(protocol, {})
                series.setdefault("inference only", {}).setdefault(p, []).append(inference - none)
                series.setdefault("training + inference", {}).setdefault(p, []).append(test_map(boost) - none)
    seconds = time.perf_counter() - start
    figure = Path(args.figure) if args.figure else out / "noise.png"
    draw_gains(gains, figure, bundle.name, args.seeds)
    text = (f"AN on {bundle.name} scenes under label noise, test mAP (%), mean ± std over seeds {args.seeds}; "
            f"BoostLU alpha {BOOST:g}; {machine()}; {seconds / 60:.0f} min in this command (finished runs are reused).\n\n"
            + markdown(table, ["AN", "AN + BoostLU (inference)", "AN + BoostLU (training)"], "observation") + "\n")
    (out / "noise.json").write_text(json.dumps({"source": args.source, "seeds": args.seeds, "rates": args.rates,
                                                "protocols": PROTOCOLS, "test_map": table,
                                                "gain": {k: {s: {str(p): v for p, v in d.items()} for s, d in series.items()}
                                                         for k, series in gains.items()},
                                                "seconds": seconds, "machine": machine()}, indent=2))
    (out / "noise.md").write_text(text)
    print("\n" + text + f"\nfigure: {figure}")


def draw_gains(gains: dict, path: Path, name: str, seeds: list[int]) -> None:
    """One panel per protocol: BoostLU's gain in test mAP against P, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gains), figsize=(5 * len(gains), 3.6), sharey=True)
    for ax, (protocol, series) in zip(np.atleast_1d(axes), gains.items()):
        for label, points in series.items():
            rates = sorted(points)
            means = [statistics.fmean(points[p]) for p in rates]
            stds = [statistics.stdev(points[p]) if len(points[p]) > 1 else 0.0 for p in rates]
            ax.errorbar(rates, means, yerr=stds, marker="o", capsize=3, label=f"BoostLU {label}")
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(f"{protocol} noise ({PROTOCOLS[protocol].split('+')[0]} + noise)")
        ax.set_xlabel("noise rate P")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("gain over AN, test mAP points")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"BoostLU (alpha {BOOST:g}) under label noise, AN on {name} scenes, mean ± std of {len(seeds)} seeds",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("forms", "noise"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--source", default="digits", help="scene objects: digits | fashion")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        if name == "forms":
            p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
        else:
            p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
            p.add_argument("--figure", help="where to write the figure (default: OUT/noise.png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    (forms_command if args.command == "forms" else noise_command)(args)


if __name__ == "__main__":
    main()
