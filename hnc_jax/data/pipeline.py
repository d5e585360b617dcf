"""tf.data input pipeline over TFDS (and image folders): NHWC numpy batches for JAX.

Datasets (`config.dataset`): any TFDS image-classification name with `image` and `label`
features (imagenet2012, cifar10, cifar100, imagenette, caltech_birds2011, ...), a multi-label
one (`labels` or `objects/label` sequences, e.g. voc/2007, become (C,) multi-hot vectors), the
embedded 'cluttered_digits', or 'image_folder' (`<config.image_folder>/<split>/<class>/*`).

Images of a fixed shape of at most `SMALL_IMAGE` pixels (CIFAR, digits) are decoded whole and
augmented by pad-and-crop; others get the ImageNet recipe: fused JPEG decode + random-resized
crop (train) or the central 224/256 crop (eval), resized to `config.image_size`. Boxes
(a top-level `bbox` feature) follow every crop and flip. Batches hold uint8 pixels, which the
model normalises on the device (`config.image_dtype='uint8'`, the default and the fastest),
or images normalised here ('float32', 'bfloat16').

Determinism: epoch e of process p reads its own even part of the split in the order that
`records` gives it, seeded by (seed, p, e) (a run resumed mid-epoch reads at most about
one shuffle buffer and one file more than it yields), and example i of that epoch is
augmented with stateless ops keyed by (seed, p, e, i). Steps never straddle epochs (the
remainder is dropped), so the batch at step s is a pure function of (seed, s). Each epoch's
pipeline is built and its buffer filled in the background while the last steps of the epoch
before are consumed, so that the fill does not stall training at the epoch boundary.

Image folders (`folders`): hidden files and folders (`.DS_Store`, macOS `._x.jpg`) are
skipped; both splits must have the same class folders and at least one image (`validate`,
which only lists directories); `config.check_images` decodes every image at `load`; an image
that fails to decode while training or evaluating stops the run with a ConfigError naming it
(the files of the failing batch are found from the epoch's order and checked then, off the
normal path).

Backends (`config.input_backend`): 'tf_data' (this module, the default) or 'grain'
(`grain_pipeline`: TFDS datasets prepared as ArrayRecord, or image folders; its train
iterator's `state(step)` is saved with the checkpoint of that step and resumes it).

Use: `num_classes(config)` (metadata only, for config checks), then `dataset = load(config)`
once per run, passed to `train_iterator(dataset, config, start_step)` and
`eval_iterator(dataset, config)`.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from hnc_jax.data import (
    cluttered_digits,  # noqa: F401  (registers the TFDS builder)
    folders,
    grain_pipeline,
    host_transforms,
    label_noise,
    records,
    transforms,
)
from hnc_jax.data.dataset import Dataset, DatasetInfo
from hnc_jax.errors import ConfigError

SMALL_IMAGE = 64
SHUFFLE_BUFFER = 16_384  # Encoded records shuffled together (`records`); config may override.
MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"}
BACKENDS = ("tf_data", "grain")


def backend(config: ml_collections.ConfigDict) -> str:
    """`config.input_backend` ('tf_data' for configs that predate the field)."""
    return config.get("input_backend", "tf_data")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one line) for a config the pipeline cannot serve; reads no data.

    Image folders are listed, which is cheap: the split folders, and each split's class
    folders up to the first one that holds an image."""
    _check_fields(config)
    if config.dataset == "image_folder":
        classes = folders.classes(config)
        for split in folders.splits(config):
            names = (folders.image_names(f"{config.image_folder}/{split}/{c}") for c in classes)
            if not any(names):  # Stops at the first class folder with an image.
                raise folders.no_images(config, split)


