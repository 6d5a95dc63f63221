"""How fedsim sizes TensorFlow's within-op threads for clients run side by side.

Each case needs a process whose TensorFlow runtime has not started, so each runs in its own.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CORES = os.cpu_count() or 1


def _threads_after(code: str, tmp_path, **environment) -> dict:
    """Runs `code`, then one TensorFlow op; returns the runtime's intra-op setting and `code`'s `out`."""
    env = {k: v for k, v in os.environ.items() if k != "TF_NUM_INTRAOP_THREADS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="", **environment)
    script = textwrap.dedent(code) + textwrap.dedent("""
        import json, tensorflow as tf
        tf.constant(1.0) + 1.0  # the runtime starts here
        print(json.dumps({"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                          "out": globals().get("out")}))
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_default_context_gives_each_parallel_client_its_share_of_the_cores(tmp_path):
    result = _threads_after("import fedsim", tmp_path)
    assert result["intra"] == max(1, CORES // CORES)  # the default runs one client per core


def test_a_context_for_one_client_at_a_time_gives_it_every_core(tmp_path):
    result = _threads_after("""
        import fedsim
        fedsim.LocalExecutionContext(max_parallel_clients=1)
    """, tmp_path)
    assert result["intra"] == CORES


def test_the_users_environment_variable_is_left_alone(tmp_path):
    assert _threads_after("import fedsim", tmp_path, TF_NUM_INTRAOP_THREADS="0")["intra"] == 0


def test_the_users_tf_config_is_left_alone(tmp_path):
    result = _threads_after("""
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(3)
        import fedsim
        fedsim.LocalExecutionContext(max_parallel_clients=1)
    """, tmp_path)
    assert result["intra"] == 3


@pytest.mark.skipif(CORES < 2, reason="on one core every sizing is 1, the size already set")
def test_once_tensorflow_has_started_nothing_changes_and_nothing_fails(tmp_path):
    result = _threads_after("""
        import fedsim
        import tensorflow as tf
        from fedsim.core import op_threads
        tf.constant(0)
        before = tf.config.threading.get_intra_op_parallelism_threads()
        out = [before, op_threads.size_for_parallel_clients(1), op_threads.set_op_threads(before + 1)]
    """, tmp_path)
    before = result["out"][0]
    assert result["out"][1:] == [None, False] and result["intra"] == before


@pytest.mark.parametrize("threads", [1, 2])
def test_set_op_threads_sizes_a_fresh_runtime(tmp_path, threads):
    result = _threads_after(f"""
        from fedsim.core import op_threads
        import tensorflow as tf
        out = [op_threads.set_op_threads({threads}, inter_op=True), tf.config.threading.get_inter_op_parallelism_threads()]
    """, tmp_path)
    assert result == {"intra": threads, "out": [True, threads]}
