"""TensorFlow's private modules are used in one adapter only, and work on the installed TensorFlow."""

import pathlib
import re

import tensorflow as tf

import fedsim
from fedsim.core import sequences
from fedsim.core import tf_private

PACKAGE = pathlib.Path(fedsim.__file__).parent


def test_only_the_adapter_imports_tensorflows_private_modules():
    users = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if re.search(r"tensorflow\.python|from tensorflow import python", path.read_text())
    )
    assert users == ["core/tf_private.py"]


def test_the_adapter_was_checked_against_the_installed_tensorflow():
    installed = ".".join(tf.__version__.split(".")[:2])
    assert installed in tf_private.TESTED_TENSORFLOW, (
        f"TensorFlow {tf.__version__} is newer than the adapter's checks: run this module's tests, then add it")
    assert sequences.enable_loops()  # the loop registry is there: `for x in sequence` runs in the fast form
    with tf.Graph().as_default():
        with tf_private.control_dependencies() as deps:
            variable = tf.Variable(1.0)
            deps.mark_as_return(tf.identity(variable.assign_add(1.0)))


def test_importing_fedsim_patches_nothing_in_autograph():
    """No autograph patch at import: a fresh interpreter that imports fedsim leaves the registry alone."""
    import subprocess
    import sys

    code = ("import fedsim\nfrom fedsim.core import tf_private\n"
            "assert not tf_private._registered_loops and not tf_private._excluded_modules\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("clean"), out.stderr[-2000:]
