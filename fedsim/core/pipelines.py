"""A client's dataset read without a tf.data iterator wherever its pipeline allows.

Why: iterating a dataset once eagerly costs ~1 ms to build the iterator (and ~1 ms more to turn
tf.data's graph rewrites off), and ~3 ms more for every `map` or `filter` in it: tf.data
instantiates each function anew for every iterator, and each client's dataset carries its own
trace of the same preprocessing function. A simulation reads hundreds of small client datasets
per round, so these fixed costs, not the data, are what a round pays.

How: `elements(dataset, iterate)` walks the pipeline from its last step back
(`tf_private.dataset_step` names each step) and computes what it can without tf.data:

- `from_tensor_slices`, and the steps over it that only select or regroup rows (`take`, `skip`,
  `repeat(n)`, `batch`, `cache()`, `prefetch`, `with_options`), are numpy slicing of the arrays;
- a `map` or `filter` whose function is pure (no state, randomness, captured tensors or nested
  functions) is computed by its traced function outside tf.data. Functions are shared by
  definition: the same preprocessing traced for each client's dataset is one function,
  instantiated once per process, not once per client (`SharedFunction`). A map over rows or
  batches of rows runs in one call of a function traced once per definition, row spec and batch
  size, which slices each element, calls the map on it in a loop and returns the results laid
  out as the fast form takes them (`Laid`: stacked, padded to the largest, and their shapes):
  a call costs ~0.3 ms whatever it computes, so a call per element, or cutting and stacking
  the elements in Python, cost more than the map. Any other map or filter calls the function on
  each element (up to `MAX_FUNCTION_CALLS`), in groups of up to 16 calls made by one call. Each
  result is checked against the step's spec, as tf.data checks it;
- every other step (`shuffle`, `interleave`, `padded_batch`, a generator, a function that is not
  pure, an infinite source under `take`, a step this TensorFlow stores differently, ...) is
  computed by tf.data from that step down, as it always would be: a seeded or reshuffling
  `shuffle` gives exactly the order its own iteration gives. Where that part's elements have one
  known shape and a known count (the examples under a `batch`, typically), tf.data hands them
  over in one call (`batch(count).get_single_element()`: no iterator, no graph rewrites; traced
  once per element spec, as each eager dataset op costs ~0.5 ms), made together with the map
  over their batches where there is one (`DatasetRows`: a shuffle, batch and map cost one call);
  otherwise `iterate` iterates it.

The result is the elements one iteration of the dataset gives, in order, with the same values.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional, Union

import numpy as np
import tensorflow as tf
from absl import logging

from fedsim.core import tf_private

__all__ = ["Rows", "DatasetRows", "Batches", "Laid", "elements", "nbytes", "OverBudget", "MAX_FUNCTION_CALLS"]

# An eager call of a step's function costs about what tf.data's iterator pays per element
# (~0.1 ms), without the ~3 ms tf.data pays to instantiate the function per iterator; past this
# many calls per dataset (a map over single examples, say) tf.data computes the step instead.
MAX_FUNCTION_CALLS = 4096
_SHARED_FUNCTIONS_KEPT = 64
_LAID_OUT_KEPT = 8  # traced lay-outs of one function (row specs, batch sizes) kept
_lock = threading.Lock()  # the caches of traced functions below


class OverBudget(Exception):
    """Reading the dataset would hold more bytes than the caller's budget."""


class Rows:
    """The elements of sliced arrays: element `i` is row `i` of each array (flat, `tf.nest` order).
    The arrays are numpy arrays, or eager tensors where tf.data produced them (so the functions
    that take their batches need no conversion)."""

    pending = None  # a dataset whose elements these rows are, not yet computed (`DatasetRows`)

    def __init__(self, arrays: list):
        self.arrays = arrays
        self.count = int(arrays[0].shape[0]) if arrays else 0

    @property
    def nbytes(self) -> int:
        return sum(nbytes(array) for array in self.arrays)

    def select(self, start: int, stop: Optional[int]) -> "Rows":
        return Rows([array[start:stop] for array in self.arrays])

    def as_list(self) -> list:
        return [[array[i] for array in self.arrays] for i in range(self.count)]


