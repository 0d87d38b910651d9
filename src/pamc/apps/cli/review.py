"""`pamc suggest-labels` and `pamc labels merge`: the labels your data is missing, reviewed and
merged into a new label file."""
from __future__ import annotations

import argparse

from .base import command, key_values


def suggest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="run folder (uses best/) or checkpoint folder")
    p.add_argument("--out", default="suggestions.csv", help="the CSV to write (image, class, score, rank, ...)")
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"],
                   help="whose unobserved labels to rank (default: the training and validation images)")
    p.add_argument("--scale", default="margin", choices=["margin", "rank", "raw"],
                   help="how classes are made comparable: margin past the calibrated threshold (default), "
                        "per-class rank, or the raw probability")
    p.add_argument("--top", type=int, help="keep the N best suggestions (default: every unobserved pair)")
    p.add_argument("--alpha", type=float, help="BoostLU alpha (default: the checkpoint's evaluation alpha)")
    p.add_argument("--review", metavar="HTML", help="also write the review page (one offline HTML file)")
    p.add_argument("--review-count", type=int, default=100, help="suggestions on the review page (the best N)")
    p.add_argument("--data", action="append", metavar="KEY=VALUE", help="other data (default: the training data)")
    p.add_argument("--device", default="auto")


@command("suggest-labels", "rank the unobserved labels of a run's images by evidence (and a review page)",
         suggest_arguments)
def suggest_labels(args: argparse.Namespace) -> int:
    from ...suggest import suggest_labels as suggest

    data = key_values(args.data, "--data") or None
    result = suggest(args.checkpoint, splits=args.splits, data=data, how=args.scale, top=args.top, alpha=args.alpha,
                     device=args.device, out=args.out)
    print(f"{len(result.rows)} of {result.unobserved} unobserved (image, class) pairs written to {args.out}, "
          f"best first ({args.scale} scale)")
    if args.review:
        from ...review import write_review

        write_review(args.checkpoint, result.rows, args.review, data=data, count=args.review_count, device=args.device)
        print(f"review page: {args.review} (accept a, reject r; export the decisions, then `pamc labels merge`)")
    return 0


def labels_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True)
    merge = actions.add_parser("merge", help="a new label file with the accepted suggestions as observed positives")
    merge.add_argument("--labels", required=True, help="the original label file (.csv or .jsonl; never changed)")
    merge.add_argument("--decisions", required=True, help="the review page's decisions CSV")
    merge.add_argument("--out", required=True, help="the new label file (.csv or .jsonl); provenance beside it")
    merge.add_argument("--by", help="who merges (default: the login name); rows without a reviewer get it")
    merge.add_argument("--reject-as-negative", action="store_true",
                       help="write rejected suggestions as observed negatives (default: leave them unobserved)")


@command("labels", "label files: `pamc labels merge` writes reviewed decisions into a new label file",
         labels_arguments)
def labels(args: argparse.Namespace) -> int:
    from ...review import merge_decisions

    summary = merge_decisions(args.labels, args.decisions, args.out, by=args.by,
                              reject_as_negative=args.reject_as_negative)
    print(f"wrote {summary['written']} (+ .provenance.json): {summary['accepted']} new positive(s), "
          f"{summary['negatives']} new negative(s), {summary['already']} already so; {args.labels} unchanged")
    return 0
