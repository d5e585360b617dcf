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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from hnc_jax import cam
from hnc_jax.data import pipeline
from hnc_jax.errors import ConfigError
from hnc_jax.training import checkpoints, evaluation, inference, job, train_step, workdirs

TRAIN_KEYS = ("image", "label")


class _StopFlag:
    """Preemption: SIGTERM on one process; the JAX preemption sync point on several (all
    processes then agree on the step to save at). A context manager: the SIGTERM handler it
    installs is the previous one again afterwards (a notebook or a study goes on)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self) -> "_StopFlag":
        if jax.process_count() == 1:
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

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


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    allow_config_change: Sequence[str] = (),
    force_owner: bool = False,
    restore_step: int | None = None,
) -> dict[str, float]:
    """Trains (resuming from the latest readable checkpoint in `workdir`, a path or URL, or
    from `restore_step`); returns {'step': the last step, **the last eval metrics}, with
    'preempted': 1 when SIGTERM stopped it (no eval metrics when it did not evaluate, or
    was already finished).

    The workdir's contract (`workdirs`): its stored config must match `config` but for the
    resumable fields and `allow_config_change`; one run owns it at a time (`force_owner`
    takes over a stale owner)."""
    changed = workdirs.check_config(workdir, config, allow_config_change)
    # Bad fields and missing data are refused before the workdir is touched.
    job.check(config)
    dataset = pipeline.load(config)
    with workdirs.owned(workdir, force_owner), _StopFlag() as stop:
        run = job.build(config, dataset)
        workdirs.record_config(workdir, config, run.info.class_names, changed)
        manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
        writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
        try:
            return _train(config, workdir, run, manager, writer, stop, restore_step)
        finally:  # Also after a failure: the saves in flight finish, the events reach disk.
            manager.wait_until_finished()
            manager.close()
            writer.flush()


def _train(config, workdir, run, manager, writer, stop, restore_step) -> dict[str, float]:
    state, start = run.state, 0
    if resumed := checkpoints.restore_resumable(manager, state, restore_step):
        state, start = resumed[0], int(resumed[0].step)
        logging.info("resumed from step %d", start)
    elif config.init_from:
        state = checkpoints.init_from(config.init_from, state, run.info.num_classes)
        logging.info("initialised from %s", config.init_from)
    if start >= run.total_steps:
        logging.info("already finished at step %d of %d", start, run.total_steps)
        return {"step": start}
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
    # Grain: the input state saved with step s resumes the stream at s (tf.data: none needed).
    grain = pipeline.backend(config) == "grain"
    data_state = checkpoints.restore_data(manager, start) if start else None
    local_batches = pipeline.train_iterator(run.dataset, config, start, data_state)
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
            try:
                eval_metrics = evaluation.evaluate(eval_step, state, run.dataset, config, run.mesh)
                panel_batch = next(pipeline.eval_iterator(run.dataset, config))
                variables = train_step.model_variables(state)
                panel = inference.cam_panel(
                    predict, variables, panel_batch, run.info, config.image_panel_examples
                )
            except BaseException:
                # Orbax records a step's metrics (for the best checkpoint) only when it saves
                # the step, so evaluation comes first; when it fails, the step is saved
                # without metrics before the error goes on: no training is lost.
                checkpoints.save(
                    manager, done, state, data=local_batches.state(done) if grain else None
                )
                logging.error("evaluation failed at step %d: saved the step first", done)
                raise
            writer.write_scalars(done, eval_metrics)
            if panel is not None:
                writer.write_images(done, {"cams": panel[None]})
            stopwatch.resume()
        if save:
            data = local_batches.state(done) if grain else None
            checkpoints.save(manager, done, state, eval_metrics if run_eval else None, data)
        if preempted:
            logging.warning("preemption: saved step %d, stopping", done)
            return {"step": done, "preempted": 1, **eval_metrics}
    return {"step": done, **eval_metrics}


def _localization(restored: inference.Restored, config: ml_collections.ConfigDict) -> dict:
    """`cam.evaluate_cams` over the eval split, as eval/<metric> (config.eval_localization)."""
    info = restored.job.info
    if not info.has_boxes or info.multi_label:
        raise ConfigError(
            f"config.eval_localization needs single-label data with boxes (a 'bbox' feature); "
            f"{config.dataset} has {'multi-hot labels' if info.multi_label else 'no boxes'}"
        )
    if jax.process_count() > 1:
        raise ConfigError("config.eval_localization runs on one process; evaluate on one host")
    batches = pipeline.eval_iterator(restored.job.dataset, config)
    scores = cam.evaluate_cams(restored.predict, batches, k=config.hnc.k)
    return {f"eval/{key}": value for key, value in scores.items()}


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, which: str = "latest"
) -> dict[str, float]:
    """Evaluates the 'latest' or 'best' checkpoint of `workdir`; writes the metrics (as
    eval_<which>/...) at that step and returns them with 'step'. With
    `config.eval_localization`, also the CAMs' localization (`_localization`)."""
    restored = inference.restore(config, workdir, which)
    run = restored.job
    eval_step = evaluation.make_eval_step(run.model, run.mesh, run.info.multi_label)
    result = evaluation.evaluate(eval_step, restored.state, run.dataset, config, run.mesh)
    if config.get("eval_localization", False):
        result |= _localization(restored, config)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    prefixed = {k.replace("eval/", f"eval_{which}/"): v for k, v in result.items()}
    writer.write_scalars(restored.step, prefixed)
    writer.flush()
    return {"step": restored.step, **result}
