"""CAM tools: upsampling, boxes, IoU, localization and negative-CAM metrics, overlays."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hnc_jax import cam, figures, losses, wsol


def _blocks(batch_specs, size=6, classes=4):
    """CAMs (B, size, size, C) of zeros with value v on [y0:y1, x0:x1] of class c."""
    cams = np.zeros((len(batch_specs), size, size, classes), np.float32)
    for b, specs in enumerate(batch_specs):
        for c, (y0, y1, x0, x1), v in specs:
            cams[b, y0:y1, x0:x1, c] = v
    return cams


def test_upsample_matches_tensorflow_bilinear():
    cams = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
    ours = np.asarray(cam.upsample_cams(cams, 48))
    reference = tf.image.resize(cams, [48, 48], method="bilinear").numpy()  # half-pixel centres
    assert ours.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_normalize_cams_range_and_flat_maps():
    cams = np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)
    cams[1, ..., 2] = 7.0
    out = np.asarray(cam.normalize_cams(cams))
    np.testing.assert_allclose(out[0].min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0].max(axis=(0, 1)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[1, ..., 2], 0.0)
    expected = (cams[0, ..., 0] - cams[0, ..., 0].min()) / np.ptp(cams[0, ..., 0])
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-6)


def test_cam_box_keeps_largest_region():
    m = np.zeros((48, 48))
    m[10:20, 5:30] = 1.0  # 250 pixels
    m[30:40, 35:45] = 0.9  # 100 pixels, also above threshold
    box = cam.cam_box(m, threshold=0.2)
    np.testing.assert_allclose(box, np.array([10, 5, 20, 30]) / 48)
    # Above 0.95 only the first block survives, whatever the sizes.
    m[30:46, 30:46] = 0.9
    np.testing.assert_allclose(cam.cam_box(m, 0.95), np.array([10, 5, 20, 30]) / 48)


def test_cam_box_of_gaussian_blob():
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    sigma, cy, cx = 5.0, 40.0, 20.0
    m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) - 0.3  # offset: min-max
    # Foreground: exp(-r^2/2s^2) >= min + 0.5 * (max - min); min is ~0 far from the blob.
    lo, hi = m.min(), m.max()
    level = lo + 0.5 * (hi - lo) + 0.3
    radius = sigma * np.sqrt(-2 * np.log(level))
    expected = np.array([cy - radius, cx - radius, cy + radius, cx + radius]) / 64
    np.testing.assert_allclose(cam.cam_box(m, 0.5), expected, atol=1.0 / 64)


def test_cam_box_flat_map_is_whole_image_and_bad_input():
    np.testing.assert_array_equal(cam.cam_box(np.ones((8, 8))), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="threshold"):
        cam.cam_box(np.ones((8, 8)), 1.0)
    with pytest.raises(ValueError, match="rank 2"):
        cam.cam_box(np.ones((1, 8, 8)))


def test_box_iou_hand_cases():
    a = np.array([0.0, 0.0, 1.0, 1.0])
    assert cam.box_iou(a, a) == pytest.approx(1.0)
    assert cam.box_iou(a, [0.0, 0.5, 1.0, 1.5]) == pytest.approx(1 / 3)
    assert cam.box_iou(a, [0.2, 0.2, 0.6, 0.4]) == pytest.approx(0.08)
    assert cam.box_iou(a, [1.0, 1.0, 2.0, 2.0]) == 0.0
    assert cam.box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    both = cam.box_iou(np.stack([a, a]), np.array([[0, 0, 0.5, 1.0], [0, 0, 1, 0.25]]))
    np.testing.assert_allclose(both, [0.5, 0.25])


def test_localization_metrics_hand_made():
    gt = np.array([1, 1, 3, 3]) / 6
    cams = _blocks(
        [
            [(0, (1, 3, 1, 3), 2.0)],  # true class 0 on the box, predicted 0: both hit
            [(1, (4, 6, 4, 6), 2.0)],  # true class 1 off the box: neither
            [(2, (1, 3, 1, 3), 2.0), (3, (0, 6, 0, 6), 0.5)],  # true 2 hits, predicted 3 wrong
            [(3, (1, 3, 1, 2), 2.0)],  # true 3, box of half the area: IoU 0.5 counts
        ]
    )
    logits = cams.mean(axis=(1, 2))
    labels = np.array([0, 1, 2, 3])
    hits = cam.localization_hits(cams, logits, labels, np.stack([gt] * 4))
    np.testing.assert_allclose(hits["iou"], [1.0, 0.0, 1.0, 0.5])
    np.testing.assert_array_equal(hits["gt_known_loc"], [1, 0, 1, 1])
    np.testing.assert_array_equal(hits["top1"], [1, 1, 0, 1])
    np.testing.assert_array_equal(hits["top1_loc"], [1, 0, 0, 1])
    means = cam.localization_metrics(cams, logits, labels, np.stack([gt] * 4))
    assert means["gt_known_loc"] == 0.75 and means["top1_loc"] == 0.5


def test_localization_upsampled_blob_box():
    # A single hot cell of a 6x6 map, upsampled bilinearly to 48: its box is centred on the
    # cell and, at threshold 0.5, spans one cell (8 px) around the centre.
    cams = _blocks([[(0, (2, 3, 4, 5), 1.0)]], classes=2)
    up = np.asarray(cam.upsample_cams(cams, 48))[0, ..., 0]
    box = cam.cam_box(up, 0.5) * 48
    np.testing.assert_allclose((box[0] + box[2]) / 2, 20, atol=0.5)
    np.testing.assert_allclose((box[1] + box[3]) / 2, 36, atol=0.5)
    np.testing.assert_allclose(box[2] - box[0], 8, atol=1)
    hits = cam.localization_hits(cams, [[1.0, 0.0]], [0], [[2 / 6, 4 / 6, 3 / 6, 5 / 6]], 0.5, 48)
    assert hits["iou"][0] > 0.8


def test_gt_known_curve_hits_only_above_the_ring():
    # Level 1 on a 4x4 square, 2 on the central 2x2 (the true box): thresholds up to half of
    # the range keep the 4x4 box (IoU 4/16), above half only the 2x2 one (IoU 1).
    cams = _blocks([[(0, (0, 4, 0, 4), 1.0), (0, (1, 3, 1, 3), 2.0)]], classes=2)
    thresholds = [0.1, 0.3, 0.5, 0.51, 0.9]
    curve = cam.gt_known_curve(cams, [0], [[1 / 6, 1 / 6, 3 / 6, 3 / 6]], thresholds)
    np.testing.assert_array_equal(curve, [[0, 0, 0, 1, 1]])


def test_negative_cam_stats_hand_made():
    box = np.array([0, 0, 3, 3]) / 6  # top-left quarter
    cams = _blocks(
        [
            # true class 0; negatives 1 (peak 3, inside box), 2 (peak 2, outside), 3 (peak -1)
            [
                (0, (0, 6, 0, 6), 5.0),
                (1, (1, 2, 1, 2), 3.0),
                (2, (4, 5, 4, 5), 2.0),
                (3, (0, 6, 0, 6), -1.0),
            ],
            # true class 3; negatives 0 and 1 outside the box, class 2 everywhere positive
            [(0, (5, 6, 5, 6), 4.0), (1, (3, 4, 0, 1), 1.0), (2, (0, 6, 0, 6), 0.1)],
        ]
    )
    labels = np.array([0, 3])
    hits = cam.negative_cam_hits(cams, labels, k=2, boxes=np.stack([box, box]))
    # Image 0: positive negative pixels 1 + 1 (class 3 is negative everywhere).
    # Image 1: 1 + 1 + 36. Scores pick (1, 2) for image 0 and (2, 0) for image 1 (sums 3.6, 4).
    np.testing.assert_allclose(hits["num_posi"], [2, 38])
    assert np.mean(hits["num_posi"]) == pytest.approx(
        float(losses.num_positive_negative_pixels(cams, labels))
    )
    np.testing.assert_allclose(hits["neg_peak"], [2.5, 2.05])
    # Image 1's class-2 map is flat: its argmax is cell (0, 0), inside the box.
    np.testing.assert_allclose(hits["peak_on_clutter"], [0.5, 0.5])
    stats = cam.negative_cam_stats(cams, labels, k=2)
    assert set(stats) == {"num_posi", "neg_peak"} and stats["num_posi"] == 20


def test_negative_cam_hits_of_multi_hot_labels_skip_positives():
    cams = np.zeros((2, 2, 2, 4), np.float32)
    cams[:, 0, 0] = [9.0, 8.0, 3.0, -1.0]  # Image 0 has classes 0, 1: k=3 finds 2 negatives.
    cams[:, 1, 1, 3] = 0.5
    hits = cam.negative_cam_hits(cams, np.array([[1, 1, 0, 0], [0, 0, 0, 0]]), k=3)
    # Image 1 has no object: its hard negatives are classes 0, 1, 2 (peaks 9, 8, 3).
    np.testing.assert_allclose(hits["neg_peak"], [(3.0 + 0.5) / 2, (9.0 + 8.0 + 3.0) / 3])
    np.testing.assert_allclose(hits["num_posi"], [2.0, 4.0])  # Cells > 0 of absent maps.


def test_metrics_reject_multi_hot_labels():
    cams = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="int class ids"):
        cam.negative_cam_hits(cams, np.ones((2, 3), np.float32), k=1, boxes=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"rank 4"):
        cam.localization_hits(cams[0], np.zeros((2, 3)), [0, 1], np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"boxes must have shape \(2, 4\)"):
        cam.localization_hits(cams, np.zeros((2, 3)), [0, 1], np.zeros((2, 3)))


def test_evaluate_cams_ignores_padding():
    gt = np.array([1, 1, 3, 3]) / 6
    cams = _blocks([[(0, (1, 3, 1, 3), 2.0)], [(1, (4, 6, 4, 6), 2.0)]], classes=3)
    batch = {
        "image": np.zeros((2, 6, 6, 3), np.float32),
        "label": np.array([0, 1]),
        "box": np.stack([gt, gt]),
        "mask": np.array([True, False]),
    }
    result = cam.evaluate_cams(lambda _: (cams.mean(axis=(1, 2)), cams), [batch, batch], k=1)
    v2 = ["max_box_acc_v2", *(f"max_box_acc_v2_iou{d}" for d in wsol.IOU_THRESHOLDS)]
    assert set(result) == {*cam.METRICS, "max_box_acc", "best_threshold", *v2}
    assert result["max_box_acc"] == 1.0 and result["best_threshold"] == cam.THRESHOLDS[0]
    # The masked image's map would miss its box: only the real one is counted.
    assert [result[k] for k in v2] == [1.0] * 4
    assert result["gt_known_loc"] == 1.0 and result["top1_loc"] == 1.0
    assert result["num_posi"] == 0.0 and result["neg_peak"] == 0.0


def test_render_overlays_size_and_content(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 48, 48, 3)).astype(np.float32)
    # True class 0 hot in the top-left cell, class 1 hot bottom-right, others cold.
    cams = _blocks([[(0, (0, 2, 0, 2), 4.0), (1, (4, 6, 4, 6), 3.0)]] * 2, classes=5)
    logits = cams.mean(axis=(1, 2))
    names = [f"class{i}" for i in range(5)]
    path = figures.render_overlays(
        images,
        cams,
        logits,
        [0, 0],
        names,
        k=3,
        path=str(tmp_path / "cams.png"),
        boxes=np.tile([0, 0, 0.3, 0.3], (2, 1)),
    )
    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
    assert pixels.shape == (2 * 160, 5 * 160, 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000

    # The true-class panel (column 1) of row 0 is red (jet's top) near its top-left corner and
    # blue (jet's bottom) near its bottom-right one; the first negative (class 1) the reverse.
    def panel(col, fy, fx):
        y, x = int((fy + 0.05) * 160 * 0.8) + 35, col * 160 + int(fx * 140) + 10
        return pixels[y - 3 : y + 3, x - 3 : x + 3].mean(axis=(0, 1))

    for col, hot, cold in ((1, (0.1, 0.1), (0.8, 0.8)), (2, (0.8, 0.8), (0.1, 0.1))):
        r_hot, _, b_hot = panel(col, *hot)
        r_cold, _, b_cold = panel(col, *cold)
        assert r_hot > b_hot + 40 and b_cold > r_cold + 40, (
            col,
            panel(col, *hot),
            panel(col, *cold),
        )


def test_overlay_rejects_wrong_class_names():
    cams = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="class names"):
        figures.overlay_figure(np.zeros((1, 8, 8, 3)), cams, np.zeros((1, 3)), [0], ["a", "b"], k=1)
