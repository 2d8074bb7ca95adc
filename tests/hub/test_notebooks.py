"""Every notebook runs top to bottom (nbclient, tiny settings) and is stored without outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01_quickstart", "02_pretrain_tiny", "03_finetune_qa", "04_kernels"]


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter, so a fresh clone needs no `ipykernel install`."""
    pytest.importorskip("ipykernel")
    pytest.importorskip("nbclient")
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "turing-models-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "turing-models (test)", "language": "python",
    }))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    yield "turing-models-test"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def test_notebooks_are_stripped_and_up_to_date():
    import nbformat

    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs are not stripped"
    check = subprocess.run([sys.executable, str(NOTEBOOKS / "build_notebooks.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


TINY = {
    "01_quickstart": {"TURING_NOTEBOOK_MODEL": "", "TURING_NOTEBOOK_NEW_TOKENS": "8"},
    "02_pretrain_tiny": {"TURING_NOTEBOOK_STEPS": "8", "TURING_NOTEBOOK_SEQ_LEN": "32",
                         "TURING_NOTEBOOK_CORPUS_CHARS": "20000"},
    "03_finetune_qa": {"TURING_NOTEBOOK_STEPS": "3", "TURING_NOTEBOOK_MAX_TRAIN": "24", "TURING_NOTEBOOK_MAX_EVAL": "8",
                       "TURING_NOTEBOOK_BATCH": "4", "TURING_NOTEBOOK_MAX_LENGTH": "128"},
    "04_kernels": {},
}


@pytest.mark.slow  # each starts a kernel that imports torch + transformers (~15-60 s on 2 cores)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    if name == "04_kernels":
        pytest.importorskip("triton")
    for key, value in {**TINY[name], "TURING_NOTEBOOK_OUT": str(tmp_path / "runs"),
                       "TURING_NOTEBOOK_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, value)
    if name == "01_quickstart":
        monkeypatch.setenv("TURING_NOTEBOOK_MODEL", str(tmp_path / "no-checkpoint"))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    expected = {
        "01_quickstart": "Turing-NLG 17B: 17.",
        "02_pretrain_tiny": "first logged loss",
        "03_finetune_qa": "predictions match a gold answer exactly",
        "04_kernels": "linear cross-entropy (ignore_index)",
    }[name]
    assert expected in text
    if name == "02_pretrain_tiny":
        images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, "the loss curve was not drawn"
