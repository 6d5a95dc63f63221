"""Client datasets fed to graphs as tensors: each dataset iterated once, outside the graph.

Why: a `tf.data.Dataset` iterated inside a graph costs a fixed 13-60 ms per call on a 2-core
machine (an iterator per call, tf.data's graph rewrites, every `map` function instantiated and
optimized anew), more than a small model's whole epoch. The same elements iterated once eagerly
with tf.data's rewrites off cost a few ms, and can be produced on another thread while the
previous client trains.

How: a `tf_computation` whose parameter holds sequences has, besides its dataset form, a *fast
form* (traced on first use from the same Python function, and serialized with it). There each
sequence is an `Elements` stand-in made of two tensors per element leaf: `values`, the elements
stacked (padded to the largest element, when shapes differ), and `shapes`, each element's
shape, so element `i` is `values[i]` sliced to `shapes[i]`. `for element in sequence:`
(autograph) and `sequence.reduce(...)` run the same body over the same elements in the same
order as the dataset would. `materialize` turns any dataset into those tensors by iterating it
once, whatever its pipeline (shuffle, map, filter, padded_batch, interleave, ...), so the
elements are exactly what one iteration of the dataset gives. A dataset larger than the memory
budget, or an infinite one the computation would iterate forever, is not materialized (the
dataset form streams it, or a clear error says why).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from fedsim.core import pipelines
from fedsim.core import structure
from fedsim.core import tf_private
from fedsim.core import types as ft

__all__ = [
    "Elements", "has_fast_form", "fast_input_specs", "materialize", "enable_loops", "prepare", "take_prepared",
    "discard_prepared", "provide", "dataset_of", "UnsupportedSequenceUse", "InfiniteSequenceError", "DEFAULT_BUDGET_BYTES",
]

DEFAULT_BUDGET_BYTES = 256 * 2**20  # one client's elements kept in memory at most; larger ones stream


class UnsupportedSequenceUse(TypeError):
    """A computation uses its sequence in a way the fast form does not imitate."""


class InfiniteSequenceError(ValueError):
    """A dataset without end given to a computation that iterates all of its sequence."""


def has_fast_form(sequence_type: ft.SequenceType) -> bool:
    """Whether every element leaf is a tensor of known rank (what `Elements` can hold; sparse
    elements keep the dataset form)."""
    if ft.contains_sparse(sequence_type.element):
        return False
    leaves = ft.flatten_type(sequence_type.element)
    return bool(leaves) and all(isinstance(leaf, ft.TensorType) and leaf.shape is not None for leaf in leaves)


def _leaf_specs(leaf: ft.TensorType) -> list:
    return [tf.TensorSpec([None, *leaf.shape], leaf.dtype), tf.TensorSpec([None, len(leaf.shape)], tf.int64)]


def fast_input_specs(parameter_type: ft.Type) -> list:
    """The fast form's flat inputs: per sequence leaf, `values` and `shapes` of each element
    leaf (`_leaf_specs`); any other leaf as itself."""
    specs = []
    for leaf in ft.flatten_type(parameter_type):
        if isinstance(leaf, ft.SequenceType):
            for element_leaf in ft.flatten_type(leaf.element):
                specs.extend(_leaf_specs(element_leaf))
        else:
            specs.append(leaf.to_spec())
    return specs


class Elements:
    """A sequence inside a fast-form graph: per element leaf, the stacked `values` and the
    elements' `shapes`. Supports `for element in ...` (autograph), `reduce` and
    `element_spec`; any other dataset method is refused (the dataset form is used)."""

    def __init__(self, element_type: ft.Type, tensors: list):
        self._element_type = element_type
        self._leaf_types = ft.flatten_type(element_type)
        self._values = tensors[0::2]
        self._shapes = tensors[1::2]
        self._count = tf.shape(self._values[0], out_type=tf.int64)[0]

    @property
    def tensors(self) -> list:
        """The graph tensors this sequence is made of, in `fast_input_specs` order."""
        return [t for pair in zip(self._values, self._shapes) for t in pair]

    @property
    def element_spec(self) -> Any:
        return structure.unflatten_value(self._element_type, [leaf.to_spec() for leaf in self._leaf_types])

    @property
    def num_elements(self) -> tf.Tensor:
        return self._count

    def element(self, index: tf.Tensor) -> Any:
        """Element `index`, with the static shape of the element type."""
        leaves = []
        for leaf_type, values, shapes in zip(self._leaf_types, self._values, self._shapes):
            value = values[index]
            if not leaf_type.tensor_shape.is_fully_defined():  # else no element is padded
                value = tf.slice(value, tf.zeros([len(leaf_type.shape)], tf.int64), shapes[index])
                value.set_shape(leaf_type.tensor_shape)
            leaves.append(value)
        return structure.unflatten_value(self._element_type, leaves)

    def reduce(self, initial_state: Any, reduce_func: Callable) -> Any:
        """As `tf.data.Dataset.reduce`: folds the elements in order."""

        def body(index, state):
            return index + 1, reduce_func(state, self.element(index))

        _, result = tf.while_loop(lambda index, _: index < self._count, body, (tf.constant(0, tf.int64), initial_state))
        return result

    def __iter__(self):
        raise UnsupportedSequenceUse("a fast-form sequence is iterated by a TensorFlow loop, not in Python")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the fast form of a sequence has no {name!r}; the dataset form is used")


def _for_loop(elements, extra_test, body, get_state, set_state, symbol_names, opts, range_loop):
    """autograph's `for element in sequence:` over `Elements`: a range loop over the elements."""
    range_loop(tf.range(elements.num_elements), extra_test, lambda index: body(elements.element(index)),
               get_state, set_state, symbol_names, opts)


