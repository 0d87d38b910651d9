"""Matplotlib figures for the explain tools, drawn on `Figure` objects with the Agg canvas.

Using `matplotlib.figure.Figure` directly (not pyplot) keeps no global figure state and needs no
display, so the tools work the same on a headless training server.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

CAM_UNITS = "attribution (CAM units)"


def save(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    """Write `fig` as PNG; `tight=False` for figures laid out already (`panel_grid`, constrained
    layout): a tight-bbox pass would draw them a second time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight" if tight else None)
    return path


def panel_grid(rows: int, cols: int, panel: tuple[float, float], gap: tuple[float, float],
               margins: tuple[float, float, float, float], colorbars: bool = False, **share):
    """(figure, rows x cols axes, colour-bar axes): panels of a fixed size in inches (width,
    height), gaps (between columns, between rows) and margins (left, right, top, bottom); with
    `colorbars`, one bar axis right of each row.  A fixed layout rather than constrained layout:
    that solver takes most of the drawing time of a many-panel figure, and `pamc demo` draws a
    dozen of them.  Titles on these panels pass `y=1`: a fixed position spares matplotlib measuring
    every axis to place each title."""
    (w, h), (wgap, hgap), (left, right, top, bottom) = panel, gap, margins
    bar = 0.3 if colorbars else 0.0  # its pad and width
    width = left + cols * w + (cols - 1) * wgap + bar + right
    height = top + rows * h + (rows - 1) * hgap + bottom
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, cols, squeeze=False, **share, gridspec_kw={
        "left": left / width, "right": (width - right - bar) / width, "bottom": bottom / height,
        "top": 1 - top / height, "wspace": wgap / w, "hspace": hgap / h})
    bars = [fig.add_axes(((width - right - bar + 0.1) / width, (bottom + (rows - 1 - r) * (h + hgap) + 0.05 * h) / height,
                          0.15 / width, 0.9 * h / height)) for r in range(rows)] if colorbars else []
    return fig, axes, bars


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
    names = [textwrap.fill(c, 26) for c in columns]
    header = 0.14 * max(n.count("\n") + 2 for n in names)  # the first row's titles: name lines + caption
    fig, axes, bars = panel_grid(len(rows), len(columns), (2.0, 2.0), (0.08, 0.3), (0.1, 0.75, header + 0.1, 0.1),
                                 colorbars=True)
    for r, (image, caption, maps) in enumerate(rows):
        vmax = max(float((m.abs() if signed else m.clamp(min=0)).max()) for m in maps)
        for c, cam in enumerate(maps):
            mappable = draw_overlay(axes[r, c], image, cam, vmax, signed)
            axes[r, c].set_title(f"{names[c]}\n{caption}" if r == 0 else caption, fontsize=8, y=1)
        fig.colorbar(mappable, cax=bars[r], label=CAM_UNITS)
    return save(fig, path, tight=False)


def histogram_figure(values: Mapping[str, Mapping[str, np.ndarray]], reference: str,
                     compared: Sequence[tuple[str, Optional[str]]], path: str | Path, bins: int = 60) -> Path:
    """Small multiples of CAM-value distributions, readable at any number of models: one row per
    compared model, one column per group of `values` ({group: {model: values}}, e.g. positive /
    negative classes).  Each panel shows the reference (grey, filled), the model and, where
    `compared` pairs it with the name of its boosted maps, those (dashed).  Bins are shared per
    group (over its central 99 %) and the x axis by all panels, so the rows compare directly; the
    legend sits above the panels."""
    groups = list(values)
    fig, axes, _ = panel_grid(len(compared), len(groups), (3.6, 1.25), (0.55, 0.15), (1.45, 0.15, 0.7, 0.5), sharex=True)
    edges = {}
    for g in groups:  # over the central 99 % of the group's values: rare outliers would squash the rest
        pooled = np.concatenate([v for v in values[g].values() if v.size] or [np.zeros(1)])
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        edges[g] = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)

    def density(group: str, model: str) -> np.ndarray:  # as hist(density=True): over the values inside the bins
        v = values[group][model]
        counts = np.histogram(v, edges[group])[0]
        return counts / max(counts.sum(), 1) / np.diff(edges[group])

    # stairs, not hist: one path per series instead of a patch per bin (hist's patches took most of the time)
    reference_density = {g: density(g, reference) for g in groups}
    for r, (name, boosted) in enumerate(compared):
        for c, group in enumerate(groups):
            ax = axes[r, c]
            ax.stairs(reference_density[group], edges[group], fill=True, color="0.6", alpha=0.5,
                      label=f"{reference} (reference)")
            ax.stairs(density(group, name), edges[group], lw=1.4, color="tab:blue", label="the row's model")
            if boosted is not None:
                ax.stairs(density(group, boosted), edges[group], lw=1.4, ls="--", color="tab:red",
                          label="the row's model" + boosted.removeprefix(name))
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.25)
            if r == 0:
                ax.set_title(group, fontsize=10, y=1)
            if c == 0:
                ax.set_ylabel(textwrap.fill(name, 16), fontsize=9, fontweight="bold")
    for ax in axes[-1]:
        ax.set_xlabel(f"{CAM_UNITS}, central 99 % of the values", fontsize=9)
    fig.supylabel("density", x=0.1 / fig.get_figwidth(), ha="left", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1), ncol=len(labels), fontsize=9, frameon=False)
    return save(fig, path, tight=False)


