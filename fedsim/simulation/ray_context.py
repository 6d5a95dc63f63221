"""Simulation past one machine: client work on a Ray cluster, the same computations, the same loop.

`RayExecutionContext` is an execution context like `LocalExecutionContext`: install it with
`fedsim.execution_context(ctx)` or `fedsim.set_default_context(ctx)` and `process.next(state,
client_datasets)` runs its client work on Ray actors. A computation that has a canonical form
(one round: prepare, work on each client, aggregations, update; every learning process's `next`
has one) runs as:

1. `prepare` on the driver; the broadcast goes into Ray's object store once per round;
2. the clients are cut into chunks in client order; each chunk's client work runs on an actor,
   which keeps the chunk's outputs. The work computation travels as its serialized bytes (once
   per actor) and is checked against the op allowlist when the actor deserializes it, as a silo
   does;
3. the aggregation runs as a chain over the chunks, in client order: each actor folds its
   chunk's outputs into the accumulator the previous chunk's actor handed on, so the driver
   receives one accumulator (O(model)) per round, and the arithmetic is the local context's:
   one fold over the clients in order;
4. `report` and `update` on the driver.

Any other computation runs in a local context on the driver.

Data: datasets built on the driver are iterated there once (as the local context's producer
does) and shipped as tensors; `WorkerClientData(open_fn)` instead opens a `ClientData` on each
actor (`open_fn` runs there: an SQLite file on shared storage, a loader) and builds each client's
dataset where it trains.

Faults: an actor process or node that dies mid-round is replaced; the chunks it held are trained
again on the actors alive and the chain is folded again from the start (the same result: client
work is deterministic given its input). A client whose work raises (bad data) fails the round
with `ClientWorkError`, naming the client and the reason, without retries.

Resources: `num_actors`, `cpus_per_actor` (TensorFlow in each actor uses that many threads),
`gpus_per_actor`, `memory_per_actor` (bytes, Ray's memory resource).

Example::

    context = fedsim.simulation.RayExecutionContext(num_actors=4)
    with fedsim.execution_context(context):
        state = process.next(state, client_datasets).state
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import uuid
from typing import Any, Callable, Optional, Sequence

import attrs
import numpy as np
import tensorflow as tf
from absl import logging

from fedsim.core import canonical_form, compiler, op_threads, phase_runner, sequences, structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.local_context import LocalExecutionContext
from fedsim.core.serialization import computation_hash, deserialize_computation, serialize_computation

__all__ = ["RayExecutionContext", "WorkerClientData", "WorkerDataset", "ClientWorkError"]

_WORK_PHASES = ("work", "zero", "accumulate")


class ClientWorkError(RuntimeError):
    """A client's work failed deterministically (its data or the computation): the round fails.

    Attributes:
        client: the client's index in the round (and its id, for worker-opened data).
        reason: what the work raised.
    """

    def __init__(self, client: str, reason: str):
        super().__init__(client, reason)  # both in args: the error crosses processes pickled
        self.client, self.reason = client, reason

    def __str__(self) -> str:
        return f"client {self.client}: its work failed: {self.reason}"


@attrs.frozen
class WorkerClientData:
    """A `ClientData` opened on each Ray actor: `open_fn()` runs there (once per actor).

    Args:
        open_fn: returns a `ClientData` (e.g. `lambda: SqlClientData(path, ...)` over shared
            storage, or an in-memory one built from a loader). It is pickled to the workers.

    Example::

        train = WorkerClientData(lambda: fedsim.simulation.datasets.emnist.load_data(cache_dir=shared)[0])
        output = process.next(state, train.datasets(["f0000_14", "f0001_41"]))
    """

    open_fn: Callable[[], Any]
    key: str = attrs.field(factory=lambda: uuid.uuid4().hex, eq=False)  # the same source across pickled copies

    def datasets(self, client_ids: Sequence[str]) -> list:
        """Stand-ins for the clients' datasets (`create_tf_dataset_for_client` runs on the actor).

        Args:
            client_ids: the clients of the round.

        Returns:
            One `WorkerDataset` per client, to pass where the datasets go.
        """
        return [WorkerDataset(self, str(client_id)) for client_id in client_ids]


@attrs.frozen
class WorkerDataset:
    """Client `client_id`'s dataset of `source`, built on the actor that trains it."""

    source: WorkerClientData
    client_id: str


def _ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError("RayExecutionContext needs Ray: pip install 'fedsim[ray]'") from error
    return ray


# What travels to the actors ---------------------------------------------------------------------

