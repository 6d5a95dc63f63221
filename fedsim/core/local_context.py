"""The local simulation context: runs computations in this process.

CLIENTS-placed arguments are Python sequences with one member per client; SERVER values are
numpy/Python structures. Client values are recipes computed client by client (`values`), and
aggregations are *deferred* until the server needs one of them. Then one pass over the clients
feeds every pending aggregation together, so the client work shared by several aggregations
runs once, and memory stays O(value), not O(clients x value). Client work in a pass runs on a
small thread pool (TensorFlow releases the GIL), in a bounded window, and is accumulated in
client order, so results do not depend on the number of threads.

The IR is interpreted by the shared `evaluator.Evaluator`; this module only says what values
are here (`LocalDomain`), and aggregations stream through the same definitions the compiler
uses (`aggregations`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from typing import Any, Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from fedsim.core import aggregations
from fedsim.core import evaluator as evaluator_lib
from fedsim.core import intrinsic_defs as defs
from fedsim.core import op_threads
from fedsim.core import sequences
from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.secagg.runtime import secure_sum_runtime
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.values import (
    AllEqualClients, ClientValues, Deferred, EvalClients, Lazy, ListClients, MappedClients, ZippedClients,
    force_all, waits_for_a_pass,
)

__all__ = ["LocalExecutionContext", "LocalDomain"]


class _TensorFlowFunction:
    """A TensorFlow computation as a local function value. Results stay eager tensors until the
    computation's result is finalized, so one graph's output feeds the next without copies."""

    def __init__(self, computation: tfc.TensorFlowComputation):
        self.computation = computation

    def __call__(self, argument: Any) -> Any:
        return self.computation.call_value(force_all(argument), as_numpy=False)


def _clients(value: Any) -> ClientValues:
    if isinstance(value, ClientValues):
        return value
    raise TypeError(f"expected a CLIENTS-placed value at run time, found {type(value).__name__}")


class LocalDomain:
    """Concrete values for the evaluator; one per invocation (it holds the pending aggregations)."""

    def __init__(self, context: "LocalExecutionContext", num_clients: Optional[int]):
        self.context = context
        self.num_clients = num_clients
        self.pending: list = []
        self.passes = 0

    # Values ---------------------------------------------------------------------------------------

    def compiled(self, computation: Any) -> Any:
        return _TensorFlowFunction(computation)

    def struct(self, values: list, struct_type: ft.StructType) -> Any:
        return structure.pack_struct(struct_type, values)

    def select(self, value: Any, index: int, source_type: ft.Type, result_type: ft.Type) -> Any:
        if isinstance(value, Lazy):
            return Lazy(lambda: structure.struct_elements(value.force(), source_type)[index], inputs=[value])
        return structure.struct_elements(value, source_type)[index]

    def elements(self, value: Any, struct_type: ft.StructType) -> list:
        return structure.struct_elements(value, struct_type)

    def call(self, function: Any, argument: Any, result_type: ft.Type) -> Any:
        return function(argument)

    # Intrinsics, by category ------------------------------------------------------------------------

    def intrinsic(self, definition: defs.IntrinsicDef, function_type: ft.FunctionType, argument: Any,
                  evaluator: evaluator_lib.Evaluator) -> Any:
        category = definition.category
        parameter_type, result_type = function_type.parameter, function_type.result
        at_server = isinstance(result_type, ft.FederatedType) and result_type.placement is SERVER
        if category == "place":
            return argument if at_server else AllEqualClients(argument)
        if category == "broadcast":
            return AllEqualClients(argument)
        if category == "map":
            fn, value = self.elements(argument, parameter_type)

            def apply(member, fn=fn):
                return evaluator.apply(fn, member, result_type.member)

            if at_server:
                return Lazy(lambda: apply(force_all(value)), inputs=[fn, value])
            return MappedClients(apply, _clients(value))
        if category == "eval":
            def run(fn=argument):
                return evaluator.apply(fn, None, result_type.member)

            return Lazy(run, inputs=[argument]) if at_server else EvalClients(run)
        if category == "zip":
            elements = self.elements(argument, parameter_type)
            if at_server:
                return Lazy(lambda: structure.pack_struct(result_type.member, [force_all(e) for e in elements]), inputs=elements)
            return ZippedClients([_clients(e) for e in elements], result_type.member)
        if category == "aggregation":
            return self._aggregation(definition, function_type, argument, evaluator)
        if category.startswith("sequence_"):
            return self._sequence(category, function_type, argument)
        raise NotImplementedError(f"the local context has no rule for intrinsics of category {category!r}")

    def _aggregation(self, definition, function_type, argument, evaluator) -> Deferred:
        parameter_type = function_type.parameter
        if not definition.client_values:
            sources, operands = [_clients(argument)], []
        else:
            elements = self.elements(argument, parameter_type)
            count = definition.client_values
            sources, operands = [_clients(e) for e in elements[:count]], elements[count:]
        if definition.operands == "functions":
            zero = operands[0]
            operands = [lambda: force_all(zero)] + operands[1:]
        elif definition.operands == "constant":
            operands = [force_all(operands[0])]

        def call(fn, value):
            return evaluator.apply(fn, value, None)

        group_size = self.context.aggregation_group_size

        def accumulator():
            built = definition.aggregation(parameter_type, function_type.result, operands, call)
            if isinstance(built, aggregations.SecureSum):
                return self.context.secure_aggregation.accumulator(built, group_size)
            return aggregations.streaming(built, group_size)

        deferred = Deferred(self.run_pass_for, sources, accumulator)
        self.pending.append(deferred)
        return deferred

    def _sequence(self, category: str, function_type: ft.FunctionType, argument: Any) -> Any:
        parameter_type = function_type.parameter
        if category == "sequence_map":
            fn, sequence = self.elements(argument, parameter_type)
            sequence_type = parameter_type[1]
            apply = lambda s: _sequence_map(fn.computation, s)  # noqa: E731
        elif category == "sequence_reduce":
            sequence, zero, fn = self.elements(argument, parameter_type)
            sequence_type, zero_type = parameter_type[0], parameter_type[1]
            zero = force_all(zero)
            apply = lambda s: _sequence_reduce(s, zero, zero_type, fn.computation)  # noqa: E731
        else:
            sequence = argument
            sequence_type = parameter_type
            element_type = sequence_type.member.element if isinstance(sequence_type, ft.FederatedType) else sequence_type.element
            apply = lambda s: _sequence_sum(s, element_type)  # noqa: E731
        if isinstance(sequence_type, ft.FederatedType) and sequence_type.placement is CLIENTS:
            return MappedClients(apply, _clients(sequence))
        if isinstance(sequence_type, ft.FederatedType):
            return Lazy(lambda: apply(force_all(sequence)), inputs=[sequence])
        return apply(force_all(sequence))

    # Passes over the clients ----------------------------------------------------------------------

    def count(self, sources: list) -> int:
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
        # The server values other pending aggregations wait for that need no pass (e.g. a
        # bound computed from the state and broadcast): computed now, so those aggregations join
        # this pass rather than each needing a pass over the clients of its own.
        for other in list(self.pending):
            for source in () if other.done else other.sources:
                for dependency in source.dependencies():
                    if not waits_for_a_pass(dependency):
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
        count = self.count(sources)
        accumulators = [d.accumulator_fn() for d in pending]
        arity = [len(d.sources) for d in pending]

        given = _with_datasets([g for source in sources for g in source.given()])
        prepared: dict = {}  # client index -> its datasets read ahead (dropped once its task ran)

        def read_ahead(index: int) -> dict:
            """Client `index`'s given values, each dataset in them iterated once (`sequences`)."""
            memo: dict = {}
            for source in given:
                member = source.compute(index, memo)
                for dataset, element_type in _datasets_in(member, source.member_type):
                    prepared.setdefault(index, []).append(dataset)
                    sequences.prepare(dataset, element_type, self.context.client_data_budget_bytes,
                                      f"client {index}'s dataset in {source.what}")
            return memo

        def client_task(index: int, memo: Optional[dict] = None) -> list:
            memo = {} if memo is None else memo  # one memo per client: shared work runs once
            try:
                return [source.compute(index, memo) for source in sources]
            finally:  # what the task did not take is dropped: memory stays a window of clients
                sequences.discard_prepared(prepared.pop(index, []))

        try:
            for values in self.context.ordered_map(client_task, count, read_ahead if given else None):
                position = 0
                for accumulator, n in zip(accumulators, arity):
                    accumulator.add(values[position] if n == 1 else tuple(values[position:position + n]))
                    position += n
        finally:
            for datasets in list(prepared.values()):
                sequences.discard_prepared(datasets)
        for deferred, accumulator in zip(pending, accumulators):
            deferred.value = accumulator.result()
            deferred.done = True
            deferred.thunk = None


