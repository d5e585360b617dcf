"""Class activation maps: upsampling, boxes, localization metrics and negative-CAM statistics
(the paper's figure-1 overlays of them are in `figures`).

Shapes: cams (B, h, w, C) as the model returns them (6x6 for 48x48 digits with the small stem,
7x7 at 224x224 with the ImageNet stem); logits (B, C); labels (B,) int class ids; images
(B, S, S, 3) as the input pipeline gives them (uint8 pixels or normalised); boxes (B, 4) float
[ymin, xmin, ymax, xmax] in [0, 1], pixel edges divided by the side (the pipeline's convention).

Metrics are numpy (connected components need scipy); the model call is JAX.
- Localization (weakly supervised, CAM paper protocol): the true class's CAM (GT-known) or the
  predicted class's CAM (top-1), upsampled to the image, min-max normalised, thresholded at
  `threshold` of its max; the box of the largest connected region must have IoU >= 0.5 with
  the ground truth. Top-1 localization also needs a correct top-1 prediction. MaxBoxAcc is
  GT-known localization at the best of a grid of thresholds (Choe et al., CVPR 2020).
- Negative CAMs (the k hard negatives, chosen as HNC chooses them): `num_posi` (the spec's
  count of positive pixels over all negative CAMs), `neg_peak` (mean of the k maps' maxima) and
  `peak_on_clutter` (the fraction of those maxima whose cell centre lies outside the target's
  box: on cluttered digits, everything outside the target's box is clutter or background).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from hnc_jax import losses, wsol

Array = Any
# IoU >= 0.5, with slack for boxes stored as fractions of the side (1/3 + 1/6 != 0.5).
IOU_THRESHOLD = 0.5 - 1e-9
THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())  # For MaxBoxAcc.
METRICS = ("top1", "gt_known_loc", "top1_loc", "iou", "num_posi", "neg_peak", "peak_on_clutter")


def check_cams(cams: Array) -> None:
    if np.ndim(cams) != 4:
        raise ValueError(f"cams must have rank 4 (B, h, w, C), got shape {np.shape(cams)}")


def check_int_labels(labels: Array, batch: int) -> None:
    labels = np.asarray(labels)
    if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be int class ids of shape ({batch},), got shape {labels.shape} and "
            f"dtype {labels.dtype} (localization needs one target per image)"
        )


def upsample_cams(cams: Array, size: int) -> jax.Array:
    """(B, h, w, C) -> (B, size, size, C) float32, bilinear with half-pixel centres."""
    check_cams(cams)
    batch, _, _, channels = np.shape(cams)
    return jax.image.resize(
        jnp.asarray(cams, jnp.float32), (batch, size, size, channels), method="bilinear"
    )


def normalize_cams(cams: Array) -> jax.Array:
    """Min-max normalises each map of (B, H, W, C) over H, W to [0, 1]; flat maps become 0."""
    check_cams(cams)
    cams = jnp.asarray(cams, jnp.float32)
    lo = jnp.min(cams, axis=(1, 2), keepdims=True)
    span = jnp.max(cams, axis=(1, 2), keepdims=True) - lo
    return jnp.where(span > 0, (cams - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def cam_box(cam: Array, threshold: float = 0.2) -> np.ndarray:
    """Box of the largest connected region of a CAM above `threshold` of its (min-max) range.

    Args:
      cam: (H, W) map, usually upsampled to the image size.
      threshold: in [0, 1): pixels >= min + threshold * (max - min) are foreground.

    Returns:
      (4,) float64 [ymin, xmin, ymax, xmax] in [0, 1] (end-exclusive pixel edges / side); the
      whole image for a flat map.
    """
    cam = np.asarray(cam, np.float64)
    if cam.ndim != 2:
        raise ValueError(f"cam must have rank 2 (H, W), got shape {cam.shape}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    height, width = cam.shape
    lo, hi = cam.min(), cam.max()
    if not hi > lo:
        return np.array([0.0, 0.0, 1.0, 1.0])
    regions, _ = ndimage.label(cam >= lo + threshold * (hi - lo))  # 4-connectivity
    largest = regions == 1 + np.argmax(np.bincount(regions.ravel())[1:])
    rows, cols = np.flatnonzero(largest.any(1)), np.flatnonzero(largest.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / [height, width, height, width]


def box_iou(a: Array, b: Array) -> np.ndarray:
    """IoU of boxes [..., 4] = [ymin, xmin, ymax, xmax] (broadcasting); 0 for empty unions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _class_maps(cams: Array, classes: np.ndarray, size: int | None) -> np.ndarray:
    """(B, h, w, C), (B,) -> the chosen class's map per image, (B, S, S) (upsampled to size)."""
    maps = np.take_along_axis(np.asarray(cams, np.float32), classes[:, None, None, None], -1)
    if size is not None:
        maps = upsample_cams(maps, size)
    return np.asarray(maps)[..., 0]


def localization_hits(
    cams: Array,
    logits: Array,
    labels: Array,
    boxes: Array,
    threshold: float = 0.2,
    size: int | None = None,
) -> dict[str, np.ndarray]:
    """Per image (B,) float64: `iou` (GT-known box vs truth), `gt_known_loc` (iou >= 0.5),
    `top1_loc` (top-1 correct and the predicted class's box has IoU >= 0.5), `top1`.

    `size`: upsample the CAMs to (size, size) first (the image side); None uses them as given.
    """
    check_cams(cams)
    labels = np.asarray(labels)
    check_int_labels(labels, np.shape(cams)[0])
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (len(labels), 4):
        raise ValueError(f"boxes must have shape ({len(labels)}, 4), got {boxes.shape}")
    predicted = np.argmax(np.asarray(logits), axis=-1)
    true_maps = _class_maps(cams, labels, size)
    iou = box_iou(np.stack([cam_box(m, threshold) for m in true_maps]), boxes)
    pred_maps = _class_maps(cams, predicted, size)
    pred_iou = box_iou(np.stack([cam_box(m, threshold) for m in pred_maps]), boxes)
    top1 = predicted == labels
    return {
        "top1": top1.astype(np.float64),
        "iou": iou,
        "gt_known_loc": (iou >= IOU_THRESHOLD).astype(np.float64),
        "top1_loc": (top1 & (pred_iou >= IOU_THRESHOLD)).astype(np.float64),
    }


