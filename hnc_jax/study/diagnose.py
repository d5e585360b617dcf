"""Why some HNC runs collapse: the cross-entropy and HNC parts of the loss, their gradients and
the last stage's features, step by step along a real training run.

    python -m hnc_jax.study.diagnose --out=workdir/diagnose/kd_w0.1_s2.json --loss=kd --weight=0.1 \
        --seed=2 --steps=150
    python -m hnc_jax.study.diagnose --plot=docs/hnc_instability.png workdir/diagnose/*.json

The run is the trainer's (same initial state, batches and jitted step, so its final accuracy
is the trainer's); before every `--every`-th step a separate jitted probe (not the train
step) takes that step's batch and parameters and computes, with BatchNorm in training mode as
the step sees it:
- the values and parameter gradients of cross-entropy, HNC-mse and HNC-kd (k, alpha, T of the
  config), each alone: global norms, norms on the classifier (`head`), the BatchNorm
  parameters and the conv kernels, and each HNC gradient's cosine with cross-entropy's;
- the last stage's features F (B, h, w, D): the fraction of zeros (dead ReLUs), their mean
  over cells inside the target's box and outside it (background and clutter);
- the CAMs: the true class's and the negatives' mean, inside and outside the box.
One record per probed step also holds the step's train loss, top-1 and the HNC weight used.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath
from matplotlib.figure import Figure

from hnc_jax import figures, losses
from hnc_jax.training import train_step

PARTS = ("ce", "mse", "kd")


def _group_norms(grads: Any) -> dict[str, jax.Array]:
    """Global norm of a gradient tree, and of its head / BatchNorm / conv-kernel parts."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    groups: dict[str, list] = {"head": [], "bn": [], "conv": []}
    for path, leaf in flat:
        names = "/".join(str(getattr(p, "key", p)) for p in path)
        group = "head" if names.startswith("head") else "bn" if "bn" in names else "conv"
        groups[group].append(leaf)
    out = {name: optax.global_norm(leaves) for name, leaves in groups.items()}
    out["all"] = optax.global_norm(grads)
    return out


def _box_mask(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """(B, h, w) bool: feature cells whose centre lies inside the target's box."""
    y = (jnp.arange(height) + 0.5) / height
    x = (jnp.arange(width) + 0.5) / width
    b = boxes[:, :, None, None]
    inside_y = (y[None, :, None] >= b[:, 0]) & (y[None, :, None] < b[:, 2])
    inside_x = (x[None, None, :] >= b[:, 1]) & (x[None, None, :] < b[:, 3])
    return inside_y & inside_x


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = jnp.broadcast_to(mask, values.shape)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def make_probe(config: ml_collections.ConfigDict, model: Any) -> Any:
    """Jitted `(state, images, labels, boxes) -> {name: scalar}` (see the module docstring);
    single-label batches with boxes; one device sees the whole batch."""
    hnc = config.hnc

    def part_losses(params, batch_stats, images, labels):
        (logits, features), _ = train_step.forward_train(model, params, batch_stats, images)
        kernel, bias = params["head"]["kernel"], params["head"]["bias"]
        kw = dict(k=hnc.k, alpha=hnc.alpha, temperature=hnc.temperature)
        values = {
            "ce": losses.cross_entropy(logits, labels, config.label_smoothing),
            **{
                loss: losses.hnc_from_features(
                    features, kernel, bias, logits, labels, loss=loss, **kw
                )
                for loss in ("mse", "kd")
            },
        }
        return values, features

    def probe(state, images, labels, boxes):
        out = {}
        grads = {}
        for part in PARTS:
            fn = lambda p, part=part: part_losses(p, state.batch_stats, images, labels)[0][part]  # noqa: E731
            value, grads[part] = jax.value_and_grad(fn)(state.params)
            out[part] = value
            for group, norm in _group_norms(grads[part]).items():
                out[f"grad_{part}_{group}"] = norm
        flat_ce = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads["ce"])])
        for part in ("mse", "kd"):
            flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads[part])])
            out[f"cos_ce_{part}"] = (
                flat @ flat_ce / (jnp.linalg.norm(flat) * jnp.linalg.norm(flat_ce) + 1e-30)
            )
        _, features = part_losses(state.params, state.batch_stats, images, labels)
        features = features.astype(jnp.float32)
        inside = _box_mask(boxes, features.shape[1], features.shape[2])[..., None]
        out["feat_zero_frac"] = jnp.mean(features == 0)
        out["feat_in_box"] = _masked_mean(features, inside)
        out["feat_outside"] = _masked_mean(features, ~inside)
        head = state.params["head"]
        cams = jnp.einsum("bhwd,dc->bhwc", features, head["kernel"]) + head["bias"]
        true = jax.nn.one_hot(labels, cams.shape[-1], dtype=bool)[:, None, None, :]
        for where, mask in (("in_box", inside), ("outside", ~inside)):
            out[f"cam_true_{where}"] = _masked_mean(cams, true & mask)
            out[f"cam_neg_{where}"] = _masked_mean(cams, ~true & mask)
        out["head_kernel_norm"] = jnp.linalg.norm(head["kernel"])
        return out

    return jax.jit(probe)


