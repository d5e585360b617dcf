"""Checkpoints: a run saved on 2 devices initialises runs on 1 and 3 (`init_from` restores
onto the new run's own shardings); an unreadable latest step falls back to the previous kept
one; `restore_step` picks a kept step."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hnc_jax.errors import ConfigError
from hnc_jax.training import checkpoints, loop
from tests.helpers import ROOT, digits_config, truncate

LOAD = textwrap.dedent(
    """
    import sys, jax, numpy as np
    from hnc_jax.training import checkpoints, job
    from tests.helpers import digits_config

    config = digits_config(batch_size=48, eval_batch_size=48)
    run = job.build(config)
    state = checkpoints.init_from(sys.argv[1], run.state, run.info.num_classes)
    saved = np.load(sys.argv[2])
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    assert len(flat) == len(saved.files)
    for key, value in flat:
        np.testing.assert_array_equal(value, saved[jax.tree_util.keystr(key)])
    print("ok", jax.device_count(), state.params["head"]["kernel"].sharding.mesh.size)
    """
)


def _run(script: str, devices: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_init_from_a_run_saved_on_another_device_count(trained_run, tmp_path):
    """The shared run was saved on 2 devices; runs on 1 and 3 devices initialise from it
    (onto their own shardings: the saved ones name devices they do not have)."""
    workdir, params = str(trained_run[0]), str(tmp_path / "params.npz")
    # The reference: the saved arrays as they are, restored onto one device.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    flat = jax.tree_util.tree_flatten_with_path(
        jax.device_get(checkpoints.load_variables(workdir, device)["params"])
    )[0]
    np.savez(params, **{jax.tree_util.keystr(k): v for k, v in flat})
    for devices in (1, 3):
        loaded = _run(LOAD, devices, workdir, params)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert loaded.stdout.split() == ["ok", str(devices), str(devices)]


@pytest.fixture(scope="module")
def saved_steps(tmp_path_factory):
    """(config, workdir) of a tiny run saved at steps 2 and 4 (trained once; tests copy it)."""
    config = digits_config(num_train_steps=4, image_panel_examples=0)
    workdir = tmp_path_factory.mktemp("saved") / "work"
    loop.train_and_evaluate(config, str(workdir))
    return config, workdir


def _damage(workdir, step, which):
    """Truncates the `_METADATA` or the largest array file of a saved step."""
    files = [p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    if which == "metadata":
        (target,) = [p for p in files if p.name == "_METADATA"]
    else:
        target = max(files, key=lambda p: p.stat().st_size)
    truncate(target)


@pytest.mark.parametrize("which", ["metadata", "array"])
@pytest.mark.slow
def test_unreadable_latest_step_falls_back_to_the_previous_one(
    saved_steps, tmp_path, which, caplog
):
    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    _damage(workdir, 4, which)
    config = config.copy_and_resolve_references()
    config.num_train_steps = 6
    result = loop.train_and_evaluate(config, str(workdir))
    assert result["step"] == 6
    said = {r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()}
    assert len(said) == 1  # Step 4 only: step 2 was read.
    assert f"checkpoint step 4 in {workdir / 'checkpoints'} is unreadable" in said.pop()
    assert (workdir / "checkpoints" / "4.unreadable").is_dir()  # Set aside, not deleted.
    assert (workdir / "checkpoints" / "4").is_dir()  # Trained again from step 2 and saved.


@pytest.mark.slow
def test_no_readable_step_is_an_error_never_step_zero(saved_steps, tmp_path):
    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    _damage(workdir, 4, "metadata")
    _damage(workdir, 2, "array")
    with pytest.raises(ConfigError, match=r"no readable checkpoint in .*step 4: .*; step 2: "):
        loop.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_restore_step_picks_a_kept_step(saved_steps, tmp_path):
    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    with pytest.raises(ConfigError, match=r"no checkpoint of step 3 in .*; kept: \[4, 2\]"):
        loop.train_and_evaluate(config, str(workdir), restore_step=3)
    # Back to step 2 with another HNC weight: refused, then allowed on purpose and recorded.
    changed = config.copy_and_resolve_references()
    changed.hnc.weight = 0.2
    with pytest.raises(ConfigError, match=r"hnc.weight 0.1 -> 0.2; .*=hnc.weight$"):
        loop.train_and_evaluate(changed, str(workdir), restore_step=2)
    result = loop.train_and_evaluate(changed, str(workdir), ["hnc.weight"], restore_step=2)
    assert result["step"] == 4  # Steps 3 and 4 trained again from step 2.
    assert (workdir / "checkpoints" / "4.superseded").is_dir()  # The old step 4, kept.
    record = json.loads((workdir / "config.json").read_text())
    assert record["history"][0]["changed"] == {"hnc.weight": [0.1, 0.2]}
    assert record["config"]["hnc"]["weight"] == 0.2
