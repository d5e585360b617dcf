"""Data-parallel training and evaluation: one jit-compiled `jax.shard_map` step over a
`data` mesh axis spanning every device of every process.

Parameters and optimizer state are replicated (`P()`), batches are sharded (`P('data')`).
Each device computes its local mean loss; under shard_map's varying-value checks the
gradient of the replicated parameters comes back summed over devices (the transpose of the
implicit broadcast is a psum), so dividing by the device count gives the global-batch
gradient (equal shards; see the spec's data-parallel section). BatchNorm: per-device batch
statistics (the original's 8 GPUs x 32 images), or synchronised across devices with
`config.sync_batch_norm`. With per-device statistics the updated running averages are
averaged over devices after each step, so every device holds the same running statistics
for evaluation and checkpoints (torch DDP would instead keep rank 0's).

The loss is `cross_entropy + hnc.weight * HNC` with HNC built from the k selected CAMs only
(`losses.hnc_from_features`); with `hnc.loss='none'` or weight 0 nothing HNC-related is
traced; `hnc.weight_warmup_epochs` > 0 ramps the weight up linearly from 0 (not in the
original). `train/num_posi` needs all C CAMs, so only the logging steps' variant of the step
computes it (`make_train_step(..., with_num_posi=True)`).
"""

import collections
import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hnc_jax import losses, models
from hnc_jax.data import image_stats
from hnc_jax.errors import ConfigError

HNC_CHOICES = ("mse", "kd", "none")
SCHEDULES = ("step", "cosine")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
# `compilation_cache_dir: ""` means this: $HNC_JAX_CACHE_DIR, else ~/.cache/hnc_jax/jax_cache.
DEFAULT_CACHE_DIR = os.environ.get("HNC_JAX_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "hnc_jax", "jax_cache"
)


