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
