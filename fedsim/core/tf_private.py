"""The one place fedsim touches TensorFlow's private modules, each use with a right fallback.

TensorFlow has no public API for three things fedsim's tracer wants:

- automatic control dependencies for a graph traced outside `tf.function` (stateful operations
  in program order): `tensorflow.python.framework.auto_control_deps`. No fallback keeps the
  semantics, so this one is required; `tests/core/test_tf_private.py` pins it on the installed
  TensorFlow.
- autograph's loop registry, so that `for batch in sequence:` over fedsim's in-graph stand-in
  for a client's dataset becomes one `tf.while_loop` (`register_for_loop`). Without it the
  stand-in refuses Python iteration, the fast form is not traced, and the computation runs its
  dataset form: right, slower.
- autograph's conversion rules, so autograph never recurses into fedsim's own modules (which
  use no Python control flow on tensors; converting them only costs time). Without it
  autograph converts fedsim code too: right, slower to trace.

Nothing here runs at import: each patch is made once, on the first trace that needs it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from absl import logging

__all__ = ["control_dependencies", "register_for_loop", "keep_autograph_out_of", "TESTED_TENSORFLOW"]

# The TensorFlow releases whose private modules this adapter was checked against.
TESTED_TENSORFLOW = ("2.16", "2.17", "2.18", "2.19", "2.20", "2.21")

_lock = threading.Lock()
_registered_loops: set = set()
_excluded_modules: set = set()


def control_dependencies() -> Any:
    """A context manager adding automatic control dependencies to the graph being built.

    Returns `AutomaticControlDependencies()`; `mark_as_return(tensor)` on it orders the
    returned tensors after every stateful operation.
    """
    from tensorflow.python.framework import auto_control_deps

    return auto_control_deps.AutomaticControlDependencies()


def register_for_loop(cls: type, loop: Callable) -> bool:
    """Makes autograph run `for x in obj:` (obj a `cls`) as `loop(obj, extra_test, body, ...)`.

    `loop` receives autograph's loop arguments and a `range_loop(indices, extra_test, body,
    get_state, set_state, symbol_names, opts)` helper running `body(index)` over an int64 range
    tensor as `for i in tf.range(n)` would. Returns False (and changes nothing) when this
    TensorFlow has no such registry; the caller then uses its fallback.
    """
    with _lock:
        if cls in _registered_loops:
            return True
        try:
            from tensorflow.python.autograph.operators import control_flow

            range_loop = control_flow._tf_range_for_stmt
            registry = control_flow.for_loop_registry
        except (ImportError, AttributeError) as error:
            logging.vlog(1, "autograph has no loop registry here (%s); datasets run in their dataset form", error)
            return False

        def dispatch(iter_, extra_test, body, get_state, set_state, symbol_names, opts):
            return loop(iter_, extra_test, body, get_state, set_state, symbol_names, opts, range_loop)

        registry.register(cls, dispatch)
        _registered_loops.add(cls)
        return True


def keep_autograph_out_of(module_prefix: str) -> None:
    """Tells autograph never to convert functions of `module_prefix` (fedsim's own code)."""
    with _lock:
        if module_prefix in _excluded_modules:
            return
        try:
            from tensorflow.python.autograph.core import config as autograph_config

            rule = autograph_config.DoNotConvert(module_prefix)
            autograph_config.CONVERSION_RULES = (rule,) + tuple(autograph_config.CONVERSION_RULES)
        except (ImportError, AttributeError) as error:
            logging.vlog(1, "autograph's conversion rules are not reachable (%s); fedsim code is converted too", error)
        _excluded_modules.add(module_prefix)
