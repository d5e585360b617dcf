"""MaxBoxAccV2 (`hnc_jax.wsol`) against wsolevaluation's own recipe, written here from its
definition with OpenCV (the library that code uses: cv2.resize INTER_CUBIC, cv2.threshold,
cv2.findContours RETR_TREE, cv2.boundingRect) and python loops, plus hand cases whose answer
is known without either."""

import cv2
import numpy as np
import pytest

from hnc_jax import cam, wsol


def reference_scoremap(cam_map: np.ndarray, size: int) -> np.ndarray:
    """wsolevaluation's inference: cv2.resize(INTER_CUBIC) then normalize_scoremap."""
    resized = cv2.resize(cam_map.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    if np.isnan(resized).any() or resized.min() == resized.max():
        return np.zeros_like(resized)
    resized = resized - resized.min()
    return resized / resized.max()


def reference_boxes(scoremap: np.ndarray, threshold: float) -> list[list[int]]:
    """wsolevaluation's compute_bboxes_from_scoremaps with multi_contour_eval=True."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, binary = cv2.threshold(image, int(threshold * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def reference_iou(a: list[int], b: list[int]) -> float:
    """One pair, inclusive pixels (wsolevaluation's calculate_multiple_iou)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def reference_max_box_acc_v2(cams, labels, gt_boxes, size, cam_thresholds) -> list[float]:
    """[MaxBoxAcc at IoU 30, 50, 70]: wsolevaluation's BoxEvaluator, loop by loop; gt_boxes
    a list per image of int (x0, y0, x1, y1) boxes."""
    correct = {d: np.zeros(len(cam_thresholds)) for d in (30, 50, 70)}
    for cam_maps, label, gts in zip(cams, labels, gt_boxes, strict=True):
        scoremap = reference_scoremap(cam_maps[..., label], size)
        for t, threshold in enumerate(cam_thresholds):
            best = max(
                reference_iou(box, gt) for box in reference_boxes(scoremap, threshold) for gt in gts
            )
            for d in correct:
                correct[d][t] += best >= d / 100
    return [correct[d].max() / len(cams) for d in (30, 50, 70)]


def blobs(rng: np.random.Generator, count: int, side: int = 6, classes: int = 3) -> np.ndarray:
    """(count, side, side, classes) CAMs of a few bumps each (several regions at a threshold)."""
    grid = np.arange(side) + 0.5
    out = np.zeros((count, side, side, classes), np.float32)
    for b in range(count):
        for c in range(classes):
            for _ in range(rng.integers(1, 4)):
                y, x = rng.uniform(0, side, 2)
                width = rng.uniform(0.4, 1.5)
                bump = np.exp(-((grid[:, None] - y) ** 2 + (grid[None] - x) ** 2) / width**2)
                out[b, ..., c] += rng.uniform(0.3, 1.0) * bump
    return out + rng.normal(0, 0.02, out.shape).astype(np.float32)


def test_upsampling_and_normalisation_match_opencv():
    cams = blobs(np.random.default_rng(0), 4)
    labels = np.array([0, 1, 2, 0])
    ours = wsol.scoremaps(cams, labels, 48)
    for b in range(4):
        np.testing.assert_allclose(
            ours[b], reference_scoremap(cams[b, ..., labels[b]], 48), atol=2e-6
        )
    assert ours.min() == 0 and ours.max(axis=(1, 2)).tolist() == [1.0] * 4


def test_contour_boxes_match_opencv_on_every_threshold():
    rng = np.random.default_rng(1)
    cams = blobs(rng, 6)
    maps = wsol.scoremaps(cams, np.zeros(6, int), 32)
    # A map with a hole: RETR_TREE also traces the hole's border.
    ring = np.zeros((32, 32), np.float32)
    ring[4:20, 6:24], ring[9:14, 10:16] = 1.0, 0.2
    # Regions touching only at a corner: one 8-connected region (one contour), not two.
    corners = np.zeros((32, 32), np.float32)
    corners[4:10, 4:10], corners[10:16, 10:16] = 1.0, 1.0
    for scoremap in [*maps, ring, corners]:
        for threshold in np.arange(0, 1, 0.05):
            ours = sorted(wsol.contour_boxes(scoremap, threshold).tolist())
            assert ours == sorted(reference_boxes(scoremap, threshold)), threshold


def test_max_box_acc_v2_matches_the_reference():
    rng = np.random.default_rng(2)
    cams, labels = blobs(rng, 12), rng.integers(0, 3, 12)
    corners = np.sort(rng.uniform(0, 1, (12, 2, 2)), axis=1)  # (B, [min, max], [y, x])
    boxes = np.concatenate([corners[:, 0], corners[:, 1]], -1)
    thresholds = np.arange(0, 1, 0.05)
    hits = wsol.box_hits(cams, labels, boxes, 40, thresholds)
    gts = [[wsol.pixel_boxes(box, 40).tolist()] for box in boxes]
    expected = reference_max_box_acc_v2(cams, labels, gts, 40, thresholds)
    result = wsol.max_box_acc_v2(hits)
    got = [result[f"max_box_acc_v2_iou{d}"] for d in (30, 50, 70)]
    assert got == pytest.approx(expected) and 0 < np.mean(got) < 1
    assert result["max_box_acc_v2"] == pytest.approx(np.mean(expected))


def one_class(cam_map: np.ndarray) -> np.ndarray:
    """(h, w) -> a batch of one (1, h, w, 1) CAM."""
    return np.asarray(cam_map, np.float32)[None, ..., None]


def test_single_blob_is_localized_at_every_iou():
    # At the input size itself: the cubic resize of 8 -> 8 is the identity.
    cam_map = np.zeros((8, 8))
    cam_map[2:6, 1:5] = 1.0
    hits = wsol.box_hits(one_class(cam_map), [0], [[2 / 8, 1 / 8, 6 / 8, 5 / 8]], 8)
    assert wsol.max_box_acc_v2(hits)["max_box_acc_v2"] == 1.0
    # Found and true box are both x1 = x + w (one past the blob's last pixel): IoU 1.
    assert hits[0, :, 50].tolist() == [1.0, 1.0, 1.0]
    assert wsol.contour_boxes(cam_map, 0.5).tolist() == [[1, 2, 5, 6]]


def test_two_blobs_where_only_the_smaller_matches():
    cam_map = np.zeros((16, 16))
    cam_map[1:11, 1:11] = 1.0  # Large region, away from the object.
    cam_map[12:15, 12:15] = 0.9  # Small region on the object.
    box = [[12 / 16, 12 / 16, 15 / 16, 15 / 16]]
    hits = wsol.box_hits(one_class(cam_map), [0], box, 16)
    assert wsol.max_box_acc_v2(hits)["max_box_acc_v2_iou50"] == 1.0  # Every contour counts.
    # The old MaxBoxAcc keeps only the largest region: never localized.
    assert cam.gt_known_curve(one_class(cam_map), [0], box, cam.THRESHOLDS).max() == 0.0


def test_any_of_several_ground_truth_boxes_counts():
    cam_map = np.zeros((16, 16))
    cam_map[9:14, 2:7] = 1.0
    boxes = [[[0.0, 0.5, 4 / 16, 1.0], [9 / 16, 2 / 16, 14 / 16, 7 / 16], [np.nan] * 4]]
    hits = wsol.box_hits(one_class(cam_map), [0], boxes, 16)
    assert hits[0, 1].max() == 1.0
    assert wsol.box_hits(one_class(cam_map), [0], [boxes[0][:1]], 16).max() == 0.0


def test_a_flat_cam_is_never_localized():
    flat = np.full((6, 6), 3.0)
    hits = wsol.box_hits(one_class(flat), [0], [[0.0, 0.0, 1.0, 1.0]], 24)
    # normalize_scoremap makes it zeros: no foreground, the box (0, 0, 0, 0), IoU 1/576.
    assert hits.max() == 0.0
    nan = np.where(np.eye(6, dtype=bool), np.nan, 1.0)
    assert wsol.box_hits(one_class(nan), [0], [[0.0, 0.0, 1.0, 1.0]], 24).max() == 0.0
