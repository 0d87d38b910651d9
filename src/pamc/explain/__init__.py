"""Explanations as a first-class tool: CAMs in absolute units, the full-vs-partial gap,
localisation on known boxes, overlays and reports, evaluation-alpha tuning, and an interactive
HTML viewer of several models' CAMs."""
from .alpha import store_eval_alpha, tune_alpha, tune_alpha_command
from .cams import cams, upsample
from .gap import compare_explanations, gap_measures
from .localization import localization_scores
from .overlays import explain_command, save_overlays
from .viewer import view_data, write_view

__all__ = ["cams", "upsample", "save_overlays", "explain_command", "gap_measures", "compare_explanations",
           "localization_scores", "tune_alpha", "tune_alpha_command", "store_eval_alpha", "view_data", "write_view"]
