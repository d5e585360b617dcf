"""The measured comparison: cross-entropy vs HNC-mse vs HNC-kd on the embedded dataset.

    python -m hnc_jax.sweep --workdir=workdir/sweep --out=sweep.md --seeds=3 --steps=150

trains every (loss, seed) from `configs/default.py` (the default model and recipe; only the
loss, the seed and the step count change), then measures each final model on the whole eval
split with `cam.evaluate_cams` and writes a markdown table of means and standard deviations
over seeds (plus every run's numbers in `<out>.json`). A finished run is not retrained: its
workdir's checkpoint is reused, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np

LOSSES = ("none", "mse", "kd")
LABELS = {"none": "cross-entropy", "mse": "HNC-mse", "kd": "HNC-kd"}
COLUMNS = (
    ("top1", "test top-1"),
    ("gt_known_loc", "GT-known loc"),
    ("top1_loc", "top-1 loc"),
    ("max_box_acc", "MaxBoxAcc"),
    ("neg_peak", "neg-CAM peak"),
    ("num_posi", "num_posi"),
    ("peak_on_clutter", "neg peak on clutter"),
)

PERCENT = ("top1", "gt_known_loc", "top1_loc", "max_box_acc", "peak_on_clutter")


def run_config(
    base: ml_collections.ConfigDict, loss: str, seed: int, steps: int, weights: dict[str, float]
) -> ml_collections.ConfigDict:
    """`base` with the loss, seed and length of one run; evaluates and saves only at the end."""
    config = base.copy_and_resolve_references()
    config.hnc.loss = loss
    config.hnc.weight = weights.get(loss, 0.0)
    config.seed = seed
    config.num_train_steps = steps
    config.eval_every_steps = steps
    config.checkpoint_every_steps = steps
    config.log_every_steps = min(config.log_every_steps, steps)
    config.image_panel_examples = 0
    return config


def train_and_measure(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) one run, then `cam.evaluate_cams` of its final checkpoint."""
    from hnc_jax import cam, inference, input_pipeline, trainer  # TensorFlow: when running.

    tic = time.time()
    trainer.train_and_evaluate(config, workdir)
    seconds = time.time() - tic
    restored = inference.restore(config, workdir)
    batches = input_pipeline.eval_iterator(restored.job.dataset, config)
    result = cam.evaluate_cams(restored.predict, batches, k=config.hnc.k)
    return {**result, "train_seconds": seconds}


def summarize(runs: Sequence[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{loss: {metric: (mean, std over seeds)}} (std with ddof=1; 0 for one seed)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for loss in dict.fromkeys(r["loss"] for r in runs):
        mine = [r for r in runs if r["loss"] == loss]
        out[loss] = {}
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in mine], np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out[loss][key] = (float(values.mean()), std)
    return out


def format_table(runs: Sequence[dict], note: str = "") -> str:
    """Markdown: one row per loss, `mean ± std` over seeds; accuracies in percent."""
    summary = summarize(runs)
    seeds = {loss: sum(r["loss"] == loss for r in runs) for loss in summary}
    header = "| loss | seeds | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for loss, metrics in summary.items():
        cells = []
        for key, _ in COLUMNS:
            mean, std = metrics[key]
            scale = 100.0 if key in PERCENT else 1.0
            digits = 1 if scale == 100.0 or key == "num_posi" else 2
            cells.append(f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}")
        lines.append(f"| {LABELS.get(loss, loss)} | {seeds[loss]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def run_sweep(
    base: ml_collections.ConfigDict,
    workdir: str,
    out: str,
    seeds: Sequence[int],
    steps: int,
    losses: Sequence[str] = LOSSES,
    weights: dict[str, float] | None = None,
) -> list[dict]:
    """Every (loss, seed) run in `workdir/<loss>_seed<seed>`; writes `out` and `out.json`."""
    unknown = [loss for loss in losses if loss not in LOSSES]
    if unknown or not losses:
        raise ValueError(f"unknown losses {unknown}; allowed: {', '.join(LOSSES)}")
    if steps <= 0 or not seeds:
        raise ValueError(f"need steps > 0 and at least one seed, got {steps} and {seeds}")
    weights = weights if weights is not None else {"mse": base.hnc.weight, "kd": base.hnc.weight}
    runs = []
    for loss in losses:
        for seed in seeds:
            config = run_config(base, loss, seed, steps, weights)
            result = train_and_measure(config, os.path.join(workdir, f"{loss}_seed{seed}"))
            runs.append({"loss": loss, "seed": seed, "weight": config.hnc.weight, **result})
            print(json.dumps(runs[-1]), flush=True)
    note = (
        f"{len(seeds)} seed(s), {steps} steps of batch {base.batch_size}, {base.model} width "
        f"{base.model_width}, k={base.hnc.k}, weights "
        + ", ".join(f"{LABELS[k]} {v}" for k, v in weights.items())
        + f"; eval on '{base.eval_split}'. Percentages; localization at IoU >= 0.5 with "
        "the CAM thresholded at 0.2 of its range (MaxBoxAcc: at the best threshold)."
    )
    with open(out, "w") as f:
        f.write(format_table(runs, note))
    with open(out + ".json", "w") as f:
        json.dump(runs, f, indent=1)
    return runs


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="one sub-workdir per run goes here")
    parser.add_argument("--out", required=True, help="markdown table (and <out>.json)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--mse_weight", type=float, default=0.1)
    parser.add_argument("--kd_weight", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--eval_batch_size", type=int, default=None)
    parser.add_argument("--train_split", default=None, help="e.g. 'train[:256]' (tiny runs)")
    parser.add_argument("--eval_split", default=None, help="e.g. 'test[:64]' (tiny runs)")
    args = parser.parse_args(argv)
    from configs import default

    base = default.get_config()
    for field in ("batch_size", "eval_batch_size", "train_split", "eval_split"):
        if getattr(args, field) is not None:
            base[field] = getattr(args, field)
    losses = [loss for loss in args.losses.split(",") if loss]
    weights = {"mse": args.mse_weight, "kd": args.kd_weight}
    return run_sweep(base, args.workdir, args.out, range(args.seeds), args.steps, losses, weights)


if __name__ == "__main__":
    main()
