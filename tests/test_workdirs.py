"""The workdir contract, in process: the stored config and its checks, the owner record on a
local disk and on a bucket (the GCS emulator), stale owners and their takeover."""

import json
import subprocess
import sys

import pytest
from etils import epath

from hnc_jax.errors import ConfigError
from hnc_jax.training import workdirs
from tests.helpers import tiny_config


def _dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_changed_config_is_refused_unless_resumable_or_allowed(tmp_path):
    config = tiny_config()
    assert workdirs.check_config(tmp_path, config) == {}  # No record: a new run.
    workdirs.record_config(tmp_path, config, ["a", "b"], {})
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["hnc"]["weight"] == 0.1 and record["class_names"] == ["a", "b"]
    assert record["devices"] >= 1 and record["history"] == []
    longer = tiny_config(num_epochs=20, data_dir="/elsewhere")  # Resumable fields.
    assert workdirs.check_config(tmp_path, longer) == {
        "num_epochs": (8, 20),
        "data_dir": (None, "/elsewhere"),
    }
    mixed = tiny_config(batch_size=64, **{"optimizer.learning_rate": 0.05})
    with pytest.raises(ConfigError) as refused:
        workdirs.check_config(tmp_path, mixed)
    message = str(refused.value)
    assert "batch_size 128 -> 64, optimizer.learning_rate 0.2 -> 0.05;" in message
    assert message.endswith("--allow_config_change=batch_size,optimizer.learning_rate")
    # Allowed on purpose, by field or by group; the change is recorded in the history.
    changed = workdirs.check_config(tmp_path, mixed, ["batch_size", "optimizer"])
    workdirs.record_config(tmp_path, mixed, ["a", "b"], changed)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["batch_size"] == 64
    assert record["history"][0]["changed"]["batch_size"] == [128, 64]
    assert workdirs.stored_config(tmp_path).optimizer.learning_rate == 0.05


def test_a_field_added_since_the_record_counts_only_when_turned_on(tmp_path):
    """A workdir written before `label_noise` existed resumes with the field off; turning
    it on is a change like any other."""
    workdirs.record_config(tmp_path, tiny_config(), ["a", "b"], {})
    record = json.loads((tmp_path / "config.json").read_text())
    del record["config"]["label_noise"]
    (tmp_path / "config.json").write_text(json.dumps(record))
    assert workdirs.check_config(tmp_path, tiny_config()) == {}
    with pytest.raises(ConfigError, match=r"label_noise.kind None -> 'symmetric', label_noise"):
        workdirs.check_config(tmp_path, tiny_config(**{"label_noise.kind": "symmetric",
                                                       "label_noise.rate": 0.2}))  # fmt: skip


def test_a_torn_config_record_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"config": {"seed": 0,')
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON .*use a new workdir"):
        workdirs.check_config(tmp_path, tiny_config())


def _owners(workdir: epath.Path):
    """Enters `owned(workdir)` twice, nested: the error of the second, if any."""
    with workdirs.owned(workdir):
        record = json.loads((workdir / workdirs.OWNER_FILE).read_text())
        try:
            with workdirs.owned(workdir):
                pass
        except ConfigError as e:
            return record, str(e)
    return record, None


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_one_owner_at_a_time_then_released(where, tmp_path, request):
    if where == "bucket":
        workdir = epath.Path(request.getfixturevalue("gcs_bucket")) / "run"
    else:
        workdir = epath.Path(tmp_path) / "run"
    record, error = _owners(workdir)
    assert error.startswith(f"{workdir} is in use by another run (pid {record['pid']} on ")
    assert not (workdir / workdirs.OWNER_FILE).exists()  # Released by the first.
    with workdirs.owned(workdir):  # Free again.
        pass
    # A record whose process on this host is gone is taken over (the run was killed).
    stale = dict(record, pid=_dead_pid())
    (workdir / workdirs.OWNER_FILE).write_text(json.dumps(stale))
    with workdirs.owned(workdir):
        assert json.loads((workdir / workdirs.OWNER_FILE).read_text())["pid"] == record["pid"]


def test_another_hosts_owner_needs_force(tmp_path):
    workdir = epath.Path(tmp_path)
    other = {"host": "other-host", "pid": 1, "started": "2026-12-01T00:00:00+00:00"}
    (workdir / workdirs.OWNER_FILE).write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="pid 1 on other-host since 2026-12-01"):
        with workdirs.owned(workdir):
            pass
    with workdirs.owned(workdir, force=True):
        pass
    assert not (workdir / workdirs.OWNER_FILE).exists()


def test_a_run_recorded_before_the_input_backend_fields_resumes(tmp_path):
    config = tiny_config()
    workdirs.record_config(tmp_path, config, ["a", "b"], {})
    record = workdirs.read_record(tmp_path)
    for field in workdirs.ADDED:  # As a run recorded before the fields existed.
        del record["config"][field]
    (tmp_path / workdirs.CONFIG_FILE).write_text(json.dumps(record))
    assert workdirs.check_config(tmp_path, config) == {}
    with pytest.raises(ConfigError, match="input_backend 'tf_data' -> 'grain'"):
        workdirs.check_config(tmp_path, tiny_config(input_backend="grain"))
    assert workdirs.check_config(tmp_path, tiny_config(grain_workers=4)) == {
        "grain_workers": (0, 4)
    }
