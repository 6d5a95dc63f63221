"""The serverless handler needs no Keras: it imports and aggregates in a process where Keras cannot load."""

import subprocess
import sys

BLOCK_KERAS = """
import sys
sys.modules["keras"] = None  # as if not installed: importing it raises ImportError
sys.modules["tf_keras"] = None
"""

PROGRAM = BLOCK_KERAS + """
import time
started = time.perf_counter()
import fedsim.aws.handler
imported = time.perf_counter() - started
import numpy as np
import tensorflow as tf
import fedsim
from fedsim.core import phase_runner

@fedsim.tf_computation(fedsim.TensorType(tf.float32, [3]))
def double(x):
    return x * 2.0

@fedsim.federated_computation(fedsim.FederatedType(fedsim.TensorType(tf.float32, [3]), fedsim.CLIENTS))
def mean_of_doubles(values):
    return fedsim.federated_mean(fedsim.federated_map(double, values))

restored = fedsim.deserialize_computation(fedsim.serialize_computation(mean_of_doubles))
result = restored([np.ones(3, np.float32), 3 * np.ones(3, np.float32)])
assert np.allclose(result, 4.0), result
loaded = sorted(m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in ("keras", "tf_keras")
                or m.startswith(("fedsim.learning", "fedsim.simulation.datasets", "fedsim.simulation.models")))
print("LOADED", loaded)
print("IMPORT_SECONDS", round(imported, 2))
"""


def test_the_handler_imports_and_aggregates_without_keras():
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout
