"""Prediction with a trained model: restoring a workdir's checkpoint, the CAMs of image files
or of eval images (`main.py --mode=cam`), and the trainer's CAM image panel. The notebooks
and the sweep use it too; the maps, boxes and metrics themselves are `cam`'s, the drawing
`figures`'.
"""

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hnc_jax import figures, models
from hnc_jax.data import pipeline, transforms
from hnc_jax.data.dataset import Dataset, DatasetInfo
from hnc_jax.errors import ConfigError
from hnc_jax.training import checkpoints, job, train_step, workdirs

Predict = Callable[[dict, np.ndarray], tuple[np.ndarray, np.ndarray]]


def make_predict(model: models.ResNet, mesh: Mesh) -> Predict:
    """`predict(variables, images)`: the model's {'params', 'batch_stats'} (replicated) and
    this process's images (N, S, S, 3), any N, -> its logits (N, C) and CAMs (N, h, w, C) as
    numpy. The rows are padded to whole device batches; it is one global computation, so on
    several processes each calls it with the same N."""

    def per_device(variables, images):
        return model.apply(variables, images, train=False)

    step = jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P("data"))
        )
    )

    def predict(variables: dict, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images)
        n, per_process = len(images), jax.local_device_count()
        rows = max(1, math.ceil(n / per_process)) * per_process
        padded = np.concatenate([images, np.zeros((rows - n, *images.shape[1:]), images.dtype)])
        logits, cams = step(variables, train_step.shard_batch(mesh, {"image": padded})["image"])
        return _local_rows(logits)[:n], _local_rows(cams)[:n]

    return predict


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over 'data', in global order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


@dataclasses.dataclass
class Restored:
    """A workdir's checkpoint, ready to predict: `predict(images) -> (logits, cams)`."""

    job: job.Job
    state: train_step.TrainState
    step: int
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def restore(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, which: str = "latest"
) -> Restored:
    """The 'latest' or 'best' checkpoint of `workdir` (a path or URL), on this run's devices.
    Raises ConfigError (one line) when there is none."""
    if which not in ("latest", "best"):
        raise ConfigError(f"unknown checkpoint {which!r}; allowed: latest, best")
    built = job.build(config)
    directory = checkpoints.checkpoint_dir(workdir)
    if not directory.is_dir():
        raise ConfigError(f"no checkpoint in {directory}")
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints, read_only=True)
    step = manager.latest_step() if which == "latest" else manager.best_step()
    if step is None:
        manager.close()
        raise ConfigError(f"no {which} checkpoint in {directory}")
    state = checkpoints.restore(manager, step, built.state)
    manager.close()
    predict = make_predict(built.model, built.mesh)
    variables = train_step.model_variables(state)
    return Restored(built, state, step, functools.partial(predict, variables))


def _predict_from_record(
    config: ml_collections.ConfigDict, workdir: str, which: str
) -> tuple[list[str], Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """(class names, predict) of the `which` checkpoint, from the workdir's stored record
    (`workdirs`) and weights alone: no dataset is prepared. A workdir from before the record
    has its class names from its dataset (`restore`)."""
    record = workdirs.read_record(workdir)
    if record is None:
        restored = restore(config, workdir, which)
        return restored.job.info.class_names, restored.predict
    names = record["class_names"]
    mesh = train_step.make_mesh()
    variables = checkpoints.load_variables(workdir, NamedSharding(mesh, P()), which)
    model = train_step.create_model(config, len(names))
    return names, functools.partial(make_predict(model, mesh), variables)


def load_images(paths: Sequence[str], config: ml_collections.ConfigDict) -> np.ndarray:
    """Image files (paths or URLs) -> (N, S, S, 3) batches as the eval pipeline makes them
    (`config.image_dtype`): whole and resized for small-image datasets
    (`pipeline.decodes_whole`), else the central crop."""
    whole = pipeline.decodes_whole(config)
    out = []
    for path in paths:
        if not tf.io.gfile.exists(path):
            raise ConfigError(f"image file not found: {path}")
        data = tf.io.read_file(path)
        if whole:
            image = transforms.decode_small(data, config.image_size)
        else:
            key = tf.zeros([2], tf.int64)
            image, _ = transforms.decode_crop_resize(data, tf.zeros([4]), config.image_size,
                                                     False, key)  # fmt: skip
        out.append(transforms.finish(image, config.image_dtype, config.dataset).numpy())
    return np.stack(out)


def first_eval_examples(
    dataset: Dataset, config: ml_collections.ConfigDict, count: int
) -> dict[str, np.ndarray]:
    """The first `count` real examples of this process's part of the eval split: 'image',
    'label' and, where the dataset has them, 'box'."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in pipeline.eval_iterator(dataset, config):
        keep = np.asarray(batch["mask"], bool)
        for key in ("image", "label", "box"):
            if key in batch:
                parts.setdefault(key, []).append(batch[key][keep])
        if sum(len(p) for p in parts["image"]) >= count:
            break
    return {key: np.concatenate(value)[:count] for key, value in parts.items()}


def render_cams(
    config: ml_collections.ConfigDict,
    workdir: str,
    images: Sequence[str] | None,
    num_eval: int,
    out: str,
    k: int = 3,
    which: str = "latest",
) -> str:
    """Writes `figures.overlay_figure` for the `which` ('latest' or 'best') checkpoint of
    `workdir` as the PNG `out` (a path or URL; process 0 writes): for the image files
    `images` (no labels: the top-1 class stands in for the true one), or else for the first
    `num_eval` eval images (with their labels and boxes). Returns `out`."""
    if not images and num_eval <= 0:
        raise ConfigError(f"give image files or num_eval > 0, got num_eval={num_eval}")
    if images:  # No labels: the top-1 class stands in for the true one.
        names, predict = _predict_from_record(config, workdir, which)
        examples, labels = {"image": load_images(images, config)}, None
    else:
        restored = restore(config, workdir, which)
        info, predict, names = restored.job.info, restored.predict, restored.job.info.class_names
        examples = first_eval_examples(restored.job.dataset, config, num_eval)
        labels = None if info.multi_label else examples["label"]
    logits, cams = predict(examples["image"])
    if jax.process_index() == 0:
        k = min(k, len(names) - 1)
        figures.render_overlays(
            examples["image"], cams, logits, labels, names, k, out, examples.get("box")
        )
    return out


def cam_panel(
    predict: Predict,
    variables: dict,
    local_batch: dict[str, np.ndarray],
    info: DatasetInfo,
    num_examples: int,
) -> np.ndarray | None:
    """The trainer's TensorBoard image: the first `num_examples` images of this process's
    eval batch, each with the CAM of its true class and of its 3 hardest negatives (the
    paper's figure 1), as an (H, W, 3) uint8 array on process 0 (None elsewhere, and for
    multi-label datasets). Every process must call it: the prediction is one global
    computation."""
    if info.multi_label or num_examples <= 0:
        return None
    n = min(num_examples, len(local_batch["label"]))
    logits, cams = predict(variables, local_batch["image"][:n])
    if jax.process_index() != 0:
        return None
    boxes = local_batch["box"][:n] if "box" in local_batch else None
    k = min(3, info.num_classes - 1)
    figure = figures.overlay_figure(
        local_batch["image"][:n], cams, logits, local_batch["label"][:n], info.class_names, k,
        boxes,
    )  # fmt: skip
    return figures.figure_to_array(figure)
