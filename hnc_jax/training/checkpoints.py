"""Orbax checkpoints in `<workdir>/checkpoints`: asynchronous saves, the last n kept plus the
best by eval top-1 (one manager, two preservation policies), restore of the latest or best.

A checkpoint is the whole `TrainState` (step, params, batch_stats, opt_state), as orbax's
item "default" (the layout of a single-item checkpoint, so older checkpoints restore and
single-item readers read these), and with the Grain input backend the input iterator's state
as item "data" (Grain's own orbax handler: one JSON file per process); steps saved after an
evaluation carry its metrics (`eval/top1`, ...), which rank them for "best".
Restores always name their target's shapes, dtypes and shardings, so a checkpoint written
on one device count restores on another. `init_from` starts a new run from the weights of a
torchvision `.pth` file or of another run's latest checkpoint.

Workdirs may be URLs (`gs://bucket/run`): paths go through `etils.epath`, as orbax's own.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from hnc_jax.errors import ConfigError
from hnc_jax.training import train_step
from hnc_jax.weights import convert, formats

BEST_METRIC = "eval/top1"
ITEMS = ("default", "data")  # The train state; the input iterator's state (Grain only).


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """`<workdir>/checkpoints`, absolute (orbax needs it) unless `workdir` is a URL."""
    path = epath.Path(workdir).expanduser()
    if "://" not in os.fspath(workdir):
        path = path.absolute()
    return path / "checkpoints"


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def create_manager(
    workdir: str | os.PathLike, keep: int, read_only: bool = False
) -> ocp.CheckpointManager:
    """Keeps the `keep` latest steps and the one with the highest eval top-1."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(
                get_metric_fn=_best_metric,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_best_metric,  # Also makes orbax store the metrics.
        enable_async_checkpointing=True,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


class _DataState:
    """A JSON-able input state dressed as the iterator Grain's orbax handler saves (bytes from
    `get_state`) and restores into (`set_state`, `start_prefetch`)."""

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:
        pass


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    metrics: dict[str, float] | None = None,
    data: dict | None = None,
) -> None:
    """Starts an asynchronous save of `state` at `step` (every process must call it), with
    this process's input state `data` (the Grain backend's, for resuming at `step`) if any."""
    items = {"default": ocp.args.StandardSave(state)}
    if data is not None:
        from grain import checkpoint as grain_checkpoint  # Deferred: the Grain backend's.

        items["data"] = grain_checkpoint.CheckpointSave(_DataState(data))
    manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, target):
    """The state saved at `step`, laid out (shapes, dtypes, shardings) like `target`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.Composite(default=ocp.args.StandardRestore(abstract))
    return manager.restore(step, args=args).default


def restore_data(manager: ocp.CheckpointManager, step: int) -> dict | None:
    """This process's input state saved at `step` (`save`'s `data`), or None when the step
    has none (saved by the tf.data backend, which needs none: its stream is a function of
    (seed, step))."""
    if not (manager.directory / str(step) / "data").exists():
        return None
    from grain import checkpoint as grain_checkpoint  # Deferred: the Grain backend's.

    holder = _DataState()
    manager.restore(step, args=ocp.args.Composite(data=grain_checkpoint.CheckpointRestore(holder)))
    return holder.state


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], why: str) -> None:
    """Renames each step's directory to `<step>.<why>` (kept, no longer a step)."""
    if jax.process_index() == 0:
        for step in steps:
            (manager.directory / str(step)).rename(manager.directory / f"{step}.{why}")
    multihost_utils.sync_global_devices(f"checkpoints set aside: {why}")
    manager.reload()


