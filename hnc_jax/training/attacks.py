"""Adversarial robustness of a trained workdir (`main.py --mode=attack`): FGSM and L-inf PGD
on its eval split, top-1 under attack at each epsilon.

Threat model: L-inf perturbations of the input image in pixel units of [0, 255] (epsilon 8
is 8/255 of the range, the usual ImageNet setting), computed on the devices with `jax.grad`
of the cross-entropy through the whole model in eval mode, the input normalisation included
(the model normalises uint8 pixels itself; `config.image_dtype` is set to 'uint8' for the
attack). Perturbed images stay in float32 and are clipped to [0, 255] (not rounded to integer
pixels: an epsilon below 1 would otherwise vanish).

- FGSM (Goodfellow et al., 2015): x + eps * sign(grad), one step.
- PGD (Madry et al., 2018): `steps` steps of size `step_size` (default 2.5 * eps / steps),
  projected to the eps ball around x and to [0, 255], from a uniform random start in the ball
  (`random_start`). An image counts as robust only if it is classified correctly at every
  iterate, the start included (the worst case found, as robustness evaluations report it).

At epsilon 0 both give the clean top-1 of the same checkpoint (tested).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from hnc_jax import models
from hnc_jax.data import pipeline
from hnc_jax.errors import ConfigError
from hnc_jax.training import inference, train_step

ATTACKS = ("fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class Attack:
    """What to attack with; epsilons and step sizes in [0, 255] pixel units."""

    kinds: tuple[str, ...] = ATTACKS
    epsilons: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    steps: int = 10  # PGD
    step_size: float | None = None  # PGD; None: 2.5 * epsilon / steps
    random_start: bool = True  # PGD
    seed: int = 0  # PGD's random start

    def check(self) -> None:
        unknown = [k for k in self.kinds if k not in ATTACKS]
        if unknown or not self.kinds:
            raise ConfigError(f"unknown attacks {unknown or '(none)'}; allowed: fgsm, pgd")
        if not self.epsilons or min(self.epsilons) < 0 or max(self.epsilons) > 255:
            raise ConfigError(f"epsilons must be in [0, 255] pixel units, got {self.epsilons}")
        if self.steps < 1 or (self.step_size is not None and self.step_size <= 0):
            raise ConfigError(
                f"PGD needs steps >= 1 and step_size > 0, got {self.steps}, {self.step_size}"
            )


def make_attack_step(model: models.ResNet, mesh: Mesh, kind: str, attack: Attack) -> Callable:
    """Jitted `(variables, batch, epsilon, key) -> correct`: the number of real (mask) images
    of a global batch {'image' (B, S, S, 3) uint8, 'label' (B,), 'mask' (B,)} classified
    correctly under the attack at `epsilon` (a replicated float32 scalar)."""

    def per_device(variables, batch, epsilon, key):
        clean, labels = batch["image"].astype(jnp.float32), batch["label"]

        def predict_and_grad(x):
            def loss(x):
                logits, _ = model.apply(variables, x, train=False)
                # A sum: each image's gradient is its own loss's (eval mode, no batch stats).
                per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
                return jnp.sum(per_image), jnp.argmax(logits, -1) == labels

            (_, correct), grad = jax.value_and_grad(loss, has_aux=True)(x)
            return correct, grad

        def project(x):
            return jnp.clip(jnp.clip(x, clean - epsilon, clean + epsilon), 0.0, 255.0)

        if kind == "fgsm":
            _, grad = predict_and_grad(clean)
            x = project(clean + epsilon * jnp.sign(grad))
            robust = jnp.ones_like(labels, bool)
        else:
            step = epsilon * 2.5 / attack.steps if attack.step_size is None else attack.step_size
            key = jax.random.fold_in(key, jax.lax.axis_index("data"))
            x = clean
            if attack.random_start:
                noise = jax.random.uniform(key, clean.shape, jnp.float32, -1.0, 1.0)
                x = project(clean + epsilon * noise)

            def body(_, carry):
                x, robust = carry
                correct, grad = predict_and_grad(x)
                return project(x + step * jnp.sign(grad)), robust & correct

            x, robust = jax.lax.fori_loop(0, attack.steps, body, (x, jnp.ones_like(labels, bool)))
        logits, _ = model.apply(variables, x, train=False)
        robust &= jnp.argmax(logits, -1) == labels
        return jax.lax.psum(jnp.sum(jnp.where(batch["mask"], robust, False)), "data")

    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P(), P()), out_specs=P())
    keys = ("image", "label", "mask")
    return jax.jit(lambda v, batch, eps, key: step(v, {k: batch[k] for k in keys}, eps, key))


def attack_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, attack: Attack, which: str = "latest"
) -> dict:
    """Top-1 of the `which` checkpoint of `workdir` on the eval split under each attack and
    epsilon: {'step', 'examples', '<kind>': {epsilon (str): top1}}; 'fgsm' at 0 is the clean
    top-1. Every process calls it (one global computation per batch)."""
    attack.check()
    config = config.copy_and_resolve_references()
    config.image_dtype = "uint8"  # The model normalises: gradients reach the pixels.
    restored = inference.restore(config, workdir, which)
    run = restored.job
    if run.info.multi_label:
        raise ConfigError(f"--mode=attack needs single-label data; {config.dataset} is multi-label")
    variables = train_step.model_variables(restored.state)
    steps = {kind: make_attack_step(run.model, run.mesh, kind, attack) for kind in attack.kinds}
    correct = {(kind, eps): jnp.zeros((), jnp.int32) for kind in steps for eps in attack.epsilons}
    count = jnp.zeros((), jnp.int32)
    root = jax.random.key(attack.seed)
    batches = train_step.device_batches(pipeline.eval_iterator(run.dataset, config), run.mesh)
    for index, batch in enumerate(batches):
        count += jnp.sum(batch["mask"])
        key = jax.random.fold_in(root, index)
        for (kind, eps), total in correct.items():
            correct[kind, eps] = total + steps[kind](variables, batch, jnp.float32(eps), key)
    hits, count = jax.device_get((correct, count))  # The one wait for the devices.
    out: dict = {"step": restored.step, "examples": int(count)}
    for kind in attack.kinds:
        out[kind] = {f"{eps:g}": float(hits[kind, eps]) / max(count, 1) for eps in attack.epsilons}
    return out


def table(result: dict, kinds: Sequence[str]) -> str:
    """Markdown: one row per epsilon, top-1 % under each attack."""
    epsilons = list(result[kinds[0]])
    lines = ["| epsilon (of 255) | " + " | ".join(f"{k.upper()} top-1 %" for k in kinds) + " |"]
    lines.append("|---|" + "---|" * len(kinds))
    for eps in epsilons:
        lines.append(
            f"| {eps} | " + " | ".join(f"{100 * result[k][eps]:.2f}" for k in kinds) + " |"
        )
    return "\n".join(lines)


def report(result: dict, kinds: Sequence[str]) -> str:
    """The table, then the result as one JSON line."""
    return f"{table(result, kinds)}\n{json.dumps(result)}"