def trace(config: ml_collections.ConfigDict, every: int = 5) -> dict:
    """Trains `config` as the trainer does (no checkpoints) and probes every `every` steps;
    returns {'config', 'records': [...], 'eval': final eval metrics}."""
    # Deferred: these load TensorFlow, which only tracing a run needs (`--plot` needs none).
    from hnc_jax.data import pipeline
    from hnc_jax.training import evaluation, job

    run = job.build(config)
    if run.mesh.size != 1:
        raise ValueError(f"the probe runs on one device; got {run.mesh.size}")
    args = (config, run.model, run.tx, run.schedule, run.mesh)
    step_fn = train_step.make_train_step(*args, epoch_steps=run.epoch_steps)
    probe = make_probe(config, run.model)
    weight_at = train_step.hnc_weight(config, run.epoch_steps)
    iterator = pipeline.train_iterator(run.dataset, config)
    state, records = run.state, []
    for step in range(run.total_steps):
        local = next(iterator)
        batch = train_step.shard_batch(run.mesh, {k: local[k] for k in ("image", "label")})
        record = None
        if step % every == 0 or step == run.total_steps - 1:
            record = probe(state, batch["image"], batch["label"], jnp.asarray(local["box"]))
        state, step_metrics = step_fn(state, batch)
        if record is not None:
            weight = weight_at(step) if callable(weight_at) else weight_at
            host = jax.device_get({**record, **step_metrics})
            records.append({"step": step, "weight": float(weight) * train_step.hnc_enabled(config),
                            **{k: float(v) for k, v in host.items()}})  # fmt: skip
    eval_step = evaluation.make_eval_step(run.model, run.mesh, run.info.multi_label)
    result = evaluation.evaluate(eval_step, state, run.dataset, config, run.mesh)
    return {"config": json.loads(config.to_json()), "records": records, "eval": result}


def plot(traces: dict[str, dict], path: str) -> None:
    """One row per quantity, one line per trace: the cross-entropy, the gradient norms and
    their cosine, and the last-stage features' contrast between the target's box and the rest."""
    rows = [
        ("ce", "train cross-entropy", False),
        ("grad_ce_all", "|grad CE|", True),
        ("grad_hnc_all", "weight x |grad HNC|\n(the run's HNC)", True),
        ("cos", "cos(grad CE, grad HNC)", False),
        ("contrast", "mean feature in box /\nmean feature outside", False),
    ]
    fig = Figure(figsize=(9, 2.1 * len(rows)), dpi=100)
    axes = fig.subplots(len(rows), 1, sharex=True)
    for name, data in traces.items():
        loss = data["config"]["hnc"]["loss"]
        part = loss if loss != "none" else "mse"
        steps = [r["step"] for r in data["records"]]
        series = {
            "ce": [r["ce"] for r in data["records"]],
            "grad_ce_all": [r["grad_ce_all"] for r in data["records"]],
            "grad_hnc_all": [r["weight"] * r[f"grad_{part}_all"] for r in data["records"]],
            "cos": [r[f"cos_ce_{part}"] for r in data["records"]],
            "contrast": [r["feat_in_box"] / r["feat_outside"] for r in data["records"]],
        }
        label = f"{name} (eval top-1 {100 * data['eval']['eval/top1']:.1f}%)"
        for ax, (key, _, _) in zip(axes, rows, strict=True):
            ax.plot(steps, series[key], label=label, lw=1)
    for ax, (_, title, log) in zip(axes, rows, strict=True):
        ax.set_ylabel(title, fontsize=7)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    figures.save_png(fig, path)


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON trace to write")
    parser.add_argument("--config", default="default", help="a module of configs/")
    parser.add_argument("--loss", default="kd", choices=("none", "mse", "kd"))
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--warmup", type=float, default=0.0, help="hnc.weight_warmup_epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=-1, help="-1: the config's schedule")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--train_split", default=None)
    parser.add_argument("--eval_split", default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--plot", default=None, help="plot the given JSON traces to this PNG")
    parser.add_argument("traces", nargs="*", help="with --plot: JSON traces")
    args = parser.parse_args(argv)
    if args.plot:
        traces = {}
        for path in args.traces:
            traces[epath.Path(path).stem] = json.loads(epath.Path(path).read_text())
        plot(traces, args.plot)
        return None
    if not args.out:
        parser.error("give --out (a trace to write) or --plot with traces")
    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.hnc.loss, config.hnc.weight = args.loss, args.weight
    config.hnc.weight_warmup_epochs = args.warmup
    config.hnc.k = args.k or config.hnc.k
    config.seed, config.num_train_steps = args.seed, args.steps
    for field in ("train_split", "eval_split", "batch_size"):
        if getattr(args, field) is not None:
            config[field] = getattr(args, field)
    result = trace(config, args.every)
    out = epath.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
