"""Shared fixtures: the embedded datasets built once per run, a run trained once by main.py
for the tests that evaluate, draw and export one, and a GCS emulator for tests of gs://
workdirs and data (tests/gcs_emulator.py).

A test run keeps its datasets (TFDS_DATA_DIR) and compiled programs (tests/helpers.py) in
directories of its own, removed at its end: it neither reads nor fills the user's
~/tensorflow_datasets, and every run starts as cold as CI's."""

import fcntl
import itertools
import os
import shutil
import tempfile

import pytest

# Before TFDS is imported (it reads the variable once); directories the user chose are
# theirs to keep.
_OWN = {
    name: tempfile.mkdtemp(prefix=f"hnc_jax_{name.lower()}_")
    for name in ("TFDS_DATA_DIR", "HNC_JAX_CACHE_DIR")
    if name not in os.environ
}
os.environ.update(_OWN)

# The suite checks what is computed, not how fast: XLA's CPU backend compiles without its
# LLVM optimisations (a third less compile time; tiny models run about as fast). Tests and
# the processes they start inherit it.
os.environ["XLA_FLAGS"] = " ".join(
    [
        os.environ.get("XLA_FLAGS", ""),
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ]  # fmt: skip
).strip()

import tensorflow_datasets as tfds  # noqa: E402

from hnc_jax.data import cluttered_digits  # noqa: E402, F401  (registers the builders)
from tests import gcs_emulator as gcs_emulator_lib  # noqa: E402
from tests.helpers import TINY, run_main  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # With several test processes (pytest -n, --dist loadgroup), the tests that share an
    # expensive session fixture run in one process, which builds it once.
    for item in items:
        for fixture in ("trained_run", "gcs_digits_dir"):
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(fixture))


def pytest_sessionfinish(session, exitstatus):
    for path in _OWN.values():
        shutil.rmtree(path, ignore_errors=True)


def _prepared(name: str, **kwargs):
    """The TFDS builder `name` (with builder `kwargs`), prepared in this run's TFDS_DATA_DIR
    unless `kwargs` name another data_dir: by the first of the run's test processes to get
    there (pytest-xdist workers share the directory)."""
    with open(os.path.join(os.environ["TFDS_DATA_DIR"], ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = tfds.builder(name, **kwargs)  # Reads what is on disk: after the lock.
        builder.download_and_prepare()
    return builder


@pytest.fixture(scope="session", autouse=True)
def digits():
    """The cluttered_digits builder, prepared before any test: every test and main.py run
    finds it there by default (most need it; none builds it again)."""
    return _prepared("cluttered_digits")


@pytest.fixture(scope="session")
def digits_array_record() -> str:
    """The data_dir of cluttered_digits prepared as ArrayRecord (the Grain backend's format;
    about 10 s): TFDS keeps one format per dataset version and directory, so a directory of
    its own beside the run's."""
    data_dir = os.path.join(os.environ["TFDS_DATA_DIR"], "array_record")
    _prepared("cluttered_digits", data_dir=data_dir, file_format="array_record")
    return data_dir


@pytest.fixture(scope="session")
def multi_digits():
    """The cluttered_digits/multi builder, prepared once per run."""
    return _prepared("cluttered_digits/multi")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits) -> tuple:
    """(workdir, main.py's CompletedProcess): the tiny default trained for 3 steps on 2
    devices. Shared across modules: tests read it, evaluate, draw and export it, and write
    their outputs elsewhere; none trains on in it."""
    workdir = tmp_path_factory.mktemp("trained") / "work"
    result = run_main(f"--workdir={workdir}", "--config.num_train_steps=3", *TINY, devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def gcs_emulator():
    """One emulator per test process (gs:// clients bind to it at their first use), its env
    set in os.environ for this process and the subprocesses it starts."""
    with gcs_emulator_lib.running() as emulator:
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """'gs://NAME' of a new, empty bucket."""
    return gcs_emulator.create_bucket(f"test-{next(_bucket_ids)}")


@pytest.fixture(scope="session")
def gcs_digits_dir(gcs_emulator, tmp_path_factory) -> str:
    """'gs://tfds/data': a TFDS data_dir with cluttered_digits prepared there (about 15 s), as
    main.py prepares it, from an empty working directory that must stay empty."""
    data_dir = f"{gcs_emulator.create_bucket('tfds')}/data"
    cwd, previous = tmp_path_factory.mktemp("gcs_digits_cwd"), os.getcwd()
    os.chdir(cwd)
    try:
        tfds.builder("cluttered_digits", data_dir=data_dir).download_and_prepare()
    finally:
        os.chdir(previous)
    assert not list(cwd.iterdir()), "preparing on gs:// wrote to the working directory"
    return data_dir
