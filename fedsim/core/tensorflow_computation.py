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
from absl import logging

from fedsim.core import computation as computation_lib
from fedsim.core import keras_bridges
from fedsim.core import op_allowlist
from fedsim.core import sequences
from fedsim.core import structure
from fedsim.core import tf_private
from fedsim.core import types as ft

__all__ = ["TensorFlowComputation", "trace_tf_function", "type_to_tf_spec", "imported_fast_form"]

_ANONYMOUS_SHARED_NAME = op_allowlist.ANONYMOUS_SHARED_NAME


def type_to_tf_spec(type_spec: ft.Type) -> Any:
    """The `tf.TypeSpec` structure (as used by `tf.data`) for a tensor, struct or sequence type."""
    if isinstance(type_spec, ft.TensorType):
        return type_spec.to_spec()
    if isinstance(type_spec, ft.SequenceType):
        return tf.data.DatasetSpec(type_to_tf_spec(type_spec.element))
    if ft.is_sparse_type(type_spec):
        indices, values, _ = type_spec
        return tf.SparseTensorSpec([None] * (indices.shape[1] or 0) if indices.shape[1] is not None else None, values.dtype)
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


class _ImportedGraph:
    """A serialized graph with named inputs and outputs, imported once into a concrete function."""

    def __init__(self, graph_def: bytes, input_names: list, output_names: list, input_specs: list):
        self.graph_def = graph_def
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._input_specs = input_specs
        self._function = None
        self._lock = threading.Lock()

    def __call__(self, *inputs: Any) -> list:
        if self._function is None:
            with self._lock:
                if self._function is None:
                    self._function = self._import()
        return self._function(*inputs)

    def _import(self):
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(self.graph_def)
        input_names, output_names = self.input_names, self.output_names

        def import_graph(*tensors):
            return tf.graph_util.import_graph_def(
                graph_def, input_map=dict(zip(input_names, tensors)), return_elements=output_names, name=""
            )

        return tf.compat.v1.wrap_function(import_graph, self._input_specs)


_NOT_TRACED = object()


def _iterated_once(dataset: Any, sequence_type: ft.SequenceType) -> Any:
    """The dataset a dataset form iterates: the elements read ahead of the call, if the runtime
    read them (`sequences.prepare`), so a dataset is iterated once per call whichever form runs
    (a reshuffling dataset's next order, not the one after); else `dataset` itself."""
    if not isinstance(dataset, tf.data.Dataset):
        return dataset
    try:
        prepared = sequences.take_prepared(dataset, sequence_type.element)
    except Exception:  # noqa: BLE001 - e.g. an infinite dataset this form iterates only in part
        return dataset
    return dataset if prepared is ... or prepared is None else sequences.dataset_of(prepared, sequence_type.element)


