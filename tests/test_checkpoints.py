"""Checkpoints across device counts: a run saved on 4 devices initialises runs on 1 and 2
(`init_from` restores onto the new run's own shardings; the saved ones name devices that
the new run does not have)."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.test_main import ROOT

SAVE = textwrap.dedent(
    """
    import sys, jax, numpy as np
    from hnc_jax.training import checkpoints, job, loop
    from tests.test_loop import digits_config

    config = digits_config(num_train_steps=2, batch_size=32, eval_batch_size=32)
    assert jax.device_count() == 4
    loop.train_and_evaluate(config, sys.argv[1])
    run = job.build(config)
    manager = checkpoints.create_manager(sys.argv[1], config.keep_checkpoints, read_only=True)
    state = checkpoints.restore(manager, manager.latest_step(), run.state)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(sys.argv[2], **{jax.tree_util.keystr(k): v for k, v in flat})
    """
)
LOAD = textwrap.dedent(
    """
    import sys, jax, numpy as np
    from hnc_jax.training import checkpoints, job
    from tests.test_loop import digits_config

    config = digits_config(batch_size=32, eval_batch_size=32)
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


@pytest.mark.slow
def test_init_from_a_run_saved_on_another_device_count(tmp_path):
    workdir, params = str(tmp_path / "four"), str(tmp_path / "params.npz")
    saved = _run(SAVE, 4, workdir, params)
    assert saved.returncode == 0, saved.stderr[-3000:]
    for devices in (1, 2):
        loaded = _run(LOAD, devices, workdir, params)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert loaded.stdout.split() == ["ok", str(devices), str(devices)]


@pytest.fixture(scope="module")
def saved_steps(tmp_path_factory):
    """(config, workdir) of a tiny run saved at steps 2 and 4 (trained once; tests copy it)."""
    from hnc_jax.training import loop
    from tests.test_loop import digits_config

    config = digits_config(num_train_steps=4, image_panel_examples=0)
    workdir = tmp_path_factory.mktemp("saved") / "work"
    loop.train_and_evaluate(config, str(workdir))
    return config, workdir


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage(workdir, step, which):
    """Truncates the `_METADATA` or the largest array file of a saved step."""
    files = [p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    if which == "metadata":
        (target,) = [p for p in files if p.name == "_METADATA"]
    else:
        target = max(files, key=lambda p: p.stat().st_size)
    _truncate(target)


@pytest.mark.parametrize("which", ["metadata", "array"])
def test_unreadable_latest_step_falls_back_to_the_previous_one(
    saved_steps, tmp_path, which, caplog
):
    import shutil

    from hnc_jax.training import loop

    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    _damage(workdir, 4, which)
    config.num_train_steps = 6
    result = loop.train_and_evaluate(config, str(workdir))
    assert result["step"] == 6
    said = {r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()}
    assert len(said) == 1  # Step 4 only: step 2 was read.
    assert f"checkpoint step 4 in {workdir / 'checkpoints'} is unreadable" in said.pop()
    assert (workdir / "checkpoints" / "4.unreadable").is_dir()  # Set aside, not deleted.
    assert (workdir / "checkpoints" / "4").is_dir()  # Trained again from step 2 and saved.


def test_no_readable_step_is_an_error_never_step_zero(saved_steps, tmp_path):
    import shutil

    from hnc_jax.errors import ConfigError
    from hnc_jax.training import loop

    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    _damage(workdir, 4, "metadata")
    _damage(workdir, 2, "array")
    with pytest.raises(ConfigError, match=r"no readable checkpoint in .*step 4: .*; step 2: "):
        loop.train_and_evaluate(config, str(workdir))


def test_restore_step_picks_a_kept_step(saved_steps, tmp_path):
    import shutil

    from hnc_jax.errors import ConfigError
    from hnc_jax.training import checkpoints, job, loop

    config, saved = saved_steps
    workdir = tmp_path / "work"
    shutil.copytree(saved, workdir)
    with pytest.raises(ConfigError, match=r"no checkpoint of step 3 in .*; kept: \[4, 2\]"):
        loop.train_and_evaluate(config, str(workdir), restore_step=3)
    manager = checkpoints.create_manager(str(workdir), 2)
    state, step = checkpoints.restore_resumable(manager, job.build(config).state, 2)
    manager.close()
    assert step == int(state.step) == 2