def _check_fields(config: ml_collections.ConfigDict) -> None:
    """`validate` less the listing of an image folder's splits."""
    name = config.dataset
    if backend(config) not in BACKENDS:
        raise ConfigError(
            f"unknown input_backend {backend(config)!r}; allowed: " + ", ".join(BACKENDS)
        )
    grain_pipeline.check_fields(config)
    if name == "image_folder":
        root = config.get("image_folder")
        if not root or not tf.io.gfile.isdir(root):
            raise ConfigError(
                f"dataset='image_folder' needs config.image_folder, a directory "
                f"with {config.train_split}/ and {config.eval_split}/; got {root!r}"
            )
    else:
        try:
            tfds.builder_cls(name.split("/")[0].split(":")[0])
        except tfds.core.registered.DatasetNotFoundError:
            raise ConfigError(
                f"unknown dataset {name!r}: use a TFDS image-classification name "
                "(e.g. imagenet2012, cifar10), 'cluttered_digits' or "
                "'image_folder'"
            ) from None
    if config.image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {config.image_size}")
    buffer = config.get("shuffle_buffer_size", SHUFFLE_BUFFER)
    if buffer <= 0:
        raise ConfigError(f"shuffle_buffer_size must be positive, got {buffer}")
    if config.image_dtype not in host_transforms.IMAGE_DTYPES:
        raise ConfigError(
            f"unknown image_dtype {config.image_dtype!r}; allowed: "
            + ", ".join(host_transforms.IMAGE_DTYPES)
        )


def _missing_message(builder: tfds.core.DatasetBuilder) -> str:
    root = builder.data_dir_root
    files = MANUAL_FILES.get(
        builder.name, f"the files listed in the TFDS catalog for {builder.name}"
    )
    return (
        f"dataset {builder.name} is not prepared in {builder.data_dir}: put {files} in "
        f"{root}/downloads/manual/ and run `tfds build {builder.name} --data_dir={root} "
        f"--manual_dir={root}/downloads/manual`"
    )


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The dataset's builder; Grain reads the ArrayRecord files (random access)."""
    if backend(config) == "tf_data":
        return tfds.builder(config.dataset, data_dir=config.get("data_dir"))
    try:
        return tfds.builder(
            config.dataset, data_dir=config.get("data_dir"), file_format="array_record"
        )
    except ValueError as error:  # TFDS: "File format is already set to ...".
        if "already set" not in str(error):
            raise
        raise ConfigError(
            f"input_backend='grain' reads ArrayRecord files, but {config.dataset} is prepared "
            f"in another format in data_dir={config.get('data_dir')}: prepare it in another "
            f"data_dir with `tfds build {config.dataset} --file_format=array_record "
            "--data_dir=DIR` (see docs/data.md)"
        ) from None


def _prepare(builder: tfds.core.DatasetBuilder, download: bool) -> None:
    """Prepares a missing dataset (`download`: TFDS may download it), else a ConfigError."""
    if builder.is_prepared():
        return
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
        raise ConfigError(_missing_message(builder))
    build = f"`tfds build {builder.name} --data_dir={builder.data_dir_root}`"
    if not download and builder.name != "cluttered_digits":  # Embedded: nothing to download.
        raise ConfigError(
            f"dataset {builder.name} is not prepared in {builder.data_dir} and "
            f"config.download_data is False: prepare it first with {build}"
        )
    try:
        builder.download_and_prepare()  # Seconds for cluttered_digits; downloads otherwise.
    except OSError as error:  # requests' ConnectionError is one: no network, no such host.
        raise ConfigError(
            f"dataset {builder.name} is not prepared in {builder.data_dir} and could not be "
            f"downloaded ({str(error).splitlines()[0][:200]}): run {build} where the network "
            "reaches it, then copy that directory here"
        ) from error


def _label_spec(features: tfds.features.FeaturesDict) -> tuple[str, tfds.features.ClassLabel]:
    """('label', single) or the key of a sequence of class labels (multi-label)."""
    keys = list(features.keys())
    for key in ("label", "labels", "objects/label"):
        top, _, sub = key.partition("/")
        feature = features[top] if top in keys else None
        if isinstance(feature, tfds.features.Sequence):
            feature = feature.feature[sub] if sub else feature.feature
        elif sub:
            feature = None
        if isinstance(feature, tfds.features.ClassLabel):
            return key, feature
    raise ConfigError(
        f"dataset has no 'label', 'labels' or 'objects/label' class-label feature: {keys}"
    )


