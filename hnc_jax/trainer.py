"""The training job behind main.py: train with periodic logging, evaluation and checkpoints;
automatic resume; SIGTERM (preemption) saves and returns; evaluation of a saved checkpoint.

Resume is bit-identical on a deterministic backend: the state is restored exactly, the data
stream is a pure function of (seed, step) and the step uses no other randomness. Train
metrics are fetched one step late (the device keeps a step queued) and checked: a non-finite
loss or gradient stops the run before that step can be checkpointed.
"""

import dataclasses
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from hnc_jax import checkpoints, input_pipeline, metrics, train

TRAIN_KEYS = ("image", "label")


@dataclasses.dataclass
class Job:
    """What both modes need, built from a validated config."""

    info: input_pipeline.DatasetInfo
    mesh: Any
    model: Any
    tx: Any
    schedule: Any
    state: train.TrainState
    epoch_steps: int
    total_steps: int


def setup(config: ml_collections.ConfigDict) -> Job:
    """Validates `config` (ValueError, before anything is compiled or written) and builds the
    mesh, model, optimizer and a fresh replicated state."""
    info = train.validate_config(config)
    cache = config.compilation_cache_dir
    train.enable_compilation_cache(train.DEFAULT_CACHE_DIR if cache == "" else cache)
    mesh = train.make_mesh()
    model = train.create_model(config, info.num_classes)
    epoch_steps = train.steps_per_epoch(config, info.num_train)
    tx, schedule = train.make_optimizer(config, epoch_steps)
    shape = (config.image_size, config.image_size, 3)
    state = train.create_train_state(config, model, tx, jax.random.key(config.seed), mesh, shape)
    total = train.num_train_steps(config, epoch_steps)
    return Job(info, mesh, model, tx, schedule, state, epoch_steps, total)


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


def _checked(step: int, step_metrics: Any, manager: Any) -> dict[str, float]:
    host = {key: float(value) for key, value in jax.device_get(step_metrics).items()}
    if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
        manager.wait_until_finished()
        raise FloatingPointError(
            f"non-finite loss {host['loss']} (grad norm {host['grad_norm']}) at step {step}; "
            f"the last good checkpoint is step {manager.latest_step()}"
        )
    return host


def _summary(window: list[dict[str, float]], seconds: float, batch_size: int) -> dict:
    """Means over the steps since the last log; num_posi is only computed on the log step."""
    out = {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
    out["train/num_posi"] = window[-1]["num_posi"]
    out["train/lr"] = window[-1]["lr"]
    out["train/steps_per_sec"] = len(window) / seconds
    out["train/images_per_sec"] = len(window) * batch_size / seconds
    return out


def _every(value: int, epoch_steps: int) -> int:
    return epoch_steps if value == -1 else value


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from the latest checkpoint in `workdir`); returns the last eval
    metrics ({} when a preempted or already finished run did not evaluate)."""
    job = setup(config)
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints)
    state, start = job.state, 0
    if (latest := manager.latest_step()) is not None:
        state = checkpoints.restore(manager, latest, state)
        start = int(state.step)
        logging.info("resumed from step %d", start)
    elif config.init_from:
        state = checkpoints.init_from(config.init_from, state, job.info.num_classes)
        logging.info("initialised from %s", config.init_from)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams(dict(config.to_dict(), num_train_steps=job.total_steps))
    train_step = train.make_train_step(
        config, job.model, job.tx, job.schedule, job.mesh, job.epoch_steps
    )
    eval_step = metrics.make_eval_step(job.model, job.mesh)
    predict = metrics.make_predict(job.model, job.mesh)
    log_every = config.log_every_steps
    eval_every = _every(config.eval_every_steps, job.epoch_steps)
    save_every = _every(config.checkpoint_every_steps, job.epoch_steps)
    hooks = []
    if jax.process_index() == 0:
        hooks.append(
            periodic_actions.ReportProgress(num_train_steps=job.total_steps, writer=writer)
        )
        if config.profile_first_step > 0:
            hooks.append(
                periodic_actions.Profile(logdir=workdir, first_profile=config.profile_first_step)
            )
    stop = _StopFlag()
    iterator = input_pipeline.train_iterator(config, start)
    window, pending, eval_metrics, tic = [], None, {}, time.time()
    for step in range(start, job.total_steps):
        done = step + 1
        with jax.profiler.StepTraceAnnotation("train", step_num=done):
            local = next(iterator)
            batch = train.shard_batch(job.mesh, {k: local[k] for k in TRAIN_KEYS})
            state, step_metrics = train_step(state, batch)
        if pending is not None:  # The previous step, while this one runs.
            window.append(_checked(*pending, manager))
        pending = (done, step_metrics)
        for hook in hooks:
            hook(done)
        last, preempted = done == job.total_steps, stop(done)
        log = done % log_every == 0 or last
        run_eval = done % eval_every == 0 or last
        save = run_eval or done % save_every == 0 or last or preempted
        if log or save:
            window.append(_checked(*pending, manager))
            pending = None
        if log:
            writer.write_scalars(done, _summary(window, time.time() - tic, config.batch_size))
            window, tic = [], time.time()
        if run_eval:
            eval_metrics = metrics.evaluate(eval_step, state, config, job.mesh)
            writer.write_scalars(done, eval_metrics)
            panel_batch = next(input_pipeline.eval_iterator(config))
            metrics.write_cam_panel(
                writer, done, predict, state, job.mesh, panel_batch, job.info,
                config.image_panel_examples,
            )  # fmt: skip
            tic = time.time()  # Steps/s exclude evaluation.
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
    if which not in ("latest", "best"):
        raise ValueError(f"unknown checkpoint {which!r}; allowed: latest, best")
    job = setup(config)
    manager = checkpoints.create_manager(workdir, config.keep_checkpoints, read_only=True)
    step = manager.latest_step() if which == "latest" else manager.best_step()
    if step is None:
        raise ValueError(f"no {which} checkpoint in {checkpoints.checkpoint_dir(workdir)}")
    state = checkpoints.restore(manager, step, job.state)
    eval_step = metrics.make_eval_step(job.model, job.mesh)
    result = metrics.evaluate(eval_step, state, config, job.mesh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_scalars(step, {k.replace("eval/", f"eval_{which}/"): v for k, v in result.items()})
    writer.flush()
    manager.close()
    return {"step": step, **result}
