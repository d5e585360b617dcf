"""The CE-vs-HNC study: each HNC loss's weight (and k) chosen on a validation split, then the
chosen settings retrained with more seeds and scored once on the test split.

    nohup nice -n 15 python -m hnc_jax.study.sweep --workdir=workdir/study/default >study.log 2>&1 &
    python -m hnc_jax.study.sweep --workdir=workdir/study/default --report_only

Every run is `configs/<--config>.py` with only the loss, weight, k, weight warm-up, seed and
splits changed; it evaluates and checkpoints only at its last step. The stages:

1. `val`: cross-entropy and every grid weight of HNC-mse and HNC-kd at the config's k (or `--k`),
   `--val_seeds` seeds each, trained on `--fit_split`, scored on `--val_split`.
2. `val`: each HNC loss at its best grid weight (by mean validation top-1, or mAP on a
   multi-label dataset) with the other k values (`--k_values`), and at that weight and the
   next larger one with each HNC weight warm-up (`--warmups`, epochs).
3. `test`: cross-entropy and each loss at its best validation setting, trained on
   `--train_split` with `--test_seeds` seeds, scored on `--test_split`; then `grid_test`: the
   models of stage 1 scored on the test split for the figure only (selection is already made,
   from validation alone).

Each finished run appends one JSON line to `<workdir>/results.jsonl` (its setting, the
`cam.evaluate_cams` scores, the trainer's eval metrics, its steps, wall-clock and CPU seconds
(every thread of the process: on a shared machine the wall clock says little)); a restart
skips every run already there, so the study can be stopped and continued at any point. The
file is rewritten whole to a temporary file that then replaces it (`design.append_record`), so
a kill or a full disk never tears or loses the records already there.
`--report_only` writes the tables and the figure (`report`) from what has finished.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Sequence

import ml_collections
from etils import epath

from hnc_jax import cam, multilabel
from hnc_jax.study import report
from hnc_jax.study.design import RESULTS, Plan, Run, append_record, load_results, next_runs

NEVER = 10**9  # eval/checkpoint period: only the last step (the trainer always does it).


def run_config(base: ml_collections.ConfigDict, run: Run, plan: Plan) -> ml_collections.ConfigDict:
    """`base` with the run's setting, seed and splits; evaluates and saves only at the end."""
    config = base.copy_and_resolve_references()
    setting = run.setting
    config.hnc.loss, config.hnc.weight, config.hnc.k = setting.loss, setting.weight, setting.k
    # Always set: a base config with its own warm-up must not leak it into "wu0" runs.
    config.hnc.weight_warmup_epochs = setting.warmup
    config.seed = run.seed
    config.train_split = plan.train_split if run.phase == "test" else plan.fit_split
    config.eval_split = plan.val_split if run.phase == "val" else plan.test_split
    config.eval_every_steps = config.checkpoint_every_steps = NEVER
    config.keep_checkpoints = 1
    config.image_panel_examples = 0
    return config


