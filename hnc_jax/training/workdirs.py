"""A workdir holds one run: the config it was started with, and one owner at a time.

- `config.json`: the resolved config, the project version, the device and process counts and
  the class names, written once (atomically) when the run starts. Every later start compares
  its config with it: a changed field refuses to resume (one line naming each field, old ->
  new) unless the field may change on resume (`RESUMABLE`: the length of the run, logging,
  evaluation and checkpoint cadence, where the data and the compile cache live) or the user
  allows it on purpose (`allow`); allowed changes are logged and recorded in the file.
  `--mode=eval|cam|export` use the stored config (and its class names) by default.
- `owner.json`: process 0 takes it (host, pid, start time) before it writes anything, with an
  exclusive create (a local path: O_EXCL; gs://: a generation-0 precondition), so a second
  run on the same workdir is refused, naming the owner. A stale record (that host's process
  is gone, or `force` given) is taken over with a warning; the owner releases it at the end.

Every path may be a URL (gs://bucket/run): all files go through `etils.epath`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

import hnc_jax
from hnc_jax.data import grain_pipeline
from hnc_jax.errors import ConfigError

CONFIG_FILE = "config.json"
OWNER_FILE = "owner.json"
# Fields that may change when a run resumes: how long it runs, how often it logs, evaluates
# and saves, and where its data and compile cache live. Anything else would mix two runs.
RESUMABLE = (
    "num_epochs",
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "image_panel_examples",
    "profile_first_step",
    "compilation_cache_dir",
    "data_dir",
    "download_data",
    "check_images",
    # The Grain backend's worker, thread and prefetch counts change no batch (batch s is a
    # function of (seed, s) for any of them).
    "grain_workers",
    "grain_read_threads",
    "grain_prefetch",
)
# Fields added to the config since runs were first recorded, with the value that means what
# a run recorded without them did: a resume of such a run compares them as that value.
ADDED = {"input_backend": "tf_data", **grain_pipeline.FIELDS}
# Fields an evaluation may change (`--mode=eval|cam` of a stored run on other data).
EVAL_ONLY = ("eval_split", "eval_batch_size", "eval_localization")
# Fields only training reads: an evaluation may change them (e.g. a batch size that divides
# this machine's device count); the model, its classes and input size may not change.
TRAINING_ONLY = (
    "batch_size",
    "seed",
    "hnc",
    "label_smoothing",
    "label_noise",
    "augment",
    "shuffle_buffer_size",
    "train_split",
    "init_from",
    "optimizer.learning_rate",
    "optimizer.weight_decay",
    "schedule",
    "warmup_epochs",
    "lr_decay_epochs",
    "lr_decay_factor",
    "grad_clip_norm",
)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonable(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def _write_atomically(path: epath.Path, text: str) -> None:
    """Writes under a temporary name, then renames: a reader never sees half a file."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def read_record(workdir: str | os.PathLike) -> dict | None:
    """The workdir's `config.json` record, or None for a workdir without one."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): restore it or use a new workdir") from e


def stored_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The config a workdir's run was started with (None: no `config.json`)."""
    record = read_record(workdir)
    return None if record is None else ml_collections.ConfigDict(record["config"])


def changes(old: dict, new: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{field: (old, new)} for every dotted field whose value differs (or exists on one
    side only). A field missing from `old` and off in `new` (None, '', 'none', 0, False) is
    no change: a newer version's field at its default, which leaves a run as it was."""
    before, after = _flat(old), _flat(_jsonable(new))
    missing = object()
    off = (None, "", "none", 0, False)
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key, missing) != after.get(key, missing)
        and not (key not in before and any(after[key] == v for v in off))
    }


