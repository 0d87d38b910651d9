"""Matplotlib figures for the explain tools, drawn on `Figure` objects with the Agg canvas.

Using `matplotlib.figure.Figure` directly (not pyplot) keeps no global figure state and needs no
display, so the tools work the same on a headless training server.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

CAM_UNITS = "attribution (CAM units)"


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def color_limits(vmax: float, signed: bool) -> tuple[float, float, str]:
    """Colour range and map: signed maps are centred on 0 (blue < 0 < red), else 0..vmax."""
    vmax = max(float(vmax), 1e-12)
    return (-vmax, vmax, "RdBu_r") if signed else (0.0, vmax, "jet")


def draw_overlay(ax, image: torch.Tensor, cam: torch.Tensor, vmax: float, signed: bool = False,
                 opacity: float = 0.5):
    """Image (3 x H x W uint8) with an upsampled CAM (H x W) on top; returns the CAM's mappable."""
    vmin, vmax, cmap = color_limits(vmax, signed)
    values = cam.numpy() if signed else cam.clamp(min=0).numpy()
    ax.imshow(image.permute(1, 2, 0).numpy())
    mappable = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=opacity)
    ax.set_axis_off()
    return mappable


def overlay_figure(image: torch.Tensor, cam: torch.Tensor, path: str | Path, title: str, vmax: float,
                   signed: bool = False, opacity: float = 0.5) -> Path:
    fig = Figure(figsize=(4.2, 3.6))
    ax = fig.add_subplot()
    mappable = draw_overlay(ax, image, cam, vmax, signed, opacity)
    ax.set_title(title, fontsize=9)
    fig.colorbar(mappable, ax=ax, label=CAM_UNITS)
    return save(fig, path)


def examples_figure(rows: Sequence[tuple[torch.Tensor, str, Sequence[torch.Tensor]]], columns: Sequence[str],
                    path: str | Path, signed: bool = False) -> Path:
    """One row per (image, class caption, maps of each model); each row shares one colour scale,
    so a weaker map of the same region shows up as paler, not as identical."""
    fig = Figure(figsize=(2.6 * len(columns) + 1, 2.4 * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, (image, caption, maps) in enumerate(rows):
        vmax = max(float((m.abs() if signed else m.clamp(min=0)).max()) for m in maps)
        for c, cam in enumerate(maps):
            mappable = draw_overlay(axes[r, c], image, cam, vmax, signed)
            axes[r, c].set_title(f"{columns[c]}\n{caption}" if r == 0 else caption, fontsize=8)
        fig.colorbar(mappable, ax=list(axes[r]), label=CAM_UNITS, shrink=0.9)
    return save(fig, path)


def histogram_figure(panels: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, bins: int = 60) -> Path:
    """One panel per group (e.g. positive / negative classes), one step histogram per model,
    with bins shared across models so the shapes compare directly."""
    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items()):
        values = [v for v in series.values() if v.size]
        if values:
            edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
            for name, v in series.items():
                if v.size:
                    ax.hist(v, bins=edges, histtype="step", density=True, label=name)
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(CAM_UNITS)
        ax.set_ylabel("density")
    return save(fig, path)


def scatter_figure(panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], reference: str,
                   path: str | Path) -> Path:
    """Per compared model: reference CAM value (x) vs the model's (y) at the same position,
    coloured by whether the class is present; the y = x line marks equal attribution."""
    fig = Figure(figsize=(4.2 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, (x, y, positive)) in zip(axes, panels.items()):
        for mask, label, colour in ((~positive, "negative class", "tab:blue"), (positive, "positive class", "tab:red")):
            ax.scatter(x[mask], y[mask], s=3, alpha=0.4, c=colour, label=label, rasterized=True)
        if x.size:
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.set_xlabel(f"{reference} CAM")
        ax.set_ylabel(f"{name} CAM")
        ax.legend(fontsize=7, markerscale=3)
    return save(fig, path)


def bar_figure(values: Mapping[str, Sequence[Optional[float]]], categories: Sequence[str], path: str | Path,
               ylabel: str, reference_line: Optional[float] = None) -> Path:
    """Grouped bars: one group per category (class), one bar per series (model); None = no bar."""
    fig = Figure(figsize=(max(5.0, 0.45 * len(categories) * max(1, len(values)) + 1.5), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(values))
    x = np.arange(len(categories))
    for i, (name, series) in enumerate(values.items()):
        ax.bar(x + i * width, [np.nan if v is None else v for v in series], width, label=name)
    if reference_line is not None:
        ax.axhline(reference_line, color="k", ls="--", lw=1)
    ax.set_xticks(x + width * (len(values) - 1) / 2, categories, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save(fig, path)


def line_figure(x: Sequence[float], y: Sequence[float], path: str | Path, xlabel: str, ylabel: str,
                title: str = "", mark: Optional[float] = None) -> Path:
    fig = Figure(figsize=(4.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(x, y, "o-")
    if mark is not None:
        ax.axvline(mark, color="k", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return save(fig, path)
