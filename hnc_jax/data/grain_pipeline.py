"""The Grain input backend (`config.input_backend='grain'`): random-access reads, numpy/PIL
transforms in Grain worker processes, and an iterator state saved with each checkpoint.

Sources: a TFDS dataset prepared as ArrayRecord (`tfds.data_source`'s random access;
`pipeline.load` builds the embedded cluttered_digits so, and names the command for others),
or an image folder's file list. Each process reads its even part of a split (the same parts
as the tf.data backend: `records.process_split`, `records.shard_bounds`).

Train: record k of a process's stream is record j of epoch e (e, j = divmod(k, steps * B));
epoch e reads the part through Grain's `MapDataset.shuffle`, a global permutation (Feistel
index shuffle, no buffer) seeded by `records.epoch_seed(seed, e)`, and example (e, j) is
augmented with a numpy generator seeded by (that seed, j). Batch s holds records
[s * B, (s + 1) * B): a pure function of (seed, s), whatever the worker and thread counts
(whole batches are made in the `MapDataset`, so workers share out batches, not examples).
The iterator's state after each batch is kept for a few steps, so that the loop saves, with
the checkpoint of step s, the state that resumes at s (`TrainBatches.state`); a resume sets it
and reads no record twice.

Eval: the part in order, then padding (zeros, mask False) up to `num_eval_steps` batches.

TensorFlow: neither this module nor what it imports (`host_transforms`, `dataset`, TFDS's
ArrayRecord reader, Grain, which imports jax) imports it. The training process still does
(`pipeline.load` prepares TFDS datasets and lists image folders with tf.io.gfile; clu's
metric writer), and so may Grain's workers, which re-import the main module (spawn).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from hnc_jax.data import host_transforms, label_noise
from hnc_jax.data.dataset import Dataset, epoch_seed, process_split, shard_bounds
from hnc_jax.errors import ConfigError

KEPT_STATES = 16  # Steps back whose iterator state is kept: the loop reads 2 ahead.
FIELDS = {"grain_workers": 0, "grain_read_threads": 16, "grain_prefetch": 64}


def option(config: ml_collections.ConfigDict, name: str) -> int:
    """A Grain field of `config`, its default when the config predates it."""
    return config.get(name, FIELDS[name])


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one line) for bad Grain fields (`FIELDS`)."""
    for name, least in (("grain_workers", 0), ("grain_read_threads", 1), ("grain_prefetch", 1)):
        if option(config, name) < least:
            raise ConfigError(f"{name} must be >= {least}, got {option(config, name)}")


class FolderSource:
    """Random access to image-folder files [begin, end) of `paths`: {'image': bytes, 'label',
    'path'}. Pickled to Grain's worker processes (paths only, no open files)."""

    def __init__(self, paths: list[str], labels: list[int], begin: int, end: int):
        self.paths, self.labels = paths[begin:end], labels[begin:end]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": epath.Path(path).read_bytes(), "label": self.labels[index], "path": path}


def source(dataset: Dataset, split: str, drop_remainder: bool):
    """This process's part of `split`, a random-access source of records."""
    index, count = _process_index_and_count()
    if dataset.files is not None:
        paths, labels = dataset.files[split]
        return FolderSource(paths, labels, *shard_bounds(len(paths), index, count,
                                                                 drop_remainder))  # fmt: skip
    import tensorflow_datasets as tfds  # Deferred: workers need only its readers.

    part = process_split(split, index, count, drop_remainder)
    return dataset.builder.as_data_source(
        split=part, decoders={"image": tfds.decode.SkipDecoding()}
    )


def _label(record: dict, dataset: Dataset) -> np.ndarray:
    """int32 class, or (C,) float32 multi-hot of a sequence of class labels."""
    key = dataset.label_key
    if not dataset.info.multi_label:
        return np.int32(record[key])
    top, _, sub = key.partition("/")
    labels = np.asarray(record[top][sub] if sub else record[top], np.int64)
    out = np.zeros(dataset.info.num_classes, np.float32)
    out[labels] = 1.0
    return out


def preprocess(
    config: ml_collections.ConfigDict, dataset: Dataset, split: str, train: bool
) -> Callable[[dict, np.random.Generator | None], dict]:
    """fn(record, rng) -> {'image' (S, S, 3), 'label', ['box' (4,)]}, rng None in eval; a
    file that fails to decode raises ConfigError naming it. Labels of `split` get the
    config's label noise where it applies (`label_noise`, keyed by the encoded image)."""
    size, aug = config.image_size, config.augment
    noisy = label_noise.applies(config, split, train)

    def fn(record: dict, rng: np.random.Generator | None) -> dict:
        box = np.asarray(record.get("bbox", np.zeros(4)), np.float32)
        try:
            if dataset.small:
                image = host_transforms.decode_small(record["image"], size)
                if train and aug.crop_padding:
                    image, box = host_transforms.pad_crop(image, box, aug.crop_padding, rng)
            else:
                crop_rng = rng if train and aug.random_resized_crop else None
                image, box = host_transforms.decode_crop_resize(
                    record["image"], box, size, crop_rng
                )
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors on bad data.
            where = record.get("path", "a record")
            raise ConfigError(f"cannot decode {where}: {error}; remove it") from error
        if train and aug.flip:
            image, box = host_transforms.flip(image, box, rng)
        label = _label(record, dataset)
        if noisy:
            args = ([label], [record["image"]], config.label_noise, dataset.info.num_classes)
            label = label_noise.noisy_labels(*args)[0].astype(label.dtype)
        out = {
            "image": host_transforms.finish(image, config.image_dtype, config.dataset),
            "label": label,
        }
        if dataset.info.has_boxes:
            out["box"] = box
        return out

    return fn


