"""`tf_computation`: a Python function over tensors, traced once into a TensorFlow graph.

Why a graph and not a `tf.function`: a computation must be *pure* (a Keras model, optimizer
or metric built inside starts fresh on every call, with no state shared between calls or
clients) and must run from bytes in a process that never imported the defining code.

How: the function is traced once into a `tf.Graph` under automatic control dependencies, so
stateful operations (variable initializers, optimizer steps, metric updates) run in program
order, as in eager code. Every variable handle is then made *anonymous*, so each execution of
the graph creates its own fresh variables; concurrent calls therefore never share state. The
`GraphDef` (TensorFlow's own format) plus the names of the input and output tensors is the
serialized form. Running imports the graph once into a concrete function that is called
directly; nothing is retraced per call.

The decorator users write is `fedsim.tf_computation` (`wrappers`).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import auto_control_deps

from fedsim.core import computation as computation_lib
from fedsim.core import op_allowlist
from fedsim.core import structure
from fedsim.core import types as ft

__all__ = ["TensorFlowComputation", "trace_tf_function", "type_to_tf_spec"]

_ANONYMOUS_SHARED_NAME = op_allowlist.ANONYMOUS_SHARED_NAME


def type_to_tf_spec(type_spec: ft.Type) -> Any:
    """The `tf.TypeSpec` structure (as used by `tf.data`) for a tensor, struct or sequence type."""
    if isinstance(type_spec, ft.TensorType):
        return type_spec.to_spec()
    if isinstance(type_spec, ft.SequenceType):
        return tf.data.DatasetSpec(type_to_tf_spec(type_spec.element))
    if isinstance(type_spec, ft.StructType):
        return structure.pack_struct(type_spec, [type_to_tf_spec(t) for t in type_spec])
    raise TypeError(f"a TensorFlow computation cannot take or return a value of type {type_spec}")


def _check_tf_type(type_spec: Optional[ft.Type], what: str, name: str) -> None:
    if type_spec is None:
        return
    for leaf in ft.flatten_type(type_spec):
        if not isinstance(leaf, (ft.TensorType, ft.SequenceType)):
            raise TypeError(
                f"{name}: the {what} of a tf_computation must be made of tensors, structures and "
                f"sequences, but contains {leaf}; federated values go to @fedsim.federated_computation"
            )


class TensorFlowComputation(computation_lib.Computation):
    """A traced TensorFlow graph with a fedsim type signature.

    `graph_def` is a serialized `tf.compat.v1.GraphDef`; `parameter_names` and `result_names`
    are the graph tensors of the flattened parameter and result leaves (a sequence leaf is a
    variant tensor holding a dataset).
    """

    def __init__(
        self,
        graph_def: bytes,
        parameter_names: list,
        result_names: list,
        type_signature: ft.FunctionType,
        name: str,
        unpack: bool = False,
    ):
        super().__init__(type_signature, name, unpack)
        _check_tf_type(type_signature.parameter, "parameter", name)
        _check_tf_type(type_signature.result, "result", name)
        self.graph_def = graph_def
        self.parameter_names = list(parameter_names)
        self.result_names = list(result_names)
        self._parameter_leaves = [] if type_signature.parameter is None else ft.flatten_type(type_signature.parameter)
        self._result_leaves = ft.flatten_type(type_signature.result)
        self._function = None
        self._function_lock = threading.Lock()

    def _concrete_function(self):
        """Imports the graph once into a callable concrete function."""
        if self._function is None:
            with self._function_lock:
                if self._function is None:
                    self._function = self._import()
        return self._function

    def _import(self):
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(self.graph_def)
        signature = [
            tf.TensorSpec([], tf.variant) if isinstance(leaf, ft.SequenceType) else leaf.to_spec()
            for leaf in self._parameter_leaves
        ]
        parameter_names = self.parameter_names
        result_names = self.result_names

        def import_graph(*tensors):
            return tf.graph_util.import_graph_def(
                graph_def,
                input_map=dict(zip(parameter_names, tensors)),
                return_elements=result_names,
                name="",
            )

        return tf.compat.v1.wrap_function(import_graph, signature)

    def call_flat(self, leaves: list) -> list:
        """Runs the graph on flattened parameter leaves; returns flattened result leaves.

        Tensor leaves come back as numpy values, sequence leaves as `tf.data.Dataset`s.
        """
        inputs = []
        for leaf_type, leaf in zip(self._parameter_leaves, leaves):
            if isinstance(leaf_type, ft.SequenceType):
                inputs.append(tf.data.experimental.to_variant(leaf))
            else:
                inputs.append(leaf)
        outputs = self._concrete_function()(*inputs)
        results = []
        for leaf_type, output in zip(self._result_leaves, outputs):
            if isinstance(leaf_type, ft.SequenceType):
                results.append(tf.data.experimental.from_variant(output, type_to_tf_spec(leaf_type.element)))
            else:
                results.append(output.numpy())
        return results

    def call_value(self, argument: Any) -> Any:
        """Runs the computation on a value already of the parameter type (no checks)."""
        parameter = self.type_signature.parameter
        leaves = [] if parameter is None else structure.flatten_value(argument, parameter)
        return structure.unflatten_value(self.type_signature.result, self.call_flat(leaves))

    def call_in_graph(self, argument: Any) -> Any:
        """Calls the computation from inside another TensorFlow function being traced."""
        parameter = self.type_signature.parameter
        leaves = [] if parameter is None else structure.flatten_value(argument, parameter)
        inputs = [
            tf.data.experimental.to_variant(leaf) if isinstance(t, ft.SequenceType) else leaf
            for t, leaf in zip(self._parameter_leaves, leaves)
        ]
        outputs = self._concrete_function()(*inputs)
        results = [
            tf.data.experimental.from_variant(o, type_to_tf_spec(t.element)) if isinstance(t, ft.SequenceType) else o
            for t, o in zip(self._result_leaves, outputs)
        ]
        return structure.unflatten_value(self.type_signature.result, results)


def _graph_result_type(value: Any, path: str = "") -> tuple:
    """The type of a traced function's result and its graph leaves (tensors or datasets)."""
    if isinstance(value, tf.data.Dataset):
        return ft.SequenceType(ft.to_type(value.element_spec)), [value]
    if isinstance(value, (tf.Variable, np.ndarray, np.generic, int, float, bool, str, bytes)) or (
        hasattr(value, "assign") and hasattr(value, "dtype") and not isinstance(value, tf.Tensor)
    ):
        value = tf.convert_to_tensor(value)
    if isinstance(value, tf.Tensor):
        return ft.TensorType(value.dtype, value.shape), [value]
    items = structure.named_items(value)
    if items is None:
        raise TypeError(
            f"a tf_computation returned a {type(value).__name__} at {path or 'the top level'}; it may "
            f"return tensors, numpy values, tf.data.Datasets and dicts/lists/tuples/attrs classes of them"
        )
    element_types, leaves = [], []
    for index, (key, element) in enumerate(items):
        part = f".{key}" if key is not None else f"[{index}]"
        element_type, element_leaves = _graph_result_type(element, path + part)
        element_types.append((key, element_type))
        leaves.extend(element_leaves)
    return ft.StructType(element_types, container=type(value)), leaves


