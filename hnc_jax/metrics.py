"""Evaluation and what the training loop reports: masked eval sums, the CAM image panel.

Eval metrics are sums over the real examples (`mask`) of each global batch, psum'd over the
'data' axis and divided by the number of real examples at the end, so padding and the
split over devices and processes do not change them.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from hnc_jax import cam, input_pipeline, losses, models
from hnc_jax.train import TrainState, shard_batch


def make_eval_step(
    model: models.ResNet, mesh: Mesh
) -> Callable[[TrainState, dict], dict[str, jax.Array]]:
    """Jitted `(state, batch) -> sums` over the real (mask=True) examples of a global eval
    batch: count, loss (cross-entropy), top1, top5, num_posi; replicated scalars."""

    def per_device(state, batch):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits, cams = model.apply(variables, batch["image"], train=False)
        labels, mask = batch["label"], batch["mask"]

        def one(fn, *args):  # Per-example values of a batch-mean function.
            return jax.vmap(lambda *xs: fn(*(x[None] for x in xs)))(*args)

        per_example = {
            "count": jnp.ones(mask.shape, jnp.float32),
            "loss": one(losses.cross_entropy, logits, labels),
            "top1": losses.correct_top_k(logits, labels, 1),
            "top5": losses.correct_top_k(logits, labels, min(5, logits.shape[-1])),
            "num_posi": losses.num_positive_negative_pixels_per_image(cams, labels),
        }
        # `where`, not `* mask`: a non-finite value on a padding example must not leak in.
        sums = {key: jnp.sum(jnp.where(mask, value, 0.0)) for key, value in per_example.items()}
        return jax.lax.psum(sums, "data")

    keys = ("image", "label", "mask")
    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P())
    return jax.jit(lambda state, batch: step(state, {k: batch[k] for k in keys}))


def evaluate(
    eval_step: Callable, state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh
) -> dict[str, float]:
    """One pass over the eval split: eval/loss, eval/top1, eval/top5, eval/num_posi."""
    totals: dict[str, float] = {}
    for local in input_pipeline.eval_iterator(config):
        sums = jax.device_get(eval_step(state, shard_batch(mesh, local)))
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = max(totals.pop("count"), 1.0)
    return {f"eval/{key}": value / count for key, value in totals.items()}


def make_predict(model: models.ResNet, mesh: Mesh) -> Callable[[TrainState, dict], tuple]:
    """Jitted `(state, batch) -> (logits (B, C), cams (B, H, W, C))`, sharded like the batch."""

    def per_device(state, images):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return model.apply(variables, images, train=False)

    step = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P("data"))
    )
    return jax.jit(step)


def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over 'data', in global order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def write_cam_panel(
    writer: metric_writers.MetricWriter,
    step: int,
    predict: Callable,
    state: TrainState,
    mesh: Mesh,
    local_batch: dict[str, np.ndarray],
    info: input_pipeline.DatasetInfo,
    num_examples: int,
) -> None:
    """TensorBoard image 'cams': the first `num_examples` eval images of process 0, each with
    the CAM of its true class and of its 3 hardest negatives (paper's figure 1).

    Every process must call it (the prediction is one global computation); only process 0
    draws. Single-label datasets only.
    """
    if info.multi_label or num_examples <= 0:
        return
    per_device = math.ceil(num_examples / jax.local_device_count())
    rows = min(per_device * jax.local_device_count(), len(local_batch["label"]))
    images = local_batch["image"][:rows]
    logits, cams = predict(state, shard_batch(mesh, {"image": images})["image"])
    if jax.process_index() != 0:
        return
    n = min(num_examples, rows)
    figure = cam.overlay_figure(
        np.asarray(images[:n], np.float32),
        _local_rows(cams)[:n],
        _local_rows(logits)[:n],
        local_batch["label"][:n],
        info.class_names,
        k=min(3, info.num_classes - 1),
        boxes=local_batch["box"][:n] if "box" in local_batch else None,
    )
    writer.write_images(step, {"cams": cam.figure_to_array(figure)[None]})
