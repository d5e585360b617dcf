"""Every shipped config validates at the device count its docstring names (and at the batch
overrides it suggests), then stops at the missing data with its one-line error: simulated
devices (JAX_NUM_CPU_DEVICES), one subprocess per device count."""

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if p.stem != "__init__")
OVERRIDE = re.compile(r"--config\.batch_size=(\d+)` on [^(]*\((\d+) devices\)")


def intended(name: str) -> list[tuple[int, dict]]:
    """[(device count, overrides)] a config's docstring names: its own `Devices: N` and each
    suggested `--config.batch_size=B` ... (N devices)."""
    doc = importlib.import_module(f"configs.{name}").__doc__
    found = re.search(r"Devices: (\d+)", doc)
    assert found, f"configs/{name}.py: its docstring names no device count ('Devices: N')"
    cases = [(int(found[1]), {})]
    text = " ".join(doc.split())
    cases += [(int(n), {"batch_size": int(b)}) for b, n in OVERRIDE.findall(text)]
    return cases


CHECK = textwrap.dedent(
    """
    import importlib, json, sys
    import jax
    from hnc_jax.data import pipeline
    from hnc_jax.errors import ConfigError
    from hnc_jax.training import job

    cases, data_dir = json.loads(sys.argv[1]), sys.argv[2]
    for name, overrides in cases:
        config = importlib.import_module(f"configs.{name}").get_config()
        config.update(overrides)
        config.data_dir = data_dir
        if config.dataset == "image_folder":
            config.image_folder = data_dir + "/no_folder"
        try:
            job.check(config)  # Everything that needs no data.
        except ConfigError as error:
            print(json.dumps([name, "invalid", str(error)]))
            continue
        # Nothing to download (CUB: download_data=False): they stop at their missing data.
        if config.dataset in ("imagenet2012", "image_folder") or not config.download_data:
            try:
                pipeline.load(config)
                print(json.dumps([name, "loaded", ""]))
            except ConfigError as error:
                print(json.dumps([name, "missing", str(error)]))
        else:
            print(json.dumps([name, "valid", ""]))
    print(json.dumps(["devices", jax.device_count()]))
    """
)


def test_every_config_names_its_device_count():
    assert {"default", "imagenet_tpu_pod"} <= set(CONFIGS)
    assert intended("imagenet_tpu_pod") == [
        (32, {}), (64, {"batch_size": 2048}), (256, {"batch_size": 8192})
    ]  # fmt: skip


@pytest.mark.slow
def test_every_config_validates_at_its_device_count(tmp_path):
    groups: dict[int, list] = {}
    for name in CONFIGS:
        for devices, overrides in intended(name):
            groups.setdefault(devices, []).append((name, overrides))
    for devices, cases in sorted(groups.items()):
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=str(ROOT))
        result = subprocess.run(
            [sys.executable, "-c", CHECK, json.dumps(cases), str(tmp_path / "tfds")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("[")]
        assert rows[-1] == ["devices", devices]
        for (name, overrides), (got, status, message) in zip(cases, rows[:-1], strict=True):
            assert got == name
            if status == "invalid":  # Only the image folder, which is the missing data.
                assert "needs config.image_folder" in message, (name, devices, message)
            else:
                assert status in ("valid", "missing"), (name, devices, overrides, message)
            if status != "valid":  # One line naming what is missing.
                assert "\n" not in message and ("not prepared" in message or "folder" in message)