def load(config: ml_collections.ConfigDict) -> Dataset:
    """The configured dataset, validated and ready to read: prepares it (cluttered_digits is
    built in seconds; a missing manual download raises ConfigError, one line) or lists
    the image folders, once per run. Pass it to `train_iterator` and `eval_iterator`."""
    _check_fields(config)
    if config.dataset == "image_folder":
        dataset = folders.folder_dataset(config)  # Checks what `validate` checks, as it lists.
        if config.get("check_images", False):
            folders.check_images(config, dataset)
        return dataset
    builder = _builder(config)
    _prepare(builder, config.get("download_data", True))
    features = builder.info.features
    label_key, label = _label_spec(features)
    shape = features["image"].shape
    info = DatasetInfo(
        name=config.dataset,
        num_classes=label.num_classes,
        num_train=records.num_examples(builder, config.train_split),
        num_eval=records.num_examples(builder, config.eval_split),
        multi_label=label_key != "label",
        class_names=list(label.names),
        has_boxes="bbox" in features.keys()
        and isinstance(features["bbox"], tfds.features.BBoxFeature),
    )
    return Dataset(info=info, small=_small(shape), builder=builder, label_key=label_key)


def _small(shape) -> bool:
    return None not in shape[:2] and max(shape[:2]) <= SMALL_IMAGE


def decodes_whole(config: ml_collections.ConfigDict) -> bool:
    """True when the dataset's images are decoded whole and resized (a fixed shape of at most
    `SMALL_IMAGE` pixels: CIFAR, digits), False when eval takes their central crop (image
    folders, ImageNet). From the metadata alone: nothing is prepared."""
    _check_fields(config)
    if config.dataset == "image_folder":
        return False
    return _small(_builder(config).info.features["image"].shape)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """The class count from the dataset's metadata (or its train folder's class folders):
    prepares, downloads and decodes nothing, so that configs are checked first."""
    _check_fields(config)  # And the class folders, for image folders: `validate` checks all.
    if config.dataset == "image_folder":
        count, multi_label = len(folders.classes(config)), False
    else:
        key, label = _label_spec(_builder(config).info.features)
        count, multi_label = label.num_classes, key != "label"
    label_noise.check(config, count, multi_label)
    return count


def _preprocess(config, dataset: Dataset, split: str, train: bool):
    """Returns fn(record, key) -> {'image' (S, S, 3), 'label', ['box' (4,)]}."""
    size, aug = config.image_size, config.augment
    noisy = None
    if label_noise.applies(config, split, train):
        noisy = label_noise.tf_noise(config.label_noise, dataset.info.num_classes)

    def fn(record, key):
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        box = record.get("bbox", tf.zeros([4]))
        if dataset.small:
            image = transforms.decode_small(record["image"], size)
            if train and aug.crop_padding:
                image, box = transforms.pad_crop(image, box, aug.crop_padding, crop_key)
        else:
            image, box = transforms.decode_crop_resize(
                record["image"], box, size, train and aug.random_resized_crop, crop_key
            )
        if train and aug.flip:
            image, box = transforms.flip(image, box, flip_key)
        image = transforms.finish(image, config.image_dtype, config.dataset)
        label = record["label"] if noisy is None else noisy(record["label"], record["image"])
        out = {
            "image": image,
            "label": label if dataset.info.multi_label else tf.cast(label, tf.int32),
        }
        if dataset.info.has_boxes:
            out["box"] = box
        return out

    return fn


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


def _local_batch(config: ml_collections.ConfigDict, field: str) -> int:
    return config[field] // jax.process_count()