class TensorFlowComputation(computation_lib.Computation):
    """A traced TensorFlow graph with a fedsim type signature.

    `graph_def` is a serialized `tf.compat.v1.GraphDef`; `parameter_names` and `result_names`
    are the graph tensors of the flattened parameter and result leaves (a sequence leaf is a
    variant tensor holding a dataset). A computation whose parameter holds sequences may also
    have a *fast form* (see `sequences`): traced on first use from the Python function (or
    read with the serialized bytes), it takes each dataset as the tensors of one iteration.
    Users make these with `tf_computation`; `deserialize_computation` rebuilds them.

    Args:
        graph_def: the serialized graph.
        parameter_names: the graph's input tensor names, one per parameter leaf.
        result_names: the graph's output tensor names, one per result leaf.
        type_signature: the computation's `FunctionType`.
        name: a name for messages.
        unpack: whether the Python function took the parameter's elements as separate arguments.
        source: returns the fast form's imported graph (or None), when there is one.

    Raises:
        TypeError: if the type signature holds federated or function types.
    """

    def __init__(
        self,
        graph_def: bytes,
        parameter_names: list,
        result_names: list,
        type_signature: ft.FunctionType,
        name: str,
        unpack: bool = False,
        source: Optional[Callable[[], Optional["_ImportedGraph"]]] = None,
    ):
        super().__init__(type_signature, name, unpack)
        _check_tf_type(type_signature.parameter, "parameter", name)
        _check_tf_type(type_signature.result, "result", name)
        self.graph_def = graph_def
        self.parameter_names = list(parameter_names)
        self.result_names = list(result_names)
        self._parameter_leaves = [] if type_signature.parameter is None else ft.flatten_type(type_signature.parameter)
        self._result_leaves = ft.flatten_type(type_signature.result)
        specs = [tf.TensorSpec([], tf.variant) if isinstance(leaf, ft.SequenceType) else leaf.to_spec()
                 for leaf in self._parameter_leaves]
        self._graph = _ImportedGraph(graph_def, parameter_names, result_names, specs)
        self._sequence_leaves = [i for i, leaf in enumerate(self._parameter_leaves) if isinstance(leaf, ft.SequenceType)]
        self._trace_fast = source if self._sequence_leaves else None
        self._fast = _NOT_TRACED
        self._fast_lock = threading.Lock()

    def fast_graph(self) -> Optional["_ImportedGraph"]:
        """The fast form (sequences as tensors), traced once on first use; None when there is none."""
        if self._trace_fast is None:
            return None
        if self._fast is _NOT_TRACED:
            with self._fast_lock:
                if self._fast is _NOT_TRACED:
                    self._fast = self._trace_fast()
        return self._fast

    @property
    def sequence_types(self) -> list:
        """The parameter's sequence leaves' types, in leaf order."""
        return [self._parameter_leaves[i] for i in self._sequence_leaves]

    def _fast_inputs(self, leaves: list) -> Optional[list]:
        """The fast form's inputs: each dataset iterated once (or as prepared ahead); None
        when one is not a dataset or is over the memory budget (the dataset form streams it)."""
        inputs, read = [], []
        for leaf_type, leaf in zip(self._parameter_leaves, leaves):
            if isinstance(leaf_type, ft.SequenceType):
                tensors = None
                if isinstance(leaf, tf.data.Dataset):
                    tensors = sequences.take_prepared(leaf, leaf_type.element)
                    if tensors is ...:
                        tensors = sequences.materialize(leaf, leaf_type.element, what=f"the dataset given to {self.name}")
                if tensors is None:  # the dataset form runs: it is handed what was read, not a new iteration
                    for dataset, element_type, taken in read:
                        sequences.provide(dataset, element_type, taken)
                    return None
                read.append((leaf, leaf_type.element, tensors))
                inputs.extend(tensors)
            else:
                inputs.append(leaf)
        return inputs

    def call_flat(self, leaves: list, as_numpy: bool = True) -> list:
        """Runs the graph on flattened parameter leaves; returns flattened result leaves.

        Args:
            leaves: the parameter's leaves in type order (tensors, arrays or datasets).
            as_numpy: return tensor leaves as numpy values; `False` returns the eager tensors the
                graph produced, for a runtime that feeds them to the next graph without copies.

        Returns:
            The result's leaves in type order; sequence leaves as `tf.data.Dataset`s.
        """
        outputs = None
        graph = self.fast_graph() if self._trace_fast is not None else None
        if graph is not None:
            inputs = self._fast_inputs(leaves)
            if inputs is not None:
                outputs = graph(*inputs)
        if outputs is None:
            inputs = [tf.data.experimental.to_variant(_iterated_once(leaf, t)) if isinstance(t, ft.SequenceType) else leaf
                      for t, leaf in zip(self._parameter_leaves, leaves)]
            outputs = self._graph(*inputs)
        results = []
        for leaf_type, output in zip(self._result_leaves, outputs):
            if isinstance(leaf_type, ft.SequenceType):
                results.append(tf.data.experimental.from_variant(output, type_to_tf_spec(leaf_type.element)))
            else:
                results.append(output.numpy() if as_numpy else output)
        return results

    def call_value(self, argument: Any, as_numpy: bool = True) -> Any:
        """Runs the computation on a value already of the parameter type (no checks).

        Args:
            argument: the parameter value (already checked and normalized), or None.
            as_numpy: as in `call_flat`.

        Returns:
            The result, packed in the result type's containers.
        """
        parameter = self.type_signature.parameter
        leaves = [] if parameter is None else structure.flatten_value(argument, parameter)
        return structure.unflatten_value(self.type_signature.result, self.call_flat(leaves, as_numpy))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs in the current context; called while another TensorFlow function is being traced
        (a tf_computation calling a tf_computation, as TFF allows), it becomes part of that graph."""
        if not tf.executing_eagerly():
            return self.call_in_graph(computation_lib.pack_call_arguments(self, args, kwargs))
        return super().__call__(*args, **kwargs)

    def call_in_graph(self, argument: Any) -> Any:
        """Calls the computation from inside another TensorFlow function being traced.

        An `Elements` argument (the caller is being traced in fast form) calls this
        computation's fast form; a dataset argument, its dataset form.

        Args:
            argument: the parameter value as symbolic tensors (or `Elements`/datasets for sequences).

        Returns:
            The result as symbolic tensors, packed in the result type's containers.

        Raises:
            sequences.UnsupportedSequenceUse: if called with `Elements` and it has no fast form.
        """
        parameter = self.type_signature.parameter
        leaves = [] if parameter is None else structure.flatten_value(argument, parameter)
        if any(isinstance(leaf, sequences.Elements) for leaf in leaves):
            graph = self.fast_graph()
            if graph is None:
                raise sequences.UnsupportedSequenceUse(f"{self.name} has no fast form")
            inputs = []
            for leaf in leaves:
                if isinstance(leaf, sequences.Elements):
                    inputs.extend(leaf.tensors)
                else:
                    inputs.append(leaf)
            outputs = graph(*inputs)
        else:
            inputs = [
                tf.data.experimental.to_variant(leaf) if isinstance(t, ft.SequenceType) else leaf
                for t, leaf in zip(self._parameter_leaves, leaves)
            ]
            outputs = self._graph(*inputs)
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
    """Every resource the graph creates becomes its own: variables anonymous, other resources
    (hash tables, ...) without a shared name, so no two computations share one."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    for node in nodes:
        if node.op == "VarHandleOp":
            node.attr["shared_name"].s = _ANONYMOUS_SHARED_NAME
        elif "shared_name" in node.attr:
            node.attr["shared_name"].s = b""
            if "use_node_name_sharing" in node.attr:
                node.attr["use_node_name_sharing"].b = False


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
    # fedsim's own modules use no Python control flow on tensors: autograph converts the
    # function being traced (a user's, or fedsim's `for batch in dataset` loops) but never
    # recurses into fedsim, which would only cost time (a FedAvg client's first trace: 1.8 s -> 0.7 s).
    tf_private.keep_autograph_out_of("fedsim")
    try:
        return tf.autograph.to_graph(fn, recursive=True)
    except Exception:  # noqa: BLE001 - autograph cannot convert some callables; run them as written
        return fn