def enable_loops() -> bool:
    """Lets autograph run `for element in sequence:` over `Elements` (once; False if it cannot)."""
    return tf_private.register_for_loop(Elements, _for_loop)


# Materializing a dataset --------------------------------------------------------------------------

def _iterate_once_options() -> tf.data.Options:
    # tf.data's default graph rewrites pay off over many elements; over one client's few they
    # cost more than the iteration (they serialize the pipeline, its data included).
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    options.autotune.enabled = False
    return options


_ONCE = _iterate_once_options()


def _numpy_dtype(leaf_type: ft.TensorType) -> Any:
    return leaf_type.dtype.as_numpy_dtype if leaf_type.dtype != tf.string else object


def _padding(shape: list, dtype: Any) -> np.ndarray:
    """An array of `shape` to lay elements of numpy `dtype` into: zeros, or empty strings."""
    return np.full(shape, b"", object) if np.dtype(dtype).kind == "O" else np.zeros(shape, dtype)


def _stack(column: list, leaf_type: ft.TensorType) -> list:
    """`values` (elements stacked, padded to the largest) and `shapes` of one element leaf.

    Stacked in numpy (each element copied once; only the elements smaller than the largest
    leave padding), then handed to TensorFlow as one tensor.
    """
    rank = len(leaf_type.shape)
    shapes = np.array([tuple(t.shape) for t in column], np.int64).reshape(len(column), rank)
    if not column:
        values = _padding([0, *(d or 0 for d in leaf_type.shape)], _numpy_dtype(leaf_type))
    elif (shapes == shapes[0]).all():
        values = np.stack([np.asarray(t) for t in column])
    else:
        values = _padding([len(column), *shapes.max(axis=0)], _numpy_dtype(leaf_type))
        for index, (tensor, shape) in enumerate(zip(column, shapes)):
            values[(index, *(slice(0, int(d)) for d in shape))] = np.asarray(tensor)
    return [tf.convert_to_tensor(values, leaf_type.dtype), tf.convert_to_tensor(shapes)]


def _rows_as_inputs(array: Any, leaf_type: ft.TensorType) -> list:
    """`values` and `shapes` of a leaf whose elements are the rows of `array` (an array or an
    eager tensor; no padding)."""
    count, row_shape = int(array.shape[0]), [int(d) for d in array.shape[1:]]
    shapes = np.tile(np.array(row_shape, np.int64), (count, 1)).reshape(count, len(row_shape))
    return [tf.convert_to_tensor(array, leaf_type.dtype), tf.convert_to_tensor(shapes)]