class DatasetRows(Rows):
    """All `count` elements of a dataset as rows, computed by tf.data in one call
    (`batch(count).get_single_element()`: no iterator to build, no graph rewrites) when first
    read, or in the call of a map over them (`SharedFunction.lay_out`): each computation is one
    iteration of the dataset, so it is made once."""

    def __init__(self, dataset: tf.data.Dataset, count: int):
        self.pending = dataset
        self.count = count
        self._arrays: Optional[list] = None

    @property
    def arrays(self) -> list:
        if self._arrays is None:
            # on the default executor: tf.data runs its steps' functions with the executor's runner;
            # on a single-threaded executor two readers of a map under a shuffle waited forever
            self._arrays = tf.nest.flatten(tf_private.call_flat(_all_elements_function(self.pending.element_spec), [
                tf.data.experimental.to_variant(self.pending), tf.constant(self.count, tf.int64)]))
            self.pending = None
        return self._arrays


class Batches:
    """The elements of `batch(size, drop_remainder)` over `rows`: consecutive runs of `size`
    rows, the last one smaller unless dropped. Kept whole, so that the caller can lay out every
    batch at once (one reshape) instead of cutting and stacking them one by one."""

    def __init__(self, rows: Rows, size: int, drop_remainder: bool):
        self.rows = rows
        self.size = size
        self.stop = rows.count - rows.count % size if drop_remainder else rows.count  # the rows batched

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    @property
    def sizes(self) -> list:
        """Each batch's number of rows."""
        return [min(self.size, self.stop - start) for start in range(0, self.stop, self.size)]

    def as_list(self) -> list:
        sizes = self.sizes
        if not sizes:
            return []
        columns = []
        for array in self.rows.arrays:
            if isinstance(array, np.ndarray):
                columns.append([array[start:start + n] for start, n in zip(range(0, self.stop, self.size), sizes)])
            else:  # one op for all the batches of an eager tensor
                columns.append(tf.split(array[:self.stop] if self.stop < self.rows.count else array, sizes))
        return [list(batch) for batch in zip(*columns)]


class Laid:
    """Elements already laid out as a fast form takes them: per leaf (flat, `tf.nest` order),
    `values` (the elements stacked, padded to the largest) and `shapes` (each element's shape).
    What a pure `map` over rows or batches gives (`SharedFunction.lay_out`)."""

    def __init__(self, values: list, shapes: list):
        self.values = values
        self.shapes = [np.asarray(shape) for shape in shapes]
        self.count = int(self.shapes[0].shape[0]) if shapes else 0

    @property
    def nbytes(self) -> int:
        return sum(nbytes(value) for value in self.values)

    def as_list(self) -> list:
        arrays = [np.asarray(value) if value.dtype != tf.string else value for value in self.values]
        return [[array[(i, *(slice(0, int(d)) for d in shape[i]))] for array, shape in zip(arrays, self.shapes)]
                for i in range(self.count)]


Elements = Union[Rows, Batches, Laid, list]  # or a list of elements, each a flat list of leaves (tf.nest order)


def elements(dataset: tf.data.Dataset, iterate: Callable[[tf.data.Dataset], list], budget_bytes: int) -> Elements:
    """The elements of one iteration of `dataset`, computed without tf.data where it can be.

    Args:
        dataset: a finite dataset of dense tensors (the caller checks both).
        iterate: iterates a dataset the way tf.data does, returning its elements as flat lists
            of leaves; called for the steps this module does not compute.
        budget_bytes: the most bytes the elements may hold.

    Returns:
        `Rows` (when the dataset is sliced arrays, possibly selected), `Batches` (batches of
        such rows), or a list of elements, each
        a flat list of numpy arrays or eager tensors in `tf.nest.flatten` order.

    Raises:
        OverBudget: what this module computes would exceed `budget_bytes` (what `iterate`
            raises passes through).

    Example:
        >>> data = tf.data.Dataset.from_tensor_slices(np.arange(5)).batch(2)
        >>> read = elements(data, lambda d: [tf.nest.flatten(x) for x in d], 2**20)
        >>> read.size, read.sizes, [e[0].tolist() for e in read.as_list()]
        (2, [2, 2, 1], [[0, 1], [2, 3], [4]])
    """
    if not tf.executing_eagerly() or not _dense(dataset):
        return iterate(dataset)
    return _Reader(iterate, budget_bytes).read(dataset)