class _Epochs(grain.MapDataset):
    """The endless train stream of a part: element k is (epoch seed, j, record j of epoch e's
    permutation), e, j = divmod(k, `used`); `used` (whole batches) of the part's records are
    read each epoch."""

    def __init__(self, part: grain.MapDataset, seed: int, process_index: int, used: int):
        super().__init__(part)
        self._seed, self._process, self._used = seed, process_index, used
        self._epoch = (-1, 0, part)  # (epoch, seed, shuffled part), one epoch cached.

    def __len__(self) -> int:
        return np.iinfo(np.int64).max

    def __str__(self) -> str:
        return "Epochs"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, j = divmod(index, self._used)
        cached = self._epoch
        if cached[0] != epoch:
            seed = epoch_seed(self._seed, self._process, epoch)  # A uint32, as Grain's.
            cached = self._epoch = (epoch, seed, self._parent.shuffle(seed=seed))
        return cached[1], j, cached[2][j]


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=option(config, "grain_read_threads"),
        prefetch_buffer_size=option(config, "grain_prefetch"),
    )


def _iterate(batches: grain.MapDataset, config: ml_collections.ConfigDict):
    """A Grain iterator over `batches`: read by threads, in worker processes if configured
    (each worker makes whole batches; Grain interleaves them back in order)."""
    ds = batches.to_iter_dataset(_read_options(config))
    if workers := option(config, "grain_workers"):
        # Grain reads absl flags when it starts workers: outside an absl app (tests, notebooks,
        # the benches) nothing parsed them, and their defaults are what is meant.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(ds)


class TrainBatches:
    """Iterator of this process's train batches from `start_step`, and `state(step)`: what
    resumes the stream at a recent `step` (JSON-able), for the checkpoint of that step."""

    def __init__(self, iterator, start_step: int, workers: int):
        self._iterator, self._step, self._workers = iterator, start_step, workers
        self._states = collections.OrderedDict()
        self._keep()

    def _keep(self) -> None:
        state = {"step": self._step, "workers": self._workers, "grain": self._iterator.get_state()}
        self._states[self._step] = state
        while len(self._states) > KEPT_STATES:
            self._states.popitem(last=False)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self._step += 1
        self._keep()
        return batch

    def state(self, step: int) -> dict:
        """The state that resumes the stream at `step` (a step read in the last few)."""
        return self._states[step]

    def close(self) -> None:
        if hasattr(self._iterator, "close"):  # Stops mp_prefetch's worker processes.
            self._iterator.close()


def train_iterator(
    dataset: Dataset,
    config: ml_collections.ConfigDict,
    start_step: int = 0,
    state: dict | None = None,
) -> TrainBatches:
    """`pipeline.train_iterator`'s batches (same keys, shapes and dtypes) from `start_step`,
    from a checkpoint's `state` (`TrainBatches.state`) when given."""
    index, count = _process_index_and_count()
    batch = config.batch_size // count
    part = grain.MapDataset.source(source(dataset, config.train_split, True))
    steps_per_epoch = len(part) // batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size={config.batch_size} exceeds the {len(part)} train examples of each process"
        )
    transform = preprocess(config, dataset, config.train_split, train=True)

    def example(item: tuple[int, int, dict]) -> dict:
        seed, j, record = item
        return transform(record, np.random.default_rng([config.seed, seed, j]))

    stream = _Epochs(part, config.seed, index, steps_per_epoch * batch).map(example)
    batches = stream.batch(batch, drop_remainder=True)
    workers = option(config, "grain_workers")
    if state is not None and state["step"] != start_step:
        raise ValueError(f"input state of step {state['step']} given to resume at {start_step}")
    if state is None or state.get("workers", 0) != workers:
        # No state, or one of another worker count (whose layout differs): the stream sliced
        # at the step gives the same batches.
        return TrainBatches(_iterate(batches[start_step:], config), start_step, workers)
    iterator = _iterate(batches, config)
    iterator.set_state(state["grain"])
    return TrainBatches(iterator, start_step, workers)


def eval_iterator(
    dataset: Dataset, config: ml_collections.ConfigDict, steps: int
) -> Iterator[dict[str, np.ndarray]]:
    """`pipeline.eval_iterator`'s `steps` batches: this process's part in order, then padding
    (zeros, 'mask' False)."""
    batch = config.eval_batch_size // _process_index_and_count()[1]
    part = grain.MapDataset.source(source(dataset, config.eval_split, False))
    transform = preprocess(config, dataset, config.eval_split, train=False)

    def example(index: int) -> dict:
        out = {**transform(part[min(index, len(part) - 1)], None), "mask": index < len(part)}
        if index >= len(part):  # Padding: zeros of the real examples' shapes and dtypes.
            out = {key: np.zeros_like(value) for key, value in out.items()}
        return out

    batches = grain.MapDataset.range(steps * batch).map(example).batch(batch)
    iterator = _iterate(batches, config)
    try:
        yield from iterator
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def _process_index_and_count() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()
