"""The HNC losses (Sun et al., ECCV 2020) and the usual classification losses, pure JAX.

Shapes: cams (B, H, W, C); labels int class ids (B,) or multi-hot 0/1 (B, C); logits (B, C).
Soft (probability) targets (B, C) go to `soft_cross_entropy` only: HNC needs hard labels, and
multi-hot labels that are concrete arrays are checked to be 0/1 (traced ones, under jit, cannot
be). Every function is pure and traceable (jit, grad, vmap, shard_map). `k`, `alpha` and
`temperature` are Python numbers checked at trace time (mark them static under jit).

Hard negatives of an image are the k classes with the highest score `sum_hw cams`
(equivalently the highest logits) once every positive class is set to -inf. The choice is an
index selection: no gradient flows through it. With multi-hot labels and k larger than an
image's number of negatives, the selected positives count for nothing (see the spec).

Two paths compute the same HNC value and gradient:
- `hnc_mse` / `hnc_kd` take all C CAMs (what the model returns at eval);
- `hnc_from_features` (training) selects the k classes from the logits and builds only
  their CAMs from the features and the gathered classifier columns: B*H*W*D*k MACs instead
  of B*H*W*D*C, so HNC costs next to nothing in a train step.
"""

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = Any
HNC_LOSSES = ("mse", "kd")


def _check_rank4(cams: Array) -> None:
    if cams.ndim != 4:
        raise ValueError(f"cams must have rank 4 (B, H, W, C), got shape {tuple(cams.shape)}")


def _check_labels(labels: Array, batch: int, num_classes: int) -> None:
    ok_int = labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer)
    if ok_int and labels.shape[0] == batch:
        return
    if labels.ndim == 2 and labels.shape == (batch, num_classes):
        _check_hard_multi_hot(labels)
        return
    raise ValueError(
        f"labels of shape {tuple(labels.shape)} and dtype {labels.dtype} do not fit a batch "
        f"of {batch} with {num_classes} classes; allowed: int class ids ({batch},) or "
        f"multi-hot ({batch}, {num_classes})"
    )


def _check_hard_multi_hot(labels: Array) -> None:
    """Multi-hot labels (B, C) must be 0/1. Checked only on concrete arrays: under jit (a
    `jax.core.Tracer`) the values are unknown at trace time and pass unchecked."""
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    other = values[(values != 0) & (values != 1)]
    if other.size:
        raise ValueError(
            f"labels {tuple(values.shape)} must be multi-hot 0/1; got {other.size} other "
            f"values in [{other.min():.4g}, {other.max():.4g}]: for soft targets use "
            "soft_cross_entropy (HNC needs hard labels)"
        )


def _check_k(k: Any, num_classes: int) -> None:
    if not isinstance(k, numbers.Integral) or not 1 <= k <= num_classes - 1:
        raise ValueError(
            f"k must be an integer in [1, {num_classes - 1}] (1 <= k <= C-1 with "
            f"C={num_classes}), got {k!r}"
        )


def _check_temperature(temperature: Any) -> None:
    if not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")


def _is_multi_hot(labels: Array) -> bool:
    return labels.ndim == 2


def positive_mask(labels: Array, num_classes: int) -> Array:
    """(B, C) bool: True where the class is in the image."""
    if _is_multi_hot(labels):
        return labels > 0
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)


def select_hard_negatives(scores: Array, labels: Array, k: int) -> tuple[Array, Array]:
    """The k highest-scoring negative classes of each image; carries no gradient.

    Args:
      scores: (B, C) class scores (logits, or the CAMs summed over H, W).
      labels: (B,) int or (B, C) multi-hot 0/1 (checked when concrete, not under jit).
      k: number of hard negatives, 1 <= k <= C-1.

    Returns:
      idx: (B, k) int32 class indices, highest score first.
      valid: (B, k) bool, False where a positive was picked because the image has fewer
        than k negatives (multi-hot only); such a selection counts for nothing.
    """
    num_classes = scores.shape[-1]
    _check_k(k, num_classes)
    _check_labels(labels, scores.shape[0], num_classes)
    positives = positive_mask(labels, num_classes)
    scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
    _, idx = jax.lax.top_k(jnp.where(positives, -jnp.inf, scores), k)
    valid = ~jnp.take_along_axis(positives, idx, axis=-1)
    return idx.astype(jnp.int32), valid


