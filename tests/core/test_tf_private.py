"""TensorFlow's private modules are used in one adapter only, and work on the installed TensorFlow."""

import collections
import pathlib
import re

import numpy as np
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


def test_only_the_adapter_reads_tf_datas_private_attributes():
    private = re.compile(r"\._(input_dataset|map_func|predicate|batch_size|drop_remainder|filename|call_flat|variant_tensor)\b")
    users = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if private.search(path.read_text()))
    assert users == ["core/tf_private.py"]


def test_every_dataset_step_the_adapter_names_is_recognized_on_the_installed_tensorflow():
    """If TensorFlow renames a class or an attribute, the adapter answers None (datasets are
    iterated: right, slower) and this test says which step to look at."""
    base = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=np.arange(10.0, dtype=np.float32)))
    double = lambda e: collections.OrderedDict(x=e["x"] * 2.0)  # noqa: E731
    steps = {
        "slices": base,
        "batch": base.batch(3, drop_remainder=True),
        "parallel batch": base.batch(3, num_parallel_calls=2),
        "map": base.map(double),
        "parallel map": base.map(double, num_parallel_calls=2),
        "filter": base.filter(lambda e: e["x"] > 2),
        "take": base.take(4),
        "skip": base.skip(4),
        "repeat": base.repeat(2),
        "cache": base.cache(),
        "prefetch": base.prefetch(2),
        "options": base.with_options(tf.data.Options()),
    }
    described = {name: tf_private.dataset_step(dataset) for name, dataset in steps.items()}
    assert {name: step.kind if step else None for name, step in described.items()} == {
        "slices": "slices", "batch": "batch", "parallel batch": "batch", "map": "map", "parallel map": "map",
        "filter": "filter", "take": "take", "skip": "skip", "repeat": "repeat", "cache": "cache",
        "prefetch": "same", "options": "same",
    }
    assert [step.count for step in (described["batch"], described["take"], described["skip"], described["repeat"])] == [3, 4, 4, 2]
    assert described["batch"].drop_remainder and not described["parallel batch"].drop_remainder
    assert all(described[name].source is base for name in steps if name != "slices")
    np.testing.assert_array_equal(described["slices"].tensors[0], np.arange(10.0))
    result = tf_private.call_flat(described["map"].function, [tf.constant([1.0, 2.0])])
    np.testing.assert_array_equal(tf.nest.flatten(result)[0], [2.0, 4.0])
    assert tf_private.dataset_step(base.cache("/tmp/a-file-cache")) is None  # a file cache is iterated
    assert tf_private.dataset_step(base.shuffle(3)) is None


def test_the_adapter_reads_which_ops_are_stateful_on_the_installed_tensorflow():
    """A map is shared (called outside tf.data) only when every op in it is known stateless."""
    assert tf_private.op_is_stateful("Reshape") is False
    assert tf_private.op_is_stateful("RandomUniform") is True
    assert tf_private.op_is_stateful("NoSuchOpAnywhere") is None


def test_when_the_op_registry_cannot_answer_no_map_is_shared(monkeypatch):
    from fedsim.core import pipelines

    dataset = tf.data.Dataset.from_tensor_slices(np.arange(6.0, dtype=np.float32)).batch(4).map(lambda b: b * 2.0)
    function = tf_private.dataset_step(dataset).function
    assert pipelines._shared_function(function) is not None
    monkeypatch.setattr(tf_private, "op_is_stateful", lambda op_type: None)
    assert pipelines._shared_function(function) is None


def test_importing_fedsim_patches_nothing_in_autograph():
    """No autograph patch at import: a fresh interpreter that imports fedsim leaves the registry alone."""
    import subprocess
    import sys

    code = ("import fedsim\nfrom fedsim.core import tf_private\n"
            "assert not tf_private._registered_loops and not tf_private._excluded_modules\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("clean"), out.stderr[-2000:]
