"""Host-side pictures of a run: coloured masks, overlays, confusion matrices, training curves.

Everything here is numpy + PIL + matplotlib on the host; nothing touches a device. Figures are
drawn on `matplotlib.figure.Figure` with the Agg canvas directly rather than through pyplot, so
importing this module never switches the process-wide matplotlib backend and never opens a
window, whatever the user's environment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxseg.labels import IGNORE_COLOR, IGNORE_ID

Palette = Sequence[Sequence[int]]


def _lookup_table(palette: Palette) -> np.ndarray:
    """uint8 [256, 3]: class id -> RGB, IGNORE_ID -> IGNORE_COLOR."""
    if not 0 < len(palette) <= IGNORE_ID:
        raise ValueError(f"palette must have 1..{IGNORE_ID} colours, got {len(palette)}")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8).reshape(len(palette), 3)
    table[IGNORE_ID] = IGNORE_COLOR
    return table


def _check_labels(label: np.ndarray, num_colors: int) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W], got shape {label.shape}")
    bad = (label != IGNORE_ID) & ((label < 0) | (label >= num_colors))
    if bad.any():
        raise ValueError(
            f"label has ids {sorted(np.unique(label[bad]).tolist())[:10]} outside the palette's "
            f"0..{num_colors - 1} (and {IGNORE_ID} = ignore)"
        )
    return label


def colorize(label: np.ndarray, palette: Palette) -> np.ndarray:
    """Class-id mask -> RGB picture.

    Args:
      label: [H, W] int class ids; IGNORE_ID (255) = ignore.
      palette: one (r, g, b) in 0..255 per class id.

    Returns:
      uint8 [H, W, 3]; ignore pixels are IGNORE_COLOR (cream).
    """
    label = _check_labels(label, len(palette))
    return _lookup_table(palette)[label.astype(np.int64)]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")
    return np.broadcast_to(image, image.shape[:2] + (3,))


def overlay(
    image: np.ndarray, label: np.ndarray, palette: Palette, alpha: float = 0.5
) -> np.ndarray:
    """Blends the class colours over an image: (1 - alpha) * image + alpha * colour.

    Args:
      image: uint8 [H, W], [H, W, 1] (greyscale) or [H, W, 3].
      label: [H, W] int class ids, IGNORE_ID = ignore (those pixels keep the bare image).
      palette: one (r, g, b) per class id.
      alpha: colour weight in [0, 1].

    Returns:
      uint8 [H, W, 3], rounded to the nearest integer.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb(image).astype(np.float32)
    label = _check_labels(label, len(palette))
    if label.shape != rgb.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and label {label.shape} sizes differ")
    colours = _lookup_table(palette)[label.astype(np.int64)].astype(np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colours
    blended = np.where((label == IGNORE_ID)[..., None], rgb, blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Writes `fig` at `path` (local or any epath URL, e.g. a gs:// run's eval/), format by
    suffix; returns the path as a string."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # Attaches the Agg canvas; no pyplot state involved.
    with target.open("wb") as f:
        fig.savefig(f, format=target.suffix.lstrip(".") or "png")
    return os.fspath(path)


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """float64 [C, C]: each row divided by its sum (the share of a truth class predicted as each
    class); rows with no truth pixels stay zero rather than NaN."""
    cm = np.asarray(cm, np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def save_confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: str) -> str:
    """Heat map of the row-normalised confusion matrix (each truth row sums to 1).

    Args:
      cm: [C, C] counts, rows = truth, columns = prediction (metrics.confusion_matrix).
      class_names: C names, used as tick labels.
      path: PNG to write (parent folders are created).

    Returns:
      `path`.
    """
    c = len(class_names)
    if np.shape(cm) != (c, c):
        raise ValueError(f"confusion matrix shape {np.shape(cm)} does not match {c} class names")
    norm = row_normalize(cm)
    side = min(4.0 + 0.45 * c, 40.0)  # Keeps names legible from 2 to ~150 classes.
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c), labels=list(class_names), rotation=90)
    ax.set_yticks(range(c), labels=list(class_names))
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix (rows normalised)")
    if c <= 30:  # Beyond that the numbers are unreadable and slow to draw.
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return _save(fig, path)


ERROR_COLOR = (255, 0, 0)  # Wrong pixels in the error map.
_ERROR_DIM = 0.35  # Correct pixels of the error map: the greyscale image at this brightness.


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Where a prediction is wrong: ERROR_COLOR on wrong pixels over a dimmed greyscale image.

    Args:
      image: uint8 [H, W], [H, W, 1] or [H, W, 3].
      truth: [H, W] int class ids, IGNORE_ID = ignore (never counted as wrong: drawn like
        correct pixels).
      pred: [H, W] int class ids.

    Returns:
      uint8 [H, W, 3].
    """
    rgb = _as_rgb(image).astype(np.float32)
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != rgb.shape[:2] or pred.shape != truth.shape:
        raise ValueError(f"image {rgb.shape[:2]}, truth {truth.shape}, pred {pred.shape} differ")
    grey = np.rint(rgb.mean(-1, keepdims=True) * _ERROR_DIM).astype(np.uint8)
    out = np.repeat(grey, 3, axis=-1)
    wrong = (truth != IGNORE_ID) & (truth != pred)
    out[wrong] = ERROR_COLOR
    return out


_LEGEND_COLUMNS = 4


def _legend_height(entries: int) -> float:
    """Inches below the panels for a legend of `entries` entries."""
    return 0.3 * -(-entries // _LEGEND_COLUMNS) + 0.3


def _add_legend(fig, palette, class_names, legend_in, height_in, with_errors=False):
    """Class colour -> name legend (plus ignore, and "wrong" for error maps) under the panels."""
    from matplotlib.patches import Patch  # Only figures need it.

    entries = [*zip(class_names, palette, strict=True), ("ignore (255)", IGNORE_COLOR)]
    if with_errors:
        entries.append(("wrong (errors panel)", ERROR_COLOR))
    handles = [
        Patch(facecolor=np.asarray(c, float) / 255, edgecolor="grey", label=name)
        for name, c in entries
    ]
    fig.legend(handles=handles, loc="lower center", ncol=_LEGEND_COLUMNS, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, legend_in / height_in, 1, 1))


def save_examples_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    palette: Palette,
    class_names: Sequence[str],
    path: str,
    alpha: float = 0.5,
) -> str:
    """One row per example: image | mask (plain colours) | overlay, and a class legend.

    Args:
      images: N uint8 [H_i, W_i] / [H_i, W_i, 1] / [H_i, W_i, 3].
      labels: N [H_i, W_i] int class ids, IGNORE_ID = ignore.
      palette, class_names: one colour and one name per class id.
      path: PNG to write.

    Returns:
      `path`.
    """
    n = len(images)
    if not n or len(labels) != n:
        raise ValueError(
            f"need the same non-zero number of images and labels; got {n}, {len(labels)}"
        )
    legend_in = _legend_height(len(palette) + 1)
    fig = Figure(figsize=(9.0, 3.0 * n + legend_in), dpi=100)
    axes = fig.subplots(n, 3, squeeze=False)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        panels = (
            (f"image {np.shape(image)[1]}x{np.shape(image)[0]}", _as_rgb(image)),
            ("mask", colorize(label, palette)),
            ("overlay", overlay(image, label, palette, alpha)),
        )
        for ax, (title, picture) in zip(axes[i], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    _add_legend(fig, palette, class_names, legend_in, 3.0 * n + legend_in)
    return _save(fig, path)


def prediction_grid_figure(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: Palette,
    class_names: Sequence[str],
    overlay_alpha: float | None = None,
) -> Figure:
    """One row per example: image | truth | prediction | errors, and a legend of the classes.

    The truth and prediction panels are plain colour masks (so classes are told apart by colour
    alone), or with `overlay_alpha` the colours blended over the image. The error panel shows
    wrong pixels in ERROR_COLOR over the dimmed image, titled with the example's pixel accuracy.
    The legend maps each class's colour to its name, plus "ignore" and "wrong".

    Args:
      images: N uint8 [H_i, W_i] / [H_i, W_i, 1] / [H_i, W_i, 3] (sizes may differ per example).
      truths: N [H_i, W_i] int class ids, IGNORE_ID = ignore.
      preds: N [H_i, W_i] int class ids.
      palette: one (r, g, b) per class id.
      class_names: one name per class id (same length as `palette`).
      overlay_alpha: None = plain masks; else blend weight of the colours in [0, 1].
    """
    n = len(images)
    if not n or len(truths) != n or len(preds) != n:
        raise ValueError(
            f"need the same non-zero number of images, truths and preds; got "
            f"{n}, {len(truths)}, {len(preds)}"
        )
    if len(class_names) != len(palette):
        raise ValueError(f"{len(class_names)} class names for {len(palette)} palette colours")

    def mask(image, label):
        if overlay_alpha is None:
            return colorize(label, palette)
        return overlay(image, label, palette, overlay_alpha)

    legend_in = _legend_height(len(palette) + 2)
    fig = Figure(figsize=(12.0, 3.0 * n + legend_in), dpi=100)
    axes = fig.subplots(n, 4, squeeze=False)
    for i, (image, truth, pred) in enumerate(zip(images, truths, preds, strict=True)):
        truth, pred = np.asarray(truth), np.asarray(pred)
        scored = truth != IGNORE_ID
        accuracy = float(np.mean(truth[scored] == pred[scored])) if scored.any() else None
        acc_text = "-" if accuracy is None else f"{accuracy:.1%}"
        panels = (
            ("image", _as_rgb(image)),
            ("truth", mask(image, truth)),
            ("prediction", mask(image, pred)),
            (f"errors (pixel acc. {acc_text})", error_map(image, truth, pred)),
        )
        for ax, (title, picture) in zip(axes[i], panels, strict=True):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title if i == 0 or title.startswith("errors") else "", fontsize=9)
            ax.axis("off")
    _add_legend(fig, palette, class_names, legend_in, 3.0 * n + legend_in, with_errors=True)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The figure rendered to uint8 [H, W, 3] (e.g. for a TensorBoard image summary)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_prediction_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: Palette,
    class_names: Sequence[str],
    path: str,
    overlay_alpha: float | None = None,
) -> str:
    """Writes `prediction_grid_figure(...)` as a PNG at `path`; returns `path`."""
    fig = prediction_grid_figure(images, truths, preds, palette, class_names, overlay_alpha)
    return _save(fig, path)


def metric_series(records: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps ascending, values) of `key` in the records of `split`; one value per step."""
    # A resumed run can log a step twice; the later record (file order) wins.
    latest = {r["step"]: r[key] for r in records if r.get("split") == split and key in r}
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]


def save_training_curves(records: list[dict], path: str | os.PathLike) -> str:
    """Three panels vs step: loss (train, and eval if logged), learning rate, validation mIoU.

    Args:
      records: a run's metrics.jsonl records {"step", "split", "loss", ...}
        (`jaxseg.workdir.RunDir.read_metrics`).
      path: PNG to write (local or any epath URL).

    Returns:
      `path`. A panel whose series was never logged says so instead of being blank.
    """
    if not records:
        raise ValueError("no metrics records to plot: train first (train.py)")
    panels = (
        ("loss", [("train", "loss"), ("eval", "loss")]),
        ("learning rate", [("train", "learning_rate")]),
        ("validation mean IoU", [("eval", "mean_iou")]),
    )
    fig = Figure(figsize=(15.0, 4.0), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, (title, series) in zip(axes, panels, strict=True):
        drawn = False
        for split, key in series:
            steps, values = metric_series(records, split, key)
            if steps:
                ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=split)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        elif len(series) > 1:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
