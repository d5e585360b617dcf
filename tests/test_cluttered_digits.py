"""The embedded dataset: boxes enclose the target's ink, splits are disjoint, builds repeat."""

import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hnc_jax.data import cluttered_digits as cd

# The TFDS builder (TensorFlow, the same in both tested sets) and whole builds.
pytestmark = pytest.mark.slow


def _examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split)))


def test_render_box_is_tight_around_target_ink():
    images, _ = cd._digits()
    for i in range(40):
        rng = np.random.default_rng(i)
        image, inks, boxes = cd.render(images[i : i + 1], images[100:200], rng)
        ink, box = inks[0], boxes[0]
        ys, xs = np.nonzero(ink)
        np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
        assert image.shape == (cd.CANVAS, cd.CANVAS) and image.dtype == np.uint8
        assert (image[ink] >= cd.INK_THRESHOLD - 1).all()  # Clutter only adds ink (max).
        size = max(box[2] - box[0], box[3] - box[1])
        assert 0.4 * cd.TARGET_SIZES[0] <= size <= cd.TARGET_SIZES[1]


def test_default_style_draws_the_version_1_0_0_canvases():
    # sha256 of 20 canvases and boxes as drawn by the 1.0.0 renderer (single-digit, before
    # the styles): the default dataset must not change.
    images, _ = cd._digits()
    digest = hashlib.sha256()
    for i in range(20):
        image, _, boxes = cd.render(images[i : i + 1], images[100:200], np.random.default_rng(i))
        digest.update(image.tobytes() + boxes[0].astype(np.int64).tobytes())
    assert digest.hexdigest() == (
        "681207b1ee1b97e225c7eaadba9af861b027d1214d113852adbb2073b44765eb"
    )


def test_render_multi_digit_boxes_are_tight_and_disjoint():
    images, _ = cd._digits()
    for i in range(40):
        targets = images[[i, i + 300, i + 600]]
        image, inks, boxes = cd.render(targets, images[1000:1100], np.random.default_rng(i),
                                       style=cd.MULTI)  # fmt: skip
        assert inks.shape == (3, cd.CANVAS, cd.CANVAS) and boxes.shape == (3, 4)
        for ink, box in zip(inks, boxes, strict=True):
            ys, xs = np.nonzero(ink)
            np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
            assert (image[ink] >= cd.INK_THRESHOLD - 1).all()
        assert inks.sum(0).max() == 1  # No pixel is ink of two digits.


def test_splits_are_disjoint_and_labels_match_sources(digits):
    ids = cd.source_split(0)
    assert not set(ids["train"]) & set(ids["test"])
    assert len(ids["train"]) + len(ids["test"]) == 1797
    # Validation: a fixed ~20% of train's scans, none of them a target in train_fit.
    assert not set(ids["train_fit"]) & set(ids["validation"])
    np.testing.assert_array_equal(np.sort(np.r_[ids["train_fit"], ids["validation"]]), ids["train"])
    assert len(ids["validation"]) == round(0.2 * len(ids["train"]))
    _, targets = cd._digits()
    for split, copies in (("train", 4), ("test", 2), ("train_fit", 4), ("validation", 4)):
        examples = _examples(digits, split)
        sources = np.array([ex["source_id"] for ex in examples])
        assert len(examples) == copies * len(ids[split])
        np.testing.assert_array_equal(np.unique(sources), ids[split])
        labels = np.array([ex["label"] for ex in examples])
        np.testing.assert_array_equal(labels, targets[sources])


def _records(builder, split):
    """Every example as a hashable tuple (image bytes, label, box, source)."""
    return [
        (ex["image"].tobytes(), int(ex["label"]), ex["bbox"].tobytes(), int(ex["source_id"]))
        for ex in _examples(builder, split)
    ]


def test_fit_and_validation_are_train_canvases(digits):
    fit, val = _records(digits, "train_fit"), _records(digits, "validation")
    assert sorted(fit + val) == sorted(_records(digits, "train"))
    assert not {r[3] for r in fit} & {r[3] for r in val}


def test_built_boxes_enclose_ink_with_ink_on_every_edge(digits):
    for ex in _examples(digits, "test")[:200]:
        image = ex["image"]
        assert image.shape == (48, 48, 3) and (image[..., 0] == image[..., 2]).all()
        y0, x0, y1, x1 = np.round(ex["bbox"] * cd.CANVAS).astype(int)
        inside = image[y0:y1, x0:x1, 0] >= cd.INK_THRESHOLD
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert 8 <= y1 - y0 <= 24 and 2 <= x1 - x0 <= 24


def test_rebuild_gives_the_same_records_in_order(digits, tmp_path):
    again = tfds.builder("cluttered_digits", data_dir=str(tmp_path))
    again.download_and_prepare()
    for split in ("train", "test", "train_fit", "validation"):
        assert _records(again, split) == _records(digits, split)


def test_multi_labels_boxes_and_own_pools(multi_digits):
    ids = cd.source_split(0)
    _, targets = cd._digits()
    counts = []
    for split in ("train_fit", "validation", "test"):
        for ex in _examples(multi_digits, split):
            labels, boxes, sources = ex["labels"], ex["bboxes"], ex["source_ids"]
            assert 2 <= len(labels) <= 3 and len(set(labels)) == len(labels)
            assert len(boxes) == len(sources) == len(labels)
            np.testing.assert_array_equal(labels, targets[sources])
            # Every digit of a canvas comes from its own part: no scan feeds fit and validation.
            assert set(sources) <= set(ids[split])
            for box in boxes:
                y0, x0, y1, x1 = np.round(box * cd.CANVAS).astype(int)
                inside = ex["image"][y0:y1, x0:x1, 0] >= cd.INK_THRESHOLD
                assert inside[0].any() and inside[-1].any()
                assert inside[:, 0].any() and inside[:, -1].any()
            counts.append(len(labels))
    assert set(counts) == {2, 3}


def test_multi_batches_are_multi_hot(multi_digits):
    from configs import cluttered_digits_multi
    from hnc_jax.data import pipeline

    config = cluttered_digits_multi.get_config()
    config.data_dir, config.eval_split, config.eval_batch_size = (
        str(multi_digits.data_dir_root),
        "test",
        64,
    )
    dataset = pipeline.load(config)
    info = dataset.info
    assert info.multi_label and info.num_classes == 10 and not info.has_boxes
    batch = next(pipeline.eval_iterator(dataset, config))
    expected = np.zeros((64, 10), np.float32)
    for row, ex in enumerate(_examples(multi_digits, "test")[:64]):
        expected[row, ex["labels"]] = 1.0
    np.testing.assert_array_equal(batch["label"], expected)
