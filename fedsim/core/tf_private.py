"""The one place fedsim touches TensorFlow's private modules, each use with a right fallback.

TensorFlow has no public API for four things fedsim wants:

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
- a dataset's last transformation and its arguments (`dataset_step`), so that a client's
  pipeline of slices, batches, maps and the like is read without building a tf.data iterator
  (`fedsim.core.pipelines`). A dataset this does not recognize, on this TensorFlow or any other,
  is described as None, and its caller iterates it: right, slower. `call_flat` calls such a
  step's traced function on flat tensors without re-binding its Python signature (half the
  cost of a call); without it the function is called as usual. `op_is_stateful` reads an op's
  registered definition; where it cannot, it answers None and the op's function is not shared.

Nothing here runs at import: each patch is made once, on the first trace that needs it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import attrs
from absl import logging

__all__ = [
    "control_dependencies", "register_for_loop", "keep_autograph_out_of", "DatasetStep", "dataset_step",
    "call_flat", "op_is_stateful", "TESTED_TENSORFLOW",
]

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


@attrs.frozen
class DatasetStep:
    """A dataset's last transformation, as `Dataset` methods name it.

    Attributes:
        kind: "slices" (`from_tensor_slices`), "batch", "map", "filter", "take", "skip",
            "repeat", "cache" (in memory), or "same" (`prefetch`, `with_options`: the elements
            of `source` unchanged).
        source: the dataset it transforms (None for "slices").
        tensors: "slices": the sliced tensors, flat in tf.data's order.
        count: "batch": the batch size; "take", "skip", "repeat": the count (-1: all / forever).
        drop_remainder: "batch": whether a last, smaller batch is dropped.
        function: "map", "filter": the traced function (a `ConcreteFunction` taking and returning
            the elements' tensors flat, in tf.data's order).
    """

    kind: str
    source: Any = None
    tensors: tuple = ()
    count: int = 0
    drop_remainder: bool = False
    function: Any = None


_STEP_KINDS = {
    "_TensorSliceDataset": "slices", "_BatchDataset": "batch", "_ParallelBatchDataset": "batch",
    "_MapDataset": "map", "_ParallelMapDataset": "map", "_FilterDataset": "filter", "_TakeDataset": "take",
    "_SkipDataset": "skip", "_RepeatDataset": "repeat", "CacheDataset": "cache", "_PrefetchDataset": "same",
    "_OptionsDataset": "same",
}


def dataset_step(dataset: Any) -> Optional[DatasetStep]:
    """`dataset`'s last transformation, or None when it is another kind or TensorFlow stores it
    in a way this adapter was not checked against (the caller then iterates `dataset`)."""
    kind = _STEP_KINDS.get(type(dataset).__name__)
    if kind is None or not type(dataset).__module__.startswith("tensorflow."):
        return None
    try:
        if kind == "slices":
            return DatasetStep(kind, tensors=tuple(dataset._tensors))
        source = dataset._input_dataset
        if kind == "batch":
            return DatasetStep(kind, source, count=int(dataset._batch_size), drop_remainder=bool(dataset._drop_remainder))
        if kind == "map":
            return DatasetStep(kind, source, function=dataset._map_func.function)
        if kind == "filter":
            return DatasetStep(kind, source, function=dataset._predicate.function)
        if kind in ("take", "skip", "repeat"):
            return DatasetStep(kind, source, count=int(dataset._count))
        if kind == "cache":
            return DatasetStep(kind, source) if bytes(dataset._filename.numpy()) == b"" else None
        return DatasetStep(kind, source)
    except (AttributeError, TypeError, ValueError) as error:
        logging.vlog(1, "a %s is stored differently on this TensorFlow (%s); it is iterated", type(dataset).__name__, error)
        return None


def call_flat(function: Any, tensors: list) -> list:
    """`function(*tensors)` for a `ConcreteFunction` of flat tensor arguments and no captures,
    skipping the Python signature binding (~0.1 ms a call); the outputs, flat."""
    try:
        call = function._call_flat
    except AttributeError:
        return function(*tensors)
    return call(tensors, [])


_stateful_ops: dict = {}


def op_is_stateful(op_type: str) -> Optional[bool]:
    """Whether the registered op `op_type` is stateful (its OpDef's `is_stateful`), or None when
    this TensorFlow does not say (an unknown op, or no registry to ask)."""
    answer = _stateful_ops.get(op_type, ...)
    if answer is ...:
        try:
            from tensorflow.python.framework import op_def_registry

            definition = op_def_registry.get(op_type)
            answer = None if definition is None else bool(definition.is_stateful)
        except (ImportError, AttributeError) as error:
            logging.vlog(1, "no op registry here (%s); functions are not shared", error)
            answer = None
        _stateful_ops[op_type] = answer
    return answer