def _dense(dataset: tf.data.Dataset) -> bool:
    return all(type(spec) is tf.TensorSpec for spec in tf.nest.flatten(dataset.element_spec))


class _Reader:
    def __init__(self, iterate: Callable[[tf.data.Dataset], list], budget_bytes: int):
        self.iterate = iterate
        self.budget_bytes = budget_bytes
        self.held = 0

    def charge(self, nbytes: int) -> None:
        self.held += nbytes
        if self.held > self.budget_bytes:
            raise OverBudget(f"over {self.budget_bytes} bytes")

    def read(self, dataset: tf.data.Dataset) -> Elements:
        rows = self.rows(dataset)
        if rows is not None:
            return rows
        step = tf_private.dataset_step(dataset)
        kind = None if step is None else step.kind
        if kind == "same":
            return self.read(step.source)
        if kind == "batch":
            rows = self.rows(step.source)
            if rows is None and _kind(step.source) == "map":  # examples mapped one by one, then batched
                rows = _as_rows(self.read(step.source))
                if rows is None:  # elements of differing shapes: tf.data's batch gives its error
                    return self.iterate(dataset)
            rows = self.stacked(step.source) if rows is None else rows
            return self.iterate(dataset) if rows is None else Batches(rows, step.count, step.drop_remainder)
        if kind in ("map", "filter"):
            return self._call(dataset, step)
        if kind in ("take", "skip") and not _infinite(step.source):
            return _select(_as_list(self.read(step.source)), kind, step.count)
        if kind in ("repeat", "cache") and step.count >= 0 and _deterministic(step.source):
            return _as_list(self.read(step.source)) * (step.count if kind == "repeat" else 1)
        rows = self.stacked(dataset)
        return self.iterate(dataset) if rows is None else rows

    def stacked(self, dataset: tf.data.Dataset) -> Optional[Rows]:
        """All elements of `dataset` as rows, by tf.data in one call (`batch(count)` and
        `get_single_element`: no iterator to build, no graph rewrites, one transfer), when its
        elements all have one known shape and their count is known; else None."""
        specs = tf.nest.flatten(dataset.element_spec)
        if not _dense(dataset) or not all(spec.shape.is_fully_defined() for spec in specs):
            return None
        count = int(dataset.cardinality())
        if count < 0:
            return None
        if count == 0:
            return Rows([np.zeros([0, *spec.shape], spec.dtype.as_numpy_dtype if spec.dtype != tf.string else object)
                         for spec in specs])
        self.charge(count * sum(spec.shape.num_elements() * (spec.dtype.size if spec.dtype != tf.string else 64)
                                for spec in specs))
        return DatasetRows(dataset, count)

    def _call(self, dataset: tf.data.Dataset, step: tf_private.DatasetStep) -> Elements:
        function = _shared_function(step.function)
        count = int(step.source.cardinality())
        if function is None or count > MAX_FUNCTION_CALLS or count == tf.data.INFINITE_CARDINALITY:
            rows = self.stacked(dataset)
            return self.iterate(dataset) if rows is None else rows
        source = self.read(step.source)
        if step.kind == "map" and isinstance(source, (Rows, Batches)):
            return self._lay_out(dataset, function, source)
        inputs = _as_list(source)
        if len(inputs) > MAX_FUNCTION_CALLS:  # a count tf.data did not know ahead
            return self.iterate(dataset)
        try:
            results = function.call_each(inputs)
        except (tf.errors.OpError, TypeError, ValueError):  # tf.data decides: the same error, or its result
            return self.iterate(dataset)
        if step.kind == "filter":
            return [element for element, result in zip(inputs, results) if bool(result[0])]
        specs = [_Spec(spec) for spec in tf.nest.flatten(dataset.element_spec)]
        outputs = [[spec.value(leaf) for spec, leaf in zip(specs, result)] for result in results]
        if not all(spec.fits(leaf) for output in outputs for spec, leaf in zip(specs, output)):
            return self.iterate(dataset)  # tf.data checks each output against the map's spec: its error
        self.charge(sum(nbytes(leaf) for output in outputs for leaf in output))
        return outputs

    def _lay_out(self, dataset: tf.data.Dataset, function: "SharedFunction", source: Union[Rows, Batches]) -> Elements:
        """A pure map over each row or batch of `source`, in one call laying out its results
        (`SharedFunction.lay_out`); what tf.data gives where the call fails or a result does not
        fit the map's spec."""
        rows, size = (source, None) if isinstance(source, Rows) else (source.rows, source.size)
        stop = rows.count if size is None else source.stop
        specs = tf.nest.flatten(dataset.element_spec)
        if stop == 0:
            return []
        try:
            laid = function.lay_out(rows, stop, size)
        except (tf.errors.OpError, TypeError, ValueError):  # tf.data decides: the same error, or its result
            return self.iterate(dataset)
        if laid is None or not all(_Spec(spec).fits_all(value, shape)
                                   for spec, value, shape in zip(specs, laid.values, laid.shapes)):
            return self.iterate(dataset)  # tf.data checks each output against the map's spec: its error
        self.charge(laid.nbytes)
        if size is None and all((shape == shape[0]).all() for shape in laid.shapes):
            return Rows(laid.values)  # one result per row, all of one shape: rows again
        return laid

    def rows(self, dataset: tf.data.Dataset) -> Optional[Rows]:
        """`dataset` as sliced arrays, if it is slices under steps that only select rows."""
        step = tf_private.dataset_step(dataset)
        if step is None:
            return None
        if step.kind == "slices":
            return Rows([np.asarray(tensor) for tensor in step.tensors])
        if step.kind not in ("same", "cache", "take", "skip", "repeat"):
            return None
        rows = self.rows(step.source)
        if rows is None or step.kind in ("same", "cache"):
            return rows
        if step.kind == "take":
            return rows if step.count < 0 else rows.select(0, step.count)
        if step.kind == "skip":
            return rows.select(rows.count if step.count < 0 else step.count, None)
        if step.count < 0:  # repeat() forever: not rows
            return None
        if step.count == 0:
            return rows.select(0, 0)
        self.charge(rows.nbytes * step.count)
        return Rows([np.concatenate([array] * step.count) for array in rows.arrays])


