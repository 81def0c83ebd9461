"""notebooks/explore_results.ipynb runs without error, and is committed with its outputs stripped."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from harness.store import REFERENCE_MACHINE, RESULTS_DIR, THIS_MACHINE

from synthetic_studies import rank_records, write_study  # pytest puts this folder on sys.path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPLORE = NOTEBOOKS / "explore_results.ipynb"
KERNEL = "harness-test-venv"


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter (the venv's), whatever `python3` means elsewhere, on this
    checkout's code rather than whatever copy of the harness the venv has installed."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "harness venv", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable
    return KERNEL


def execute(path: Path, kernel: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel, timeout=180,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return notebook


def printed(notebook) -> str:
    return "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.get("output_type") == "stream")


def test_explore_notebook_runs_on_the_repository_results(venv_kernel, monkeypatch):
    monkeypatch.delenv("EXPLORE_RESULTS_DIR", raising=False)
    monkeypatch.setenv("EXPLORE_STUDY", "rank_ablation")
    output = printed(execute(EXPLORE, venv_kernel))
    assert "paper:" in output  # the paper's figures are drawn, with or without ours
    # this machine's results when it has run the study, else the reference machine's that ship
    here = (RESULTS_DIR / "rank_ablation" / "trials.csv").exists()
    assert f"rank_ablation: results shown: {THIS_MACHINE if here else REFERENCE_MACHINE}" in output
    assert "rank_ablation: " in output and "figures in" in output


def test_explore_notebook_runs_on_a_study_with_results(venv_kernel, tmp_path, monkeypatch):
    write_study(tmp_path / "results", rank_records("rank_ablation", seeds=(0, 1)))
    monkeypatch.setenv("EXPLORE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("EXPLORE_STUDY", "rank_ablation")
    output = printed(execute(EXPLORE, venv_kernel))
    assert f"rank_ablation: results shown: {THIS_MACHINE}" in output
    assert "rank_ablation: " in output and "figures in" in output


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs; strip them before committing"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
