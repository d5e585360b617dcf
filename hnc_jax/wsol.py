"""MaxBoxAccV2, the standard WSOL localization metric (Choe et al., "Evaluating Weakly
Supervised Object Localization Methods Right", CVPR 2020; clovaai/wsolevaluation), to the
letter of that code so that figures compare with published tables.

Per image: the ground-truth class's CAM is upsampled to the input side S with OpenCV's bicubic
kernel (Keys, a = -0.75, half-pixel centres, edge pixels repeated), min-max normalised to
[0, 1] (a flat or non-finite map becomes all zeros) and quantised to uint8 (`* 255`). At each
CAM threshold t of `CAM_THRESHOLDS` (np.arange(0, 1, 0.01)) the pixels above int(t * max)
are foreground and every contour OpenCV's `findContours(RETR_TREE)` would trace gives a box:
the outer border of each 8-connected foreground region and the inner border around each hole
(a 4-connected background region that does not reach the image edge); no foreground gives the
box (0, 0, 0, 0). Boxes are integer pixel coordinates (x0, y0, x1, y1), x1 = x + w clipped to
S - 1, and IoU counts inclusive pixels (the `+ 1` of wsolevaluation). An image is localized
at IoU threshold d (30, 50, 70 %) when any of its boxes reaches IoU >= d / 100 with any of its
ground-truth boxes. BoxAcc(t, d) is the fraction of images localized; MaxBoxAccV2 is the mean
over d of max_t BoxAcc(t, d).

How it differs from `cam`'s MaxBoxAcc (the CAM paper's protocol that this project used first):
that one upsamples bilinearly, keeps only the largest 4-connected region, tries thresholds
0.05, 0.10, ..., 0.95 of the map's range, judges at IoU 0.5 alone, and takes a flat map as
the whole image. Both use the true class's map.

Shapes: cams (B, h, w, C); labels (B,) int; ground-truth boxes (B, 4) or (B, G, 4) float
[ymin, xmin, ymax, xmax] in [0, 1] (the pipeline's convention), NaN rows for absent boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

Array = Any
CAM_THRESHOLDS = tuple(np.arange(0, 1, 0.01).tolist())
IOU_THRESHOLDS = (30, 50, 70)  # Percent, as wsolevaluation names them.
_EIGHT = np.ones((3, 3), bool)


def cubic_weights(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) float64 matrix of OpenCV's INTER_CUBIC resize along one axis."""
    a = -0.75
    weights = np.zeros((size_out, size_in))
    for x in range(size_out):
        source = (x + 0.5) * size_in / size_out - 0.5
        base = int(np.floor(source))
        f = source - base
        taps = (
            ((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a,
            ((a + 2) * f - (a + 3)) * f * f + 1,
            ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1,
        )
        for k, w in enumerate((*taps, 1.0 - sum(taps))):
            weights[x, min(max(base - 1 + k, 0), size_in - 1)] += w
    return weights


def scoremaps(cams: Array, labels: Array, size: int) -> np.ndarray:
    """(B, h, w, C), (B,) -> (B, size, size) float32: each image's ground-truth class map,
    upsampled bicubically and min-max normalised to [0, 1] as wsolevaluation does."""
    cams = np.asarray(cams, np.float32)
    labels = np.asarray(labels)
    maps = np.take_along_axis(cams, labels[:, None, None, None], -1)[..., 0]
    rows = cubic_weights(maps.shape[1], size).astype(np.float32)
    cols = cubic_weights(maps.shape[2], size).astype(np.float32)
    maps = np.einsum("yh,bhw,xw->byx", rows, maps, cols)
    lo, hi = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    ok = (hi > lo) & np.isfinite(maps).all(axis=(1, 2), keepdims=True)
    return np.where(ok, (maps - lo) / np.where(ok, hi - lo, 1.0), 0.0).astype(np.float32)


def _region_boxes(regions: np.ndarray, count: int, grow: int) -> list[np.ndarray]:
    """Inclusive (y0, x0, y1, x1) of each labelled region, grown by `grow` pixels."""
    return [
        np.array([s[0].start - grow, s[1].start - grow, s[0].stop - 1 + grow, s[1].stop - 1 + grow])
        for s in ndimage.find_objects(regions, count)
        if s is not None
    ]


def contour_boxes(scoremap: Array, threshold: float) -> np.ndarray:
    """(N, 4) int boxes (x0, y0, x1, y1) of every contour of a [0, 1] map at `threshold`."""
    image = (np.asarray(scoremap, np.float32) * 255).astype(np.uint8)
    foreground = image > int(threshold * image.max())
    if not foreground.any():
        return np.zeros((1, 4), np.int64)
    height, width = foreground.shape
    regions, count = ndimage.label(foreground, _EIGHT)
    boxes = _region_boxes(regions, count, 0)
    background, count = ndimage.label(~foreground)  # 4-connected
    edge = np.unique(np.concatenate([background[[0, -1]].ravel(), background[:, [0, -1]].ravel()]))
    holes = np.where(np.isin(background, edge), 0, background)
    # A hole's contour runs over the foreground pixels around it: one pixel further out.
    boxes += _region_boxes(holes, count, 1)
    y0, x0, y1, x1 = np.stack(boxes).T
    # wsolevaluation: x1 = x + w (one past the last pixel), clipped to the image.
    return np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], -1)


