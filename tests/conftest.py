"""Shared test set-up: quiet TensorFlow logs and a helper to run code in a fresh interpreter."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def run_python(code: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a new Python process (not importing the tests) and checks it succeeded."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, f"subprocess failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.fixture
def python_subprocess():
    return run_python
