"""The local simulation context: runs computations in this process.

CLIENTS-placed arguments are Python sequences with one member per client; SERVER values are
numpy/Python structures. Client values are never all held at once: a client value is a recipe
(`ClientValues`) computed client by client, and aggregations (`federated_sum`, `_mean`,
`_aggregate`, secure sums) are *deferred* until the server needs one of them. Then one pass over
the clients feeds every pending aggregation together, so the client work shared by several
aggregations runs once, and memory stays O(value), not O(clients x value). Client work in a
pass runs on a small thread pool (TensorFlow releases the GIL), in a bounded window, and is
accumulated in client order, so results do not depend on the number of threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from fedsim.core.environment import Environment
from fedsim.core import building_blocks as bb
from fedsim.core import federated_tracing as fc
from fedsim.core import intrinsics as ops
from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER

__all__ = ["LocalExecutionContext"]


# ----------------------------------------------------------------------------------------------
# Runtime values


class ClientValues:
    """A value placed at CLIENTS, computed per client on demand.

    `compute(index, memo)` returns client `index`'s member; `memo` is private to one client's
    task, so a recipe used by several aggregations is computed once per client per pass.
    """

    count: Optional[int] = None

    def compute(self, index: int, memo: dict) -> Any:
        raise NotImplementedError

    def dependencies(self) -> list:
        """Server values not yet computed that this recipe needs (forced before a pass)."""
        return []


class ListClients(ClientValues):
    def __init__(self, members: Sequence, member_type: ft.Type, what: str, checked: bool):
        self.members = members
        self.member_type = member_type
        self.what = what
        self.checked = checked
        self.count = len(members)

    def compute(self, index, memo):
        member = self.members[index]
        if self.checked:
            return member
        return structure.check_and_normalize(member, self.member_type, f"client {index} of {self.what}")


class AllEqualClients(ClientValues):
    def __init__(self, value: Any):
        self.value = value

    def compute(self, index, memo):
        return _force_all(self.value)

    def dependencies(self):
        return _unforced(self.value)


class MappedClients(ClientValues):
    def __init__(self, fn: Callable, source: ClientValues):
        self.fn = fn
        self.source = source
        self.count = source.count

    def compute(self, index, memo):
        key = id(self)
        if key not in memo:
            memo[key] = self.fn(self.source.compute(index, memo))
        return memo[key]

    def dependencies(self):
        return self.source.dependencies()


class EvalClients(ClientValues):
    def __init__(self, fn: Callable):
        self.fn = fn

    def compute(self, index, memo):
        key = id(self)
        if key not in memo:
            memo[key] = self.fn()
        return memo[key]


class ZippedClients(ClientValues):
    def __init__(self, elements: list, member_type: ft.StructType):
        self.elements = elements
        self.member_type = member_type
        counts = {e.count for e in elements if e.count is not None}
        self.count = counts.pop() if len(counts) == 1 else None
        if counts:
            raise ValueError(f"cannot zip client values with different numbers of clients: {sorted(counts | {self.count})}")

    def compute(self, index, memo):
        return structure.pack_struct(self.member_type, [e.compute(index, memo) for e in self.elements])

    def dependencies(self):
        return [d for e in self.elements for d in e.dependencies()]


class Lazy:
    """A SERVER value computed when first needed.

    Server work is lazy so that by the time any aggregation is needed, every aggregation of
    the round has been registered and one pass over the clients serves them all.
    """

    def __init__(self, thunk: Callable[[], Any]):
        self.thunk = thunk
        self.done = False
        self.value = None
        self.lock = threading.Lock()

    def force(self) -> Any:
        if not self.done:
            with self.lock:
                if not self.done:
                    self.value = self.thunk()
                    self.done = True
                    self.thunk = None
        return self.value


class Deferred(Lazy):
    """A SERVER value waiting for an aggregation pass over the clients."""

    def __init__(self, run: "_Run", sources: list, accumulator_fn: Callable):
        super().__init__(lambda: run.run_pass_for(self))
        self.sources = sources
        self.accumulator_fn = accumulator_fn

    def force(self) -> Any:
        if not self.done:
            self.thunk()
        return self.value

    def ready(self) -> bool:
        return not any(s.dependencies() for s in self.sources)


class _Closure:
    """A traced lambda with its environment, callable like a computation."""

    def __init__(self, block: bb.Lambda, env: "Environment", run: "_Run"):
        self.block = block
        self.env = env
        self.run = run

    def __call__(self, argument: Any) -> Any:
        env = Environment(self.env)
        if self.block.parameter_name is not None:
            env.bind(self.block.parameter_name, argument)
        return self.run.evaluate(self.block.result, env)


class _TensorFlowFunction:
    def __init__(self, computation: tfc.TensorFlowComputation):
        self.computation = computation

    def __call__(self, argument: Any) -> Any:
        return self.computation.call_value(_force_all(argument))


def _unforced(value: Any) -> list:
    """The lazy server values inside a structure that are not computed yet."""
    if isinstance(value, Lazy):
        return [] if value.done else [value]
    if isinstance(value, dict):
        return [u for v in value.values() for u in _unforced(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in _unforced(v)]
    if hasattr(type(value), "__attrs_attrs__"):
        return [u for f in type(value).__attrs_attrs__ for u in _unforced(getattr(value, f.name))]
    return []


def _force_all(value: Any) -> Any:
    """Replaces lazy server values inside a structure by their results."""
    if isinstance(value, Lazy):
        return _force_all(value.force())
    if isinstance(value, dict):
        if any(isinstance(v, (Lazy, dict, list, tuple)) or hasattr(type(v), "__attrs_attrs__") for v in value.values()):
            return type(value)((k, _force_all(v)) for k, v in value.items())
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Lazy, dict, list, tuple)) or hasattr(type(v), "__attrs_attrs__") for v in value):
        forced = [_force_all(v) for v in value]
        if hasattr(type(value), "_fields"):
            return type(value)(*forced)
        return type(value)(forced)
    if hasattr(type(value), "__attrs_attrs__"):
        import attrs

        return attrs.evolve(value, **{f.name: _force_all(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.init})
    return value


# ----------------------------------------------------------------------------------------------
# Accumulators: one per pending aggregation in a pass.


def _leafwise(fn: Callable, value_type: ft.Type, *values: Any) -> Any:
    return structure.map_structure(lambda _, *leaves: fn(*leaves), value_type, *values)


class _SumAccumulator:
    def __init__(self, value_type: ft.Type):
        self.value_type = value_type
        self.total = None

    def add(self, value):
        if self.total is None:
            self.total = _leafwise(lambda v: np.array(v, copy=True), self.value_type, value)
        else:
            self.total = _leafwise(lambda t, v: np.add(t, v, out=t) if isinstance(t, np.ndarray) and t.ndim else t + v, self.value_type, self.total, value)

    def result(self):
        return self.total


class _MeanAccumulator:
    def __init__(self, value_type: ft.Type, weighted: bool):
        self.value_type = value_type
        self.weighted = weighted
        self.total = None
        self.weight = 0.0

    def add(self, value, weight=None):
        weight = 1.0 if weight is None else float(weight)
        self.weight += weight

        def scaled(v):
            return np.asarray(v * np.asarray(weight, dtype=v.dtype), dtype=v.dtype)

        if self.total is None:
            self.total = _leafwise(scaled, self.value_type, value)
        else:
            self.total = _leafwise(lambda t, v: np.add(t, scaled(v), out=t) if t.ndim else t + scaled(v), self.value_type, self.total, value)

    def result(self):
        if self.total is None:
            raise ValueError("federated_mean over zero clients")
        return _leafwise(lambda t: np.asarray(t / np.asarray(self.weight, dtype=t.dtype), dtype=t.dtype), self.value_type, self.total)


class _AggregateAccumulator:
    """Folds clients in groups of `group_size`, merging group accumulators as groups close."""

    def __init__(self, zero, accumulate: Callable, merge: Callable, report: Callable, group_size: int):
        self.zero = zero
        self.accumulate = accumulate
        self.merge = merge
        self.report = report
        self.group_size = group_size
        self.group = None
        self.in_group = 0
        self.total = None

    def add(self, value):
        current = self.zero if self.group is None else self.group
        self.group = self.accumulate((current, value))
        self.in_group += 1
        if self.in_group == self.group_size:
            self._close_group()

    def _close_group(self):
        if self.group is None:
            return
        self.total = self.group if self.total is None else self.merge((self.total, self.group))
        self.group, self.in_group = None, 0

    def result(self):
        self._close_group()
        return self.report(self.zero if self.total is None else self.total)


class _SecureSumAccumulator:
    def __init__(self, value_type: ft.Type, bitwidth: Any):
        self.value_type = value_type
        self.bitwidth = bitwidth
        self.leaves = ft.flatten_type(value_type)
        self.widths = [int(w) for w in structure.flatten_value(bitwidth, value_type)]
        self.total = None
        self.client = 0

    def add(self, value):
        leaves = structure.flatten_value(value, self.value_type)
        for leaf, width, leaf_type in zip(leaves, self.widths, self.leaves):
            array = np.asarray(leaf)
            if array.size and (array.min() < 0 or array.max() >= 2**width):
                raise ValueError(
                    f"federated_secure_sum_bitwidth: client {self.client} sent values outside [0, 2**{width}) "
                    f"(min {array.min()}, max {array.max()}) in a value of type {leaf_type}"
                )
        as_int64 = [np.asarray(leaf, dtype=np.int64) for leaf in leaves]
        self.total = as_int64 if self.total is None else [t + v for t, v in zip(self.total, as_int64)]
        self.client += 1

    def result(self):
        return structure.unflatten_value(
            self.value_type,
            [np.asarray(t, dtype=leaf.dtype.as_numpy_dtype) for t, leaf in zip(self.total, self.leaves)],
        )


# ----------------------------------------------------------------------------------------------
# The interpreter


class _Run:
    """One invocation of a federated computation."""

    def __init__(self, context: "LocalExecutionContext", num_clients: Optional[int]):
        self.context = context
        self.num_clients = num_clients
        self.pending: list = []
        self.passes = 0

    # Passes over the clients ------------------------------------------------------------------

    def defer(self, sources: list, accumulator_fn: Callable) -> Deferred:
        deferred = Deferred(self, sources, accumulator_fn)
        self.pending.append(deferred)
        return deferred

    def _count(self, sources: list) -> int:
        counts = {s.count for s in sources if s.count is not None}
        if len(counts) > 1:
            raise ValueError(f"client values with different numbers of clients meet in one aggregation: {sorted(counts)}")
        if counts:
            return counts.pop()
        if self.num_clients is not None:
            return self.num_clients
        raise ValueError(
            "the number of clients is unknown: no CLIENTS-placed argument was given; pass client values "
            "or create the context with LocalExecutionContext(default_num_clients=N)"
        )

    def run_pass_for(self, target: Deferred) -> None:
        """Computes `target`, together with every other pending aggregation that is ready."""
        for source in target.sources:
            for dependency in source.dependencies():
                dependency.force()
        if target.done:
            return
        ready = [d for d in self.pending if not d.done and d.ready()]
        if target not in ready:
            raise RuntimeError("internal error: an aggregation is not ready after its inputs were computed")
        self.pending = [d for d in self.pending if d not in ready]
        self._run_pass(ready)

    def _run_pass(self, pending: list) -> None:
        self.passes += 1
        sources = [source for d in pending for source in d.sources]
        count = self._count(sources)
        accumulators = [d.accumulator_fn() for d in pending]
        arity = [len(d.sources) for d in pending]

        def client_task(index: int) -> list:
            memo: dict = {}
            return [source.compute(index, memo) for source in sources]

        for values in self.context._ordered_map(client_task, count):
            position = 0
            for accumulator, n in zip(accumulators, arity):
                accumulator.add(*values[position:position + n])
                position += n
        for deferred, accumulator in zip(pending, accumulators):
            deferred.value = accumulator.result()
            deferred.done = True
            deferred.thunk = None

    # Evaluation ------------------------------------------------------------------------------

    def evaluate(self, block: bb.BuildingBlock, env: Environment) -> Any:
        if isinstance(block, bb.Reference):
            return env.lookup(block.name)
        if isinstance(block, bb.Call):
            if isinstance(block.function, bb.Intrinsic):
                argument = self.evaluate(block.argument, env)
                return self._intrinsic(block.function, block.argument, argument)
            function = self.evaluate(block.function, env)
            argument = None if block.argument is None else self.evaluate(block.argument, env)
            return function(argument)
        if isinstance(block, bb.Block):
            inner = Environment(env)
            for name, value in block.locals:
                inner.bind(name, self.evaluate(value, inner))
            return self.evaluate(block.result, inner)
        if isinstance(block, bb.Lambda):
            return _Closure(block, env, self)
        if isinstance(block, bb.Compiled):
            return _TensorFlowFunction(block.computation)
        if isinstance(block, bb.Struct):
            return structure.pack_struct(block.type_signature, [self.evaluate(e, env) for _, e in block.elements])
        if isinstance(block, bb.Selection):
            source = self.evaluate(block.source, env)
            source_type = block.source.type_signature
            if isinstance(source, Lazy):
                return Lazy(lambda: structure.struct_elements(source.force(), source_type)[block.index])
            return structure.struct_elements(source, source_type)[block.index]
        if isinstance(block, bb.Intrinsic):
            raise TypeError(f"the intrinsic {block.uri} can only be called, not used as a value, in the local context")
        raise TypeError(f"cannot evaluate {type(block).__name__}")

    def _elements(self, argument_block: bb.BuildingBlock, argument: Any) -> list:
        return structure.struct_elements(argument, argument_block.type_signature)

    def _intrinsic(self, intrinsic: bb.Intrinsic, argument_block: bb.BuildingBlock, argument: Any) -> Any:
        uri = intrinsic.uri
        result_type = intrinsic.type_signature.result
        if uri == ops.FEDERATED_VALUE:
            return AllEqualClients(argument) if result_type.placement is CLIENTS else argument
        if uri == ops.FEDERATED_BROADCAST:
            return AllEqualClients(argument)
        if uri == ops.FEDERATED_MAP:
            fn, value = self._elements(argument_block, argument)
            if result_type.placement is SERVER:
                return Lazy(lambda: fn(_force_all(value)))
            return MappedClients(fn, self._clients(value))
        if uri == ops.FEDERATED_EVAL:
            fn = argument
            if result_type.placement is SERVER:
                return Lazy(lambda: fn(None))
            return EvalClients(lambda: fn(None))
        if uri == ops.FEDERATED_ZIP:
            value_type = argument_block.type_signature
            elements = structure.struct_elements(argument, value_type)
            if result_type.placement is SERVER:
                return Lazy(lambda: structure.pack_struct(result_type.member, [_force_all(e) for e in elements]))
            return ZippedClients([self._clients(e) for e in elements], result_type.member)
        if uri == ops.FEDERATED_SUM:
            member = result_type.member
            return self.defer([self._clients(argument)], lambda: _SumAccumulator(member))
        if uri == ops.FEDERATED_MEAN:
            member = result_type.member
            return self.defer([self._clients(argument)], lambda: _MeanAccumulator(member, weighted=False))
        if uri == ops.FEDERATED_WEIGHTED_MEAN:
            value, weight = self._elements(argument_block, argument)
            member = result_type.member
            return self.defer([self._clients(value), self._clients(weight)], lambda: _MeanAccumulator(member, weighted=True))
        if uri == ops.FEDERATED_AGGREGATE:
            value, zero, accumulate, merge, report = self._elements(argument_block, argument)
            group_size = self.context.aggregation_group_size
            return self.defer(
                [self._clients(value)],
                lambda: _AggregateAccumulator(_force_all(zero), accumulate, merge, report, group_size),
            )
        if uri == ops.FEDERATED_SECURE_SUM_BITWIDTH:
            value, bitwidth = self._elements(argument_block, argument)
            member = result_type.member
            return self.defer([self._clients(value)], lambda: _SecureSumAccumulator(member, bitwidth))
        if uri in (ops.SEQUENCE_MAP, ops.SEQUENCE_REDUCE, ops.SEQUENCE_SUM):
            return self._sequence(uri, intrinsic, argument_block, argument)
        raise NotImplementedError(f"the local context does not know the intrinsic {uri!r}")

    def _clients(self, value: Any) -> ClientValues:
        if isinstance(value, ClientValues):
            return value
        raise TypeError(f"expected a CLIENTS-placed value at run time, found {type(value).__name__}")

    def _sequence(self, uri: str, intrinsic: bb.Intrinsic, argument_block: bb.BuildingBlock, argument: Any) -> Any:
        parameter_type = intrinsic.type_signature.parameter
        if uri == ops.SEQUENCE_MAP:
            fn, sequence = self._elements(argument_block, argument)
            sequence_type = parameter_type[1]
            apply = lambda s: _sequence_map(fn.computation, s)  # noqa: E731
        elif uri == ops.SEQUENCE_REDUCE:
            sequence, zero, fn = self._elements(argument_block, argument)
            sequence_type = parameter_type[0]
            zero = _force_all(zero)
            apply = lambda s: _sequence_reduce(s, zero, fn.computation)  # noqa: E731
        else:
            sequence = argument
            sequence_type = parameter_type
            element_type = sequence_type.member.element if isinstance(sequence_type, ft.FederatedType) else sequence_type.element
            apply = lambda s: _sequence_sum(s, element_type)  # noqa: E731
        if isinstance(sequence_type, ft.FederatedType) and sequence_type.placement is CLIENTS:
            return MappedClients(apply, self._clients(sequence))
        if isinstance(sequence_type, ft.FederatedType):
            return Lazy(lambda: apply(_force_all(sequence)))
        return apply(_force_all(sequence))


def _element_argument(elements: tuple) -> Any:
    return elements[0] if len(elements) == 1 else elements


def _sequence_map(computation: tfc.TensorFlowComputation, dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda *element: computation.call_in_graph(_element_argument(element)))


def _sequence_reduce(dataset: tf.data.Dataset, zero: Any, computation: tfc.TensorFlowComputation) -> Any:
    zero_tensors = tf.nest.map_structure(tf.constant, zero)
    result = dataset.reduce(zero_tensors, lambda state, element: computation.call_in_graph((state, element)))
    return tf.nest.map_structure(lambda t: t.numpy(), result)


def _sequence_sum(dataset: tf.data.Dataset, element_type: ft.Type) -> Any:
    leaves = ft.flatten_type(element_type)
    if any(leaf.shape is None or None in leaf.shape for leaf in leaves):
        raise ValueError(f"sequence_sum needs elements of fully known shape, got {element_type}")
    zero = structure.unflatten_value(element_type, [tf.zeros(leaf.shape, leaf.dtype) for leaf in leaves])
    result = dataset.reduce(zero, lambda total, element: tf.nest.map_structure(tf.add, total, element))
    return tf.nest.map_structure(lambda t: t.numpy(), result)


# ----------------------------------------------------------------------------------------------


class LocalExecutionContext:
    """Runs computations in this process (the default context).

    Args:
      max_parallel_clients: threads running client work at once (default: the CPU count).
        Results do not depend on it.
      aggregation_group_size: clients folded into one accumulator before `merge` combines it
        with the others in `federated_aggregate`.
      default_num_clients: the number of clients when a computation has no CLIENTS-placed
        argument to count them from.
    """

    def __init__(
        self,
        max_parallel_clients: Optional[int] = None,
        aggregation_group_size: int = 16,
        default_num_clients: Optional[int] = None,
    ):
        if aggregation_group_size < 1:
            raise ValueError(f"aggregation_group_size must be at least 1, got {aggregation_group_size}")
        self.max_parallel_clients = max_parallel_clients or os.cpu_count() or 1
        self.aggregation_group_size = aggregation_group_size
        self.default_num_clients = default_num_clients
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    def _ordered_map(self, fn: Callable, count: int) -> Iterator:
        """`fn(i)` for i in range(count), in order, with a bounded window of parallel tasks."""
        if self.max_parallel_clients <= 1 or count <= 1:
            for index in range(count):
                yield fn(index)
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.max_parallel_clients, thread_name_prefix="fedsim-client")
        window = 2 * self.max_parallel_clients
        futures: collections.deque = collections.deque()
        next_index = 0
        try:
            while next_index < count or futures:
                while next_index < count and len(futures) < window:
                    futures.append(self._pool.submit(fn, next_index))
                    next_index += 1
                yield futures.popleft().result()
        finally:
            for future in futures:
                future.cancel()

    def invoke(self, computation: Any, argument: Any) -> Any:
        if isinstance(computation, tfc.TensorFlowComputation):
            parameter = computation.type_signature.parameter
            value = None if parameter is None else structure.check_and_normalize(
                argument, parameter, f"the argument of {computation.name}"
            )
            return computation.call_value(value)
        if not isinstance(computation, fc.FederatedComputation):
            raise TypeError(f"the local context cannot run {computation!r}")
        parameter = computation.type_signature.parameter
        counts: dict = {}
        value = None if parameter is None else _ingest(argument, parameter, computation.name, "", counts)
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{where or 'the argument'} has {n}" for where, n in counts.items())
            raise ValueError(f"{computation.name}: the CLIENTS-placed arguments have different numbers of clients: {listing}")
        num_clients = next(iter(counts.values()), self.default_num_clients)
        run = _Run(self, num_clients)
        function = run.evaluate(computation.ir, Environment())
        result = function(value)
        return _finalize(run, result, computation.type_signature.result)


def _finalize(run: _Run, value: Any, value_type: ft.Type) -> Any:
    if isinstance(value_type, ft.FederatedType):
        if value_type.placement is CLIENTS:
            if isinstance(value, AllEqualClients):
                return _finalize(run, _force_all(value.value), value_type.member)
            count = run._count([value])
            return [value.compute(index, {}) for index in range(count)]
        return _finalize(run, _force_all(value), value_type.member)
    if isinstance(value, Lazy):
        value = value.force()
    if isinstance(value_type, ft.StructType):
        elements = structure.struct_elements(value, value_type)
        return structure.pack_struct(value_type, [_finalize(run, e, t) for e, t in zip(elements, value_type)])
    if isinstance(value_type, ft.TensorType) and isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def _is_client_sequence(value: Any) -> bool:
    """A list, tuple or lazy sequence (`__len__` + `__getitem__`) of client members."""
    if isinstance(value, (dict, str, bytes, np.ndarray)) or hasattr(type(value), "_fields"):
        return False
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


def _ingest(value: Any, value_type: ft.Type, name: str, path: str, counts: dict) -> Any:
    """Checks a Python argument against a (possibly federated) type; builds runtime values."""
    what = f"the argument{path and ' ' + path} of {name}"
    if isinstance(value_type, ft.FederatedType):
        if value_type.placement is SERVER or value_type.all_equal:
            member = structure.check_and_normalize(value, value_type.member, what)
            return member if value_type.placement is SERVER else AllEqualClients(member)
        if not _is_client_sequence(value):
            raise structure.mismatch_error(
                what, value_type, value,
                f"a CLIENTS-placed value is given as a list with one member per client, not as {structure.describe_value_type(value)}",
            )
        if len(value) == 0:
            raise ValueError(f"{what} is an empty list of clients; a federated computation needs at least one client")
        counts[path] = len(value)
        if isinstance(value, (list, tuple)):
            members = [structure.check_and_normalize(m, value_type.member, f"client {i} of {what}") for i, m in enumerate(value)]
            return ListClients(members, value_type.member, what, checked=True)
        return ListClients(value, value_type.member, what, checked=False)
    if isinstance(value_type, ft.StructType) and any(
        isinstance(leaf, ft.FederatedType) for leaf in _federated_elements(value_type)
    ):
        try:
            elements = structure.struct_elements(value, value_type)
        except structure._Mismatch as mismatch:
            raise structure.mismatch_error(what, value_type, value, mismatch.reason) from None
        ingested = []
        for index, ((element_name, element_type), element) in enumerate(zip(value_type.elements, elements)):
            part = element_name if element_name is not None else f"[{index}]"
            ingested.append(_ingest(element, element_type, name, f"{path}.{part}" if path else part, counts))
        return structure.pack_struct(value_type, ingested, like=value)
    return structure.check_and_normalize(value, value_type, what)


def _federated_elements(value_type: ft.StructType) -> list:
    found = []
    for element in value_type:
        if isinstance(element, ft.StructType):
            found.extend(_federated_elements(element))
        else:
            found.append(element)
    return found

