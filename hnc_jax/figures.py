"""Figures: CAM overlays in the layout of the paper's figure 1, and writing figures as PNGs
(to a local path or a URL) or arrays (TensorBoard images).

Shapes as in `cam`: images (B, S, S, 3), cams (B, h, w, C), logits (B, C), labels (B,) int,
boxes (B, 4) [ymin, xmin, ymax, xmax] in [0, 1].
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hnc_jax import cam, losses

Array = Any
CELL_INCHES, DPI = 1.6, 100  # One overlay panel is 160x160 pixels in the PNG.


def _display_image(image: np.ndarray) -> np.ndarray:
    """Any-range (S, S, 3) image -> [0, 1] per image (undoes the pipeline's normalisation up
    to an affine map, which is all a display needs)."""
    image = np.asarray(image, np.float32)
    lo, hi = image.min(), image.max()
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _draw_box(ax: Any, box: np.ndarray, size: int, color: str) -> None:
    ymin, xmin, ymax, xmax = np.asarray(box) * size - 0.5  # pixel edges in imshow coordinates
    ax.add_patch(
        Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False, lw=1.5, edgecolor=color)
    )


def overlay_figure(
    images: Array,
    cams: Array,
    logits: Array,
    labels: Array | None,
    class_names: Sequence[str],
    k: int = 3,
    boxes: Array | None = None,
    threshold: float = 0.2,
) -> Figure:
    """Figure 1 of the paper, one row per image: the input, the true class's CAM, the CAMs of
    the k hard negatives, titled with class names and softmax scores. `labels` None (images
    without annotation): the predicted class takes the true class's place ("top-1").

    The CAMs of a row share one colour scale (their joint min and max), so a suppressed
    negative map looks dark rather than being stretched to full contrast. With `boxes`, the
    true box is drawn in green on the input and the true-class panel, and the CAM box
    (`cam.cam_box` at `threshold`) in red on the true-class panel.
    """
    cam.check_cams(cams)
    images = np.asarray(images, np.float32)
    batch, size = images.shape[0], images.shape[1]
    first = "true" if labels is not None else "top-1"
    labels = np.asarray(np.argmax(logits, -1) if labels is None else labels)
    cam.check_int_labels(labels, batch)
    if len(class_names) != np.shape(cams)[-1]:
        raise ValueError(f"got {len(class_names)} class names for {np.shape(cams)[-1]} classes")
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
    idx, _ = losses.select_hard_negatives(jnp.asarray(logits), labels, k)
    classes = np.concatenate([labels[:, None], np.asarray(idx)], axis=1)  # (B, 1 + k)
    maps = np.asarray(
        cam.upsample_cams(
            np.take_along_axis(np.asarray(cams, np.float32), classes[:, None, None, :], -1), size
        )
    )
    cols = k + 2
    fig = Figure(figsize=(cols * CELL_INCHES, batch * CELL_INCHES), dpi=DPI)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.28 / batch, wspace=0.05, hspace=0.3
    )
    axes = fig.subplots(batch, cols, squeeze=False)
    for b in range(batch):
        shown = _display_image(images[b])
        lo, hi = maps[b].min(), maps[b].max()
        axes[b, 0].imshow(shown)
        title = f"input: {class_names[labels[b]]}" if first == "true" else "input"
        axes[b, 0].set_title(title, fontsize=8)
        for j, c in enumerate(classes[b]):
            ax = axes[b, j + 1]
            ax.imshow(shown.mean(-1), cmap="gray")
            ax.imshow(maps[b, ..., j], cmap="jet", alpha=0.5, vmin=lo, vmax=hi)
            kind = first if j == 0 else f"neg {j}"
            ax.set_title(
                f"{kind}: {class_names[c]} {probs[b, c]:.2f}\nmax {maps[b, ..., j].max():.2f}",
                fontsize=7,
            )
        if boxes is not None:
            _draw_box(axes[b, 0], boxes[b], size, "lime")
            _draw_box(axes[b, 1], boxes[b], size, "lime")
            _draw_box(axes[b, 1], cam.cam_box(maps[b, ..., 0], threshold), size, "red")
        for ax in axes[b]:
            ax.set_axis_off()
    return fig


def render_overlays(
    images: Array,
    cams: Array,
    logits: Array,
    labels: Array | None,
    class_names: Sequence[str],
    k: int,
    path: str,
    boxes: Array | None = None,
    threshold: float = 0.2,
) -> str:
    """Writes `overlay_figure(...)` as a PNG of (B * 160) x ((k + 2) * 160) pixels to `path`
    (a local path or a URL); returns `path`."""
    fig = overlay_figure(images, cams, logits, labels, class_names, k, boxes, threshold)
    return save_png(fig, path, DPI)


def save_png(fig: Figure, path: str | os.PathLike, dpi: float | None = None) -> str:
    """Writes a matplotlib figure as a PNG to `path` (a local path or a URL); returns it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    epath.Path(path).write_bytes(buffer.getvalue())
    return str(path)


def figure_to_array(fig: Figure) -> np.ndarray:
    """A figure as an (H, W, 3) uint8 array (e.g. for a TensorBoard image summary)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
