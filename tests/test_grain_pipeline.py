"""The Grain backend: the tf.data backend's batches (keys, shapes, dtypes, examples), a global
shuffle per epoch, resume from a step or a saved state, disjoint process parts, eval counting
each example once, host transforms with the tf ones' ranges (boxes following crops and flips:
test_pipeline), and its config checks."""

import itertools
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from hnc_jax.data import grain_pipeline, host_transforms, transforms
from hnc_jax.data import pipeline as ip
from hnc_jax.errors import ConfigError
from tests.helpers import write_image_folder
from tests.test_pipeline import make_config


def _config(data_dir, **overrides):
    return make_config(data_dir=data_dir, input_backend="grain", **overrides)


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def test_batches_are_dataset_examples_and_epochs_are_new_permutations(digits_array_record):
    config = _config(digits_array_record, train_split="train[:96]")  # 3 steps an epoch.
    dataset = ip.load(config)
    source = dataset.builder.as_data_source("train[:96]")  # Decoded by TFDS.
    raw = {ex["image"].tobytes(): ex for ex in (source[i] for i in range(len(source)))}
    batches = _take(ip.train_iterator(dataset, config), 6)
    tf_batch = next(ip.train_iterator(ip.load(make_config()), make_config()))
    for key, value in tf_batch.items():  # The tf.data backend's keys, shapes and dtypes.
        assert batches[0][key].shape == value.shape and batches[0][key].dtype == value.dtype
    for batch in batches:  # Unaugmented: every image is a dataset image, with its label, box.
        for image, label, box in zip(batch["image"], batch["label"], batch["box"], strict=True):
            ex = raw[image.tobytes()]
            assert ex["label"] == label
            np.testing.assert_allclose(ex["bbox"], box)
    epochs = [[x.tobytes() for b in batches[i : i + 3] for x in b["image"]] for i in (0, 3)]
    assert len(set(epochs[0])) == 96 and set(epochs[0]) == set(epochs[1])
    assert epochs[0] != epochs[1]


def test_resume_from_a_step_or_a_saved_state_gives_the_same_batches(digits_array_record):
    config = _config(
        digits_array_record,
        train_split="train[:96]",
        augment=dict(random_resized_crop=False, flip=True, crop_padding=4),
    )
    dataset = ip.load(config)
    stream = ip.train_iterator(dataset, config)
    full = _take(stream, 8)
    for start in (2, 5):
        from_step = _take(ip.train_iterator(dataset, config, start), 3)
        from_state = _take(ip.train_iterator(dataset, config, start, stream.state(start)), 3)
        for a, b, c in zip(full[start : start + 3], from_step, from_state, strict=True):
            for key in ("image", "label", "box"):
                np.testing.assert_array_equal(a[key], b[key])
                np.testing.assert_array_equal(a[key], c[key])
    # A state saved with another worker count (another layout): the stream sliced at the step.
    other = {**stream.state(5), "workers": 3}
    resumed = next(ip.train_iterator(dataset, config, 5, other))
    np.testing.assert_array_equal(resumed["image"], full[5]["image"])
    with pytest.raises(ValueError, match="input state of step 5 given to resume at 4"):
        ip.train_iterator(dataset, config, 4, stream.state(5))


