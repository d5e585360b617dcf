"""Evaluation over a split: masked sums of the eval metrics, accumulated on the devices.

Eval metrics are sums over the real examples (`mask`) of each global batch, psum'd over the
'data' axis and added to running totals on the devices; the host fetches the totals once per
evaluation and divides by the number of real examples, so padding and the split over devices
and processes do not change them.

Multi-hot labels (multi-label datasets) add eval/f1 (example-based F1 of the classes with a
positive logit, a sum like the others) and eval/mAP (mean over classes of average precision,
`multilabel.mean_average_precision`), which ranks every eval example: the step also returns
its logits, kept on the devices and fetched once at the end. There, eval/top1 is the fraction
of images whose highest-scoring class is present, eval/top5 whether one of the 5 is.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hnc_jax import losses, models, multilabel
from hnc_jax.data import pipeline
from hnc_jax.data.dataset import Dataset
from hnc_jax.training import train_step

Totals = dict[str, jax.Array]
KEYS = ("count", "loss", "top1", "top5", "num_posi")
MULTI_LABEL_KEYS = ("f1",)


def make_eval_step(model: models.ResNet, mesh: Mesh, multi_label: bool = False) -> Callable:
    """Jitted `(state, batch, totals) -> totals` adding the sums over the real (mask=True)
    examples of a global eval batch: count, loss (cross-entropy), top1, top5, num_posi;
    replicated scalars (`totals` is donated; start from `zero_totals(mesh, multi_label)`).
    `multi_label`: also f1, and it returns `(totals, logits)`, the logits (B, C) sharded like
    the batch."""

    def per_device(state, batch, totals):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        logits, cams = model.apply(variables, batch["image"], train=False)
        labels, mask = batch["label"], batch["mask"]

        def one(fn, *args):  # Per-example values of a batch-mean function.
            return jax.vmap(lambda *xs: fn(*(x[None] for x in xs)))(*args)

        per_example = {
            "count": jnp.ones(mask.shape, jnp.float32),
            "loss": one(
                lambda z, y: losses.cross_entropy(z, y, multi_label=multi_label), logits, labels
            ),
            "top1": losses.correct_top_k(logits, labels, 1),
            "top5": losses.correct_top_k(logits, labels, min(5, logits.shape[-1])),
            "num_posi": losses.num_positive_negative_pixels_per_image(cams, labels),
        }
        if multi_label:
            per_example["f1"] = multilabel.example_f1(logits, labels)
        # `where`, not `* mask`: a non-finite value on a padding example must not leak in.
        sums = {key: jnp.sum(jnp.where(mask, value, 0.0)) for key, value in per_example.items()}
        sums = {key: totals[key] + value for key, value in jax.lax.psum(sums, "data").items()}
        return (sums, logits) if multi_label else sums

    keys = ("image", "label", "mask")
    out_specs = (P(), P("data")) if multi_label else P()
    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=out_specs)
    return jax.jit(
        lambda state, batch, totals: step(state, {k: batch[k] for k in keys}, totals),
        donate_argnums=2,
    )


def abstract_totals(multi_label: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
    """The running totals' shapes and dtypes: float32 scalars."""
    keys = KEYS + MULTI_LABEL_KEYS * multi_label
    return {key: jax.ShapeDtypeStruct((), jnp.float32) for key in keys}


def zero_totals(mesh: Mesh, multi_label: bool = False) -> Totals:
    """Running totals at zero, replicated over `mesh`."""
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract_totals(multi_label))
    return jax.device_put(zeros, NamedSharding(mesh, P()))


def evaluate(
    eval_step: Callable,
    state: train_step.TrainState,
    dataset: Dataset,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict[str, float]:
    """One pass over the eval split: eval/loss, eval/top1, eval/top5, eval/num_posi (and
    eval/f1, eval/mAP on a multi-label dataset, with `eval_step` made for it)."""
    multi_label = dataset.info.multi_label
    totals = zero_totals(mesh, multi_label)
    batches = train_step.device_batches(pipeline.eval_iterator(dataset, config), mesh)
    ranked = []  # Multi-label: (logits, labels, mask) global arrays of every batch.
    for batch in batches:
        if multi_label:
            totals, logits = eval_step(state, batch, totals)
            ranked.append((logits, batch["label"], batch["mask"]))
        else:
            totals = eval_step(state, batch, totals)
    host = {key: float(value) for key, value in jax.device_get(totals).items()}
    count = max(host.pop("count"), 1.0)
    out = {f"eval/{key}": value / count for key, value in host.items()}
    if multi_label:
        logits, labels, mask = (
            np.concatenate([multihost_utils.process_allgather(a, tiled=True) for a in arrays])
            for arrays in zip(*ranked, strict=True)
        )
        out["eval/mAP"] = multilabel.mean_average_precision(logits[mask], labels[mask] > 0)
    return out
