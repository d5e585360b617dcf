"""The notebooks run top to bottom without error (small-compute mode, `HNC_SMALL=1`)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hnc_losses.ipynb", "cam_explorer.ipynb"])
def test_notebook_runs(name, monkeypatch, tmp_path):
    # The kernel inherits this environment: tiny compute, and any files in a temp dir.
    monkeypatch.setenv("HNC_SMALL", "1")
    monkeypatch.setenv("HNC_NOTEBOOK_TMP", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    # 'python3' is the kernelspec ipykernel installs into this interpreter's prefix;
    # jupyter_client runs it with this interpreter.
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # Raises CellExecutionError on the first failing cell.
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    assert any(
        o.output_type == "display_data"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    ), "no plots"