def _batches_as_inputs(batches: pipelines.Batches, leaf: int, leaf_type: ft.TensorType) -> list:
    """`values` and `shapes` of leaf `leaf` of `batches`, laid out at once: the batched rows,
    padded to whole batches, reshaped to [batches, size, ...] (what `_stack` gives, without
    cutting and stacking each batch)."""
    array = batches.rows.arrays[leaf]
    sizes = batches.sizes
    row_shape = [int(d) for d in array.shape[1:]]
    shapes = np.array([[n, *row_shape] for n in sizes], np.int64).reshape(len(sizes), 1 + len(row_shape))
    if not sizes:
        return [tf.convert_to_tensor(_padding([0, 0, *row_shape], _numpy_dtype(leaf_type)), leaf_type.dtype), tf.convert_to_tensor(shapes)]
    width = sizes[0]  # the largest batch: the first
    rows = np.asarray(array)[:batches.stop]
    if len(sizes) * width != batches.stop:
        padded = _padding([len(sizes) * width, *row_shape], rows.dtype)
        padded[:batches.stop] = rows
        rows = padded
    return [tf.convert_to_tensor(rows.reshape([len(sizes), width, *row_shape]), leaf_type.dtype), tf.convert_to_tensor(shapes)]


def _iterate(dataset: tf.data.Dataset, budget_bytes: int) -> list:
    """One iteration of `dataset` by tf.data (its rewrites off), each element a flat list of
    leaves in `tf.nest` order. Raises `pipelines.OverBudget` past `budget_bytes`."""
    try:
        once = dataset.with_options(_ONCE)
    except ValueError:  # options the user set that conflict: iterate as it is
        once = dataset
    read, total = [], 0
    for element in once:
        leaves = [leaf if leaf.dtype == tf.string else leaf.numpy() for leaf in tf.nest.flatten(element)]
        read.append(leaves)
        total += sum(pipelines.nbytes(leaf) for leaf in leaves)
        if total > budget_bytes:
            raise pipelines.OverBudget(f"over {budget_bytes} bytes")
    return read


def _leaf_order(element_spec: Any, element_type: ft.Type) -> list:
    """For each leaf of `element_type` (fedsim's order), its position in `tf.nest.flatten` order."""
    positions = tf.nest.pack_sequence_as(element_spec, list(range(len(tf.nest.flatten(element_spec)))))
    return structure.flatten_value(positions, element_type)


def materialize(dataset: tf.data.Dataset, element_type: ft.Type, budget_bytes: int = DEFAULT_BUDGET_BYTES,
                what: str = "a client's dataset") -> Optional[list]:
    """The fast form's inputs for `dataset`: one iteration of it, as `values`/`shapes` per
    element leaf (see `Elements`).

    The elements are read by `pipelines.elements`: without tf.data where the pipeline allows
    (sliced arrays, batches of them, pure maps and filters), else by tf.data itself.

    Args:
      dataset: the dataset, of `element_type` elements.
      element_type: the sequence's element type.
      budget_bytes: when the elements exceed it, None (the caller streams the dataset form).
      what: names the dataset in errors.

    Returns:
      The flat list of tensors, or None when over the budget.

    Raises:
      InfiniteSequenceError: the dataset never ends (`repeat()` without a count).
    """
    if int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY:
        raise InfiniteSequenceError(
            f"{what} is infinite (repeat() without a count?) and the computation iterates all of it, which "
            f"would never end; give the dataset an end, e.g. repeat(epochs) or take(n)"
        )
    try:
        read = pipelines.elements(dataset, lambda part: _iterate(part, budget_bytes), budget_bytes)
    except pipelines.OverBudget:
        return None
    leaf_types = ft.flatten_type(element_type)
    order = _leaf_order(dataset.element_spec, element_type)
    if isinstance(read, pipelines.Rows):
        if read.nbytes > budget_bytes:
            return None
        return [t for leaf_type, i in zip(leaf_types, order) for t in _rows_as_inputs(read.arrays[i], leaf_type)]
    if isinstance(read, pipelines.Batches):
        if read.nbytes > budget_bytes:
            return None
        return [t for leaf_type, i in zip(leaf_types, order) for t in _batches_as_inputs(read, i, leaf_type)]
    if isinstance(read, pipelines.Laid):
        if read.nbytes > budget_bytes:
            return None
        return [t for leaf_type, i in zip(leaf_types, order)
                for t in (tf.convert_to_tensor(read.values[i], leaf_type.dtype), tf.convert_to_tensor(read.shapes[i]))]
    if sum(pipelines.nbytes(leaf) for element in read for leaf in element) > budget_bytes:
        return None
    return [t for leaf_type, i in zip(leaf_types, order) for t in _stack([element[i] for element in read], leaf_type)]