def hnc_mse_selected(
    cams: Array, valid: Array, alpha: float = 0.0, axis_name: str | None = None
) -> Array:
    """Mean of (M - alpha)^2 over the valid selected maps and their H*W positions.

    cams: (B, H, W, k) selected CAMs; valid: (B, k) bool. With `axis_name` (inside
    shard_map, the batch split over that axis) it returns this device's sum times the device
    count over the global count of valid maps, so that the mean over devices of the result is
    the global HNC-mse even when the devices' counts differ (multi-hot labels).
    """
    cams = cams.astype(jnp.float32)
    per_map = jnp.sum(jnp.square(cams - alpha), axis=(1, 2))
    height, width = cams.shape[1:3]
    total = jnp.sum(jnp.where(valid, per_map, 0.0))
    if axis_name is None:
        return total / (jnp.maximum(jnp.sum(valid), 1) * (height * width))
    num_valid = jax.lax.psum(jnp.sum(valid), axis_name)
    devices = jax.lax.axis_size(axis_name)
    return devices * total / (jnp.maximum(num_valid, 1) * (height * width))


def hnc_kd_selected(cams: Array, valid: Array, temperature: float = 1.0) -> Array:
    """Cross-entropy of uniform vs softmax_hw(M / T), summed over valid maps, divided by B.

    cams: (B, H, W, k) selected CAMs; valid: (B, k) bool.
    """
    batch, height, width, k = cams.shape
    flat = cams.astype(jnp.float32).reshape(batch, height * width, k) / temperature
    per_map = -jnp.mean(jax.nn.log_softmax(flat, axis=1), axis=1)
    return jnp.sum(jnp.where(valid, per_map, 0.0)) / batch


def _gather_maps(cams: Array, labels: Array, k: int) -> tuple[Array, Array]:
    _check_rank4(cams)
    scores = jnp.sum(cams.astype(jnp.float32), axis=(1, 2))
    idx, valid = select_hard_negatives(scores, labels, k)
    return jnp.take_along_axis(cams, idx[:, None, None, :], axis=-1), valid


def hnc_mse(cams: Array, labels: Array, k: int, alpha: float = 0.0) -> Array:
    """HNC-mse: mean over (b, c in J_b, h, w) of (cams - alpha)^2; scalar float32.

    Args:
      cams: (B, H, W, C) CAMs, any float dtype (accumulated in float32).
      labels: (B,) int or (B, C) multi-hot 0/1 (checked when concrete, not under jit).
      k: number of hard negatives, 1 <= k <= C-1.
      alpha: target value of the negative maps (0 in the original).
    """
    selected, valid = _gather_maps(cams, labels, k)
    return hnc_mse_selected(selected, valid, alpha)


def hnc_kd(cams: Array, labels: Array, k: int, temperature: float = 1.0) -> Array:
    """HNC-kd: sum over the k selected maps of CE(uniform, softmax_hw(M / T)), / B.

    Shift-invariant per map; its value carries the constant k*log(H*W) per image.

    Args:
      cams: (B, H, W, C) CAMs, any float dtype (accumulated in float32).
      labels: (B,) int or (B, C) multi-hot 0/1 (checked when concrete, not under jit).
      k: number of hard negatives, 1 <= k <= C-1.
      temperature: T > 0 (1 in the original).
    """
    _check_temperature(temperature)
    selected, valid = _gather_maps(cams, labels, k)
    return hnc_kd_selected(selected, valid, temperature)


def selected_cams(features: Array, kernel: Array, bias: Array, idx: Array) -> Array:
    """CAMs of the selected classes only, accumulated in float32.

    Args:
      features: (B, H, W, D) last-stage output.
      kernel: (D, C) classifier kernel; bias: (C,).
      idx: (B, k) class indices.

    Returns:
      (B, H, W, k) float32, equal to `(features @ kernel + bias)[..., idx]` per image.
    """
    columns = jnp.take(kernel.T, idx, axis=0).astype(features.dtype)  # (B, k, D)
    maps = jnp.einsum("bhwd,bkd->bhwk", features, columns, preferred_element_type=jnp.float32)
    return maps + jnp.take(bias, idx).astype(jnp.float32)[:, None, None, :]


def hnc_from_features(
    features: Array,
    kernel: Array,
    bias: Array,
    logits: Array,
    labels: Array,
    *,
    loss: str,
    k: int,
    alpha: float = 0.0,
    temperature: float = 1.0,
    axis_name: str | None = None,
) -> Array:
    """The training path: `hnc_mse`/`hnc_kd` of the full CAMs, from k maps only.

    Selects the hard negatives from `logits` (= mean_hw of the CAMs), then builds only their
    CAMs from the features and the classifier's columns. Same value and gradient as
    `hnc_mse(features @ kernel + bias, labels, k, alpha)` (or `hnc_kd`) up to float rounding.
    Use it with any backbone whose head is global average pooling + a dense layer.

    Args:
      features: (B, H, W, D) the last stage's output, before pooling.
      kernel: (D, C) the classifier's kernel; bias: (C,) its bias.
      logits: (B, C) the classifier's output, `mean_hw(features) @ kernel + bias`.
      labels: (B,) int or (B, C) multi-hot 0/1 (checked when concrete, not under jit).
      loss: 'mse' or 'kd'.
      k: number of hard negatives, 1 <= k <= C-1.
      alpha: HNC-mse's target value (0 in the original); temperature: HNC-kd's T > 0.
      axis_name: inside shard_map, the batch's mesh axis (see `hnc_mse_selected`; HNC-kd's
        per-device sums over B_local already average to the global value).

    Returns:
      Scalar float32 HNC loss (not yet multiplied by its weight).
    """
    if loss not in HNC_LOSSES:
        raise ValueError(f"unknown HNC loss {loss!r}; allowed: {', '.join(HNC_LOSSES)}")
    _check_rank4(features)
    if loss == "kd":
        _check_temperature(temperature)
    idx, valid = select_hard_negatives(logits, labels, k)
    maps = selected_cams(features, kernel, bias, idx)
    if loss == "mse":
        return hnc_mse_selected(maps, valid, alpha, axis_name)
    return hnc_kd_selected(maps, valid, temperature)