class TrainState(flax.struct.PyTreeNode):
    """Everything a checkpoint holds; `step` counts completed steps."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def model_variables(state: TrainState) -> dict:
    """The model's variables in a state: {'params', 'batch_stats'} (what `model.apply` takes)."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def enable_compilation_cache(path: str | None = DEFAULT_CACHE_DIR) -> None:
    """Persistent XLA compilation cache in `path` (None or "": off). Thresholds are lowered
    so that CPU compiles (seconds, small executables) are cached too."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def validate_config(
    config: ml_collections.ConfigDict, num_classes: int, devices: int | None = None
) -> None:
    """Raises ConfigError (one line) for a config that cannot train a dataset of
    `num_classes` classes on `devices` devices (default `jax.device_count()`). Needs no data:
    runs before the dataset is prepared, anything is compiled or the workdir is touched."""
    _one_of("model", config.model, models.MODEL_NAMES)
    _one_of("stem", config.stem, models.STEMS)
    if config.model_width <= 0:
        raise ConfigError(f"model_width must be > 0, got {config.model_width}")
    _one_of("hnc.loss", config.hnc.loss, HNC_CHOICES)
    if config.hnc.weight < 0:
        raise ConfigError(f"hnc.weight must be >= 0, got {config.hnc.weight}")
    if config.hnc.weight_warmup_epochs < 0:
        raise ConfigError(
            f"hnc.weight_warmup_epochs must be >= 0, got {config.hnc.weight_warmup_epochs}"
        )
    if config.hnc.temperature <= 0:
        raise ConfigError(f"hnc.temperature must be > 0, got {config.hnc.temperature}")
    if config.hnc.loss != "none" and not 1 <= config.hnc.k < num_classes:
        raise ConfigError(
            f"hnc.k must be in [1, {num_classes - 1}] ({config.dataset} has {num_classes} "
            f"classes), got {config.hnc.k}"
        )
    _one_of("schedule", config.schedule, SCHEDULES)
    if config.schedule == "step" and any(e <= config.warmup_epochs for e in config.lr_decay_epochs):
        raise ConfigError(
            f"lr_decay_epochs {list(config.lr_decay_epochs)} must all be after warmup_epochs="
            f"{config.warmup_epochs}"
        )
    _one_of("optimizer.weight_decay_mode", config.optimizer.weight_decay_mode, WEIGHT_DECAY_MODES)
    opt = config.optimizer
    if opt.learning_rate <= 0 or not 0 <= opt.momentum < 1 or opt.weight_decay < 0:
        raise ConfigError(
            "optimizer needs learning_rate > 0, 0 <= momentum < 1 and weight_decay >= 0, got "
            f"{opt.learning_rate}, {opt.momentum}, {opt.weight_decay}"
        )
    if not 0 <= config.label_smoothing < 1 or config.grad_clip_norm < 0:
        raise ConfigError("label_smoothing must be in [0, 1) and grad_clip_norm >= 0 (0: off)")
    for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[field] == 0 or config[field] < -1:
            raise ConfigError(f"{field} must be > 0 (or -1: every epoch), got {config[field]}")
    if config.keep_checkpoints < 1:
        raise ConfigError(f"keep_checkpoints must be >= 1, got {config.keep_checkpoints}")
    devices = devices or jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        if config[field] <= 0 or config[field] % devices:
            raise ConfigError(
                f"{field}={config[field]} must be a positive multiple of the {devices} devices "
                "(jax.device_count())"
            )
    if config.init_from and not epath.Path(config.init_from).exists():
        raise ConfigError(
            f"init_from {config.init_from!r} does not exist; give a torchvision/timm weight "
            "file (.pth, .safetensors, ...) or a workdir of this project"
        )


def hnc_enabled(config: ml_collections.ConfigDict) -> bool:
    """False for the cross-entropy baseline (`hnc.loss='none'` or weight 0)."""
    return config.hnc.loss != "none" and config.hnc.weight > 0


def make_mesh() -> Mesh:
    """A 1-D mesh, axis 'data', over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
    """The configured ResNet (sync BN over the 'data' axis when `config.sync_batch_norm`);
    with uint8 batches (`config.image_dtype`) it normalises them with the dataset's stats."""
    raw = config.image_dtype == "uint8"
    return models.create_model(
        config.model,
        num_classes=num_classes,
        width=config.model_width,
        stem=config.stem,
        dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
        bn_axis_name="data" if config.sync_batch_norm else None,
        scan_blocks=config.scan_blocks,
        input_normalization=image_stats.normalization(config.dataset) if raw else None,
    )


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    return max(1, num_train // config.batch_size)


def num_train_steps(config: ml_collections.ConfigDict, epoch_steps: int) -> int:
    if config.num_train_steps > 0:
        return config.num_train_steps
    return int(config.num_epochs * epoch_steps)


def make_schedule(config: ml_collections.ConfigDict, epoch_steps: int) -> optax.Schedule:
    """Learning rate per step: 'step' (x lr_decay_factor at each of lr_decay_epochs, counted
    from the start of training) or 'cosine' (to 0 at the last step); both after
    `warmup_epochs` of linear warm-up."""
    lr = config.optimizer.learning_rate
    warmup = int(config.warmup_epochs * epoch_steps)
    total = num_train_steps(config, epoch_steps)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))
    # Boundaries are absolute steps; join_schedules calls the decay with `step - warmup`.
    boundaries = {
        int(e * epoch_steps) - warmup: config.lr_decay_factor for e in config.lr_decay_epochs
    }
    decay = optax.piecewise_constant_schedule(lr, boundaries)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def hnc_weight(config: ml_collections.ConfigDict, epoch_steps: int) -> optax.ScalarOrSchedule:
    """The HNC weight: the constant `hnc.weight` (the original), or with
    `hnc.weight_warmup_epochs` > 0 a schedule rising linearly from 0 to it over those epochs."""
    warmup = int(config.hnc.weight_warmup_epochs * epoch_steps)
    if warmup <= 0:
        return config.hnc.weight
    return optax.linear_schedule(0.0, config.hnc.weight, warmup)


