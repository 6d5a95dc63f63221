"""`run_async_training_process`: buffered asynchronous training (FedBuff) on a virtual clock.

The synchronous loop (`run_training_process`) waits for every client of a round, so the slowest
sets the pace. Here `concurrency` clients train at once; each starts from the model version
current when it starts and takes the time a `LatencyModel` gives it; when it finishes, its update
is weighted by its staleness and buffered, a new client starts at once, and every `buffer_size`
accepted updates the server publishes the next model version (`fedsim.core.staleness`). Time is
virtual: the simulation runs as fast as the machine trains, and reports when each version would
have been published, so synchronous and asynchronous training can be compared in
time-to-accuracy. Everything depends only on `seed` and the latency model's seed.

Updates that arrive at the same virtual instant are folded before any new client starts, so with
`buffer_size == concurrency`, equally fast clients and `constant_staleness()`, every version is
one synchronous FedAvg round over the clients that started together.

Example::

    result = fedsim.simulation.run_async_training_process(
        process, train.client_ids, train.create_tf_dataset_for_client, total_versions=50,
        buffer_size=5, concurrency=10,
        latency=fedsim.simulation.LatencyModel(train.client_ids, slow_fraction=0.1, slow_factor=10.0),
        callbacks=[history])
    result.versions[-1].virtual_time   # when the last version was published
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Optional, Sequence

import attrs
import keras
import numpy as np
from absl import logging

from fedsim.core import compiler
from fedsim.core import phase_runner
from fedsim.core import staleness as staleness_lib
from fedsim.core import structure
from fedsim.core.staleness import constant_staleness, polynomial_staleness
from fedsim.simulation.latency import LatencyModel
from fedsim.simulation.metrics_managers import flatten_metrics
from fedsim.simulation.training_loop import _headline

__all__ = ["AppliedUpdate", "AsyncTrainingResult", "ModelVersion", "RefusedUpdate", "constant_staleness",
           "polynomial_staleness", "run_async_training_process"]


@attrs.frozen
class AppliedUpdate:
    """One client update folded into a model version.

    Attributes:
        client_id: the client.
        base_version: the model version it trained from.
        staleness: versions published between its start and its arrival.
        weight: the staleness weight applied.
        arrived_at: the virtual time it arrived.
    """

    client_id: str
    base_version: int
    staleness: int
    weight: float
    arrived_at: float


@attrs.frozen
class RefusedUpdate:
    """A client update refused (too stale), with the reason.

    Attributes:
        client_id: the client.
        base_version: the model version it trained from.
        staleness: its staleness on arrival.
        arrived_at: the virtual time it arrived.
        reason: why it was refused.
    """

    client_id: str
    base_version: int
    staleness: int
    arrived_at: float
    reason: str


@attrs.frozen
class ModelVersion:
    """A published model version: when, and the updates it applied.

    Attributes:
        version: 1 for the first server step.
        virtual_time: when it was published.
        updates: the `AppliedUpdate`s of its buffer.
        metrics: the step's metrics (training, `async`, and `evaluation` when evaluated).
    """

    version: int
    virtual_time: float
    updates: tuple
    metrics: dict


@attrs.frozen
class AsyncTrainingResult:
    """What an asynchronous run leaves: the final state and its lineage.

    Attributes:
        state: the server state after the last version.
        versions: the `ModelVersion`s, in order.
        refused: the `RefusedUpdate`s.
        stopped_reason: why the run ended before `total_versions` (None if it did not).
    """

    state: Any
    versions: tuple
    refused: tuple
    stopped_reason: Optional[str]


@attrs.define
class _Task:
    client_id: str
    base_version: int
    output: Any


def _check_positive_int(value: Any, name: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def run_async_training_process(
    training_process: Any,
    client_ids: Sequence[str],
    client_dataset_fn: Callable[[str], Any],
    total_versions: int,
    *,
    buffer_size: int = 10,
    concurrency: Optional[int] = None,
    latency: Optional[LatencyModel] = None,
    staleness_weight: Callable[[int], float] = staleness_lib.polynomial_staleness(),
    max_staleness: Optional[int] = None,
    evaluation_fn: Optional[Callable[[Any, Any], Any]] = None,
    evaluation_selection_fn: Optional[Callable[[int], Any]] = None,
    versions_per_evaluation: int = 1,
    max_virtual_seconds: Optional[float] = None,
    metrics_managers: Sequence[Any] = (),
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    verbose: int = 1,
) -> AsyncTrainingResult:
    """Trains asynchronously with a FedBuff buffer on a virtual clock; returns the state and lineage.

    Args:
        training_process: a `LearningProcess` (or `IterativeProcess`) whose `next` has a
            canonical form aggregating by means and sums (the default `build_weighted_fed_avg`).
        client_ids: the population; clients are drawn uniformly (seeded) among those not training.
        client_dataset_fn: `client_id -> dataset`, e.g. `train.create_tf_dataset_for_client`.
        total_versions: the model versions to publish (server steps).
        buffer_size: K, the accepted updates per server step.
        concurrency: clients training at once (default: `buffer_size`).
        latency: the clients' virtual training times (default: every client 1 s).
        staleness_weight: `staleness -> weight in [0, 1]` (default FedBuff's `1/sqrt(1+s)`).
        max_staleness: updates staler than this are refused and recorded (None: never).
        evaluation_fn: `(state, data) -> metrics`, released under `evaluation`.
        evaluation_selection_fn: `version -> data` for `evaluation_fn`; give both or neither.
        versions_per_evaluation: evaluate every this many versions (and after the last).
        max_virtual_seconds: stop once a version is published after this virtual time.
        metrics_managers: objects with `release(metrics, version)` (CSV, TensorBoard).
        callbacks: objects with `on_round_end(version, flattened_metrics)` (`History`,
            `EarlyStopping`: a callback that sets `stop_training` ends the run).
        seed: the client sampling seed.
        verbose: 1 a progress bar, 2 one line per version, 0 silent.

    Returns:
        An `AsyncTrainingResult`: the final state, each version's virtual time, applied updates
        (client, base version, staleness, weight) and metrics, and the refused updates.

    Raises:
        AsyncUnsupportedError: if the process's aggregation is not sums and means (says why).
        ValueError: if an argument is out of range, the population is smaller than
            `concurrency`, or only one of the evaluation functions is given.

    Example::

        history = fedsim.simulation.History()
        result = fedsim.simulation.run_async_training_process(
            process, client_ids, dataset_for_client, total_versions=30, buffer_size=5,
            concurrency=10, latency=fedsim.simulation.LatencyModel(client_ids, slow_fraction=0.1),
            callbacks=[history])
    """
    _check_positive_int(total_versions, "total_versions")
    _check_positive_int(buffer_size, "buffer_size")
    concurrency = buffer_size if concurrency is None else concurrency
    _check_positive_int(concurrency, "concurrency")
    _check_positive_int(versions_per_evaluation, "versions_per_evaluation")
    if (evaluation_fn is None) != (evaluation_selection_fn is None):
        raise ValueError("evaluation_fn and evaluation_selection_fn go together: give both or neither")
    client_ids = [str(c) for c in client_ids]
    if len(set(client_ids)) != len(client_ids):
        raise ValueError("client_ids must be unique")
    if len(client_ids) < concurrency:
        raise ValueError(f"concurrency {concurrency} needs at least that many clients; the population has {len(client_ids)}")
    latency = latency if latency is not None else LatencyModel(client_ids)
    form = compiler.compile_to_canonical_form(training_process.next)
    staleness_lib.check_bufferable(form, f"the process {training_process.next.name!r}")
    buffer = staleness_lib.StalenessBuffer(form, buffer_size, staleness_weight, max_staleness)

    state = training_process.initialize()
    version, now = 0, 0.0
    broadcast, carry = phase_runner.prepare(form.prepare, state)
    rng = np.random.RandomState(seed)
    busy: set = set()
    events: list = []  # (arrival time, task number, _Task)
    tasks_started = 0
    applied: list = []
    versions: list = []
    refused: list = []
    stopped_reason: Optional[str] = None
    bar = keras.utils.Progbar(total_versions, verbose=verbose, unit_name="version",
                              stateful_metrics=["loss", "accuracy", "virtual_time"])

    def start_task() -> None:
        nonlocal tasks_started
        idle = [c for c in client_ids if c not in busy]
        client_id = idle[rng.randint(len(idle))]
        busy.add(client_id)
        output = phase_runner.work(form.work, client_dataset_fn(client_id), broadcast, f"client {client_id!r}'s dataset")
        arrival = now + latency.seconds(client_id, tasks_started)
        heapq.heappush(events, (arrival, tasks_started, _Task(client_id, version, output)))
        tasks_started += 1

    for _ in range(concurrency):
        start_task()

    while version < total_versions and stopped_reason is None:
        now = events[0][0]
        freed = 0
        while events and events[0][0] == now and stopped_reason is None and version < total_versions:
            _, _, task = heapq.heappop(events)
            busy.discard(task.client_id)
            freed += 1
            staleness = version - task.base_version
            reason = buffer.refusal(staleness)
            if reason:
                refused.append(RefusedUpdate(task.client_id, task.base_version, staleness, now, reason))
                logging.info("async: update of %s (version %d) refused: %s", task.client_id, task.base_version, reason)
                continue
            weight = buffer.add(task.output, staleness)
            applied.append(AppliedUpdate(task.client_id, task.base_version, staleness, weight, now))
            if not buffer.full:
                continue
            result = buffer.flush(carry)
            elements = structure.struct_elements(result, form.result_type)
            state = form.next_state(result)
            version += 1
            broadcast, carry = phase_runner.prepare(form.prepare, state)
            metrics = _version_metrics(elements, applied, refused, now)
            if evaluation_fn is not None and (version % versions_per_evaluation == 0 or version == total_versions):
                metrics["evaluation"] = evaluation_fn(state, evaluation_selection_fn(version))
            versions.append(ModelVersion(version, now, tuple(applied), metrics))
            applied = []
            stopped_reason = _release(metrics, version, metrics_managers, callbacks)
            if stopped_reason is None and max_virtual_seconds is not None and now >= max_virtual_seconds:
                stopped_reason = f"virtual time {now:.6g} s reached max_virtual_seconds {max_virtual_seconds:g}"
            shown = {**_headline(metrics.get("training", {})), "virtual_time": now}
            bar.update(version, values=list(shown.items()), finalize=version == total_versions or stopped_reason is not None)
        for _ in range(freed):
            if stopped_reason is None and version < total_versions:
                start_task()
    if stopped_reason:
        logging.info("async training stopped at version %d: %s", version, stopped_reason)
    return AsyncTrainingResult(state, tuple(versions), tuple(refused), stopped_reason)


def _version_metrics(elements: list, applied: list, refused: list, now: float) -> dict:
    metrics: dict = {"training": elements[1]} if len(elements) > 1 else {}
    stalenesses = [u.staleness for u in applied]
    metrics["async"] = {
        "virtual_time": float(now),
        "updates": len(applied),
        "mean_staleness": float(np.mean(stalenesses)),
        "max_staleness": int(max(stalenesses)),
        "refused_total": len(refused),
    }
    return metrics


def _release(metrics: dict, version: int, metrics_managers: Sequence[Any], callbacks: Sequence[Any]) -> Optional[str]:
    for manager in metrics_managers:
        manager.release(metrics, version)
    flat = flatten_metrics(metrics)
    reason = None
    for callback in callbacks:
        callback.on_round_end(version, flat)
        if getattr(callback, "stop_training", False) and reason is None:
            reason = getattr(callback, "reason", None) or f"{type(callback).__name__} stopped training at version {version}"
    return reason