def _trace_graph(fn: Callable, parameter_type: Optional[ft.Type], unpack: bool, name: str, fast: bool,
                 autograph: bool = True) -> tuple:
    """Traces `fn` into a graph: `(graph_def, input names, output names, input specs, result type)`.

    A sequence leaf is one variant placeholder (a dataset); with `fast`, it is instead two
    placeholders per element leaf, its values and shapes (`sequences.Elements`).
    """
    graph = tf.Graph()
    with graph.as_default():
        parameter_leaves = [] if parameter_type is None else ft.flatten_type(parameter_type)
        placeholders, leaf_values = [], []
        for index, leaf in enumerate(parameter_leaves):
            if isinstance(leaf, ft.SequenceType) and fast:
                specs = sequences.fast_input_specs(leaf)
                tensors = [tf.compat.v1.placeholder(s.dtype, s.shape, name=f"arg{index}_{k}") for k, s in enumerate(specs)]
                placeholders.extend(tensors)
                leaf_values.append(sequences.Elements(leaf.element, tensors))
            elif isinstance(leaf, ft.SequenceType):
                placeholder = tf.compat.v1.placeholder(tf.variant, [], name=f"arg{index}")
                leaf_values.append(tf.data.experimental.from_variant(placeholder, type_to_tf_spec(leaf.element)))
                placeholders.append(placeholder)
            else:
                placeholder = tf.compat.v1.placeholder(leaf.dtype, leaf.tensor_shape, name=f"arg{index}")
                leaf_values.append(placeholder)
                placeholders.append(placeholder)
        with tf_private.control_dependencies() as control_deps:
            converted = _autograph(fn) if autograph else fn
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
    specs = [tf.TensorSpec(p.shape, p.dtype) for p in placeholders]
    return graph_def.SerializeToString(deterministic=True), [p.name for p in placeholders], [o.name for o in outputs], specs, result_type


def _fast_tracer(fn: Callable, parameter_type: ft.Type, unpack: bool, name: str, result_type: ft.Type) -> Optional[Callable]:
    """A thunk tracing the fast form on first use; None when a sequence's elements cannot be held as tensors."""
    sequence_leaves = [leaf for leaf in ft.flatten_type(parameter_type) if isinstance(leaf, ft.SequenceType)]
    if not sequence_leaves or not all(sequences.has_fast_form(leaf) for leaf in sequence_leaves):
        return None

    def trace() -> Optional[_ImportedGraph]:
        if not sequences.enable_loops():
            return None
        try:
            graph_def, inputs, outputs, specs, fast_type = _trace_graph(fn, parameter_type, unpack, name, fast=True)
        except Exception as error:  # noqa: BLE001 - any use the stand-in does not imitate: keep the dataset form
            logging.vlog(1, "%s has no fast form (%s: %s); its dataset form is used", name, type(error).__name__, error)
            return None
        if ft.find_type_difference(result_type, fast_type):
            logging.vlog(1, "%s: the fast form returns %s, not %s; its dataset form is used", name, fast_type, result_type)
            return None
        return _ImportedGraph(graph_def, inputs, outputs, specs)

    return trace


def imported_fast_form(graph_def: bytes, parameter_names: list, result_names: list, parameter_type: ft.Type) -> Callable:
    """A `source` for a computation read from bytes whose fast form was serialized with it."""
    graph = _ImportedGraph(graph_def, parameter_names, result_names, sequences.fast_input_specs(parameter_type))
    return lambda: graph


def trace_tf_function(fn: Callable, parameter_type: Optional[ft.Type], unpack: bool, name: str,
                      autograph: bool = True) -> TensorFlowComputation:
    """Traces `fn` once into a graph and returns the computation.

    `autograph=False` is for fedsim's own graph builders (aggregations, phases, constants),
    which use no Python control flow on tensors: converting them would only cost time.
    """
    _check_tf_type(parameter_type, "parameter", name)
    keras_bridges.install()
    graph_def, inputs, outputs, _, result_type = _trace_graph(fn, parameter_type, unpack, name, fast=False, autograph=autograph)
    return TensorFlowComputation(
        graph_def,
        inputs,
        outputs,
        ft.FunctionType(parameter_type, result_type),
        name,
        unpack,
        source=None if parameter_type is None else _fast_tracer(fn, parameter_type, unpack, name, result_type),
    )
