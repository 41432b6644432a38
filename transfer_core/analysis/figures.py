"""Pictures of the analysis's findings (matplotlib's object API: no pyplot, no global state).

Every function writes one PNG and returns its path. Images are uint8 tensors ``(3, R, R)``.
Sign convention in every picture: positive influence = including the source class helps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _show(ax, image: torch.Tensor, title: str = "", fontsize: int = 7) -> None:
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


def _norm(values: np.ndarray) -> TwoSlopeNorm:
    span = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    return TwoSlopeNorm(0.0, -max(span, 1e-9), max(span, 1e-9))


def heatmap(table: pd.DataFrame, significant: pd.DataFrame, output: str, path: Path) -> Path:
    """Source classes (rows) x target classes (columns); dots mark intervals excluding zero."""
    values = table.to_numpy(float)
    fig = Figure(figsize=(1.2 + 0.55 * values.shape[1], 1.5 + 0.18 * values.shape[0]))
    ax = fig.subplots()
    im = ax.imshow(values, cmap="RdBu", norm=_norm(values), aspect="auto")
    rows, cols = np.nonzero(significant.to_numpy(bool))
    ax.scatter(cols, rows, s=6, c="black", marker="o")
    ax.set_xticks(range(values.shape[1]), table.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(values.shape[0]), table.index, fontsize=max(3, min(7, 600 // values.shape[0])))
    ax.set_xlabel("target class")
    ax.set_ylabel("source class")
    fig.colorbar(im, ax=ax, label=f"influence on {output} (+ = helps)")
    ax.set_title("Influence of each source class on each target class\n(dot: interval excludes zero)", fontsize=9)
    return _save(fig, path)


def ranking(helpful: pd.DataFrame, detrimental: pd.DataFrame, output: str, path: Path) -> Path:
    """Bars with intervals: most helpful classes on top, most detrimental at the bottom."""
    table = pd.concat([helpful, detrimental.iloc[::-1]])
    fig = Figure(figsize=(6, 1 + 0.25 * max(len(table), 1)))
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    err = np.abs(np.stack([table["influence"] - table["ci_low"], table["ci_high"] - table["influence"]]))
    colours = np.where(table["influence"] > 0, "tab:blue", "tab:red")
    ax.barh(y, table["influence"], xerr=err, color=colours, capsize=2)
    ax.set_yticks(y, table["class_name"], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"influence on the whole target's {output} (+ = including the class helps)")
    ax.set_title("Most helpful (blue) and most detrimental (red) source classes", fontsize=9)
    return _save(fig, path)


def image_grid(target_name: str, target_examples: list[torch.Tensor], rows: list[tuple[str, float, list]],
               path: Path, title: str | None = None) -> Path:
    """One target class: example target images, then one row of example images per chosen source
    class (``(label, influence, images)``), top positive first, then top negative.

    Each row is drawn as one strip of images (one axes a row, not one an image: a tenth of the
    drawing time, which ten grids per analysis spent mostly on laying out 42 axes each).
    """
    n_cols = max([len(target_examples)] + [len(images) for _, _, images in rows] + [1])
    fig = Figure(figsize=(1.1 * n_cols + 1.5, 1.2 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, 1, squeeze=False)[:, 0]
    _show(axes[0], _strip(target_examples, n_cols))
    axes[0].set_ylabel(f"target\n{target_name}", fontsize=7)
    for ax, (label, influence, images) in zip(axes[1:], rows):
        _show(ax, _strip(images, n_cols))
        ax.set_ylabel(f"{label}\n{influence:+.3g}", fontsize=7, color="tab:blue" if influence > 0 else "tab:red")
    fig.suptitle(title or f"Target class {target_name!r}: top positive (blue) and negative (red) source classes",
                 fontsize=9)
    return _save(fig, path)


def _strip(images: list[torch.Tensor], n_cols: int, gap: int = 2) -> torch.Tensor:
    """Images ``(3, R, R)`` side by side with ``gap`` white pixels between, padded white to ``n_cols`` images."""
    if not images:
        return torch.full((3, 8, 8 * n_cols), 255, dtype=torch.uint8)
    side = images[0].shape[-1]
    blank = torch.full((3, side, side), 255, dtype=torch.uint8)
    spacer = torch.full((3, side, gap), 255, dtype=torch.uint8)
    cells = [images[j] if j < len(images) else blank for j in range(n_cols)]
    return torch.cat([part for cell in cells for part in (cell, spacer)][:-1], dim=2)


def pairs(rows: list[tuple[str, list[tuple[str, torch.Tensor]]]], title: str, path: Path) -> Path:
    """Rows of captioned images, e.g. a test image next to its nearest source images."""
    n_cols = max([len(images) for _, images in rows] + [1])
    fig = Figure(figsize=(1.6 * n_cols + 1, 1.5 * max(len(rows), 1)), layout="constrained")
    axes = fig.subplots(max(len(rows), 1), n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (label, images) in enumerate(rows):
        for j, (caption, image) in enumerate(images):
            axes[i, j].axis("on")
            _show(axes[i, j], image, caption, fontsize=6)
        axes[i, 0].set_ylabel(label, fontsize=6)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "none found", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def misleading(table: pd.DataFrame, output: str, path: Path, top: int = 25) -> Path:
    """The most negative (source class, target class) influences with their intervals."""
    table = table.head(top)
    fig = Figure(figsize=(6, 1 + 0.25 * max(len(table), 1)))
    ax = fig.subplots()
    if len(table):
        y = np.arange(len(table))[::-1]
        err = np.abs(np.stack([table["influence"] - table["ci_low"], table["ci_high"] - table["influence"]]))
        strong = table["significant_familywise"].to_numpy(bool) if "significant_familywise" in table else False
        ax.barh(y, table["influence"], xerr=err, color=np.where(strong, "darkred", "salmon"), capsize=2)
        ax.set_yticks(y, [f"{s} -> {t}" for s, t in zip(table["class_name"], table["target_class"])], fontsize=7)
    else:
        ax.text(0.5, 0.5, "no significantly negative pair", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"influence on the target class's {output} (- = including the class hurts)")
    ax.set_title("Misleading source classes: significant negative influence on a target class\n"
                 "(dark: also significant after Bonferroni over all pairs)", fontsize=9)
    return _save(fig, path)


def stability(table: pd.DataFrame, path: Path) -> Path:
    """Split-half Spearman correlation of class rankings against runs per half."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.errorbar(table["n_runs_per_half"], table["spearman_mean"], yerr=table["spearman_std"], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("runs in each half")
    ax.set_ylabel("Spearman rank correlation")
    ax.set_title("How the class ranking stabilises: two disjoint halves of the runs", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def datamodel(table: pd.DataFrame, output: str, path: Path) -> Path:
    """Difference-of-means against ridge-datamodel class influences on the whole target."""
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.subplots()
    ax.scatter(table["difference_of_means"], table["ridge"], s=12)
    for _, row in table.iterrows() if len(table) <= 30 else []:
        ax.annotate(row["class_name"], (row["difference_of_means"], row["ridge"]), fontsize=6)
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel(f"difference of means ({output})")
    ax.set_ylabel(f"ridge datamodel coefficient ({output})")
    ax.set_title("Two estimators of class influence on the whole target", fontsize=9)
    return _save(fig, path)