def pixel_boxes(boxes: Array, size: int) -> np.ndarray:
    """[..., 4] fractional [ymin, xmin, ymax, xmax] -> int (x0, y0, x1, y1) pixel boxes of an
    image of side `size`, truncated as wsolevaluation's `resize_bbox` does."""
    boxes = np.asarray(boxes, np.float64) * size
    return np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3], boxes[..., 2]], -1).astype(int)


def multiple_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) int (x0, y0, x1, y1) -> (N, M) IoU counting inclusive pixels."""
    a, b = a[:, None].astype(np.float64), b[None].astype(np.float64)
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_ious(
    scoremap: Array, gt_boxes: np.ndarray, cam_thresholds: Sequence[float] = CAM_THRESHOLDS
) -> np.ndarray:
    """(T,) float64: at each CAM threshold, the best IoU of any contour box with any of the
    image's (G, 4) int ground-truth boxes."""
    return np.array(
        [multiple_iou(contour_boxes(scoremap, t), gt_boxes).max() for t in cam_thresholds]
    )


def box_hits(
    cams: Array,
    labels: Array,
    boxes: Array,
    size: int,
    cam_thresholds: Sequence[float] = CAM_THRESHOLDS,
    iou_thresholds: Sequence[int] = IOU_THRESHOLDS,
) -> np.ndarray:
    """(B, D, T) float64: 1 where image b is localized at IoU threshold d and CAM threshold t.

    `boxes` (B, 4) or (B, G, 4) fractional, NaN rows for absent boxes; `size` the image side.
    """
    boxes = np.asarray(boxes, np.float64)
    boxes = boxes[:, None] if boxes.ndim == 2 else boxes
    maps = scoremaps(cams, labels, size)
    out = np.zeros((len(maps), len(iou_thresholds), len(cam_thresholds)))
    for b, (scoremap, gt) in enumerate(zip(maps, boxes, strict=True)):
        gt = pixel_boxes(gt[~np.isnan(gt).any(-1)], size)
        ious = best_ious(scoremap, gt, cam_thresholds)
        out[b] = ious[None] >= np.asarray(iou_thresholds)[:, None] / 100
    return out


def max_box_acc_v2(
    hits: np.ndarray, iou_thresholds: Sequence[int] = IOU_THRESHOLDS
) -> dict[str, float]:
    """From `box_hits` of every image (N, D, T): `max_box_acc_v2` (the mean over D) and
    `max_box_acc_v2_iou<d>` for each IoU threshold, fractions in [0, 1]."""
    best = np.mean(hits, axis=0).max(axis=-1)  # (D,)
    out = {f"max_box_acc_v2_iou{d}": float(v) for d, v in zip(iou_thresholds, best, strict=True)}
    return {"max_box_acc_v2": float(np.mean(best)), **out}