def _dataset_paths(value_type: ft.Type) -> bool:
    return any(isinstance(leaf, ft.SequenceType) and sequences.has_fast_form(leaf) for leaf in ft.flatten_type(value_type))


def _with_datasets(given: list) -> list:
    """The distinct given values whose members hold datasets the fast form can take."""
    unique = {id(g): g for g in given}
    return [g for g in unique.values() if _dataset_paths(g.member_type)]


def _datasets_in(member: Any, member_type: ft.Type) -> list:
    """`(dataset, element type)` for each sequence leaf of a client's member."""
    found = []
    for leaf_type, leaf in zip(ft.flatten_type(member_type), structure.flatten_value(member, member_type)):
        if isinstance(leaf_type, ft.SequenceType) and isinstance(leaf, tf.data.Dataset) and sequences.has_fast_form(leaf_type):
            found.append((leaf, leaf_type.element))
    return found


def _element_argument(elements: tuple) -> Any:
    return elements[0] if len(elements) == 1 else elements


def _sequence_map(computation: tfc.TensorFlowComputation, dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda *element: computation.call_in_graph(_element_argument(element)))


def _numpy(value_type: ft.Type, value: Any) -> Any:
    return structure.map_structure(lambda _, leaf: leaf.numpy(), value_type, value)