def train_iterator(
    dataset: Dataset,
    config: ml_collections.ConfigDict,
    start_step: int = 0,
    state: dict | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite stream of this process's part of each global train batch, from `start_step`.

    Yields {'image': (B_local, S, S, 3) `config.image_dtype` (uint8 pixels, or normalised
    float32/bfloat16), 'label': (B_local,) int32 or
    (B_local, C) float32, ['box': (B_local, 4) float32]}, B_local = batch_size / processes.
    Grain: a `grain_pipeline.TrainBatches`, resumed from a checkpoint's input `state` if given
    (the tf.data stream needs none: it is a function of (seed, step)).
    """
    if backend(config) == "grain":
        return grain_pipeline.train_iterator(dataset, config, start_step, state)
    return _tf_train_iterator(dataset, config, start_step)


def _tf_train_iterator(
    dataset: Dataset, config: ml_collections.ConfigDict, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
    batch = _local_batch(config, "batch_size")
    buffer = config.get("shuffle_buffer_size", SHUFFLE_BUFFER)
    n = records.part_size(dataset, config.train_split, True)
    steps_per_epoch = n // batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {n} train examples of each process"
        )
    preprocess = _preprocess(config, dataset, config.train_split, train=True)

    def epoch_batches(epoch: int, offset: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches `offset`, `offset` + 1, ... of `epoch`, the first one already made."""
        seed = records.epoch_seed(config.seed, epoch)
        stream, first = records.read(
            dataset, config.train_split, True, seed, buffer, offset * batch
        )
        ds = stream.take(steps_per_epoch * batch - first).enumerate(first)
        key = tf.constant([config.seed, seed], tf.int64)
        ds = ds.skip(offset * batch - first).map(
            lambda i, r: preprocess(r, tf.random.experimental.stateless_fold_in(key, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        batches = ds.with_options(_options()).as_numpy_iterator()
        if dataset.files is not None:
            order = records.folder_order(dataset, config.train_split, True, seed)
            batches = folders.named_bad_images(
                batches, dataset, config.train_split, order, batch, offset
            )
        return itertools.chain([next(batches)], batches)

    # The next epoch is built and its buffer filled in the background while the last `lead`
    # steps of this one are consumed: two buffers' worth of records, time to read the last
    # block of this epoch and the first of the next one whenever the blocks within an epoch
    # are read in time (each is read while the one before is consumed).
    lead = math.ceil(2 * min(buffer, n) / batch)
    epoch, offset = divmod(start_step, steps_per_epoch)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    upcoming = pool.submit(epoch_batches, epoch, offset)
    try:
        while True:
            batches = upcoming.result()
            for step in range(offset, steps_per_epoch):
                if step == max(offset, steps_per_epoch - lead):
                    upcoming = pool.submit(epoch_batches, epoch + 1, 0)
                yield next(batches)
            epoch, offset = epoch + 1, 0
    finally:  # Closed: an epoch not started never starts, one being built is waited for,
        upcoming.cancel()  # so that no reader outlives the stream (and its files).
        pool.shutdown(wait=True)


def num_eval_steps(config: ml_collections.ConfigDict, num_eval: int) -> int:
    """Eval batches per process: the largest process part, padded up to whole batches."""
    return math.ceil(
        math.ceil(num_eval / jax.process_count()) / _local_batch(config, "eval_batch_size")
    )


def eval_iterator(
    dataset: Dataset, config: ml_collections.ConfigDict
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's part of the eval split, in order, padded to whole batches.

    Yields train_iterator's keys plus 'mask' (B_local,) bool, False on padding; every process
    yields the same number of batches and every eval example is unmasked exactly once.
    """
    if backend(config) == "grain":
        return grain_pipeline.eval_iterator(
            dataset, config, num_eval_steps(config, dataset.info.num_eval)
        )
    return _tf_eval_iterator(dataset, config)


def _tf_eval_iterator(
    dataset: Dataset, config: ml_collections.ConfigDict
) -> Iterator[dict[str, np.ndarray]]:
    batch = _local_batch(config, "eval_batch_size")
    stream, _ = records.read(dataset, config.eval_split, False, None, 0)
    preprocess = _preprocess(config, dataset, config.eval_split, train=False)
    key = tf.zeros([2], tf.int64)  # Unused by the deterministic eval transform.
    ds = stream.map(
        lambda r: {**preprocess(r, key), "mask": True}, num_parallel_calls=tf.data.AUTOTUNE
    )
    padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_eval_steps(config, dataset.info.num_eval) * batch).batch(batch)
    batches = ds.prefetch(tf.data.AUTOTUNE).with_options(_options()).as_numpy_iterator()
    if dataset.files is not None:
        order = records.folder_order(dataset, config.eval_split, False, None)
        batches = folders.named_bad_images(batches, dataset, config.eval_split, order, batch, 0)
    yield from batches