def _pack_input(member: Any, input_type: ft.Type, budget: int, what: str) -> tuple:
    """One client's input as picklable data: ("worker", source, id) or ("values", leaves), each
    sequence leaf as its elements' tensors (`sequences.materialize`) in numpy."""
    if isinstance(member, WorkerDataset):
        if not isinstance(input_type, ft.SequenceType):
            raise TypeError(f"{what}: a WorkerDataset stands for a dataset, but the client input type is {input_type}")
        return ("worker", member.source, member.client_id)
    member = structure.check_and_normalize(member, input_type, what)
    leaves = []
    for leaf_type, leaf in zip(ft.flatten_type(input_type), structure.flatten_value(member, input_type)):
        if isinstance(leaf_type, ft.SequenceType):
            tensors = sequences.materialize(leaf, leaf_type.element, budget, what)
            if tensors is None:
                raise ValueError(f"{what}: the dataset is larger than client_data_budget_bytes ({budget}); open it on "
                                 f"the workers with WorkerClientData instead of shipping it from the driver")
            leaves.append(("sequence", [t.numpy() for t in tensors]))
        else:
            leaves.append(("tensor", np.asarray(leaf)))
    return ("values", leaves)


def _unpack_input(packed: tuple, input_type: ft.Type, opened: dict) -> tuple:
    """`(client input, name)` on the actor, each sequence handed its tensors (not iterated again)."""
    if packed[0] == "worker":
        _, source, client_id = packed
        if source.key not in opened:  # each task brings its own unpickled copy: opened once per actor by key
            opened.clear()  # one source at a time per actor
            opened[source.key] = source.open_fn()
        return opened[source.key].create_tf_dataset_for_client(client_id), client_id
    leaves = []
    for leaf_type, (kind, value) in zip(ft.flatten_type(input_type), packed[1]):
        if kind == "sequence":
            dataset = sequences.dataset_of(value, leaf_type.element)
            sequences.provide(dataset, leaf_type.element, [tf.convert_to_tensor(t) for t in value])
            leaves.append(dataset)
        else:
            leaves.append(value)
    return structure.unflatten_value(input_type, leaves), None


class _ClientWorker:
    """A Ray actor: runs client work for chunks of clients and folds their outputs in order."""

    def __init__(self, threads: int):
        # a fresh actor process: TensorFlow has not started, so its thread pools can be sized
        if not op_threads.set_op_threads(threads, inter_op=True):
            logging.warning("RayExecutionContext: TensorFlow had started in this worker; its thread pools keep their size")
        self.phases: dict = {}  # digest -> {phase name: computation}
        self.outputs: dict = {}  # (round, chunk) -> client outputs, until the round ends
        self.opened: dict = {}

    def node(self) -> str:
        return _ray().get_runtime_context().get_node_id()

    def _load(self, digest: str, blobs: list) -> dict:
        if digest not in self.phases:
            ray = _ray()
            data = ray.get(blobs[0])
            if computation_hash(data[0]) != digest:
                raise ValueError("the work computation's bytes do not have the digest the driver announced")
            self.phases = {digest: {name: deserialize_computation(blob) for name, blob in zip(_WORK_PHASES, data)}}
        return self.phases[digest]

    def train(self, key: tuple, digest: str, blobs: list, input_type: Any, broadcast: Any, inputs: list, first: int) -> dict:
        """Trains chunk `key`'s clients and keeps their outputs as tensors. The chain's first
        chunk (`first == 0`) has nothing to wait for, so it folds each output as it comes."""
        phases = self._load(digest, blobs)
        work = phases["work"]
        broadcast = _as_tensors(broadcast, work.type_signature.parameter[1])  # converted once, not per client
        outputs: list = []
        accumulator = phases["zero"].call_value(None, as_numpy=False) if first == 0 else None
        for offset, packed in enumerate(inputs):
            index = first + offset
            try:
                client_input, client_id = _unpack_input(packed, input_type, self.opened)
                name = f"{index} ({client_id})" if client_id is not None else str(index)
                output = phase_runner.work(work, client_input, broadcast, f"client {name}'s input", as_numpy=False)
            except Exception as error:  # noqa: BLE001 - the client's failure, reported with its id
                name = f"{index} ({packed[2]})" if packed[0] == "worker" else str(index)
                raise ClientWorkError(name, f"{type(error).__name__}: {error}") from None
            if accumulator is None:
                outputs.append(output)
            else:
                accumulator = phases["accumulate"].call_value((accumulator, output), as_numpy=False)
        self.outputs[key] = (accumulator, outputs)
        return {"node": self.node(), "pid": os.getpid(), "clients": len(inputs),
                "threads": tf.config.threading.get_intra_op_parallelism_threads()}

    def fold(self, key: tuple, digest: str, accumulator: Any, trained: dict) -> Any:
        """Folds chunk `key`'s outputs into `accumulator` (None: zero), in client order, and
        returns it as numpy values (what travels to the next chunk's actor). `trained` is the
        chunk's `train` result: passing it makes the fold wait for it (and fail with its error)."""
        phases = self.phases[digest]
        folded, outputs = self.outputs[key]
        if folded is not None:  # the first chunk: folded while it trained
            accumulator = folded
        elif accumulator is None:
            accumulator = phases["zero"].call_value(None, as_numpy=False)
        for output in outputs:
            accumulator = phases["accumulate"].call_value((accumulator, output), as_numpy=False)
        result_type = phases["accumulate"].type_signature.result
        return structure.unflatten_value(result_type, [leaf.numpy() if isinstance(leaf, tf.Tensor) else leaf
                                                       for leaf in structure.flatten_value(accumulator, result_type)])

    def end_round(self, round_id: int) -> None:
        self.outputs = {key: value for key, value in self.outputs.items() if key[0] != round_id}