@pytest.mark.parametrize("processes", [1, 3])
def test_process_parts_are_disjoint_and_eval_counts_each_example_once(
    digits_array_record, monkeypatch, processes
):
    monkeypatch.setattr(jax, "process_count", lambda: processes)
    config = _config(digits_array_record, train_split="train[:96]", eval_batch_size=96)
    expected = [
        ex["label"]
        for ex in tfds.as_numpy(tfds.builder("cluttered_digits").as_dataset("test"))  # tf.data's.
    ]
    labels, steps, parts = [], set(), []
    local = 32 // processes  # Each process's part: 96 // processes examples, whole batches.
    steps_per_epoch = 96 // processes // local
    for index in range(processes):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        dataset = ip.load(config)
        batches = list(ip.eval_iterator(dataset, config))
        steps.add(len(batches))
        for b in batches:
            assert b["image"].shape == (96 // processes, 48, 48, 3) and b["mask"].dtype == bool
            labels += list(b["label"][b["mask"]])
            assert (b["image"][~b["mask"]] == 0).all()
        epoch = _take(ip.train_iterator(dataset, config), steps_per_epoch)
        parts.append({x.tobytes() for b in epoch for x in b["image"]})
    assert steps == {ip.num_eval_steps(config, 718)} and labels == expected
    assert sum(map(len, parts)) == len(set().union(*parts)) == steps_per_epoch * local * processes


def test_image_folder_reads_every_file_and_names_a_bad_one(tmp_path):
    write_image_folder(tmp_path, {"train": 6, "val": 3}, size=40)
    config = make_config(
        dataset="image_folder", image_folder=str(tmp_path), train_split="train",
        eval_split="val", image_size=32, batch_size=4, eval_batch_size=4,
        input_backend="grain", augment=dict(random_resized_crop=True, flip=True, crop_padding=0),
    )  # fmt: skip
    dataset = ip.load(config)
    batch = next(ip.train_iterator(dataset, config))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    evals = list(ip.eval_iterator(dataset, config))
    assert sorted(np.concatenate([b["label"][b["mask"]] for b in evals])) == [0] * 3 + [1] * 3
    (tmp_path / "val" / "b" / "2.jpg").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"cannot decode .*val/b/2\.jpg"):
        list(ip.eval_iterator(ip.load(config), config))


def test_random_window_has_the_tf_ranges_and_distribution():
    shape = (375, 500)
    rng = np.random.default_rng(0)
    ours = np.array([host_transforms.random_window(*shape, rng) for _ in range(400)])
    theirs = np.array(
        [
            transforms.random_window(tf.constant([*shape, 3]), tf.constant([i, 0], tf.int64))
            for i in range(400)
        ]
    )
    for windows in (ours, theirs):
        y, x, h, w = windows.T
        assert (y >= 0).all() and (x >= 0).all() and (y + h <= 375).all() and (x + w <= 500).all()
    areas = [(w.T[2] * w.T[3]) / (375 * 500) for w in (ours, theirs)]
    aspects = [w.T[3] / w.T[2] for w in (ours, theirs)]
    for values in areas:
        assert values.min() >= 0.07 and values.max() <= 1.0
    for values in aspects:
        assert values.min() >= 0.74 and values.max() <= 1.34 or (values == 500 / 375).any()
    # Same sampling: means and quartiles agree within sampling noise (400 draws each).
    np.testing.assert_allclose(*(np.percentile(a, [25, 50, 75]) for a in areas), atol=0.08)
    np.testing.assert_allclose(*(np.mean(a) for a in aspects), atol=0.05)


def test_bad_backend_fields_are_one_line_errors(digits):
    for fields, message in [
        (dict(input_backend="torch"), "unknown input_backend 'torch'; allowed: tf_data, grain"),
        (dict(input_backend="grain", grain_workers=-1), "grain_workers must be >= 0, got -1"),
        (dict(input_backend="grain", grain_read_threads=0), "grain_read_threads must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ip.validate(make_config(**fields))
    # The tf.data build (TFRecord) of the run's data_dir is refused, naming the command.
    with pytest.raises(ConfigError, match="tfds build cluttered_digits --file_format=array_"):
        ip.num_classes(make_config(input_backend="grain"))
    assert grain_pipeline.option(make_config(), "grain_workers") == 0  # Older configs.


def test_the_grain_path_imports_no_tensorflow():
    code = (
        "import sys\n"
        "from hnc_jax.data import grain_pipeline, host_transforms\n"
        "import tensorflow_datasets.core.data_sources.array_record\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_label_noise_is_the_same_on_both_backends(digits_array_record):
    """Keyed by each example's encoded image, the noise does not depend on the file format
    or the reader: the same noisy labels, in the same order, from tf.data and Grain."""
    noise = dict(kind="symmetric", rate=0.4, flips="", seed=0, eval_splits="train")
    fields = dict(eval_split="train[:64]", eval_batch_size=64, label_noise=noise)
    labels = {}
    for name, config in (("tf_data", make_config(**fields)),
                         ("grain", _config(digits_array_record, **fields))):  # fmt: skip
        labels[name] = next(ip.eval_iterator(ip.load(config), config))["label"]
    clean = make_config(eval_split="train[:64]", eval_batch_size=64)
    clean_labels = next(ip.eval_iterator(ip.load(clean), clean))["label"]
    np.testing.assert_array_equal(labels["grain"], labels["tf_data"])
    assert 0.2 < np.mean(labels["grain"] != clean_labels) < 0.6