class _Spec:
    """A step's output spec, checked the way tf.data checks a function's outputs (numpy-side:
    an output is turned into an array once, and checked without building TensorShapes)."""

    def __init__(self, spec: tf.TensorSpec):
        self.strings = spec.dtype == tf.string
        self.dtype = None if self.strings else np.dtype(spec.dtype.as_numpy_dtype)
        self.spec = spec
        self.dims = None if spec.shape.rank is None else spec.shape.as_list()

    def value(self, tensor: tf.Tensor) -> Any:
        return tensor if self.strings else tensor.numpy()

    def fits_all(self, values: Any, shapes: np.ndarray) -> bool:
        """Whether laid-out `values` (of `shapes`, one row per element) fit the spec."""
        if values.dtype != self.spec.dtype:
            return False
        return self.dims is None or (shapes.shape[1] == len(self.dims) and all(
            (shapes[:, k] == d).all() for k, d in enumerate(self.dims) if d is not None))

    def fits(self, value: Any) -> bool:
        if self.strings:
            return value.dtype == tf.string and self.spec.shape.is_compatible_with(value.shape)
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        if value.dtype != self.dtype:
            return False
        return self.dims is None or (value.ndim == len(self.dims) and all(
            d is None or d == n for d, n in zip(self.dims, value.shape)))


