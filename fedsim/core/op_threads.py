"""Sizes TensorFlow's within-op thread pool to the clients a simulation runs side by side.

Why: a simulation runs clients in parallel, one per core (`LocalExecutionContext`'s
`max_parallel_clients`). TensorFlow's default also splits every op over all cores, so two
clients' small matmuls contend for the same threads. Measured on 2 cores (FedAvg, the
benchmark's MLP, two clients at a time): one thread per op made a round 26% shorter for the
plain-TF loop and for fedsim alike (`benchmarks/fedavg.py`). With `cores // parallel_clients`
threads per op the cores go to clients, as Ray gives each worker its own share.

TensorFlow sizes its pools once, when its runtime starts, for the whole process. So this is
done only when the runtime has not started yet, and never over the user's own choice: an
environment variable `TF_NUM_INTRAOP_THREADS` (any value; 0 is TensorFlow's default) or
`tf.config.threading.set_intra_op_parallelism_threads` called before keeps TensorFlow's
sizing untouched.
"""

import os
import threading
from typing import Optional

import tensorflow as tf

__all__ = ["set_op_threads", "size_for_parallel_clients"]

_ENVIRONMENT_VARIABLE = "TF_NUM_INTRAOP_THREADS"
_lock = threading.Lock()
_chosen_by_fedsim: Optional[int] = None  # the size fedsim set, which it may change again


def set_op_threads(threads: int, inter_op: bool = False) -> bool:
    """Sets TensorFlow's within-op (and, if `inter_op`, between-op) threads, if it can.

    Args:
      threads: threads per op (at least 1).
      inter_op: also size the pool that runs independent ops at once.

    Returns:
      True if set; False if TensorFlow's runtime had started, so its pools keep their size.

    Example:
      >>> set_op_threads(1)  # in a fresh worker process, before any TensorFlow op
      True
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # "cannot be modified after initialization"
        return False
    return True


def size_for_parallel_clients(parallel_clients: int) -> Optional[int]:
    """Gives each of `parallel_clients` clients its share of the cores for its ops.

    Does nothing if the user chose TensorFlow's thread count (environment or `tf.config`) or
    if TensorFlow's runtime has started.

    Args:
      parallel_clients: clients that run at once.

    Returns:
      The threads per op now set, or None if TensorFlow's sizing was left as it was.

    Example:
      >>> size_for_parallel_clients(2)  # on 2 cores, before TensorFlow starts
      1
    """
    global _chosen_by_fedsim
    with _lock:
        configured = tf.config.threading.get_intra_op_parallelism_threads()
        if _ENVIRONMENT_VARIABLE in os.environ or configured not in (0, _chosen_by_fedsim):
            return None
        threads = max(1, (os.cpu_count() or 1) // max(1, parallel_clients))
        if threads != configured and not set_op_threads(threads):
            return None
        _chosen_by_fedsim = threads
        return threads
