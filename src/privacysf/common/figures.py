"""Pictures people would rather look at than numbers: overlays, montages and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from privacysf.common.runs import atomic_write  # noqa: E402

CLASS_COLOURS = ["#00000000", "#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500"]


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def overlay_grid(
    path: Path,
    images: np.ndarray,
    columns: dict[str, np.ndarray | None],
    num_classes: int,
    rotations: int = 0,
    row_titles: list[str] | None = None,
) -> None:
    """One row per slice: the image, then the image overlaid with each label map of ``columns``.

    ``images`` is (N, H, W); each column is (N, H, W) labels (``None`` shows the bare image).
    """
    cmap = ListedColormap(CLASS_COLOURS[: max(num_classes, 2)])
    n = len(images)
    fig, axes = plt.subplots(n, len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 2.2 * n), squeeze=False)
    for i in range(n):
        picture = np.rot90(images[i], rotations)
        axes[i, 0].imshow(picture, cmap="gray")
        axes[i, 0].set_ylabel(row_titles[i] if row_titles else "", fontsize=7)
        for j, (title, labels) in enumerate(columns.items(), start=1):
            axes[i, j].imshow(picture, cmap="gray")
            if labels is not None:
                axes[i, j].imshow(
                    np.rot90(labels[i], rotations),
                    cmap=cmap,
                    vmin=0,
                    vmax=cmap.N - 1,
                    alpha=0.45,
                    interpolation="nearest",
                )
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def pick_rows(masks: np.ndarray, count: int) -> np.ndarray:
    """Evenly spaced slice indices, favouring slices with structures, for a readable montage."""
    labelled = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    pool = labelled if len(labelled) >= count else np.arange(len(masks))
    return pool[np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)]


def curves(path: Path, histories: dict[str, list[dict[str, float]]]) -> None:
    """Training loss and validation score per epoch, one line per trained network."""
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], label=name)
        val_ax.plot(epochs, [h["val_score"] for h in history], label=name)
    loss_ax.set(title="training loss", xlabel="epoch", yscale="log")
    val_ax.set(title="validation score (higher is better)", xlabel="epoch")
    loss_ax.legend(fontsize=8)
    val_ax.legend(fontsize=8)
    _save(fig, path)


def image_grid(
    path: Path, panels: dict[str, np.ndarray], rotations: int = 0, cmaps: dict[str, str] | None = None
) -> None:
    """A row of pictures per entry of ``panels`` (each (N, H, W)), titled by its key.

    Rows are drawn in grey unless ``cmaps`` names another colour map for them."""
    rows = len(panels)
    n = max(len(v) for v in panels.values())
    fig, axes = plt.subplots(rows, n, figsize=(1.8 * n, 1.9 * rows), squeeze=False)
    for r, (title, stack) in enumerate(panels.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(stack):
                ax.imshow(np.rot90(stack[c], rotations), cmap=(cmaps or {}).get(title, "gray"))
        axes[r, 0].set_ylabel(title, fontsize=8)
    _save(fig, path)


def scatter_labelled(
    path: Path,
    x: list[float],
    y: list[float],
    labels: list[str],
    groups: list[str],
    xlabel: str,
    ylabel: str,
    title: str,
    hlines: dict[str, float] | None = None,
    vlines: dict[str, float] | None = None,
) -> None:
    """Labelled points coloured by group, with named reference lines (a trade-off curve)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for group in dict.fromkeys(groups):
        pick = [i for i, g in enumerate(groups) if g == group]
        ax.scatter([x[i] for i in pick], [y[i] for i in pick], label=group, s=36)
    for xi, yi, label in zip(x, y, labels, strict=True):
        ax.annotate(label, (xi, yi), fontsize=6, xytext=(4, 2), textcoords="offset points")
    for name, value in (hlines or {}).items():
        ax.axhline(value, ls="--", lw=0.8, color="grey")
        ax.annotate(name, (ax.get_xlim()[0], value), fontsize=7, color="grey", va="bottom")
    for name, value in (vlines or {}).items():
        ax.axvline(value, ls=":", lw=0.8, color="grey")
        ax.annotate(name, (value, ax.get_ylim()[0]), fontsize=7, color="grey", rotation=90, va="bottom")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(title="key", fontsize=8)
    _save(fig, path)


def dice_bars(
    path: Path,
    table: dict[str, dict[str, float]],
    groups: list[str],
    labels: dict[str, str],
    errors: dict[str, dict[str, float]] | None = None,
    title: str = "per-center test Dice",
) -> None:
    """Grouped bars: test Dice of every method (bars) in every group (a center, a dataset), ± error."""
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)) + 3, 3.8))
    modes = [m for m in table if table[m]]
    width = 0.8 / max(len(modes), 1)
    for i, mode in enumerate(modes):
        values = [table[mode].get(g, np.nan) for g in groups]
        spread = [(errors or {}).get(mode, {}).get(g, 0.0) for g in groups] if errors else None
        ax.bar(
            np.arange(len(groups)) + i * width,
            values,
            width,
            yerr=spread,
            capsize=2,
            label=labels.get(mode, mode),
        )
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set(ylabel="test Dice (mean over slices)", ylim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def stacked_bars(
    path: Path, labels: list[str], stacks: dict[str, list[float]], ylabel: str, title: str
) -> None:
    """One bar per label, split into named parts (e.g. encode / map / decode time)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)) + 2, 3.8))
    bottom = np.zeros(len(labels))
    for name, values in stacks.items():
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom += np.asarray(values, float)
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.legend(fontsize=8)
    _save(fig, path)


def lines(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """Named (x, y) series with markers: how a cost grows with a size."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    _save(fig, path)