def make_optimizer(
    config: ml_collections.ConfigDict, epoch_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD with momentum (optionally Nesterov) and the configured weight decay and schedule.

    'coupled' decay (the original, torch SGD's weight_decay): `wd * p` is added to the
    gradient of every parameter (BN and biases too) before momentum. 'decoupled': `lr * wd * p`
    is subtracted after momentum, skipping BN parameters and biases (rank <= 1).
    Clipping (`grad_clip_norm` > 0) acts on the raw gradient, before any decay.
    """
    opt = config.optimizer
    schedule = make_schedule(config, epoch_steps)
    clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    momentum = optax.trace(decay=opt.momentum, nesterov=opt.nesterov)
    if opt.weight_decay_mode == "coupled":
        parts = [optax.add_decayed_weights(opt.weight_decay), momentum]
    else:

        def mask(params):
            return jax.tree.map(lambda p: p.ndim > 1, params)

        parts = [momentum, optax.add_decayed_weights(opt.weight_decay, mask)]
    tx = optax.chain(*clip, *parts, optax.scale_by_learning_rate(schedule))
    return tx, schedule


def create_train_state(
    config: ml_collections.ConfigDict,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: Mesh,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """Initial state, replicated over `mesh`; `image_shape` is (S, S, 3)."""

    def init():
        dummy = jnp.zeros((1, *image_shape), config.image_dtype)
        # Initialise without the BN axis (no collective outside shard_map); same shapes.
        variables = model.clone(bn_axis_name=None).init(rng, dummy, train=False)
        params = variables["params"]
        return TrainState(jnp.int32(0), params, variables["batch_stats"], tx.init(params))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def shard_batch(mesh: Mesh, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's part of a batch -> global arrays sharded over 'data' (dim 0)."""
    sharding = NamedSharding(mesh, P("data"))
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }


def device_batches(
    local_batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """`shard_batch` of each local batch, with the next `prefetch` ones already sent to the
    devices while the current one is used, so that input transfers overlap the steps (as
    flax's prefetch_to_device, for global arrays)."""
    local_batches = iter(local_batches)
    queue = collections.deque(
        shard_batch(mesh, local) for local in itertools.islice(local_batches, prefetch)
    )
    for local in local_batches:
        queue.append(shard_batch(mesh, local))
        yield queue.popleft()
    yield from queue


def forward_train(
    model: models.ResNet, params: Any, batch_stats: Any, images: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Training-mode forward pass: `((logits (B, C), last-stage features (B, h, w, D)),
    {'batch_stats': updated statistics})`."""
    return model.apply(
        {"params": params, "batch_stats": batch_stats},
        images,
        train=True,
        return_features=True,
        mutable=["batch_stats"],
    )


def make_train_step(
    config: ml_collections.ConfigDict,
    model: models.ResNet,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    with_num_posi: bool = False,
    epoch_steps: int | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted step `(state, batch) -> (state, metrics)`; the state is donated.
    `epoch_steps` is needed (only) for `hnc.weight_warmup_epochs` > 0.

    `batch`: global arrays {'image' (B, S, S, 3), 'label' (B,) or (B, C)} sharded over
    'data' (`shard_batch`); other keys are ignored. Metrics are replicated scalars: loss, ce,
    hnc, top1, grad_norm, lr and, `with_num_posi`, num_posi (which needs all C CAMs: the
    trainer uses that variant on logging steps only; a per-step `lax.cond` would make
    XLA:GPU copy the predicate to the host and wait for it every step).
    """
    use_hnc = hnc_enabled(config)
    hnc = config.hnc
    num_devices = mesh.size
    if hnc.weight_warmup_epochs > 0 and epoch_steps is None:
        raise ValueError("hnc.weight_warmup_epochs > 0 needs make_train_step(epoch_steps=...)")
    weight_at = hnc_weight(config, epoch_steps or 1)

    def loss_fn(params, batch_stats, images, labels, weight):
        (logits, features), updates = forward_train(model, params, batch_stats, images)
        # The pipeline gives multi-hot (B, C) labels exactly for multi-label datasets
        # (`info.multi_label`), int class ids (B,) otherwise.
        multi_label = labels.ndim == 2
        ce = losses.cross_entropy(logits, labels, config.label_smoothing, multi_label=multi_label)
        hnc_loss = jnp.float32(0.0)
        if use_hnc:
            hnc_loss = losses.hnc_from_features(
                features,
                params["head"]["kernel"],
                params["head"]["bias"],
                logits,
                labels,
                loss=hnc.loss,
                k=hnc.k,
                alpha=hnc.alpha,
                temperature=hnc.temperature,
                # Multi-hot images differ in their count of valid maps: HNC-mse divides by
                # the global count so that the mean over devices is the global mean.
                axis_name="data" if labels.ndim == 2 else None,
            )
        loss = ce + weight * hnc_loss
        return loss, (ce, hnc_loss, logits, features, updates["batch_stats"])

    def per_device_step(state, batch):
        images, labels = batch["image"], batch["label"]
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        weight = weight_at(state.step) if callable(weight_at) else weight_at
        (loss, aux), grads = grad_fn(state.params, state.batch_stats, images, labels, weight)
        ce, hnc_loss, logits, features, batch_stats = aux
        # Summed over devices by the transpose of the replicated params' broadcast.
        grads = jax.tree.map(lambda g: g / num_devices, grads)
        if not config.sync_batch_norm:
            batch_stats = jax.lax.pmean(batch_stats, "data")
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        local = {
            "loss": loss,
            "ce": ce,
            "hnc": hnc_loss,
            "top1": jnp.mean(losses.correct_top_k(logits, labels, 1)),
        }
        if with_num_posi:
            cams = models.class_activation_maps(features, state.params["head"])
            local["num_posi"] = losses.num_positive_negative_pixels(cams, labels)
        metrics = jax.lax.pmean(local, "data")
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
        return new_state, metrics

    step = jax.shard_map(
        per_device_step, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P())
    )

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        return step(state, {"image": batch["image"], "label": batch["label"]})

    return train_step