def _tf_data_form(value: Any) -> Any:
    """A structure as tf.data nests it: lists (which tf.data stacks into one tensor) as tuples."""
    if isinstance(value, list):
        return tuple(_tf_data_form(v) for v in value)
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return type(value)(*[_tf_data_form(v) for v in value])
    if isinstance(value, tuple):
        return tuple(_tf_data_form(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _tf_data_form(v)) for k, v in value.items())
    return value


def _sequence_reduce(dataset: tf.data.Dataset, zero: Any, zero_type: ft.Type, computation: tfc.TensorFlowComputation) -> Any:
    zero_tensors = structure.map_structure(lambda leaf_type, leaf: tf.constant(leaf, leaf_type.dtype), zero_type, zero)
    result = dataset.reduce(_tf_data_form(zero_tensors),
                            lambda state, element: _tf_data_form(computation.call_in_graph((state, element))))
    return _numpy(zero_type, result)


def _sequence_sum(dataset: tf.data.Dataset, element_type: ft.Type) -> Any:
    leaves = ft.flatten_type(element_type)
    if any(leaf.shape is None or None in leaf.shape for leaf in leaves):
        raise ValueError(f"sequence_sum needs elements of fully known shape, got {element_type}")
    zero = structure.unflatten_value(element_type, [tf.zeros(leaf.shape, leaf.dtype) for leaf in leaves])
    result = dataset.reduce(zero, lambda total, element: structure.map_structure(lambda _, a, b: a + b, element_type, total, element))
    return _numpy(element_type, result)


# ----------------------------------------------------------------------------------------------