def _kind(dataset: tf.data.Dataset) -> Optional[str]:
    step = tf_private.dataset_step(dataset)
    return None if step is None else step.kind


def _as_rows(read: Elements) -> Optional[Rows]:
    """Elements of one shape as rows (what `batch` stacks); None when their shapes differ."""
    if isinstance(read, Rows):
        return read
    items = _as_list(read)
    if not items:
        return None
    columns = [[np.asarray(leaf) for leaf in column] for column in zip(*items)]
    if any(len({leaf.shape for leaf in column}) > 1 for column in columns):
        return None
    return Rows([np.stack(column) for column in columns])


def _select(items: list, kind: str, count: int) -> list:
    if kind == "take":
        return items if count < 0 else items[:count]
    return [] if count < 0 else items[count:]


def _as_list(read: Elements) -> list:
    return read if isinstance(read, list) else read.as_list()


def nbytes(leaf: Any) -> int:
    """Bytes a tensor or array holds (a string counted as 64): the one measure of the budget."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return leaf.size * (leaf.itemsize if leaf.dtype != object else 64)
    return (leaf.shape.num_elements() or 0) * (leaf.dtype.size if leaf.dtype != tf.string else 64)


def _infinite(dataset: tf.data.Dataset) -> bool:
    return int(dataset.cardinality()) == tf.data.INFINITE_CARDINALITY


def _deterministic(dataset: tf.data.Dataset) -> bool:
    """Whether every iteration of `dataset` gives the same elements (so one can be repeated or cached)."""
    step = tf_private.dataset_step(dataset)
    if step is None:
        return False
    if step.kind == "slices":
        return True
    if step.kind in ("map", "filter") and _shared_function(step.function) is None:
        return False
    if step.kind == "repeat" and step.count < 0:
        return False
    return _deterministic(step.source)


# All of a dataset's elements in one call ----------------------------------------------------------

_all_elements: collections.OrderedDict = collections.OrderedDict()


def _all_elements_of(variant: tf.Tensor, count: tf.Tensor, element_spec: Any) -> Any:
    """In a graph: the `count` elements of the dataset `variant` (of `element_spec`), stacked."""
    return tf.data.experimental.from_variant(variant, element_spec).batch(count).get_single_element()


def _all_elements_function(element_spec: Any) -> Callable:
    """A function giving all `count` elements of a dataset of `element_spec` stacked, traced once
    per spec: built eagerly, the `batch` step alone costs ~0.5 ms a client (each eager dataset op
    does); inside one traced function the step and the read cost one call."""
    key = tf.data.DatasetSpec(element_spec)
    with _lock:
        function = _all_elements.get(key)
        if function is not None:
            _all_elements.move_to_end(key)
            return function

    def all_elements(variant, count):
        return _all_elements_of(variant, count, element_spec)

    function = tf.function(all_elements, input_signature=[tf.TensorSpec([], tf.variant), tf.TensorSpec([], tf.int64)],
                           autograph=False).get_concrete_function()
    with _lock:
        _all_elements[key] = function
        while len(_all_elements) > _SHARED_FUNCTIONS_KEPT:
            _all_elements.popitem(last=False)
    return function


# Functions shared by definition ------------------------------------------------------------------

_shared: collections.OrderedDict = collections.OrderedDict()


class SharedFunction:
    """A step's pure function, one per definition per process, called on many elements at once.

    Calling a function costs ~0.3 ms whatever it computes, and a client's map runs once per
    batch; so a map over rows or batches runs in one call that loops over them (`lay_out`), and
    other elements are called in groups (`call_each`: 16, 8, 4, 2, 1, a function traced once per
    group size, each calling this one; on this thread's own executor, inline, not queued behind
    the training on the shared pool).
    """

    GROUP_SIZES = (16, 8, 4, 2, 1)

    def __init__(self, function: Any):
        self.function = function
        self._groups: dict = {}
        self._laid_out: dict = {}  # (row specs, batch size) -> traced lay_out, or None

    def call_each(self, elements: list) -> list:
        """The function's flat outputs for each element (a flat list of tensors or arrays)."""
        results, start = [], 0
        with tf.experimental.function_executor_type("SINGLE_THREADED_EXECUTOR"):
            while start < len(elements):
                size = next(n for n in self.GROUP_SIZES if n <= len(elements) - start)
                group = elements[start:start + size]
                flat = tf.nest.flatten(tf_private.call_flat(self._group(size), [
                    tf.convert_to_tensor(leaf) for element in group for leaf in element]))
                width = len(flat) // size
                results.extend(flat[i * width:(i + 1) * width] for i in range(size))
                start += size
        return results

    def lay_out(self, rows: Rows, stop: int, size: Optional[int]) -> Optional[Laid]:
        """The function's results on each element of `rows` `[0, stop)` (each row, or each batch
        of `size` rows, the last one smaller), laid out (`Laid`) by one call of a function traced
        once per row spec and batch size; None when the function does not take such elements.
        Rows tf.data has yet to compute (`DatasetRows`) are computed in the same call.

        Raises what the function raises on an element (`tf.errors.OpError`).
        """
        source = rows.pending
        if source is not None:
            specs = tf.nest.flatten(source.element_spec)
            key = (tf.data.DatasetSpec(source.element_spec), size)
            inputs = [tf.data.experimental.to_variant(source), tf.constant(rows.count, tf.int64)]
        else:
            specs = [tf.TensorSpec(array.shape[1:], array.dtype) for array in rows.arrays]
            key = (tuple(specs), size)
            inputs = [tf.convert_to_tensor(array) for array in rows.arrays]
        with _lock:
            laid_out = self._laid_out.get(key, ...)
        if laid_out is ...:
            try:
                laid_out = self._trace_lay_out(specs, size, None if source is None else source.element_spec)
            except (TypeError, ValueError) as error:  # the function does not take these elements
                logging.vlog(1, "a map is not laid out in one call (%s); it is called per element", error)
                laid_out = None
            with _lock:
                laid_out = self._laid_out.setdefault(key, laid_out)
                while len(self._laid_out) > _LAID_OUT_KEPT:
                    self._laid_out.pop(next(iter(self._laid_out)))
        if laid_out is None:
            return None
        # on the default executor: tf.data's steps computing the rows need its runner
        flat = tf_private.call_flat(laid_out, [*inputs, tf.constant(stop, tf.int32)])
        return Laid(flat[0::2], [shape.numpy() for shape in flat[1::2]])

    def _trace_lay_out(self, row_specs: list, size: Optional[int], element_spec: Any) -> Optional[Any]:
        """Traces `lay_out` over rows of `row_specs` (each row's spec), given as arrays, or
        (where `element_spec` is given) as a dataset of such rows and their count."""
        function = self.function
        takes = [tf.TensorSpec(t.shape, t.dtype) for t in function.graph.inputs]
        gives = [tf.TensorSpec(t.shape, t.dtype) for t in function.graph.outputs]
        element_shapes = [spec.shape if size is None else tf.TensorShape([None]).concatenate(spec.shape)
                          for spec in row_specs]
        if len(takes) != len(row_specs) or not all(
                spec.dtype == take.dtype and shape.is_compatible_with(take.shape)
                for spec, shape, take in zip(row_specs, element_shapes, takes)):
            return None
        if element_spec is None:
            signature = [tf.TensorSpec([None, *spec.shape], spec.dtype) for spec in row_specs]

            def arrays(inputs):
                return list(inputs)
        else:
            signature = [tf.TensorSpec([], tf.variant), tf.TensorSpec([], tf.int64)]

            def arrays(inputs):
                return tf.nest.flatten(_all_elements_of(*inputs, element_spec))

        def lay_out(*inputs):
            *rows, stop = inputs
            rows = arrays(rows)
            count = stop if size is None else (stop + size - 1) // size

            def element(index):
                if size is None:
                    leaves = [row[index] for row in rows]
                else:
                    start = index * size
                    leaves = [row[start:tf.minimum(start + size, stop)] for row in rows]
                for leaf, take in zip(leaves, takes):
                    leaf.set_shape(take.shape)  # rows of the declared shape; a full batch where declared
                return leaves

            def body(index, results, shapes):
                outputs = tf.nest.flatten(function(*element(index)))
                return (index + 1, [r.write(index, o) for r, o in zip(results, outputs)],
                        [s.write(index, tf.shape(o, out_type=tf.int64)) for s, o in zip(shapes, outputs)])

            results = [tf.TensorArray(g.dtype, size=count, infer_shape=False, element_shape=g.shape) for g in gives]
            shapes = [tf.TensorArray(tf.int64, size=count, element_shape=[g.shape.rank]) for g in gives]
            _, results, shapes = tf.while_loop(lambda index, *_: index < count, body, (tf.constant(0), results, shapes))
            shapes = [shape.stack() for shape in shapes]
            ragged = [k for k, give in enumerate(gives) if not give.shape.is_fully_defined()]  # may need padding
            largest = [tf.reduce_max(shapes[k], axis=0) for k in ragged]  # count > 0: no empty rows are read

            def pad(index, padded):
                values = []
                for k, most, into in zip(ragged, largest, padded):
                    padding = tf.stack([tf.zeros_like(most), most - shapes[k][index]], axis=1)
                    values.append(into.write(index, tf.pad(results[k].read(index), padding,
                                                           constant_values=tf.zeros([], gives[k].dtype))))
                return index + 1, values

            padded = [tf.TensorArray(gives[k].dtype, size=count, element_shape=gives[k].shape) for k in ragged]
            if ragged:
                _, padded = tf.while_loop(lambda index, _: index < count, pad, (tf.constant(0), padded))
            stacked = dict(zip(ragged, padded))
            laid = []
            for k, (result, shape) in enumerate(zip(results, shapes)):
                laid += [stacked.get(k, result).stack(), shape]
            return laid

        return tf.function(lay_out, input_signature=[*signature, tf.TensorSpec([], tf.int32)],
                           autograph=False).get_concrete_function()

    def _group(self, size: int) -> Any:
        with _lock:
            group = self._groups.get(size)
        if group is not None:
            return group
        function = self.function
        specs = [tf.TensorSpec(t.shape, t.dtype) for t in function.graph.inputs]
        width = len(specs)

        def each(*flat):
            return [function(*flat[i * width:(i + 1) * width]) for i in range(size)]

        group = tf.function(each, input_signature=specs * size, autograph=False).get_concrete_function()
        with _lock:
            return self._groups.setdefault(size, group)


