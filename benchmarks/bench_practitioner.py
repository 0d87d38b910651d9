"""The practitioner's measurements on the scenes, where the truth is known (docs/practitioner.md).

    OMP_NUM_THREADS=1 python benchmarks/bench_practitioner.py --out bench-practitioner \
        --figure docs/practitioner-review.png

On `pamc demo --quick`'s scenes (1000 / 200 / 400 train / val / test digit scenes of 64 px,
single positive labels, the pretrained scene CNN, 4 epochs, the demo's settings), for seeds 0 1 2:

1. Suggestions.  AN, AN + BoostLU, LL-Cp, LL-Cp + BoostLU and GR are trained; each ranks the
   unobserved (image, class) pairs of its training images (`pamc.suggest`) on every comparable
   scale; the precision of its top 1 / 5 / 10 % (a share of the unobserved pairs) and the share
   of all missing labels they recover.
2. One review round.  The AN + BoostLU model's top k suggestions (margin scale) are reviewed by
   the truth: true ones accepted (observed positives), false ones rejected (observed negatives);
   AN is retrained on the corrected labels, same seed; its test mAP against AN's and the full-label
   model's: the share of the AN -> full gap one round closes, per k.
3. Calibration.  AN, AN + BoostLU and LL-R + BoostLU: test CF1 / OF1 at 0.5 and at per-class
   thresholds tuned on the validation split with its full labels and with single-positive
   (partial) validation labels (`pamc.thresholds`).

Writes OUT/results.json and OUT/tables.md, and the review-round figure.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import pamc
from pamc.apps.demo import base_config, scene_settings
from pamc.checkpoint import load_model
from pamc.data.scenes import make_scenes
from pamc.inference import load_split
from pamc.metrics import multilabel_metrics
from pamc.runtime import Runtime, predict
from pamc.suggest import COMPARABLE, comparable, evidence, rank_unobserved
from pamc.thresholds import tune_thresholds

BOOST = 5.0
#: (label, method, training alpha, evaluation alpha)
SUGGESTERS = [("AN", "an", 1.0, 1.0), ("AN + BoostLU", "an", BOOST, BOOST), ("LL-Cp", "ll-cp", 1.0, 1.0),
              ("LL-Cp + BoostLU", "ll-cp", BOOST, BOOST), ("GR", "gr", 1.0, 1.0)]
CALIBRATED = ["AN", "AN + BoostLU", "LL-R + BoostLU"]
EXTRA = {"LL-R + BoostLU": ("ll-r", BOOST, BOOST), "Full label": ("full", 1.0, 1.0)}
TOPS = (1, 5, 10)  # percent of the unobserved pairs
REVIEWER = "AN + BoostLU"  # whose suggestions the simulated review reads


def slug(label: str) -> str:
    return label.lower().replace(" + ", "-").replace(" ", "-")


def train_run(label, method, alpha, eval_alpha, seed, base, bundle, out: Path, observed=None) -> Path:
    run = out / "runs" / f"{slug(label)}-seed{seed}"
    cfg = {**base, "method": method, "alpha": alpha, "eval_alpha": eval_alpha, "seed": seed, "out": str(run)}
    if observed is not None:  # reviewed labels: the training split carries them, used as given
        bundle = bundle_with(bundle, observed)
        cfg["observation"] = "as-given"
    t0 = time.perf_counter()
    result = pamc.train(cfg, bundle=bundle)
    print(f"  {label:28s} seed {seed}: test mAP {result.test_map:6.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.out


def bundle_with(bundle, observed):
    import copy

    other = copy.copy(bundle)
    other.train = copy.copy(bundle.train)
    other.train.observed = observed
    return other


def scored(run: Path, split: str):
    """(model's probabilities, CAM peaks, the split with the labels training saw, meta)."""
    model, meta = load_model(run)
    part = load_split(split, checkpoint=str(run))
    probs, peaks = evidence(model, part.images, meta.test_alpha, Runtime.create("cpu"))
    return probs, part, meta


def suggestion_quality(run: Path) -> dict:
    """Per scale: precision / recall of the top 1 / 5 / 10 % of the unobserved pairs, and how many
    classes the top 5 % covers."""
    probs, part, meta = scored(run, "train")
    observed, full = np.asarray(part.observed), np.asarray(part.full)
    missing = (observed == 0) & (full == 1)
    val_probs, val, _ = scored(run, "val")
    thresholds = np.asarray(tune_thresholds(val_probs, np.asarray(val.full))["values"])
    out = {}
    for how in COMPARABLE:
        rows, cols = rank_unobserved(comparable(probs, how, thresholds), observed)
        hits = missing[rows, cols]
        entry = {}
        for top in TOPS:
            n = math.ceil(rows.size * top / 100)
            entry[f"P@{top}%"] = 100 * hits[:n].mean()
            entry[f"R@{top}%"] = 100 * hits[:n].sum() / missing.sum()
        entry["classes@5%"] = int(np.unique(cols[:math.ceil(rows.size * 5 / 100)]).size)
        out[how] = entry
    out["pairs"] = {"unobserved": int((observed == 0).sum()), "missing": int(missing.sum())}
    return out


def reviewed_labels(run: Path, k: int) -> np.ndarray:
    """The training labels after reviewing the run's top k suggestions (margin scale) by the truth."""
    probs, part, _ = scored(run, "train")
    val_probs, val, _ = scored(run, "val")
    thresholds = np.asarray(tune_thresholds(val_probs, np.asarray(val.full))["values"])
    observed, full = np.asarray(part.observed).copy(), np.asarray(part.full)
    rows, cols = rank_unobserved(comparable(probs, "margin", thresholds), observed)
    rows, cols = rows[:k], cols[:k]
    observed[rows, cols] = np.where(full[rows, cols] == 1, 1.0, -1.0)
    return observed


def calibration(run: Path) -> dict:
    """Test CF1 / OF1 at 0.5 and at thresholds tuned on full and on single-positive val labels."""
    model, meta = load_model(run)
    rt = Runtime.create("cpu")
    val, test = load_split("val", checkpoint=str(run)), load_split("test", checkpoint=str(run))
    val_scores = predict(model, val.images, rt, alpha=meta.test_alpha).numpy()
    test_scores = predict(model, test.images, rt, alpha=meta.test_alpha).numpy()
    rules = {"0.5": 0.5,
             "tuned (full val)": np.asarray(tune_thresholds(val_scores, np.asarray(val.full))["values"]),
             "tuned (partial val)": np.asarray(tune_thresholds(val_scores, np.asarray(val.observed), partial=True)["values"])}
    out = {}
    for name, threshold in rules.items():
        m = multilabel_metrics(test_scores, test.full, threshold=threshold)
        out[name] = {"CF1": m["CF1"], "OF1": m["OF1"]}
    return out


def mean_sd(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def tables(results: dict, seeds: list[int]) -> str:
    q = results["suggestions"]
    lines = [f"### Suggestion precision and recall (margin scale; mean ± sd over seeds {' '.join(map(str, seeds))})\n",
             "| method | " + " | ".join(f"P@{t}%" for t in TOPS) + " | " + " | ".join(f"R@{t}%" for t in TOPS) + " |",
             "|---|" + "---:|" * (2 * len(TOPS))]
    for label in q:
        cells = [mean_sd(r["margin"][f"P@{t}%"] for r in q[label]) for t in TOPS]
        cells += [mean_sd(r["margin"][f"R@{t}%"] for r in q[label]) for t in TOPS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(q.values()))[0]["pairs"]
    lines.append(f"\n{first['unobserved']} unobserved pairs, {first['missing']} of them missing labels "
                 f"(true positives not observed); top 1 % = {math.ceil(first['unobserved'] / 100)} pairs.\n")
    lines += [f"### Comparable scales (P@5% and classes among the top 5 %, of {results['num_classes']})\n",
              "| method | " + " | ".join(f"{h} P@5%" for h in COMPARABLE) + " | " +
              " | ".join(f"{h} classes" for h in COMPARABLE) + " |", "|---|" + "---:|" * (2 * len(COMPARABLE))]
    for label in q:
        cells = [mean_sd(r[h]["P@5%"] for r in q[label]) for h in COMPARABLE]
        cells += [mean_sd(r[h]["classes@5%"] for r in q[label]) for h in COMPARABLE]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    review = results["review"]
    lines += [f"\n### One review round ({REVIEWER}'s top k reviewed, AN retrained; test mAP)\n",
              "| k | reviewed / missing | test mAP | gap closed |", "|---:|---:|---:|---:|"]
    for k, entry in review["rounds"].items():
        lines.append(f"| {k} | {100 * int(k) / review['missing']:.0f} % | {mean_sd(entry['map'])} | "
                     f"{mean_sd(entry['closed'])} % |")
    lines.append(f"\nAN alone: {mean_sd(review['an'])}; full labels: {mean_sd(review['full'])}.\n")
    lines += ["### Calibration (test split, mean ± sd over seeds)\n",
              "| method | CF1 @0.5 | CF1 tuned (full val) | CF1 tuned (partial val) | OF1 @0.5 | OF1 tuned (full val) | OF1 tuned (partial val) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rows in results["calibration"].items():
        rules = ["0.5", "tuned (full val)", "tuned (partial val)"]
        cells = [mean_sd(r[rule]["CF1"] for r in rows) for rule in rules] + [mean_sd(r[rule]["OF1"] for r in rows) for rule in rules]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    review = results["review"]
    ks = [int(k) for k in review["rounds"]]
    means = [statistics.mean(review["rounds"][str(k)]["map"]) for k in ks]
    sds = [statistics.stdev(review["rounds"][str(k)]["map"]) if len(review["rounds"][str(k)]["map"]) > 1 else 0 for k in ks]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.errorbar([0] + ks, [statistics.mean(review["an"])] + means, yerr=[0] + sds, marker="o", capsize=3,
                label="AN retrained after reviewing the top k")
    ax.axhline(statistics.mean(review["full"]), color="k", ls="--", lw=1, label="full labels")
    ax.axhline(statistics.mean(review["an"]), color="grey", ls=":", lw=1, label="AN (no review)")
    ax.set_xlabel(f"suggestions reviewed, k (of {review['missing']} missing labels)")
    ax.set_ylabel("test mAP (%)")
    ax.set_title("One review round of AN + BoostLU's suggestions (scenes)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-practitioner")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 300, 600, 1200])
    parser.add_argument("--figure", default="docs/practitioner-review.png")
    parser.add_argument("--smoke", action="store_true", help="tiny scenes and 1 epoch: checks the script, measures nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = Path(args.out)
    data = scene_settings("digits", quick=True)
    base = base_config(data, quick=True, device="cpu")
    if args.smoke:
        data.update(n_train=96, n_val=48, n_test=48)
        base.update(data=data, epochs=1)
    bundle = make_scenes(**{k: v for k, v in data.items() if k != "name"})
    print(f"{bundle.name}: {len(bundle.train)}/{len(bundle.val)}/{len(bundle.test)} scenes, {bundle.num_classes} classes, "
          f"{base['epochs']} epochs, seeds {args.seeds}", flush=True)
    runs: dict[str, dict[int, Path]] = {}
    for label, method, alpha, eval_alpha in SUGGESTERS + [(k, *v) for k, v in EXTRA.items()]:
        for seed in args.seeds:
            runs.setdefault(label, {})[seed] = train_run(label, method, alpha, eval_alpha, seed, base, bundle, out)
    results = {"num_classes": bundle.num_classes, "seeds": args.seeds, "data": data,
               "settings": {k: base[k] for k in ("backbone", "backbone_weights", "epochs", "batch_size", "lr", "lr_mult")},
               "suggestions": {label: [suggestion_quality(runs[label][s]) for s in args.seeds] for label, *_ in SUGGESTERS},
               "calibration": {label: [calibration(runs[label][s]) for s in args.seeds] for label in CALIBRATED}}
    full_maps = [json.loads((runs["Full label"][s] / "results.json").read_text())["test_map"] for s in args.seeds]
    an_maps = [json.loads((runs["AN"][s] / "results.json").read_text())["test_map"] for s in args.seeds]
    rounds = {}
    for k in args.ks:
        maps = []
        for s in args.seeds:
            observed = reviewed_labels(runs[REVIEWER][s], k)
            run = train_run(f"AN reviewed k{k}", "an", 1.0, 1.0, s, base, bundle, out, observed=observed)
            maps.append(json.loads((run / "results.json").read_text())["test_map"])
        closed = [100 * (m - a) / (f - a) for m, a, f in zip(maps, an_maps, full_maps)]
        rounds[str(k)] = {"map": maps, "closed": closed}
    missing = results["suggestions"][REVIEWER][0]["pairs"]["missing"]
    results["review"] = {"an": an_maps, "full": full_maps, "rounds": rounds, "missing": missing}
    results["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    results["seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = tables(results, args.seeds)
    (out / "tables.md").write_text(text)
    figure(results, Path(args.figure))
    print("\n" + text + f"\n({results['seconds']:.0f} s; figure {args.figure})")


if __name__ == "__main__":
    main()
