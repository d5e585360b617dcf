"""Multi-label evaluation, pure numpy: mean average precision and example-based F1, plus the
negative-CAM statistics of multi-hot batches.

Shapes: scores and logits (N, C) (any monotone score: logits or sigmoid probabilities);
targets (N, C) multi-hot (bool or 0/1); cams (N, h, w, C).

- Average precision of one class: the area under its precision-recall curve as a step
  function over the distinct score thresholds, `sum_n (R_n - R_{n-1}) P_n` (no
  interpolation; tied scores form one threshold): scikit-learn's `average_precision_score`,
  the usual multi-label classification mAP (VOC/COCO classification reports it this way).
- mAP: the mean over the classes with at least one positive example.
- Example-based F1: per image `2 |P & T| / (|P| + |T|)` between the predicted set P (logit > 0,
  i.e. sigmoid > 0.5) and the true set T (1 when both are empty), averaged over images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hnc_jax import cam

Array = Any


def _check(scores: Array, targets: Array) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim not in (1, 2):
        raise ValueError(
            f"scores {scores.shape} and targets {targets.shape} must have one shape, (N,) or (N, C)"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be multi-hot: 0/1 or bool")
    return scores, targets.astype(bool)


def average_precision(scores: Array, targets: Array) -> float:
    """AP of one class (scores, targets (N,)); nan when it has no positive."""
    scores, targets = _check(scores, targets)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,), got {scores.shape}")
    if not targets.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], targets[order]
    # The last position of each run of equal scores: one threshold per distinct score.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(hits)[last]
    precision = true_pos / (last + 1)
    recall = true_pos / hits.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: Array, targets: Array) -> float:
    """mAP over the classes (columns) with a positive; nan when none has one."""
    scores, targets = _check(scores, targets)
    present = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    if not present:
        return float("nan")
    return float(np.mean([average_precision(scores[:, c], targets[:, c]) for c in present]))


def example_f1(logits: Array, targets: Array) -> jax.Array:
    """(N,) float32 example-based F1 of the predicted set {logit > 0} against the true set
    {target > 0}; pure JAX (the eval step sums it on the devices)."""
    if np.shape(logits) != np.shape(targets):
        raise ValueError(f"logits {np.shape(logits)} and targets {np.shape(targets)} differ")
    predicted, targets = jnp.asarray(logits) > 0, jnp.asarray(targets) > 0
    both = jnp.sum(predicted & targets, axis=-1)
    sizes = jnp.sum(predicted, axis=-1) + jnp.sum(targets, axis=-1)
    return jnp.where(sizes > 0, 2.0 * both / jnp.maximum(sizes, 1), 1.0).astype(jnp.float32)


def evaluate(apply_fn: Any, batches: Any, *, k: int) -> dict[str, float]:
    """mAP, f1, top1 (the top-scoring class is present), num_posi and neg_peak over eval
    batches {'image', 'label' (B, C) multi-hot, 'mask'}; `apply_fn(images) -> (logits, cams)`."""
    logits, targets, parts = [], [], {"num_posi": [], "neg_peak": []}
    for batch in batches:
        keep = np.asarray(batch["mask"], bool)
        batch_logits, cams = apply_fn(batch["image"])
        logits.append(np.asarray(batch_logits)[keep])
        targets.append(np.asarray(batch["label"])[keep])
        hits = cam.negative_cam_hits(np.asarray(cams)[keep], targets[-1], k)
        for name, values in parts.items():
            values.append(hits[name])
    logits, targets = np.concatenate(logits), np.concatenate(targets) > 0
    top1 = np.take_along_axis(targets, np.argmax(logits, -1)[:, None], -1)[:, 0]
    return {
        "mAP": mean_average_precision(logits, targets),
        "f1": float(jnp.mean(example_f1(logits, targets))),
        "top1": float(np.mean(top1)),
        **{name: float(np.mean(np.concatenate(values))) for name, values in parts.items()},
    }