def _check_label_smoothing(label_smoothing: Any) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")


def cross_entropy(
    logits: Array, labels: Array, label_smoothing: float = 0.0, *, multi_label: bool = False
) -> Array:
    """Mean cross-entropy of hard labels: softmax for class ids, sigmoid with `multi_label`.

    Args:
      logits: (B, C).
      labels: (B,) int class ids (softmax cross-entropy, averaged over B); with
        `multi_label=True`, (B, C) multi-hot 0/1 (the mean binary cross-entropy over batch
        and classes, as torch's BCEWithLogitsLoss). Soft or one-hot probability targets
        (B, C): use `soft_cross_entropy`.
      label_smoothing: in [0, 1): mixes the targets with the uniform distribution (softmax)
        or moves them towards 0.5 (sigmoid).
      multi_label: True for multi-hot labels; the labels' shape must agree, or ValueError.
        Concrete multi-hot labels that are not 0/1 raise ValueError; under jit (traced
        labels) their values cannot be checked.

    Returns:
      Scalar float32.
    """
    _check_label_smoothing(label_smoothing)
    batch, num_classes = logits.shape[0], logits.shape[-1]
    shape = tuple(labels.shape)
    if multi_label and labels.ndim != 2:
        raise ValueError(
            f"cross_entropy(multi_label=True) needs multi-hot labels ({batch}, {num_classes}), "
            f"got shape {shape}; int class ids ({batch},) go without multi_label"
        )
    if not multi_label and labels.ndim == 2:
        raise ValueError(
            f"cross_entropy got (B, C) labels of shape {shape} without multi_label=True; "
            f"allowed: int class ids ({batch},), multi_label=True for multi-hot 0/1 "
            f"({batch}, {num_classes}), or soft_cross_entropy for probability targets"
        )
    _check_labels(labels, batch, num_classes)
    logits = logits.astype(jnp.float32)
    if multi_label:
        targets = labels.astype(jnp.float32) * (1 - label_smoothing) + 0.5 * label_smoothing
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def soft_cross_entropy(logits: Array, targets: Array, label_smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy against probability targets (one-hot, soft, mixup...).

    `mean_b -sum_c t[b, c] log softmax(logits[b])[c]` with `t = (1 - label_smoothing) *
    targets + label_smoothing / C` (optax `softmax_cross_entropy` after `smooth_labels`).

    Args:
      logits: (B, C).
      targets: (B, C) float, each row a probability distribution (sums to 1; not checked).
      label_smoothing: in [0, 1).

    Returns:
      Scalar float32.
    """
    _check_label_smoothing(label_smoothing)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)}; soft_cross_entropy needs (B, C) probability targets "
            "(int class ids: cross_entropy)"
        )
    targets = optax.smooth_labels(targets.astype(jnp.float32), label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def num_positive_negative_pixels_per_image(cams: Array, labels: Array) -> Array:
    """(B,) float32: pixels with M > 0 in all negative CAMs of each image (cams (B, H, W, C))."""
    _check_rank4(cams)
    _check_labels(labels, cams.shape[0], cams.shape[-1])
    negatives = ~positive_mask(labels, cams.shape[-1])[:, None, None, :]
    return jnp.sum((cams > 0) & negatives, axis=(1, 2, 3)).astype(jnp.float32)


def num_positive_negative_pixels(cams: Array, labels: Array) -> Array:
    """The original's "num_posi": the batch mean of `num_positive_negative_pixels_per_image`."""
    return jnp.mean(num_positive_negative_pixels_per_image(cams, labels))


def correct_top_k(logits: Array, labels: Array, k: int = 1) -> Array:
    """(B,) float32: 1 where a positive class is among the k highest logits."""
    _, top = jax.lax.top_k(logits, k)
    positives = positive_mask(labels, logits.shape[-1])
    return jnp.any(jnp.take_along_axis(positives, top, axis=-1), axis=-1).astype(jnp.float32)
