"""Shared fixtures: a GCS emulator for tests of gs:// workdirs and data (tests/gcs_emulator.py)."""

import itertools
import os

import pytest

from tests import gcs_emulator as gcs_emulator_lib

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
    import tensorflow_datasets as tfds

    from hnc_jax.data import cluttered_digits  # noqa: F401  (registers the TFDS builder)

    data_dir = f"{gcs_emulator.create_bucket('tfds')}/data"
    cwd, previous = tmp_path_factory.mktemp("gcs_digits_cwd"), os.getcwd()
    os.chdir(cwd)
    try:
        tfds.builder("cluttered_digits", data_dir=data_dir).download_and_prepare()
    finally:
        os.chdir(previous)
    assert not list(cwd.iterdir()), "preparing on gs:// wrote to the working directory"
    return data_dir