def localization_metrics(
    cams: Array,
    logits: Array,
    labels: Array,
    boxes: Array,
    threshold: float = 0.2,
    size: int | None = None,
) -> dict[str, float]:
    """Batch means of `localization_hits`: gt_known_loc, top1_loc (and top1, mean iou)."""
    hits = localization_hits(cams, logits, labels, boxes, threshold, size)
    return {name: float(np.mean(value)) for name, value in hits.items()}


def negative_cam_hits(
    cams: Array, labels: Array, k: int, boxes: Array | None = None
) -> dict[str, np.ndarray]:
    """Per image (B,) float64: `num_posi` (positive pixels over every negative CAM),
    `neg_peak` (mean over the k hard negatives of each map's max) and, with boxes,
    `peak_on_clutter` (fraction of those k maxima whose cell centre is outside the box).

    `labels` are (B,) int class ids or (B, C) multi-hot; with multi-hot every present class
    is excluded, and an image with fewer than k absent classes averages over those it has.
    Boxes need int labels (one object per image).
    """
    check_cams(cams)
    cams = np.asarray(cams, np.float32)
    batch, height, width, _ = cams.shape
    labels = np.asarray(labels)
    if boxes is not None:
        check_int_labels(labels, batch)
    out = {"num_posi": np.asarray(losses.num_positive_negative_pixels_per_image(cams, labels))}
    idx, valid = losses.select_hard_negatives(jnp.asarray(cams.sum(axis=(1, 2))), labels, k)
    maps = np.take_along_axis(cams, np.asarray(idx)[:, None, None, :], -1).reshape(batch, -1, k)
    valid = np.asarray(valid)
    out["neg_peak"] = np.sum(np.where(valid, maps.max(axis=1), 0.0), -1) / np.maximum(
        valid.sum(-1), 1
    )
    if boxes is not None:
        rows, cols = np.divmod(maps.argmax(axis=1), width)  # (B, k) peak cells
        y, x = (rows + 0.5) / height, (cols + 0.5) / width
        boxes = np.asarray(boxes, np.float64)[:, None, :]
        inside = (y >= boxes[..., 0]) & (y < boxes[..., 2]) & (x >= boxes[..., 1])
        inside &= x < boxes[..., 3]
        out["peak_on_clutter"] = np.mean(~inside, axis=1)
    return {name: value.astype(np.float64) for name, value in out.items()}


def negative_cam_stats(
    cams: Array, labels: Array, k: int, boxes: Array | None = None
) -> dict[str, float]:
    """Batch means of `negative_cam_hits`: num_posi, neg_peak[, peak_on_clutter]."""
    hits = negative_cam_hits(cams, labels, k, boxes)
    return {name: float(np.mean(value)) for name, value in hits.items()}


def gt_known_curve(
    cams: Array, labels: Array, boxes: Array, thresholds: Sequence[float], size: int | None = None
) -> np.ndarray:
    """(B, T) float64: GT-known localization hit of each image at each CAM threshold.

    Its batch mean maximised over thresholds is MaxBoxAcc (Choe et al., CVPR 2020): the
    localization score free of the threshold choice (a fixed one favours maps of one spread).
    """
    check_cams(cams)
    labels = np.asarray(labels)
    check_int_labels(labels, np.shape(cams)[0])
    maps = _class_maps(cams, labels, size)
    found = np.array([[cam_box(m, t) for t in thresholds] for m in maps])  # (B, T, 4)
    return (box_iou(found, np.asarray(boxes, np.float64)[:, None]) >= IOU_THRESHOLD) * 1.0


def evaluate_cams(
    apply_fn: Any,
    batches: Iterable[dict[str, np.ndarray]],
    *,
    k: int,
    threshold: float = 0.2,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, float]:
    """Means of `METRICS` over eval batches with 'image', 'label', 'box' and 'mask', plus
    `max_box_acc` (the best GT-known localization over `thresholds`), `best_threshold`, and
    the standard WSOL metric `max_box_acc_v2` with its `max_box_acc_v2_iou{30,50,70}` (`wsol`).

    `apply_fn(images) -> (logits, cams)`, e.g. a jitted `model.apply` with fixed variables;
    CAMs are upsampled to the image side for localization.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*METRICS, "curve", "v2")}
    for batch in batches:
        logits, cams = apply_fn(batch["image"])
        keep = np.asarray(batch["mask"], bool)
        labels, boxes, size = batch["label"], batch["box"], batch["image"].shape[1]
        hits = {
            **localization_hits(cams, logits, labels, boxes, threshold, size),
            **negative_cam_hits(cams, labels, k, boxes),
            "curve": gt_known_curve(cams, labels, boxes, thresholds, size),
            "v2": wsol.box_hits(cams, labels, boxes, size),
        }
        for name, values in parts.items():
            values.append(hits[name][keep])
    out = {name: float(np.mean(np.concatenate(parts[name]))) for name in METRICS}
    curve = np.mean(np.concatenate(parts["curve"]), axis=0)
    out["max_box_acc"] = float(curve.max())
    out["best_threshold"] = float(thresholds[int(np.argmax(curve))])
    return {**out, **wsol.max_box_acc_v2(np.concatenate(parts["v2"]))}
