"""Evaluation over a split: masked sums of the eval metrics, accumulated on the devices.

Eval metrics are sums over the real examples (`mask`) of each global batch, psum'd over the
'data' axis and added to running totals on the devices; the host fetches the totals once per
evaluation and divides by the number of real examples, so padding and the split over devices
and processes do not change them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hnc_jax import input_pipeline, losses, models, train

Totals = dict[str, jax.Array]
KEYS = ("count", "loss", "top1", "top5", "num_posi")


def make_eval_step(
    model: models.ResNet, mesh: Mesh
) -> Callable[[train.TrainState, dict, Totals], Totals]:
    """Jitted `(state, batch, totals) -> totals` adding the sums over the real (mask=True)
    examples of a global eval batch: count, loss (cross-entropy), top1, top5, num_posi;
    replicated scalars (`totals` is donated; start from `zero_totals(mesh)`)."""

    def per_device(state, batch, totals):
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
        return {key: totals[key] + value for key, value in jax.lax.psum(sums, "data").items()}

    keys = ("image", "label", "mask")
    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P())
    return jax.jit(
        lambda state, batch, totals: step(state, {k: batch[k] for k in keys}, totals),
        donate_argnums=2,
    )


def zero_totals(mesh: Mesh) -> Totals:
    """Running totals at zero, replicated over `mesh`."""
    return jax.device_put({key: jnp.float32(0.0) for key in KEYS}, NamedSharding(mesh, P()))


def evaluate(
    eval_step: Callable,
    state: train.TrainState,
    dataset: input_pipeline.Dataset,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> dict[str, float]:
    """One pass over the eval split: eval/loss, eval/top1, eval/top5, eval/num_posi."""
    totals = zero_totals(mesh)
    batches = train.device_batches(input_pipeline.eval_iterator(dataset, config), mesh)
    for batch in batches:
        totals = eval_step(state, batch, totals)
    host = {key: float(value) for key, value in jax.device_get(totals).items()}
    count = max(host.pop("count"), 1.0)
    return {f"eval/{key}": value / count for key, value in host.items()}
