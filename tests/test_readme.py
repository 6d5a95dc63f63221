"""The README's Python blocks run as pasted, in order, in one Python session (the AWS block on the local stack)."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).parents[1] / "README.md"


def python_blocks() -> list:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 5


def test_readme_blocks_run_in_order(tmp_path):
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(python_blocks()))
    finished = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                              env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert "['a', 'b', 'c']" in finished.stdout  # the serverless rounds aggregated every silo
    assert "clipping_norm" in finished.stdout
