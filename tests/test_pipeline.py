"""Input pipeline: shapes and dtypes, image folders, boxes, multi-process splits, eval padding,
resume, and error messages."""

import hashlib
import io
import itertools
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.utils import shard_utils

from configs import finetune_cub_resnet50_hnc_mse
from hnc_jax.bench import resume
from hnc_jax.data import folders, host_transforms, image_stats, label_noise, records, transforms
from hnc_jax.data import pipeline as ip
from hnc_jax.errors import ConfigError
from tests.helpers import truncate, write_image_folder

DIGITS_STREAM_SHA256 = "e00e8a67f8d74d311c306b209a890c8ef33f90ac1d696a9f7893f9c3fa590e90"


def make_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(
            dataset="cluttered_digits",
            data_dir=None,
            image_folder=None,
            train_split="train",
            eval_split="test",
            image_size=48,
            batch_size=32,
            eval_batch_size=100,
            seed=0,
            image_dtype="uint8",
            augment=dict(random_resized_crop=False, flip=False, crop_padding=0),
        )
    )
    config.update(overrides)
    return config


@pytest.fixture
def digits_dir(digits):
    return str(digits.data_dir_root)


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_digits_batches_are_raw_images(digits_dir):
    config = make_config(data_dir=digits_dir)
    raw = tfds.as_numpy(tfds.builder("cluttered_digits", data_dir=digits_dir).as_dataset("train"))
    raw = {ex["image"].tobytes(): ex for ex in raw}
    batch = next(ip.train_iterator(ip.load(config), config))
    assert batch["image"].shape == (32, 48, 48, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["box"].shape == (32, 4)
    # Host normalisation ('float32') is (pixels / 255 - mean) / std of the same batch.
    float_config = make_config(data_dir=digits_dir, image_dtype="float32")
    normalised = next(ip.train_iterator(ip.load(float_config), float_config))
    mean, std = image_stats.STATS["cluttered_digits"]
    want = (batch["image"].astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(normalised["image"], want, rtol=1e-6, atol=1e-6)
    for image, label, box in zip(batch["image"], batch["label"], batch["box"], strict=True):
        ex = raw[image.tobytes()]  # Every batch image is a dataset image, unchanged.
        assert ex["label"] == label
        np.testing.assert_allclose(ex["bbox"], box)


def test_resume_from_step_gives_the_same_batches(digits_dir):
    # 3 steps per epoch, so the streams cross epoch boundaries; augmentation on.
    config = make_config(
        data_dir=digits_dir,
        train_split="train[:96]",
        augment=dict(random_resized_crop=False, flip=True, crop_padding=4),
    )
    full = _take(ip.train_iterator(ip.load(config), config), 8)
    for start in (2, 3, 5):
        resumed = _take(ip.train_iterator(ip.load(config), config, start_step=start), 3)
        for a, b in zip(full[start : start + 3], resumed, strict=True):
            for key in ("image", "label", "box"):
                np.testing.assert_array_equal(a[key], b[key])
    # Each epoch is a new order of the same 96 examples, told apart by their canvases in an
    # unaugmented stream (augmentation does not change the order).
    plain = make_config(data_dir=digits_dir, train_split="train[:96]")
    batches = _take(ip.train_iterator(ip.load(plain), plain), 6)
    epochs = [[x.tobytes() for b in batches[i : i + 3] for x in b["image"]] for i in (0, 3)]
    assert len(set(epochs[0])) == 96 and set(epochs[0]) == set(epochs[1])
    assert epochs[0] != epochs[1]
    # Each example is augmented afresh in epoch 1 (its key, (seed, epoch, index), differs).
    augmented = [np.concatenate([b["image"] for b in full[i : i + 3]]) for i in (0, 3)]
    where = {x: i for i, x in enumerate(epochs[1])}
    pairs = zip(epochs[0], augmented[0], strict=True)
    assert np.mean([not np.array_equal(a, augmented[1][where[x]]) for x, a in pairs]) > 0.9


def test_digits_stream_is_unchanged(digits_dir):
    # A study and the README's default-run figures depend on this stream: these batches'
    # digest was computed with the pipeline of commit 61eac04 (before the resumable order
    # for parts larger than the shuffle buffer), across the boundary of epochs 0 and 1.
    config = make_config(
        data_dir=digits_dir, augment=dict(random_resized_crop=False, flip=True, crop_padding=4)
    )
    dataset = ip.load(config)
    batches = _take(ip.train_iterator(dataset, config), 2)
    batches += _take(ip.train_iterator(dataset, config, start_step=178), 2)
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            digest.update(batch[key].tobytes())
    assert digest.hexdigest() == DIGITS_STREAM_SHA256


@pytest.mark.parametrize("count", [1, 3, 4])
def test_process_splits_are_disjoint_and_cover(digits_dir, count):
    builder = tfds.builder("cluttered_digits", data_dir=digits_dir)

    def images(split):
        return [ex["image"].tobytes() for ex in tfds.as_numpy(builder.as_dataset(split))]

    everything = images("test")
    for drop in (False, True):
        parts = [images(records.process_split("test", i, count, drop)) for i in range(count)]
        merged = sum(parts, [])
        assert len(set(merged)) == len(merged)  # Disjoint (all 718 canvases differ).
        sizes = {len(p) for p in parts}
        if drop:  # Equal parts, missing fewer than `count` examples.
            assert len(sizes) == 1 and set(merged) <= set(everything)
            assert 718 - count < len(merged)
        else:
            assert max(sizes) - min(sizes) <= 1 and sorted(merged) == sorted(everything)


def test_shard_bounds_cover_evenly():
    for n, count in [(10, 3), (7, 7), (5, 8), (100, 4)]:
        bounds = [records.shard_bounds(n, i, count, False) for i in range(count)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        dropped = [records.shard_bounds(n, i, count, True) for i in range(count)]
        assert len({e - s for s, e in dropped}) == 1 and dropped[-1][1] <= n


def _expand(files) -> list[tuple[str, int]]:
    """(file, record index in the file) of every record `files` read, in order."""
    return [(f.filename, i) for f in files for i in range(f.skip, f.skip + f.take)]


def test_epoch_files_start_at_any_record():
    sizes = [(5, 13), (0, 7), (0, 1), (0, 9), (0, 4)]  # (skip, take): a part starts mid-file.
    files = [
        shard_utils.FileInstruction(f"f{i}", skip, take, skip + take + 2)
        for i, (skip, take) in enumerate(sizes)
    ]
    whole = records.epoch_files(files, seed=7, start=0)
    order = [f.filename for f in whole]
    assert sorted(order) == [f.filename for f in files] and whole == [
        next(f for f in files if f.filename == name) for name in order
    ]
    assert order != [f.filename for f in records.epoch_files(files, seed=8, start=0)]
    expanded = _expand(whole)
    for start in range(len(expanded) + 1):
        resumed = records.epoch_files(files, seed=7, start=start)
        assert _expand(resumed) == expanded[start:]
        assert all(f.take > 0 for f in resumed)  # Files before `start` are not even opened.


@pytest.fixture(scope="module")
def numbered_dir(tmp_path_factory):
    """NumberedImages/n2000 (example i holds i in its pixels) in 8 files of 250 records."""
    data_dir = str(tmp_path_factory.mktemp("numbered"))
    resume.prepare("numbered_images/n2000", data_dir, files=8)
    return data_dir


def numbered_config(data_dir, augment=False, batch_size=16) -> ml_collections.ConfigDict:
    # A buffer of 256 < 2,000 records: the resumable block order; 125 steps per epoch.
    config = resume.bench_config("numbered_images/n2000", data_dir, 256, batch_size)
    config.augment.update(flip=augment, crop_padding=2 * augment)
    return config


def _ids(batches) -> np.ndarray:
    return np.concatenate([resume.identity(b["image"]) for b in batches])


def test_large_part_epochs_are_new_permutations(numbered_dir):
    config = numbered_config(numbered_dir)
    stream = ip.train_iterator(ip.load(config), config)
    epochs = [_take(stream, 125) for _ in range(2)]
    for batches in epochs:
        ids = _ids(batches)
        assert sorted(ids) == list(range(2000))
        labels = np.concatenate([b["label"] for b in batches])
        np.testing.assert_array_equal(labels, ids % 10)  # Blocks permute whole records.
    assert (_ids(epochs[0]) != _ids(epochs[1])).mean() > 0.9


def _records_read_when_idle(dataset, config, start_step) -> int:
    """Records read from the files to yield 2 batches from `start_step`, once the pipeline
    has filled its read-ahead buffers and stopped reading."""
    with resume.count_records_read() as counter:
        stream = ip.train_iterator(dataset, config, start_step)
        _take(stream, 2)
        counts = [-1]
        while len(counts) < 4 or len(set(counts[-3:])) > 1:
            time.sleep(0.3)
            counts.append(int(counter.numpy()))
        stream.close()
        return counts[-1]


def test_large_part_resumes_bit_identically_reading_one_block_and_one_file(numbered_dir):
    config = numbered_config(numbered_dir, augment=True)
    dataset = ip.load(config)
    full = _take(ip.train_iterator(dataset, config), 130)  # Into epoch 1.
    for start in (62, 124, 125, 128):
        resumed = _take(ip.train_iterator(dataset, config, start), 2)
        for a, b in zip(full[start : start + 2], resumed, strict=True):
            for key in ("image", "label"):
                np.testing.assert_array_equal(a[key], b[key])
    # Step 62 starts at record 992 of the epoch, in block 3 (records 768-1023): the files
    # before that block are not read, and at most one file (250) is read to skip into it.
    fresh, resumed = (_records_read_when_idle(dataset, config, step) for step in (0, 62))
    assert fresh >= 256  # A whole block is read before its first record is yielded.
    assert resumed - fresh <= 250 + 256


def test_large_part_processes_read_disjoint_parts(numbered_dir, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = numbered_config(numbered_dir, augment=True, batch_size=32)  # 62 steps of 16.
    plain = numbered_config(numbered_dir, batch_size=32)
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        dataset = ip.load(config)
        full = _take(ip.train_iterator(dataset, config), 33)
        for a, b in zip(full[30:], _take(ip.train_iterator(dataset, config, 30), 3), strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
        parts.append(set(_ids(_take(ip.train_iterator(dataset, plain), 62))))
        assert len(parts[-1]) == 992  # 1,000 records a process, less the remainder.
    assert not parts[0] & parts[1]


@pytest.mark.parametrize("processes", [1, 3])
def test_eval_counts_every_example_once(digits_dir, monkeypatch, processes):
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    config = make_config(data_dir=digits_dir, eval_batch_size=96)
    expected = [
        ex["label"]
        for ex in tfds.as_numpy(
            tfds.builder("cluttered_digits", data_dir=digits_dir).as_dataset("test")
        )
    ]
    labels, steps = [], set()
    for index in range(processes):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        batches = list(ip.eval_iterator(ip.load(config), config))
        steps.add(len(batches))
        for b in batches:
            assert b["image"].shape == (96 // processes, 48, 48, 3) and b["mask"].dtype == bool
            labels += list(b["label"][b["mask"]])
            assert (b["image"][~b["mask"]] == 0).all()
    assert steps == {ip.num_eval_steps(config, 718)} and labels == expected


def test_validate_rejects_bad_configs():
    with pytest.raises(ValueError, match="unknown dataset 'no_such_set'"):
        ip.validate(make_config(dataset="no_such_set"))
    with pytest.raises(ValueError, match="unknown image_dtype 'float16'; allowed: uint8, "):
        ip.validate(make_config(image_dtype="float16"))
    with pytest.raises(ValueError, match="shuffle_buffer_size must be positive, got 0"):
        ip.validate(make_config(shuffle_buffer_size=0))
    with pytest.raises(ValueError, match="image_folder"):
        ip.validate(make_config(dataset="image_folder", image_folder="/does/not/exist"))


def test_missing_imagenet_names_dataset_dir_and_command(tmp_path):
    config = make_config(
        dataset="imagenet2012",
        data_dir=str(tmp_path),
        image_size=224,
        train_split="train",
        eval_split="validation",
    )
    assert ip.num_classes(config) == 1000  # From the metadata, with nothing prepared.
    with pytest.raises(ConfigError) as err:
        ip.load(config)
    message = str(err.value)
    assert "imagenet2012" in message and str(tmp_path) in message
    assert "ILSVRC2012_img_train.tar" in message and f"{tmp_path}/downloads/manual" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message


@pytest.mark.parametrize(
    "name,size,eval_split,image_dtype,labels",
    [
        ("imagenet2012", 64, "validation", "bfloat16", (4,)),
        ("cifar100", 32, "test", "uint8", (4,)),
    ],
)
def test_mocked_tfds_shapes_and_dtypes(
    tmp_path, monkeypatch, name, size, eval_split, image_dtype, labels
):
    # mock_data fakes the records but not `is_prepared`, which guards manual datasets.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    config = make_config(
        dataset=name,
        data_dir=str(tmp_path),
        image_size=size,
        batch_size=4,
        eval_batch_size=4,
        eval_split=eval_split,
        image_dtype=image_dtype,
        augment=dict(random_resized_crop=True, flip=True, crop_padding=4),
    )
    with tfds.testing.mock_data(num_examples=6):
        dataset = ip.load(config)
        info = dataset.info
        train = next(ip.train_iterator(dataset, config))
        evals = list(ip.eval_iterator(dataset, config))
    dtype = jax.numpy.dtype(image_dtype)
    assert train["image"].shape == (4, size, size, 3) and train["image"].dtype == dtype
    assert train["label"].shape == labels
    assert train["label"].dtype == (np.float32 if info.multi_label else np.int32)
    assert len(evals) == 2 and sum(b["mask"].sum() for b in evals) == 6
    assert ((0 <= train["label"]) & (train["label"] < info.num_classes)).all()


def test_voc_objects_become_multi_hot_labels(tmp_path, monkeypatch):
    jpeg = tf.io.encode_jpeg(tf.zeros([50, 60, 3], tf.uint8)).numpy()
    labels = [[3], [0, 19, 3], [7, 7], []]  # The last image has no object.

    def fake_voc(self, split, **kwargs):  # VOC-like records (mock_data fails on VOC).
        return tf.data.Dataset.from_generator(
            lambda: (
                {"image": jpeg, "labels": np.array(x), "objects": {"label": np.array(x)}}
                for x in labels
            ),
            output_signature={
                "image": tf.TensorSpec([], tf.string),
                "labels": tf.TensorSpec([None], tf.int64),
                "objects": {"label": tf.TensorSpec([None], tf.int64)},
            },
        )

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    config = make_config(
        dataset="voc/2007",
        data_dir=str(tmp_path),
        image_size=40,
        eval_split="validation",
        eval_batch_size=4,
    )
    with tfds.testing.mock_data(num_examples=4, as_dataset_fn=fake_voc):
        dataset = ip.load(config)
        (batch,) = list(ip.eval_iterator(dataset, config))
    info = dataset.info
    assert info.multi_label and info.num_classes == 20 and not info.has_boxes
    want = np.zeros((4, 20), np.float32)
    for row, classes in enumerate(labels):
        want[row, classes] = 1
    np.testing.assert_array_equal(batch["label"], want)  # An all-zero row, not -inf.
    np.testing.assert_array_equal(batch["mask"], [True, True, True, True])


def _write_folder(root):
    colors = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for split, count in (("train", 3), ("val", 2)):
        for name, color in colors.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = Image.new("RGB", (120 + 17 * i, 90 + 11 * i), color)
                image.save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    (root / "train" / "red" / "notes.txt").write_text("not an image")


def _reads_folder(root, **fields) -> ml_collections.ConfigDict:
    """A config that reads the image folder `root` (train/ and val/), batches of 2."""
    fields = {"image_size": 16, "eval_batch_size": 2, **fields}
    return make_config(dataset="image_folder", image_folder=str(root), eval_split="val",
                       batch_size=2, **fields)  # fmt: skip


def folder_config(root, **overrides) -> ml_collections.ConfigDict:
    """Writes the two-class image folder under `root`; a config that reads it."""
    _write_folder(root)
    return _reads_folder(root, image_size=32, eval_batch_size=4, **overrides)


@pytest.mark.parametrize("image_dtype", ["uint8", "float32"])
def test_image_folder(tmp_path, image_dtype):
    augment = dict(random_resized_crop=True, flip=True, crop_padding=0)
    config = folder_config(tmp_path, augment=augment, image_dtype=image_dtype)
    dataset = ip.load(config)
    info = dataset.info
    assert (info.class_names, info.num_train, info.num_eval) == (["blue", "red"], 6, 4)
    want = {0: np.array([0, 0, 255]), 1: np.array([255, 0, 0])}  # JPEG: within a few levels.
    mean, std = np.array(image_stats.IMAGENET_MEAN), np.array(image_stats.IMAGENET_STD)
    batches = _take(ip.train_iterator(dataset, config), 6)  # Two epochs.
    for a, b in zip(batches[4:], _take(ip.train_iterator(dataset, config, 4), 2), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])  # Resumed: the same batches.
    for batch in batches:
        assert batch["image"].shape == (2, 32, 32, 3)
        assert batch["image"].dtype == np.dtype(image_dtype)
        pixels = batch["image"][:, 16, 16].astype(np.float64)
        if image_dtype == "float32":  # Undo the host normalisation.
            pixels = (pixels * std + mean) * 255
        for pixel, label in zip(pixels, batch["label"], strict=True):
            np.testing.assert_allclose(pixel, want[int(label)], atol=3)
    (batch,) = list(ip.eval_iterator(dataset, config))
    assert batch["mask"].all() and sorted(batch["label"]) == [0, 0, 1, 1]


def test_image_folder_is_listed_once_per_run(tmp_path, monkeypatch):
    config = folder_config(tmp_path)
    listed = []
    listdir = tf.io.gfile.listdir
    monkeypatch.setattr(tf.io.gfile, "listdir", lambda path: listed.append(path) or listdir(path))
    ip.validate(config)  # The splits, then the first class folder of each.
    assert listed == [f"{tmp_path}/{p}" for p in ("train", "val", "train/blue", "val/blue")]
    listed.clear()
    dataset = ip.load(config)
    assert len(listed) == 6  # train/ and val/, then the 2 class folders of each.
    _take(ip.train_iterator(dataset, config, start_step=2), 4)  # Resumed, across epochs.
    for _ in range(2):
        assert sum(b["mask"].sum() for b in ip.eval_iterator(dataset, config)) == 4
    assert len(listed) == 6


def _tf_crop_flip(data: bytes, box: np.ndarray, size: int, seed: int):
    key = tf.constant([seed, 1], tf.int64)
    image, out = transforms.decode_crop_resize(tf.constant(data), box, size, seed > 0, key)
    image, out = transforms.flip(image, out, tf.constant([seed, 2], tf.int64))
    return image.numpy(), out.numpy()


def _host_crop_flip(data: bytes, box: np.ndarray, size: int, seed: int):
    """The Grain backend's numpy/PIL transforms."""
    rng = np.random.default_rng(seed)
    image, out = host_transforms.decode_crop_resize(data, box, size, rng if seed else None)
    return host_transforms.flip(image, out, rng)


@pytest.mark.parametrize("crop_flip", [_tf_crop_flip, _host_crop_flip])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_boxes_follow_crops_and_flips(fmt, crop_flip, tmp_path):
    array = np.zeros((300, 400, 3), np.uint8)
    array[60:200, 250:330] = 255  # Box [0.2, 0.625, 0.6667, 0.825].
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(array).save(path, fmt, quality=100)
    box = np.array([60 / 300, 250 / 400, 200 / 300, 330 / 400], np.float32)
    size = 64
    for seed in range(12):  # Seed 0: the central (eval) crop; others random-resized.
        image, out = crop_flip(path.read_bytes(), box, size, seed)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        white = image.mean(-1) > 128
        y0, x0, y1, x1 = out * size
        if not white.any():
            assert y0 == y1 or x0 == x1  # Crop missed the object: the box is empty.
            continue
        ys, xs = np.nonzero(white)
        np.testing.assert_allclose(
            [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], [y0, x0, y1, x1], atol=1.5
        )


def _small_folder(root, counts, classes=("a", "b")) -> ml_collections.ConfigDict:
    """16x16 JPEGs: `counts[split]` per class of each split; a config that reads them."""
    write_image_folder(root, counts, classes)
    return _reads_folder(root)


def _one_line_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_image_folder_skips_hidden_files_and_folders(tmp_path):
    config = _small_folder(tmp_path, {"train": 2, "val": 1})
    (tmp_path / "train" / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    for folder in ("train", "train/a", "val/b"):
        (tmp_path / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "train" / ".Trash" / "x.jpg").parent.mkdir()
    (tmp_path / "train" / ".Trash" / "x.jpg").write_bytes(b"not shown")
    ip.validate(config)
    assert ip.num_classes(config) == 2
    dataset = ip.load(config)
    info = dataset.info
    assert info.class_names == ["a", "b"] and (info.num_train, info.num_eval) == (4, 2)
    assert not any("/." in p for split in dataset.files.values() for p in split[0])
    assert len(_take(ip.train_iterator(dataset, config), 4)) == 4  # Two epochs.
    assert sum(b["mask"].sum() for b in ip.eval_iterator(dataset, config)) == 2


def test_image_folder_splits_need_the_same_classes(tmp_path):
    config = _small_folder(tmp_path, {"train": 1, "val": 1}, classes=("a", "b", "c"))
    (tmp_path / "val" / "c" / "0.jpg").unlink()
    (tmp_path / "val" / "c").rmdir()  # c and d only in train: never evaluated.
    (tmp_path / "train" / "d").mkdir()
    (tmp_path / "val" / "e").mkdir()  # e only in val: dropped silently before.
    for fn in (ip.validate, ip.load, ip.num_classes):
        message = _one_line_error(fn, config)
        assert str(tmp_path) in message
        assert "missing from val/: c, d; missing from train/: e" in message


def test_image_folder_split_without_images_is_rejected(tmp_path):
    config = _small_folder(tmp_path, {"train": 1})
    for name in ("a", "b"):
        (tmp_path / "val" / name).mkdir(parents=True)
    (tmp_path / "val" / "a" / ".DS_Store").write_bytes(b"\x00")
    for fn in (ip.validate, ip.load):
        message = _one_line_error(fn, config)
        assert f"image folder split {tmp_path}/val has no images" in message
    (tmp_path / "val" / "a" / ".DS_Store").unlink()
    for name in ("a", "b"):
        (tmp_path / "val" / name).rmdir()
    (tmp_path / "val").rmdir()  # No eval split at all: named, not an eval on nothing.
    message = _one_line_error(ip.validate, config)
    assert f"{tmp_path}/val is not a directory" in message


def test_check_images_names_a_truncated_jpeg_at_load(tmp_path):
    config = _small_folder(tmp_path, {"train": 3, "val": 2})
    config.check_images = True
    bad = [
        truncate(tmp_path / "train" / "b" / "1.jpg"),
        truncate(tmp_path / "val" / "a" / "0.jpg"),
        truncate(tmp_path / "val" / "b" / "1.jpg", keep=0.9),  # Cut in the pixels:
    ]
    Image.open(bad[-1]).verify()  # verify() reads the headers only, and passes.
    (tmp_path / "train" / "a" / "2.jpg").write_bytes(b"")  # Empty: not an image at all.
    ip.validate(config)  # Decodes nothing.
    message = _one_line_error(ip.load, config)
    assert f"4 of the 10 images in {tmp_path} cannot be decoded" in message
    assert f"{bad[-1]} (image file is truncated" in message
    assert f"{tmp_path}/train/a/2.jpg (not an image)" in message
    assert all(path in message for path in bad)
    config.check_images = False
    assert ip.load(config).info.num_train == 6  # Off: nothing is decoded at load.


def test_bad_image_is_named_when_a_batch_reads_it(tmp_path, monkeypatch):
    config = _small_folder(tmp_path, {"train": 4, "val": 2})  # 4 steps a train epoch.
    bad_train = truncate(tmp_path / "train" / "b" / "1.jpg")
    bad_eval = truncate(tmp_path / "val" / "b" / "1.jpg")
    dataset = ip.load(config)
    message = _one_line_error(list, ip.eval_iterator(dataset, config))
    assert f"cannot decode 1 image of the val split: {bad_eval} (" in message
    checked = []
    problem = folders.image_problem
    monkeypatch.setattr(
        folders, "image_problem", lambda path: checked.append(path) or problem(path)
    )
    for start in (0, 2, 4):  # Fresh, resumed, in epoch 1: each reads a whole epoch.
        checked.clear()
        message = _one_line_error(_take, ip.train_iterator(dataset, config, start), 8)
        assert f"cannot decode 1 image of the train split: {bad_train} (" in message
        assert "--config.check_images=True" in message
        # Only the failing batch's 2 files are checked (and the next epoch's first batch's,
        # when that epoch, built in the background, fails too), not the split's 8.
        assert bad_train in checked and len(checked) in (2, 4)
    checked.clear()
    _one_line_error(list, ip.eval_iterator(dataset, config))
    assert checked == [f"{tmp_path}/val/b/0.jpg", bad_eval]  # The last batch, in order.


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_label_noise_follows_each_example_in_every_read_path(numbered_dir, kind):
    """Every example gets `noisy_labels`' label for its own bytes: read in blocks over 8
    files, resumed inside a file, and in order for eval. NumberedImages example i holds i in
    its pixels, label i % 10."""
    config = numbered_config(numbered_dir)
    config.label_noise = ml_collections.ConfigDict(
        dict(kind=kind, rate=0.4, flips="2:7,3:8,5:6,7:1", seed=3, eval_splits="train")
    )
    dataset = ip.load(config)
    stored = dataset.builder.as_dataset(
        split="train", decoders={"image": tfds.decode.SkipDecoding()}
    )
    encoded = {}
    for example in tfds.as_numpy(stored):
        pixels = np.asarray(Image.open(io.BytesIO(example["image"])))
        encoded[int(resume.identity(pixels[None])[0])] = example["image"]

    def expected(ids):
        images = [encoded[i] for i in ids]
        return label_noise.noisy_labels(ids % 10, images, config.label_noise, 10)

    epoch = _take(ip.train_iterator(dataset, config), 125)
    ids, labels = _ids(epoch), np.concatenate([b["label"] for b in epoch])
    np.testing.assert_array_equal(labels, expected(ids))
    changed = np.mean(labels != ids % 10)
    assert 0.3 < changed < 0.5 if kind == "symmetric" else 0.1 < changed < 0.2
    resumed = _take(ip.train_iterator(dataset, config, 62), 1)[0]  # Inside a file.
    np.testing.assert_array_equal(resumed["label"], expected(resume.identity(resumed["image"])))
    evaluated = next(ip.eval_iterator(dataset, config))
    np.testing.assert_array_equal(evaluated["label"], expected(resume.identity(evaluated["image"])))
    config.label_noise.eval_splits = ""  # Eval labels stay clean unless named.
    evaluated = next(ip.eval_iterator(dataset, config))
    np.testing.assert_array_equal(evaluated["label"], resume.identity(evaluated["image"]) % 10)


def test_cub_config_stops_at_its_missing_data_and_has_boxes_when_prepared(tmp_path, monkeypatch):
    """The shipped CUB config never downloads: a one-line error naming the command; with the
    data there (mocked), its eval batches carry the boxes its localization metrics read."""
    config = finetune_cub_resnet50_hnc_mse.get_config()
    config.update(data_dir=str(tmp_path), eval_batch_size=4, batch_size=4)
    with pytest.raises(ConfigError) as missing:
        ip.load(config)
    assert str(missing.value) == (
        f"dataset caltech_birds2011 is not prepared in {tmp_path}/caltech_birds2011/"
        f"{tfds.builder('caltech_birds2011').version} and config.download_data is False: "
        f"prepare it first with `tfds build caltech_birds2011 --data_dir={tmp_path}`"
    )
    jpeg = tf.io.encode_jpeg(tf.zeros([300, 400, 3], tf.uint8)).numpy()
    box = np.array([0.2, 0.1, 0.9, 0.6], np.float32)  # A bird in the left half.

    def fake_cub(self, split, **kwargs):  # mock_data draws boxes with min > max.
        return tf.data.Dataset.from_tensors(
            {"image": jpeg, "label": np.int64(7), "bbox": box}
        ).repeat(4)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=4, as_dataset_fn=fake_cub):
        dataset = ip.load(config)
        batch = next(ip.eval_iterator(dataset, config))
    assert dataset.info.has_boxes and dataset.info.num_classes == 200
    assert batch["image"].shape == (4, 224, 224, 3) and batch["label"].tolist() == [7] * 4
    # The central crop of 224/256 of the shorter side (300): rows 19-281, columns 69-331.
    top, left, side = (300 - 262.5) / 2, (400 - 262.5) / 2, 262.5
    crop = [(0.2 * 300 - top) / side, (0.1 * 400 - left) / side, (0.9 * 300 - top) / side,
            (0.6 * 400 - left) / side]  # fmt: skip
    np.testing.assert_allclose(batch["box"][0], np.clip(crop, 0, 1), atol=0.01)
