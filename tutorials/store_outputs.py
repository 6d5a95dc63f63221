"""Executes every tutorial and stores it with its outputs (what a reader sees on GitHub).

    .venv/bin/python tutorials/store_outputs.py        # or: make notebooks

Each notebook runs in a scratch directory (files it writes stay out of the repository). Streams
written to stderr (TensorFlow's start-up lines, logs) are not stored, so the files stay small;
the tests execute the notebooks again from scratch.
"""

import os
import pathlib
import sys
import tempfile

import nbclient
import nbformat

TUTORIALS = pathlib.Path(__file__).parent


def store(path: pathlib.Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": scratch}})
        client.execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    nbformat.write(notebook, path)
    print(f"{path.name}: {os.path.getsize(path) // 1024} KiB")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for notebook_path in sorted(TUTORIALS.glob("*.ipynb")) if len(sys.argv) < 2 else map(pathlib.Path, sys.argv[1:]):
        store(notebook_path)