def _resources(resources: dict) -> str:
    return ", ".join(f"{resources.get(name, 0):g} {name}" for name in ("CPU", "GPU")) or "nothing"


# The context ------------------------------------------------------------------------------------

class RayExecutionContext:
    """Runs computations with their client work on a Ray cluster (see the module docstring).

    Args:
        address: the cluster to join (`ray.init(address=...)`); None joins the Ray already
            initialized in this process, or starts one on this machine bound to 127.0.0.1.
        num_actors: client workers (default: the cluster's CPUs over `cpus_per_actor`).
        cpus_per_actor: CPUs each actor holds; TensorFlow in it uses that many threads.
        gpus_per_actor: GPUs each actor holds (0 without GPUs).
        memory_per_actor: bytes of memory each actor reserves (None: no reservation).
        clients_per_chunk: clients an actor trains per task (None: the round's clients spread
            evenly, one chunk per actor, or two when there are 8 or more clients per actor).
        max_failures: actor or node losses a round survives before it fails.
        client_data_budget_bytes: the most one driver-built dataset may take when shipped.
        actor_start_seconds: how long the first round waits for its actors to be placed (an
            autoscaling cluster may add nodes meanwhile) before failing with the resources
            asked and those the cluster has.

    Raises:
        ImportError: Ray is not installed.
        ValueError: a number is out of range.

    Example:
        >>> with fedsim.execution_context(fedsim.simulation.RayExecutionContext(num_actors=2)):
        ...     output = process.next(state, datasets)
    """

    def __init__(self, address: Optional[str] = None, num_actors: Optional[int] = None, cpus_per_actor: float = 1.0,
                 gpus_per_actor: float = 0.0, memory_per_actor: Optional[int] = None, clients_per_chunk: Optional[int] = None,
                 max_failures: int = 3, client_data_budget_bytes: int = sequences.DEFAULT_BUDGET_BYTES,
                 actor_start_seconds: float = 120.0):
        if num_actors is not None and num_actors < 1:
            raise ValueError(f"RayExecutionContext: num_actors must be at least 1, got {num_actors}")
        if cpus_per_actor <= 0 or gpus_per_actor < 0:
            raise ValueError(f"RayExecutionContext: cpus_per_actor must be > 0 and gpus_per_actor >= 0, got "
                             f"{cpus_per_actor}, {gpus_per_actor}")
        if clients_per_chunk is not None and clients_per_chunk < 1:
            raise ValueError(f"RayExecutionContext: clients_per_chunk must be at least 1, got {clients_per_chunk}")
        self.address, self.num_actors = address, num_actors
        self.cpus_per_actor, self.gpus_per_actor, self.memory_per_actor = cpus_per_actor, gpus_per_actor, memory_per_actor
        self.clients_per_chunk, self.max_failures = clients_per_chunk, max_failures
        self.client_data_budget_bytes = client_data_budget_bytes
        self.actor_start_seconds = actor_start_seconds
        self.local = LocalExecutionContext(client_data_budget_bytes=client_data_budget_bytes)
        self.last_round_nodes: set = set()  # the nodes the last round's client work ran on
        self.last_round_workers: list = []  # per chunk: node, pid, clients, TensorFlow's threads
        self.failures_survived = 0  # actor or node losses recovered from, over the context's life
        self._actors: list = []
        self._forms: dict = {}
        self._blobs: dict = {}
        self._rounds = itertools.count(1)
        self._lock = threading.Lock()

    # set-up -----------------------------------------------------------------------------------------

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            if self.address is None:
                ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        return ray

    def _actor_class(self):
        ray = self._connect()
        options = {"num_cpus": self.cpus_per_actor, "num_gpus": self.gpus_per_actor, "scheduling_strategy": "SPREAD",
                   "max_restarts": 0}
        if self.memory_per_actor:
            options["memory"] = int(self.memory_per_actor)
        return ray.remote(**options)(_ClientWorker)

    def _new_actor(self):
        return self._actor_class().remote(max(1, int(math.ceil(self.cpus_per_actor))))

    def _ensure_actors(self) -> list:
        ray = self._connect()
        if not self._actors:
            count = self.num_actors or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_actor))
            actors = [self._new_actor() for _ in range(count)]
            # An actor the cluster cannot place waits forever: fail instead, saying why.
            placed, waiting = ray.wait([actor.node.remote() for actor in actors], num_returns=count, timeout=self.actor_start_seconds)
            if waiting:
                for actor in actors:
                    ray.kill(actor)
                raise RuntimeError(
                    f"RayExecutionContext: {len(waiting)} of {count} actors could not be placed within "
                    f"{self.actor_start_seconds:g}s: each asks for {self.cpus_per_actor:g} CPU, {self.gpus_per_actor:g} GPU"
                    f"{f', {self.memory_per_actor} bytes of memory' if self.memory_per_actor else ''}; the cluster has "
                    f"{_resources(ray.cluster_resources())} in all, {_resources(ray.available_resources())} free. "
                    f"Ask for fewer actors (num_actors=) or smaller ones (cpus_per_actor=), or add nodes")
            ray.get(placed)  # an actor that failed to start raises here
            self._actors = actors
        return self._actors

    def shutdown(self) -> None:
        """Stops the actors (the cluster keeps running)."""
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    # the context protocol ---------------------------------------------------------------------------

    def invoke(self, computation: Any, argument: Any) -> Any:
        """Runs `computation`: a round's client work on the actors, anything else on the driver.

        Args:
            computation: the computation being called.
            argument: its argument; CLIENTS-placed values are lists (datasets or `WorkerDataset`s).

        Returns:
            The result, as the local context returns it.

        Raises:
            ClientWorkError: a client's work failed.
            RuntimeError: more actors or nodes were lost in a round than `max_failures`.
        """
        form = self._form(computation)
        if form is None:
            return self.local.invoke(computation, argument)
        state, clients = structure.struct_elements(argument, computation.type_signature.parameter)
        return self._round(computation, form, state, list(clients))

    def _form(self, computation: Any) -> Optional[canonical_form.CanonicalForm]:
        if not isinstance(computation, FederatedComputation) or isinstance(computation, tfc.TensorFlowComputation):
            return None
        key = id(computation)
        if key not in self._forms:
            try:
                form = compiler.compile_to_canonical_form(computation)
            except canonical_form.CanonicalFormError as why:
                logging.info("RayExecutionContext: %s runs on the driver (%s)", computation.name, why)
                form = None
            if form is not None and any(bits is not None for bits in form.secure_bitwidths):
                form = None  # the secure sums' runtime is the local context's (exact or the protocol)
            self._forms[key] = (computation, form)
        return self._forms[key][1]

    def _phase_blobs(self, form: canonical_form.CanonicalForm) -> tuple:
        key = id(form)
        if key not in self._blobs:
            data = [serialize_computation(getattr(form, name)) for name in _WORK_PHASES]
            self._blobs[key] = (computation_hash(data[0]), [_ray().put(data)])
        return self._blobs[key]

    def _chunks(self, weights: list, actors: int) -> list:
        """Contiguous `(start, end)` ranges of clients, in order, of about equal total weight
        (`_weight`): one per actor, or two per actor when there are 8 or more clients per actor.
        Each chunk is one hop of the fold chain."""
        count = len(weights)
        if self.clients_per_chunk:
            return [(start, min(count, start + self.clients_per_chunk)) for start in range(0, count, self.clients_per_chunk)]
        parts = min(count, actors * (1 if count < 8 * actors else 2))
        prefix = np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])
        bounds = [0]
        for part in range(1, parts):  # each boundary where the running weight is nearest its share
            target = prefix[-1] * part / parts
            nearest = int(np.argmin(np.abs(prefix[bounds[-1] + 1:count - (parts - part) + 1] - target))) + bounds[-1] + 1
            bounds.append(nearest)
        bounds.append(count)
        return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]

    def _round(self, computation: Any, form: canonical_form.CanonicalForm, state: Any, clients: list) -> Any:
        ray = self._connect()
        if not clients:
            raise ValueError(f"{computation.name}: the round has no clients")
        broadcast, carry = phase_runner.prepare(form.prepare, state)
        digest, blobs = self._phase_blobs(form)
        input_type = form.client_input_type
        broadcast_ref = ray.put(broadcast)
        round_id = next(self._rounds)
        owners: dict = {}
        trained: dict = {}
        failures = 0

        def train(j: int) -> None:
            actors = self._ensure_actors()
            owners[j] = actors[j % len(actors)]
            trained[j] = owners[j].train.remote((round_id, j), digest, blobs, input_type, broadcast_ref, inputs[j], chunks[j][0])

        chunks = self._chunks([_weight(client) for client in clients], len(self._ensure_actors()))
        inputs: list = []
        for j, (start, end) in enumerate(chunks):  # each chunk trains while the driver packs the next
            inputs.append(ray.put([_pack_input(clients[i], input_type, self.client_data_budget_bytes, f"client {i}")
                                   for i in range(start, end)]))
            train(j)
        while True:
            accumulator = None
            for j in range(len(chunks)):  # the fold chain, submitted at once: Ray passes each accumulator on
                accumulator = owners[j].fold.remote((round_id, j), digest, accumulator, trained[j])
            try:
                accumulator = ray.get(accumulator)
                workers = ray.get([trained[j] for j in range(len(chunks))])
                break
            except ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None)
                cause = cause if isinstance(cause, ClientWorkError) else (error if isinstance(error, ClientWorkError) else None)
                if cause is not None:
                    self._end_round(round_id)
                    raise ClientWorkError(cause.client, cause.reason) from None
                if not _lost(ray, error):
                    raise
                failures = self._recover(ray, error, failures, chunks, owners, train)
            except ray.exceptions.RayError as error:  # an actor, its node or an object lost
                failures = self._recover(ray, error, failures, chunks, owners, train)
        self._end_round(round_id)
        self.last_round_workers = workers
        self.last_round_nodes = {worker["node"] for worker in workers}
        aggregates = form.report.call_value(accumulator)
        return phase_runner._scalars(phase_runner.update(form.update, carry, aggregates))

    def _recover(self, ray, error: Exception, failures: int, chunks: list, owners: dict, train: Callable) -> int:
        failures += 1
        self.failures_survived += 1
        if failures > self.max_failures:
            raise RuntimeError(f"RayExecutionContext: the round lost actors or nodes {failures} times "
                               f"(max_failures={self.max_failures}); last: {error}") from error
        logging.warning("RayExecutionContext: %s; retrying the lost clients on the actors alive", type(error).__name__)
        alive = []
        for actor in self._actors:
            try:
                ray.get(actor.node.remote(), timeout=60)
                alive.append(actor)
            except ray.exceptions.RayError:
                ray.kill(actor)
        lost = len(self._actors) - len(alive)
        self._actors = alive + [self._new_actor() for _ in range(lost)]
        for j in range(len(chunks)):
            if owners[j] not in alive:
                train(j)
        return failures

    def _end_round(self, round_id: int) -> None:
        for actor in self._actors:
            actor.end_round.remote(round_id)


def _as_tensors(value: Any, type_spec: ft.Type) -> Any:
    """`value` with its tensor leaves as eager tensors (sequences left as they are)."""
    leaves = [leaf if isinstance(leaf, (tf.Tensor, tf.data.Dataset)) or leaf is None else tf.convert_to_tensor(leaf)
              for leaf in structure.flatten_value(value, type_spec)]
    return structure.unflatten_value(type_spec, leaves)


def _weight(client: Any) -> float:
    """A client's share of the work, as far as it is known without reading its data: a
    dataset's cardinality (its batches) when TensorFlow knows it, else 1."""
    if isinstance(client, tf.data.Dataset):
        cardinality = int(client.cardinality())
        return float(1 + cardinality) if cardinality >= 0 else 1.0
    return 1.0


def _lost(ray, error: Exception) -> bool:
    """Whether a task error is a lost actor, node or object (retried), not the work's own."""
    cause = getattr(error, "cause", None)
    return isinstance(cause, ray.exceptions.RayError)