def _anonymize_variables(graph_def: tf.compat.v1.GraphDef) -> None:
    for node in graph_def.node:
        if node.op == "VarHandleOp":
            node.attr["shared_name"].s = _ANONYMOUS_SHARED_NAME
    for function in graph_def.library.function:
        for node in function.node_def:
            if node.op == "VarHandleOp":
                node.attr["shared_name"].s = _ANONYMOUS_SHARED_NAME


_PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _refuse_python_ops(graph_def: tf.compat.v1.GraphDef, name: str) -> None:
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    found = sorted({n.op for n in nodes if n.op in _PYTHON_OPS})
    if found:
        raise TypeError(
            f"{name} calls Python from inside TensorFlow ({', '.join(found)}: tf.py_function or tf.numpy_function); "
            f"such a graph cannot be serialized or run in another process. Express the step in TensorFlow ops"
        )


def _autograph(fn: Callable) -> Callable:
    try:
        return tf.autograph.to_graph(fn, recursive=True)
    except Exception:  # noqa: BLE001 - autograph cannot convert some callables; run them as written
        return fn


def trace_tf_function(fn: Callable, parameter_type: Optional[ft.Type], unpack: bool, name: str) -> TensorFlowComputation:
    """Traces `fn` once into a graph and returns the computation."""
    _check_tf_type(parameter_type, "parameter", name)
    graph = tf.Graph()
    with graph.as_default():
        parameter_leaves = [] if parameter_type is None else ft.flatten_type(parameter_type)
        placeholders, leaf_values = [], []
        for index, leaf in enumerate(parameter_leaves):
            if isinstance(leaf, ft.SequenceType):
                placeholder = tf.compat.v1.placeholder(tf.variant, [], name=f"arg{index}")
                leaf_values.append(tf.data.experimental.from_variant(placeholder, type_to_tf_spec(leaf.element)))
            else:
                placeholder = tf.compat.v1.placeholder(leaf.dtype, leaf.tensor_shape, name=f"arg{index}")
                leaf_values.append(placeholder)
            placeholders.append(placeholder)
        with auto_control_deps.AutomaticControlDependencies() as control_deps:
            converted = _autograph(fn)
            if parameter_type is None:
                result = converted()
            else:
                argument = structure.unflatten_value(parameter_type, leaf_values)
                if unpack:
                    result = converted(*structure.struct_elements(argument, parameter_type))
                else:
                    result = converted(argument)
            result_type, result_leaves = _graph_result_type(result)
            outputs = []
            for leaf in result_leaves:
                if isinstance(leaf, tf.data.Dataset):
                    output = tf.data.experimental.to_variant(leaf)
                else:
                    output = tf.identity(leaf)
                outputs.append(control_deps.mark_as_return(output))
    graph_def = graph.as_graph_def()
    _refuse_python_ops(graph_def, name)
    _anonymize_variables(graph_def)
    return TensorFlowComputation(
        graph_def.SerializeToString(deterministic=True),
        [p.name for p in placeholders],
        [o.name for o in outputs],
        ft.FunctionType(parameter_type, result_type),
        name,
        unpack,
    )