def measure(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """The latest checkpoint of `workdir` on `config.eval_split`: `cam.evaluate_cams`, or
    `multilabel.evaluate` (mAP, F1, ...) on a multi-label dataset; and its run's `steps`."""
    # Deferred: TensorFlow loads only to run a study (`--report_only` and the plan need none).
    from hnc_jax.data import pipeline
    from hnc_jax.training import inference

    restored = inference.restore(config, workdir)
    if restored.step != restored.job.total_steps:  # SIGTERM: the trainer saved and returned.
        raise RuntimeError(
            f"{workdir} stopped at step {restored.step} of {restored.job.total_steps} "
            "(preempted?): not recorded; run the study again to finish it"
        )
    evaluate = multilabel.evaluate if restored.job.info.multi_label else cam.evaluate_cams
    batches = pipeline.eval_iterator(restored.job.dataset, config)
    scores = evaluate(restored.predict, batches, k=config.hnc.k)
    return {"steps": restored.job.total_steps, **scores}


def execute(base: ml_collections.ConfigDict, run: Run, plan: Plan, workdir: str) -> dict:
    """Trains (or resumes) and measures one run; returns its JSON record."""
    from hnc_jax.training import loop  # Deferred: TensorFlow (see `measure`).

    config = run_config(base, run, plan)
    run_dir = str(epath.Path(workdir) / run.workdir_name)
    tic, cpu = time.time(), time.process_time()
    eval_metrics: dict[str, float] = {}
    if run.phase != "grid_test":  # (Which only scores a val run's model: cam scores alone.)
        eval_metrics = loop.train_and_evaluate(config, run_dir)
        eval_metrics = {k: v for k, v in eval_metrics.items() if k.startswith("eval/")}
    train_seconds = time.time() - tic
    scores = measure(config, run_dir)  # Raises for a run stopped early (SIGTERM).
    if run.phase != "grid_test" and not eval_metrics:  # Killed after its last checkpoint.
        eval_metrics = loop.evaluate_checkpoint(config, run_dir)
        eval_metrics.pop("step")
    s = run.setting
    return {
        "name": run.name, "phase": run.phase, "loss": s.loss, "weight": s.weight, "k": s.k,
        "warmup": s.warmup, "seed": run.seed, "train_split": config.train_split,
        "eval_split": config.eval_split, **scores,
        **{key.replace("/", "_"): value for key, value in eval_metrics.items()},
        "train_seconds": train_seconds, "seconds": time.time() - tic,
        "cpu_seconds": time.process_time() - cpu,
    }  # fmt: skip


def run_study(base: ml_collections.ConfigDict, workdir: str, plan: Plan) -> dict[str, dict]:
    """Runs the study's unfinished runs in order, appending each record as it finishes."""
    path = epath.Path(workdir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    while todo := next_runs(results := load_results(workdir), plan):
        run = todo[0]
        print(f"[{len(results)} done] {run.name}", flush=True)
        record = execute(base, run, plan, workdir)
        append_record(workdir, record)  # Never tears the records already there.
        print(json.dumps(record), flush=True)
    return results


TINY = ("batch_size", "eval_batch_size", "num_train_steps")  # Config fields for tiny runs.


def add_tiny_flags(parser: argparse.ArgumentParser) -> None:
    for field in TINY:
        parser.add_argument(f"--{field}", type=int, default=None, help="tiny runs only")


def tiny_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The config fields the tiny-run flags set."""
    return {field: getattr(args, field) for field in TINY if getattr(args, field) is not None}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Plan()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="results.jsonl and one dir per run")
    parser.add_argument("--config", default="default", help="a module of configs/")
    parser.add_argument("--mse_weights", default=",".join(map(str, defaults.weights["mse"])),
                        help="'' leaves HNC-mse out")  # fmt: skip
    parser.add_argument("--kd_weights", default=",".join(map(str, defaults.weights["kd"])))
    parser.add_argument("--k", type=int, default=None, help="k of the grid (default: the config's)")
    parser.add_argument("--k_values", default="1", help="k tried at each loss's best weight")
    parser.add_argument("--warmups", default=",".join(map(str, defaults.warmups)),
                        help="hnc.weight_warmup_epochs to try ('' for none)")  # fmt: skip
    parser.add_argument("--val_seeds", type=int, default=defaults.val_seeds)
    parser.add_argument("--test_seeds", type=int, default=defaults.test_seeds)
    for split in ("fit_split", "val_split", "train_split", "test_split"):
        parser.add_argument(f"--{split}", default=getattr(defaults, split))
    add_tiny_flags(parser)
    parser.add_argument("--report_only", action="store_true", help="tables and figure only")
    parser.add_argument("--figure", default=None, help="default: <workdir>/hnc_sweep.png")
    return parser.parse_args(argv)


def plan_of(args: argparse.Namespace, base: ml_collections.ConfigDict) -> Plan:
    """The study's plan from its command line (`parse_args`) and base config; checks it."""
    grid = {"mse": _floats(args.mse_weights), "kd": _floats(args.kd_weights)}
    weights = {loss: ws for loss, ws in grid.items() if ws}  # An empty list drops the loss.
    k = base.hnc.k if args.k is None else args.k
    k_values = tuple(int(v) for v in _floats(args.k_values))
    bad = [v for v in (k, *k_values) if v < 1] + [
        w for ws in weights.values() for w in ws if w <= 0
    ]
    if bad or not weights or min(args.val_seeds, args.test_seeds) < 1:
        raise ValueError(
            f"need weights > 0 (for at least one loss), k >= 1 and seeds >= 1; got weights "
            f"{grid}, k {k}, k_values {k_values}, seeds {args.val_seeds}/{args.test_seeds}"
        )
    return Plan(weights, k, k_values, _floats(args.warmups), args.val_seeds, args.test_seeds,
                args.fit_split, args.val_split, args.train_split, args.test_split)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    base = importlib.import_module(f"configs.{args.config}").get_config()
    plan = plan_of(args, base)
    base.update(tiny_overrides(args))
    if not args.report_only:
        run_study(base, args.workdir, plan)
    results = load_results(args.workdir)
    report.write_report(results, plan, args.workdir, args.figure)
    return results


if __name__ == "__main__":
    main()
