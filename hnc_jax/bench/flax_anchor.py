"""The anchor of `bench aot --anchor`: flax's ImageNet example train step.

Bench code only (no CAMs, no HNC; never trained here): the step of google/flax
examples/imagenet (train.py `train_step`, models.py `ResNet50`) rewritten compactly so that
this project's step can be compiled side by side with it, on the same slice and batch:

- ResNet-50 v1 as flax's: 'SAME'-padded convs (7x7 stem padded 3), BatchNorm momentum 0.9,
  epsilon 1e-5, flax's default one-pass variance, synchronised over the batch axis, zero
  scale on each block's last BN; bfloat16 compute and bfloat16 input images (its TPU
  `half_precision` setting), float32 parameters; logits cast to bfloat16.
- loss: softmax cross-entropy + 0.5 * 1e-4 * sum of squares of every kernel (ndim > 1).
- SGD, momentum 0.9, Nesterov, with its warm-up + cosine learning rate; gradients and the
  (loss, accuracy) metrics averaged over devices (`pmap` there, `shard_map` here).
The state is donated, as this project's step (flax's pmap does not donate: memory only).
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

AXIS = "data"


class _Bottleneck(nn.Module):
    filters: int
    strides: tuple[int, int]

    @nn.compact
    def __call__(self, x, train: bool):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=jnp.bfloat16)
        bn = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
            dtype=jnp.bfloat16, axis_name=AXIS,
        )  # fmt: skip
        out = nn.relu(bn()(conv(self.filters, (1, 1))(x)))
        out = nn.relu(bn()(conv(self.filters, (3, 3), self.strides)(out)))
        out = bn(scale_init=nn.initializers.zeros_init())(conv(4 * self.filters, (1, 1))(out))
        if x.shape != out.shape:
            x = bn(name="norm_proj")(conv(4 * self.filters, (1, 1), self.strides)(x))
        return nn.relu(x + out)


class ResNet50(nn.Module):
    """flax's examples/imagenet ResNet-50 in bfloat16: (B, 224, 224, 3) -> (B, C) logits."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(64, (7, 7), (2, 2), [(3, 3), (3, 3)], use_bias=False, dtype=jnp.bfloat16)(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.bfloat16,
            axis_name=AXIS,
        )(x)  # fmt: skip
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding="SAME")
        for i, blocks in enumerate((3, 4, 6, 3)):
            for j in range(blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = _Bottleneck(64 * 2**i, strides)(x, train)
        x = nn.Dense(self.num_classes, dtype=jnp.bfloat16)(jnp.mean(x, axis=(1, 2)))
        return jnp.asarray(x, jnp.bfloat16)


class TrainState(train_state.TrainState):
    batch_stats: dict


def make_train_step(
    mesh: Mesh, num_classes: int, image_size: int, base_lr: float = 0.1
) -> tuple[Callable, Callable]:
    """(jitted `(state, batch) -> (state, metrics)`, `init(rng) -> state`).

    `batch`: {'image' (B, S, S, 3) bfloat16, 'label' (B,) int32} sharded over 'data'."""
    model = ResNet50(num_classes)
    warmup, cosine = 5 * 1251, 95 * 1251  # Its defaults: 5 + 95 epochs of batch 1024.
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, base_lr, warmup), optax.cosine_decay_schedule(base_lr, cosine)],
        [warmup],
    )
    tx = optax.sgd(schedule, momentum=0.9, nesterov=True)

    def init(rng):
        variables = model.init(rng, jnp.ones((1, image_size, image_size, 3), jnp.bfloat16), False)
        return TrainState.create(
            apply_fn=model.apply, params=variables["params"], tx=tx,
            batch_stats=variables["batch_stats"],
        )  # fmt: skip

    def per_device(state, batch):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], True,
                mutable=["batch_stats"],
            )  # fmt: skip
            one_hot = jax.nn.one_hot(batch["label"], num_classes)
            loss = jnp.mean(optax.softmax_cross_entropy(logits, one_hot))
            l2 = sum(jnp.sum(p**2) for p in jax.tree.leaves(params) if p.ndim > 1)
            return loss + 1e-4 * 0.5 * l2, (updates, logits)

        (_, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, AXIS)
        one_hot = jax.nn.one_hot(batch["label"], num_classes)
        metrics = {
            "loss": jnp.mean(optax.softmax_cross_entropy(logits, one_hot)),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "learning_rate": schedule(state.step),
        }
        metrics = jax.lax.pmean(metrics, AXIS)
        new_state = state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"])
        return new_state, metrics

    # pmap semantics: per-device values, explicit pmean (no varying-value tracking).
    step = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False
    )
    return jax.jit(step, donate_argnums=0), init