class LocalExecutionContext:
    """Runs computations in this process (the default context).

    Args:
      max_parallel_clients: threads running client work at once (default: the CPU count).
        Results do not depend on it. Created before TensorFlow's runtime starts (the default
        context is, at import), the context also gives each of these clients its share of the
        cores for its ops (`fedsim.core.op_threads`), unless the user sized TensorFlow's
        threads first (`TF_NUM_INTRAOP_THREADS`, `tf.config.threading`).
      aggregation_group_size: clients folded into one accumulator before `merge` combines it
        with the others in `federated_aggregate`.
      default_num_clients: the number of clients when a computation has no CLIENTS-placed
        argument to count them from.
      client_data_budget_bytes: the most memory one client's dataset may take when it is
        read ahead as tensors (`fedsim.core.sequences`); a larger one streams through
        tf.data instead (same result, slower).
      secure_aggregation: how the secure-sum intrinsics are computed: `"exact"` (the default:
        the exact sum), `"protocol"` or a `fedsim.core.secagg.runtime.SecureSumProtocol`
        (SecAgg/SecAgg+ run among the simulated clients, to measure its cost and dropouts).

    Clients' datasets are iterated once each, on producer threads a few clients ahead of
    training, and handed to the computations as tensors.
    """

    def __init__(
        self,
        max_parallel_clients: Optional[int] = None,
        aggregation_group_size: int = 16,
        default_num_clients: Optional[int] = None,
        client_data_budget_bytes: int = sequences.DEFAULT_BUDGET_BYTES,
        secure_aggregation: Any = "exact",
    ):
        if aggregation_group_size < 1:
            raise ValueError(f"aggregation_group_size must be at least 1, got {aggregation_group_size}")
        self.max_parallel_clients = max_parallel_clients or os.cpu_count() or 1
        op_threads.size_for_parallel_clients(self.max_parallel_clients)
        self.aggregation_group_size = aggregation_group_size
        self.default_num_clients = default_num_clients
        self.client_data_budget_bytes = client_data_budget_bytes
        self.secure_aggregation = secure_sum_runtime(secure_aggregation)
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._reader: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    def _executors(self) -> tuple:
        with self._pool_lock:
            if self._pool is None and self.max_parallel_clients > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.max_parallel_clients, thread_name_prefix="fedsim-client")
            if self._reader is None:
                self._reader = concurrent.futures.ThreadPoolExecutor(self.max_parallel_clients, thread_name_prefix="fedsim-data")
        return self._pool, self._reader

    def ordered_map(self, fn: Callable, count: int, read_ahead: Optional[Callable] = None) -> Iterator:
        """`fn(i)` for i in range(count), in order, with a bounded window of parallel tasks.

        With `read_ahead`, `read_ahead(i)` runs first on producer threads, started in order a
        bounded window ahead, and its result is passed on: `fn(i, read_ahead(i))`.

        Args:
            fn: the task, `fn(i)` or `fn(i, read)`.
            count: the number of tasks.
            read_ahead: an optional reader run ahead on producer threads.

        Yields:
            The tasks' results in index order.
        """
        pool, reader = self._executors()
        window = 2 * self.max_parallel_clients
        reads: collections.deque = collections.deque()
        next_read = 0

        def read_until(index: int) -> None:
            nonlocal next_read
            while read_ahead is not None and next_read < min(count, index + window + 1):
                reads.append(reader.submit(read_ahead, next_read))
                next_read += 1

        def task_args(index: int) -> tuple:
            if read_ahead is None:
                return (index,)
            read_until(index)
            return (index, reads.popleft())

        def run(index: int, read: Optional[concurrent.futures.Future] = None) -> Any:
            return fn(index) if read is None else fn(index, read.result())

        futures: collections.deque = collections.deque()
        try:
            if pool is None or count <= 1:
                for index in range(count):
                    yield run(*task_args(index))
                return
            next_index = 0
            while next_index < count or futures:
                while next_index < count and len(futures) < window:
                    futures.append(pool.submit(run, *task_args(next_index)))
                    next_index += 1
                yield futures.popleft().result()
        finally:
            for future in futures:
                future.cancel()
            # a read already running finishes before the caller drops what was read ahead
            concurrent.futures.wait([read for read in reads if not read.cancel()])

    def invoke(self, computation: Any, argument: Any) -> Any:
        """Runs `computation` on `argument` in this process.

        The execution-context entry point: calling a computation ends here.

        Args:
            computation: a `TensorFlowComputation` or `FederatedComputation`.
            argument: its argument (CLIENTS-placed values are lists, one item per client), or None.

        Returns:
            The result; CLIENTS-placed results are lists, one item per client.

        Raises:
            TypeError: if `computation` is not a fedsim computation.
            ValueError: if CLIENTS-placed arguments have different numbers of clients.
            structure.TypeSignatureMismatchError: if the argument does not fit the parameter type.
        """
        if isinstance(computation, tfc.TensorFlowComputation):
            parameter = computation.type_signature.parameter
            value = None if parameter is None else structure.check_and_normalize(
                argument, parameter, f"the argument of {computation.name}"
            )
            return computation.call_value(value)
        if not isinstance(computation, FederatedComputation):
            raise TypeError(f"the local context cannot run {computation!r}")
        parameter = computation.type_signature.parameter
        counts: dict = {}
        value = None if parameter is None else _ingest(argument, parameter, computation.name, "", counts)
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{where or 'the argument'} has {n}" for where, n in counts.items())
            raise ValueError(f"{computation.name}: the CLIENTS-placed arguments have different numbers of clients: {listing}")
        num_clients = next(iter(counts.values()), self.default_num_clients)
        domain = LocalDomain(self, num_clients)
        result = evaluator_lib.Evaluator(domain).run(computation.ir, value)
        return _finalize(domain, result, computation.type_signature.result)


def _finalize(domain: LocalDomain, value: Any, value_type: ft.Type) -> Any:
    if isinstance(value_type, ft.FederatedType):
        if value_type.placement is CLIENTS:
            if isinstance(value, AllEqualClients):
                return _finalize(domain, force_all(value.value), value_type.member)
            count = domain.count([value])
            return [_finalize(domain, value.compute(index, {}), value_type.member) for index in range(count)]
        return _finalize(domain, force_all(value), value_type.member)
    if isinstance(value, Lazy):
        value = value.force()
    if isinstance(value_type, ft.StructType):
        elements = structure.struct_elements(value, value_type)
        return structure.pack_struct(value_type, [_finalize(domain, e, t) for e, t in zip(elements, value_type)])
    if isinstance(value_type, ft.TensorType) and isinstance(value, tf.Tensor):
        value = value.numpy()
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
        except structure.TypeSignatureMismatchError as mismatch:
            raise structure.mismatch_error(what, value_type, value, str(mismatch)) from None
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

