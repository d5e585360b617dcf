"""The training job behind main.py: train with periodic logging, evaluation and checkpoints;
automatic resume; SIGTERM (preemption) saves and returns; evaluation of a saved checkpoint.

Resume is bit-identical on a deterministic backend: the state is restored exactly, the data
stream is a pure function of (seed, step) and the step uses no other randomness.

The loop never waits for the device inside a step: batches go to the devices two steps
ahead (`train_step.device_batches`), logging steps run a variant of the step that also computes
the num_posi diagnostic (no per-step branch), train metrics are fetched one step late (the
device keeps a step queued) and checked: a non-finite loss or gradient stops the run before
that step can be checkpointed. Evaluation sums stay on the devices until its end.
"""

import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from hnc_jax.data import pipeline
from hnc_jax.training import checkpoints, evaluation, inference, job, train_step

TRAIN_KEYS = ("image", "label")


class _StopFlag:
    """Preemption: SIGTERM on one process; the JAX preemption sync point on several (all
    processes then agree on the step to save at)."""

    def __init__(self):
        self.requested = False
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def __call__(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


class Stopwatch:
    """Training seconds since the last `lap`, not counting paused spans (evaluations)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock, self.banked, self.since = clock, 0.0, clock()

    def pause(self) -> None:
        self.banked += self.clock() - self.since

    def resume(self) -> None:
        self.since = self.clock()

    def lap(self) -> float:
        now = self.clock()
        seconds, self.banked, self.since = self.banked + now - self.since, 0.0, now
        return seconds


def _checked(step: int, step_metrics: Any, manager: Any) -> dict[str, float]:
    host = {key: float(value) for key, value in jax.device_get(step_metrics).items()}
    if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
        manager.wait_until_finished()
        raise FloatingPointError(
            f"non-finite loss {host['loss']} (grad norm {host['grad_norm']}) at step {step}; "
            f"the last good checkpoint is step {manager.latest_step()}"
        )
    return host


def summarize(window: list[dict[str, float]], seconds: float, batch_size: int) -> dict:
    """Log line of the steps since the last log: means over the window (num_posi: the log
    step's own, the only one that computes it), the last lr, and the rates over `seconds`."""
    out = {
        f"train/{key}": float(np.mean([m[key] for m in window if key in m]))
        for key in dict.fromkeys(key for m in window for key in m)
    }
    out["train/lr"] = window[-1]["lr"]
    out["train/steps_per_sec"] = len(window) / seconds
    out["train/images_per_sec"] = len(window) * batch_size / seconds
    return out


def _every(value: int, epoch_steps: int) -> int:
    return epoch_steps if value == -1 else value


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from the latest checkpoint in `workdir`, a path or URL); returns the
    last eval metrics ({} when a preempted or already finished run did not evaluate)."""
    run = job.build(config)
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
    state, start = run.state, 0
    if (latest := manager.latest_step()) is not None:
        state = checkpoints.restore(manager, latest, state)
        start = int(state.step)
        logging.info("resumed from step %d", start)
    elif config.init_from:
        state = checkpoints.init_from(config.init_from, state, run.info.num_classes)
        logging.info("initialised from %s", config.init_from)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams(dict(config.to_dict(), num_train_steps=run.total_steps))
    args = (config, run.model, run.tx, run.schedule, run.mesh)
    steps = {
        log: train_step.make_train_step(*args, with_num_posi=log, epoch_steps=run.epoch_steps)
        for log in (False, True)
    }
    eval_step = evaluation.make_eval_step(run.model, run.mesh, run.info.multi_label)
    predict = inference.make_predict(run.model, run.mesh)
    log_every = config.log_every_steps
    eval_every = _every(config.eval_every_steps, run.epoch_steps)
    save_every = _every(config.checkpoint_every_steps, run.epoch_steps)
    hooks = []
    if jax.process_index() == 0:
        hooks.append(
            periodic_actions.ReportProgress(num_train_steps=run.total_steps, writer=writer)
        )
        if config.profile_first_step > 0:
            hooks.append(
                periodic_actions.Profile(logdir=workdir, first_profile=config.profile_first_step)
            )
    stop = _StopFlag()
    local_batches = pipeline.train_iterator(run.dataset, config, start)
    batches = train_step.device_batches(({k: b[k] for k in TRAIN_KEYS} for b in local_batches),
                                   run.mesh)  # fmt: skip
    window, pending, eval_metrics, stopwatch = [], None, {}, Stopwatch()
    for step in range(start, run.total_steps):
        done = step + 1
        last = done == run.total_steps
        log = done % log_every == 0 or last
        with jax.profiler.StepTraceAnnotation("train", step_num=done):
            state, step_metrics = steps[log](state, next(batches))
        if pending is not None:  # The previous step, while this one runs.
            window.append(_checked(*pending, manager))
        pending = (done, step_metrics)
        for hook in hooks:
            hook(done)
        preempted = stop(done)
        run_eval = done % eval_every == 0 or last
        save = run_eval or done % save_every == 0 or last or preempted
        if log or save:
            window.append(_checked(*pending, manager))
            pending = None
        if log:
            writer.write_scalars(done, summarize(window, stopwatch.lap(), config.batch_size))
            window = []
        if run_eval:
            stopwatch.pause()  # Rates count training only.
            eval_metrics = evaluation.evaluate(eval_step, state, run.dataset, config, run.mesh)
            writer.write_scalars(done, eval_metrics)
            panel_batch = next(pipeline.eval_iterator(run.dataset, config))
            panel = inference.cam_panel(
                predict, state, panel_batch, run.info, config.image_panel_examples
            )
            if panel is not None:
                writer.write_images(done, {"cams": panel[None]})
            stopwatch.resume()
        if save:
            checkpoints.save(manager, done, state, eval_metrics if run_eval else None)
        if preempted:
            logging.warning("preemption: saved step %d, stopping", done)
            break
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    return eval_metrics


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, which: str = "latest"
) -> dict[str, float]:
    """Evaluates the 'latest' or 'best' checkpoint of `workdir`; writes the metrics (as
    eval_<which>/...) at that step and returns them with 'step'."""
    restored = inference.restore(config, workdir, which)
    run = restored.job
    eval_step = evaluation.make_eval_step(run.model, run.mesh, run.info.multi_label)
    result = evaluation.evaluate(eval_step, restored.state, run.dataset, config, run.mesh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    prefixed = {k.replace("eval/", f"eval_{which}/"): v for k, v in result.items()}
    writer.write_scalars(restored.step, prefixed)
    writer.flush()
    return {"step": restored.step, **result}