def _shared_function(function: Any) -> Optional[SharedFunction]:
    """The process's one `SharedFunction` with `function`'s definition and signature, or None
    when calling it outside tf.data could differ from tf.data calling it."""
    key = _definition_key(function)
    if key is None:
        return None
    with _lock:
        shared = _shared.get(key)
        if shared is None:
            shared = _shared[key] = SharedFunction(function)
            while len(_shared) > _SHARED_FUNCTIONS_KEPT:
                _shared.popitem(last=False)
        else:
            _shared.move_to_end(key)
    return shared


def _definition_key(function: Any) -> Optional[tuple]:
    """What identifies a pure function: its definition without its name, and its signature."""
    try:
        if function.captured_inputs:
            return None
        function_def = function.function_def
        for node in function_def.node_def:
            if tf_private.op_is_stateful(node.op) is not False or any(
                    a.HasField("func") or a.list.func for a in node.attr.values()):
                return None
        definition = type(function_def)()
        definition.CopyFrom(function_def)
        graph = function.graph
        signature = tuple((t.name, t.dtype.name, str(t.shape)) for t in [*graph.inputs, *graph.outputs])
    except (AttributeError, TypeError, ValueError):
        return None
    definition.signature.name = ""
    return definition.SerializeToString(deterministic=True), signature