# Datasets prepared ahead (by the runtime, on a producer thread) --------------------------------------

_prepared: dict = {}
_prepared_lock = threading.Lock()


def prepare(dataset: tf.data.Dataset, element_type: ft.Type, budget_bytes: int, what: str) -> None:
    """Materializes `dataset` now, for the next call that takes it (`take_prepared`).

    Errors are kept and raised to that call, so they surface where the dataset is used.
    """
    try:
        result: Any = materialize(dataset, element_type, budget_bytes, what)
    except Exception as error:  # noqa: BLE001 - re-raised by the call that uses the dataset
        result = error
    with _prepared_lock:
        _prepared[id(dataset)] = (dataset, element_type, result)


def take_prepared(dataset: tf.data.Dataset, element_type: ft.Type) -> Any:
    """The prepared inputs for `dataset` (removed: each preparation is one iteration, used
    once); `...` when none were prepared for it with this type. Raises what preparing raised."""
    with _prepared_lock:
        entry = _prepared.get(id(dataset))
        if entry is None or entry[0] is not dataset:
            return ...
        del _prepared[id(dataset)]
    if entry[1] != element_type:
        return ...
    if isinstance(entry[2], Exception):
        raise entry[2]
    return entry[2]


def discard_prepared(datasets: list) -> None:
    """Drops preparations nobody took (a pass that failed or did not use them)."""
    with _prepared_lock:
        for dataset in datasets:
            entry = _prepared.get(id(dataset))
            if entry is not None and entry[0] is dataset:
                del _prepared[id(dataset)]


def provide(dataset: tf.data.Dataset, element_type: ft.Type, tensors: list) -> None:
    """Hands `tensors` (what `materialize` gave for an equal dataset, e.g. in another process)
    to the next call that takes `dataset`, so it is not iterated again.

    Args:
        dataset: the dataset the call will be given (e.g. `dataset_of(tensors, element_type)`).
        element_type: its element type.
        tensors: `materialize`'s result for it.
    """
    with _prepared_lock:
        _prepared[id(dataset)] = (dataset, element_type, tensors)


def dataset_of(tensors: list, element_type: ft.Type) -> tf.data.Dataset:
    """The dataset whose one iteration gives the elements `tensors` hold (`materialize`'s form):
    element `i` is each leaf's `values[i]` sliced to `shapes[i]`.

    Built from slices, without tracing a function: consecutive elements of one shape are one
    `from_tensor_slices`, and the runs are concatenated (usually one run and an uneven last batch).

    Args:
        tensors: `materialize`'s result (tensors or numpy arrays).
        element_type: the element type.

    Returns:
        A `tf.data.Dataset` of those elements, in order.
    """
    values = [np.asarray(t) for t in tensors[0::2]]
    shapes = [np.asarray(t) for t in tensors[1::2]]
    count = len(values[0])
    if count == 0:  # no elements: one empty slice of each leaf's shape (unknown dimensions as 0)
        leaves = [np.zeros([0, *(d or 0 for d in leaf.shape)], leaf.dtype.as_numpy_dtype) for leaf in ft.flatten_type(element_type)]
        return tf.data.Dataset.from_tensor_slices(structure.unflatten_value(element_type, leaves))
    keys = [tuple(tuple(int(d) for d in leaf_shapes[i]) for leaf_shapes in shapes) for i in range(count)]
    dataset, start = None, 0
    for end in range(1, count + 1):
        if end < count and keys[end] == keys[start]:
            continue
        leaves = [leaf_values[(slice(start, end), *(slice(0, d) for d in shape))] for leaf_values, shape in zip(values, keys[start])]
        run = tf.data.Dataset.from_tensor_slices(structure.unflatten_value(element_type, leaves))
        dataset = run if dataset is None else dataset.concatenate(run)
        start = end
    return dataset