def restore_resumable(manager: ocp.CheckpointManager, target, step: int | None = None):
    """(state, step) to resume from: `step` if given (the kept steps after it are set aside
    as `<step>.superseded`, so that training can save those steps again), else the latest
    readable kept step; None when there is no checkpoint. A step that cannot be read (a
    truncated or missing file) is said in a warning and set aside as `<step>.unreadable`
    (so that training can save that step again), and the previous kept step is tried: never
    silently step 0."""
    directory = manager.directory
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise ConfigError(f"no checkpoint of step {step} in {directory}; kept: {steps}")
        restored = restore(manager, step, target)
        if later := [s for s in steps if s > step]:
            logging.warning("resuming from step %d: steps %s set aside as <step>.superseded",
                            step, later)  # fmt: skip
            _set_aside(manager, later, "superseded")
        return restored, step
    unreadable = []
    for candidate in steps:
        try:
            return restore(manager, candidate, target), candidate
        except Exception as e:  # noqa: BLE001  (orbax raises JSON, I/O, runtime errors alike)
            unreadable.append(f"step {candidate}: {_first_line(e)}")
            logging.warning(
                "checkpoint step %d in %s is unreadable (%s): set aside as %d.unreadable; "
                "trying the previous kept step",
                candidate, directory, _first_line(e), candidate,
            )  # fmt: skip
            _set_aside(manager, [candidate], "unreadable")
    if unreadable:
        raise ConfigError(f"no readable checkpoint in {directory}: {'; '.join(unreadable)}")
    return None


def load_variables(
    path: str | os.PathLike, sharding: jax.sharding.Sharding, which: str = "latest"
) -> dict:
    """{'params', 'batch_stats'} of the 'latest' or 'best' checkpoint of a workdir (or its
    checkpoints/ directory) of this project, as saved (any model and class count), placed
    with `sharding` (e.g. replicated over this run's mesh, or one device: the saving run's
    devices may not exist here). Raises ConfigError (one line) when there is none."""
    if which not in ("latest", "best"):
        raise ConfigError(f"unknown checkpoint {which!r}; allowed: latest, best")
    directory = epath.Path(path)
    if directory.name != "checkpoints":
        directory = checkpoint_dir(path)
    if not directory.is_dir():
        raise ConfigError(f"no {which} checkpoint in {directory} (no such directory)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, best_fn=_best_metric)
    handler = ocp.StandardCheckpointHandler()
    with ocp.CheckpointManager(directory, options=options, item_handlers=handler) as manager:
        step = manager.latest_step() if which == "latest" else manager.best_step()
        if step is None:
            raise ConfigError(f"no {which} checkpoint in {directory}")
        saved = manager.item_metadata(step).tree
        target = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved
        )
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    return {"params": restored["params"], "batch_stats": restored["batch_stats"]}


def init_from(path: str, state, num_classes: int):
    """`state` with its params and BatchNorm statistics taken from `path`: a torchvision or
    timm weight file (`convert.WEIGHT_FILE_SUFFIXES`) or a workdir of this project. The head
    is re-initialised when the class count differs; the optimizer state stays fresh. Same
    shardings as `state`."""
    variables = train_step.model_variables(state)
    try:
        if str(path).endswith(convert.WEIGHT_FILE_SUFFIXES):
            merged = convert.load_pretrained(path, variables, num_classes)
        else:
            imported = load_variables(path, state.step.sharding)
            merged = convert.merge_pretrained(variables, imported, num_classes, f"{path}, which")
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # The weights' own checks: the user's file.
        raise ConfigError(f"init_from={path}: {e}") from e

    def place(new, old):  # Works on every process of a multi-host run alike.
        host = np.asarray(new, old.dtype)
        return jax.make_array_from_callback(host.shape, old.sharding, lambda index: host[index])

    merged = jax.tree.map(place, merged, variables)
    return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])


def export_checkpoint(workdir: str, path: str, which: str = "latest") -> str:
    """Writes the 'latest' or 'best' checkpoint of a workdir of this project with
    `convert.to_torchvision` (on process 0) and returns the path. Any device count may have
    saved it (a pod slice, exported on a laptop): it is restored onto one device."""
    formats.check_writable(path)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    variables = load_variables(workdir, device, which)
    if jax.process_index() == 0:
        convert.to_torchvision(variables, path)
    return path
