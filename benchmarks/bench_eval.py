"""Evaluation speed: pamc's vectorised AP/mAP against a per-class sklearn loop (not a test).

    python benchmarks/bench_eval.py [--quick] [--repeats R] [--metrics-only]

Prints a markdown table: wall time of pamc (best of R runs) and of the sklearn loop, the
largest per-class AP difference between the two, and pamc's peak memory above the inputs.
Where the sklearn loop would take minutes it runs on an evenly spaced subset of the classes
and its time is scaled by C / subset (the table says so).  "sort all" is numpy's sort of every
class's scores (columns already transposed): the floor of any sort-based AP on full labels;
pamc adds the transposition and the positives' binary searches.  On partial labels pamc sorts
only the annotated scores (the next row's "sort all" is the same score matrix).  pamc and the sklearn loop are both
single-threaded numpy, so torch's thread count does not matter here.

A second table times the thresholded metrics (`multilabel_metrics` at 0.5 and top-3, and
`standard_metrics`, which is both) on the OpenImages-like partial labels, dense and as a
`SparseLabels` store; the check against sklearn (per class on the annotated images, pooled for
OP/OR) is at threshold 0.5 on a subset of the classes.  ``--metrics-only`` runs just that table.
"""
from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np
import sklearn
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from pamc.metrics import average_precision, multilabel_metrics, partial_average_precision, standard_metrics
from pamc.sparse_labels import SparseLabels


def sklearn_ap(scores, labels, partial):
    """Per-class sklearn reference: annotated rows only when partial; AP 0 without positives (spec 4)."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        rows = labels[:, c] != 0 if partial else slice(None)
        y, s = labels[rows, c] == 1, scores[rows, c]
        if s.size:
            out[c] = average_precision_score(y, s) if y.any() else 0.0
    return out


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every few ms (Linux /proc)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @property
    def extra_mb(self):
        return None if self.start is None else (self.peak - self.start) / 2**20

    @staticmethod
    def _rss():
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None


def best_time(fn, repeats):
    best, result, peak = float("inf"), None, 0.0
    for _ in range(repeats):
        with PeakMemory() as memory:
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        peak = None if memory.extra_mb is None else max(peak, memory.extra_mb)
    return best, result, peak


def full_case(n, c, rng):
    """0/1 targets with per-class prevalence between 0.5 % and 20 %, float32 scores with some signal."""
    targets = np.empty((n, c), dtype=np.int8)
    scores = np.empty((n, c), dtype=np.float32)
    prevalence = rng.uniform(0.005, 0.2, c).astype(np.float32)
    for start in range(0, n, 10_000):  # row blocks keep the float temporaries small at 125k x 5k
        block = slice(start, min(start + 10_000, n))
        targets[block] = rng.random((block.stop - start, c), dtype=np.float32) < prevalence
        scores[block] = rng.random((block.stop - start, c), dtype=np.float32) + 0.3 * targets[block]
    return scores, targets


def sparse_partial_case(scores, per_image, rng):
    """OpenImages-like labels: ~per_image annotated classes per image, Zipf-like class popularity, 40 % positive."""
    n, c = scores.shape
    popularity = 1.0 / np.arange(1, c + 1) ** 0.8
    rows = np.repeat(np.arange(n), per_image)
    cols = rng.choice(c, size=rows.size, p=popularity / popularity.sum())
    labels = np.zeros((n, c), dtype=np.int8)
    labels[rows, cols] = np.where(rng.random(rows.size) < 0.4, 1, -1)
    return labels


def sort_floor(scores, block=64):
    """Seconds numpy needs to sort every class's scores, timed on blocks of transposed columns."""
    total = 0.0
    for start in range(0, scores.shape[1], block):
        by_class = np.ascontiguousarray(scores[:, start:start + block].T)
        t0 = time.perf_counter()
        np.sort(by_class, axis=1)
        total += time.perf_counter() - t0
    return total


def run_case(name, scores, labels, partial, sklearn_classes, repeats):
    n, c = scores.shape
    pamc_fn = partial_average_precision if partial else average_precision
    pamc_s, ap, peak = best_time(lambda: pamc_fn(scores, labels), repeats)
    sort_s = None if partial else sort_floor(scores)
    subset = np.linspace(0, c - 1, min(sklearn_classes, c)).astype(int)
    start = time.perf_counter()
    reference = sklearn_ap(scores[:, subset], labels[:, subset], partial)
    sklearn_s = (time.perf_counter() - start) * c / subset.size
    both = ~np.isnan(reference)
    assert np.array_equal(both, ~np.isnan(ap[subset])), "pamc and sklearn disagree on which classes are evaluable"
    return {
        "case": name, "shape": f"{n:,} x {c:,}", "annotated": f"{(labels != 0).mean():.2%}" if partial else "100%",
        "pamc": pamc_s, "sort": sort_s, "sklearn": sklearn_s,
        "measured": "all classes" if subset.size == c else f"{subset.size} classes, x{c / subset.size:.3g}",
        "diff": float(np.abs(ap[subset][both] - reference[both]).max()), "peak": peak,
    }