def check_config(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    allow: Iterable[str] = (),
    may_change: Sequence[str] = RESUMABLE,
) -> dict[str, tuple[Any, Any]]:
    """Compares `config` with the workdir's stored one; returns the changed fields, all of
    them allowed (`may_change`, `allow`: a field or a group, `hnc` allows `hnc.weight`), or
    raises ConfigError naming the others. Reads only `config.json`: call it before anything
    expensive."""
    record = read_record(workdir)
    if record is None:
        return {}
    changed = changes({**ADDED, **record["config"]}, config)
    allowed = (*may_change, *allow)
    refused = {
        key: value
        for key, value in changed.items()
        if not any(key == a or key.startswith(f"{a}.") for a in allowed)
    }
    if refused:
        fields = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(
            f"{epath.Path(workdir) / CONFIG_FILE} was written by a run with another config: "
            f"{fields}; resume with the stored config, start a new workdir, or allow the "
            f"change on purpose with --allow_config_change={','.join(refused)}"
        )
    return changed


def record_config(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    class_names: Sequence[str],
    changed: dict[str, tuple[Any, Any]],
) -> None:
    """Writes (process 0) the workdir's record: at the first start, or with the allowed
    `changed` fields appended to its history on a resume."""
    if jax.process_index() != 0:
        return
    path = epath.Path(workdir) / CONFIG_FILE
    record = read_record(workdir)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if record is None:
        record = {"created": now, "history": []}
    elif not changed:
        return
    else:
        logging.warning("config changes on resume, recorded in %s: %s", path, changed)
        record["history"].append({"time": now, "changed": {k: list(v) for k, v in changed.items()}})
    record.update(
        config=_jsonable(config),
        class_names=list(class_names),
        version=hnc_jax.__version__,
        devices=jax.device_count(),
        processes=jax.process_count(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(record, indent=1) + "\n")


def _owner_record() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _create_exclusive(path: epath.Path, text: str) -> bool:
    """Creates `path` holding `text` unless it exists, atomically: a reader sees the whole
    record or none (locally a hard link of a complete file, which fails if `path` exists).
    False if it existed."""
    if os.fspath(path).startswith("gs://"):
        from google.api_core import exceptions  # Deferred: only bucket workdirs need GCS.
        from google.cloud import storage

        bucket, _, name = os.fspath(path)[len("gs://") :].partition("/")
        blob = storage.Client().bucket(bucket).blob(name)
        try:
            blob.upload_from_string(text, if_generation_match=0)
        except exceptions.PreconditionFailed:
            return False
        return True
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _is_stale(owner: dict) -> bool:
    """True when the owner ran on this host and its process is gone."""
    if owner.get("host") != socket.gethostname():
        return False  # Another host's processes cannot be seen from here.
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # Alive, another user's.
    return False


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"


def _acquire(path: epath.Path, force: bool) -> str | None:
    """Process 0's claim: None when taken, else why not (one line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = json.dumps(_owner_record())
    for _ in range(2):  # A stale record removed, then one more try.
        if _create_exclusive(path, mine):
            return None
        try:
            owner = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            owner = {}  # Released meanwhile, or torn: unreadable, so treated as stale.
        if not (force or _is_stale(owner) or not owner):
            return (
                f"{path.parent} is in use by another run ({_describe(owner)}): stop it or "
                f"use another workdir; if that run is gone, start again with --force_owner"
            )
        logging.warning("taking over %s from %s", path, _describe(owner) if owner else "?")
        path.unlink(missing_ok=True)
    return f"{path} was taken by another run while this one started"


@contextlib.contextmanager
def owned(workdir: str | os.PathLike, force: bool = False) -> Iterator[None]:
    """Holds the workdir's owner record for the block (process 0 writes it; every process
    learns the outcome, so all refuse together); releases it at the end."""
    path = epath.Path(workdir) / OWNER_FILE
    problem = _acquire(path, force) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(problem is not None)
        if refused and problem is None:
            problem = f"{path.parent} is in use by another run (see process 0's log)"
    if problem:
        raise ConfigError(problem)
    try:
        yield
    finally:
        if jax.process_index() == 0:
            path.unlink(missing_ok=True)