def scatter_figure(panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], reference: str,
                   path: str | Path, columns: int = 4) -> Path:
    """Per compared model: reference CAM value (x) vs the model's (y) at the same position,
    coloured by whether the class is present; the y = x line marks equal attribution.  Panels wrap
    into rows of `columns` with a shared x axis (the reference) and one legend above them."""
    columns = max(1, min(columns, len(panels)))
    fig, axes, _ = panel_grid(-(-len(panels) // columns), columns, (2.4, 2.1), (0.5, 0.55), (0.75, 0.15, 0.65, 0.55),
                              sharex=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, (x, y, positive)) in zip(axes.flat, panels.items()):
        for mask, label, colour in ((~positive, "negative class", "tab:blue"), (positive, "positive class", "tab:red")):
            ax.scatter(x[mask], y[mask], s=3, alpha=0.4, c=colour, label=label, rasterized=True)
        ax.axline((0, 0), slope=1, color="k", ls="--", lw=1, label="y = x (same attribution)")  # sets no limits
        ax.set_title(name, fontsize=9, y=1)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    for ax in axes[:, 0]:
        ax.set_ylabel("model CAM", fontsize=9)
    for c in range(columns):
        visible = [ax for ax in axes[:, c] if ax.get_visible()]
        visible[-1].set_xlabel(f"{reference} CAM", fontsize=9)
        visible[-1].xaxis.set_tick_params(labelbottom=True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1), ncol=len(labels), fontsize=9,
               markerscale=4, frameon=False)
    return save(fig, path, tight=False)


def ratio_figure(values: Mapping[str, Sequence[Optional[float]]], categories: Sequence[str], path: str | Path,
                 title: str) -> Path:
    """Ratios to a reference as a models x categories table of coloured, numbered cells (readable
    at any number of models, unlike grouped bars): colour on a log scale centred on 1 (blue below,
    red above, saturating at 16x either way; the numbers stay exact), None / NaN = no pair to
    compare (grey, "-")."""
    from matplotlib.colors import LogNorm

    table = np.array([[np.nan if v is None else v for v in row] for row in values.values()], dtype=float)
    finite = table[np.isfinite(table) & (table > 0)]
    spread = float(np.abs(np.log(finite)).max()) if finite.size else 1.0
    spread = min(max(spread, np.log(1.25)), np.log(16))
    norm = LogNorm(np.exp(-spread), np.exp(spread), clip=True)
    fig = Figure(figsize=(max(4.5, 0.62 * len(categories) + 2.8), 0.38 * len(values) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor("0.88")
    image = ax.imshow(np.where(table > 0, table, np.nan), cmap="RdBu_r", norm=norm, aspect="auto")
    for (r, c), v in np.ndenumerate(table):
        if np.isfinite(v):
            dark = abs(np.log(max(v, 1e-12))) > 0.6 * spread
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
        else:
            ax.text(c, r, "-", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xticks(range(len(categories)), categories, rotation=45 if max(map(len, categories), default=0) > 3 else 0,
                  ha="right" if max(map(len, categories), default=0) > 3 else "center", fontsize=8)
    ax.set_yticks(range(len(values)), list(values), fontsize=8)
    ax.set_xlabel("class", fontsize=9)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, label="ratio (log scale; 1 = same)", shrink=0.9)
    ticks = [2.0 ** k for k in range(-4, 5) if norm.vmin <= 2.0 ** k <= norm.vmax * (1 + 1e-9)]
    bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
    bar.minorticks_off()
    return save(fig, path, tight=False)


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


def boost_comparison_figure(images: torch.Tensor, pairs: Sequence[tuple[int, int]], cams_full: torch.Tensor,
                            cams_partial: torch.Tensor, class_names: Sequence[str], alpha: float,
                            path: str | Path) -> Path:
    """image | CAM of the full-label model | CAM of the partial-label model | that CAM boosted, one
    row per (image, class) of `pairs`, one shared colour scale per row (not normalised per map: the
    difference in scale is the paper's finding).  CAMs are (N, C, H, W) at the images' size."""
    from ..activation import boostlu

    fig, axes, bars = panel_grid(len(pairs), 4, (2.1, 2.1), (0.1, 0.1), (0.35, 0.75, 0.3, 0.1), colorbars=True)
    titles = ["image", "full-label CAM", "AN CAM", f"AN CAM, BoostLU alpha={alpha:g}"]
    for r, (n, c) in enumerate(pairs):
        maps = [cams_full[n, c], cams_partial[n, c], boostlu(cams_partial[n, c], alpha)]
        limit = float(max(m.abs().max() for m in maps))
        axes[r, 0].imshow(images[n, 0].numpy(), cmap="gray")
        axes[r, 0].set_ylabel(class_names[c])
        for k, m in enumerate(maps, start=1):
            im = axes[r, k].imshow(m.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(im, cax=bars[r], label="attribution")
        for k in range(4):
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
            if r == 0:
                axes[r, k].set_title(titles[k], fontsize=9, y=1)
    return save(fig, path, tight=False)