def sklearn_partial_metrics(scores, labels, threshold=0.5):
    """CP, CR, OP, OR in percent from sklearn, per class on its annotated images (zero_division 0)."""
    per_class, pooled_y, pooled_p = [], [], []
    for c in range(scores.shape[1]):
        rows = labels[:, c] != 0
        if rows.any():
            y, p = labels[rows, c] == 1, scores[rows, c] >= threshold
            per_class.append([precision_score(y, p, zero_division=0), recall_score(y, p, zero_division=0)])
            pooled_y.append(y)
            pooled_p.append(p)
    y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
    cp, cr = 100 * np.mean(per_class, axis=0)
    return {"CP": cp, "CR": cr, "OP": 100 * precision_score(y, p, zero_division=0),
            "OR": 100 * recall_score(y, p, zero_division=0)}


def run_metrics_case(name, scores, labels, dense_labels, sklearn_classes, repeats):
    """Seconds for multilabel_metrics (0.5, top-3) and standard_metrics, and the largest difference
    from sklearn at 0.5 on evenly spaced classes (pamc run on the same columns)."""
    n, c = scores.shape
    threshold_s, _, peak = best_time(lambda: multilabel_metrics(scores, labels), repeats)
    top_s, _, top_peak = best_time(lambda: multilabel_metrics(scores, labels, top_k=3), repeats)
    standard_s, _, _ = best_time(lambda: standard_metrics(scores, labels), repeats)
    subset = np.linspace(0, c - 1, min(sklearn_classes, c)).astype(int)
    sub_scores, sub_labels = scores[:, subset], dense_labels[:, subset]
    start = time.perf_counter()
    reference = sklearn_partial_metrics(sub_scores, sub_labels)
    sklearn_s = (time.perf_counter() - start) * c / subset.size
    ours = multilabel_metrics(sub_scores, sub_labels)
    return {
        "case": name, "shape": f"{n:,} x {c:,}", "annotated": f"{(dense_labels != 0).mean():.2%}",
        "threshold": threshold_s, "top": top_s, "standard": standard_s, "sklearn": sklearn_s,
        "measured": f"{subset.size} classes, x{c / subset.size:.3g}",
        "diff": max(abs(ours[k] - reference[k]) for k in reference),
        "peak": None if peak is None or top_peak is None else max(peak, top_peak),
    }


def print_metrics_table(rows):
    print("| thresholded metrics | images x classes | annotated | @0.5 (s) | top-3 (s) | standard_metrics (s) "
          "| sklearn loop @0.5 (s) | sklearn measured on | max abs diff (points) | pamc peak extra MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak"] is None else f"{r['peak']:.0f}"
        print(f"| {r['case']} | {r['shape']} | {r['annotated']} | {r['threshold']:.3f} | {r['top']:.3f} | "
              f"{r['standard']:.3f} | {r['sklearn']:.2f} | {r['measured']} | {r['diff']:.1e} | {peak} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, one repeat, sklearn on class subsets")
    parser.add_argument("--repeats", type=int, default=None, help="pamc time = best of R runs (default 3, quick 1)")
    parser.add_argument("--metrics-only", action="store_true", help="only the thresholded-metrics table")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, numpy {np.__version__}, "
          f"sklearn {sklearn.__version__}, load average at start {os.getloadavg()[0]:.2f}\n")

    rows = []
    if not args.metrics_only:
        for n, c in [(5_000, 20), (20_000, 80), (60_000, 600)]:
            scores, targets = full_case(n, c, rng)
            rows.append(run_case("full", scores, targets, False, 60 if args.quick else c, repeats))
    n, c = (125_000, 500) if args.quick else (125_000, 5_000)
    scores, targets = full_case(n, c, rng)
    labels = sparse_partial_case(scores, per_image=10, rng=rng)
    scores[labels == 1] += 0.3
    sparse = SparseLabels.from_dense(labels)
    sklearn_classes = 100 if args.quick else 500
    metric_rows = [run_metrics_case("partial, dense 1/0/-1", scores, labels, labels, sklearn_classes, repeats),
                   run_metrics_case("partial, SparseLabels", scores, sparse, labels, sklearn_classes, repeats)]
    if args.metrics_only:
        print_metrics_table(metric_rows)
        return
    rows.append(run_case("partial, OpenImages-like", scores, labels, True, 100 if args.quick else 500, repeats))
    rows.append(run_case("full, every label known", scores, targets, False, 25 if args.quick else 100, 1))

    print("| case | images x classes | annotated | pamc (s) | sort all (s) | sklearn loop (s) | sklearn measured on "
          "| speed-up | max abs AP diff | pamc peak extra MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "n/a" if r["peak"] is None else f"{r['peak']:.0f}"
        sort = "-" if r["sort"] is None else f"{r['sort']:.3f}"
        print(f"| {r['case']} | {r['shape']} | {r['annotated']} | {r['pamc']:.3f} | {sort} | "
              f"{r['sklearn']:.2f} | {r['measured']} | {r['sklearn'] / r['pamc']:.0f}x | {r['diff']:.1e} | {peak} |")
    print()
    print_metrics_table(metric_rows)


if __name__ == "__main__":
    main()
