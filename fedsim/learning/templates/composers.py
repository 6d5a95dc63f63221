"""`compose_learning_process`: a learning algorithm from four processes, as in TFF.

Each part is a `MeasuredProcess` with its own state and measurements:

- distributor  `next(state, weights@SERVER) -> (state, weights@CLIENTS, measurements)`
- client_work  `next(state, weights@CLIENTS, data@CLIENTS) -> (state, ClientResult@CLIENTS, measurements)`
- aggregator   `next(state, update@CLIENTS, weight@CLIENTS) -> (state, update@SERVER, measurements)`
- finalizer    `next(state, weights@SERVER, update@SERVER) -> (state, weights@SERVER, measurements)`

The composed state is `LearningAlgorithmState(global_model_weights, distributor, client_work,
aggregator, finalizer)` and the metrics are each part's measurements under its name. Swapping one
part (say, a differentially private aggregator) leaves the others as they are.
"""

from __future__ import annotations

from typing import Any

import attrs

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.computation import Computation
from fedsim.core.wrappers import federated_computation
from fedsim.core.containers import register_container
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.templates import MeasuredProcess, ProcessTypeError
from fedsim.learning.templates import processes
from fedsim.learning.templates.learning_process import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = ["ClientResult", "compose_learning_process"]


@register_container("fedsim.learning.templates.ClientResult")
@attrs.frozen
class ClientResult:
    """What a client's work yields: an update and the weight it gets in the aggregate."""

    update: Any
    update_weight: Any


def _check_part(part: Any, name: str, kind: Any = None) -> MeasuredProcess:
    if not isinstance(part, MeasuredProcess):
        raise ProcessTypeError(f"the {name} must be a MeasuredProcess, got {type(part).__name__}")
    return part if kind is None else processes.as_part(part, kind)


def _fits(given: ft.Type, taken: ft.Type, what: str) -> None:
    """`given` (what one part yields) must be assignable to `taken` (what the next part takes)."""
    if not ft.is_assignable_from(taken, given):
        raise ProcessTypeError(f"compose_learning_process: {what}: {given} does not fit {taken}")


def _check_fit(initial_weights_fn: Computation, parts: dict) -> None:
    """The parts chain: initial weights -> distributor -> client work -> aggregator -> finalizer."""
    weights = initial_weights_fn.type_signature.result
    if isinstance(weights, ft.FederatedType):
        raise ProcessTypeError(f"compose_learning_process: initial_model_weights_fn must return unplaced weights, got {weights}")
    distributor, client_work, aggregator, finalizer = (parts[k].next.type_signature for k in
                                                       ("distributor", "client_work", "aggregator", "finalizer"))
    _fits(weights, distributor.parameter[1].member, "the initial model weights and the distributor's weights argument")
    _fits(distributor.result["result"].member, client_work.parameter[1].member,
          "the distributor's result and the client work's weights argument")
    update = client_work.result["result"].member["update"]
    aggregator_value = processes.check_placed(aggregator.parameter[1], CLIENTS, "aggregator", "value argument")
    _fits(update, aggregator_value, "the client work's update and the aggregator's value argument")
    _fits(aggregator.result["result"].member, finalizer.parameter[2].member,
          "the aggregator's result and the finalizer's update argument")
    _fits(weights, finalizer.parameter[1].member, "the initial model weights and the finalizer's weights argument")


def compose_learning_process(
    initial_model_weights_fn: Computation,
    model_weights_distributor: MeasuredProcess,
    client_work: MeasuredProcess,
    model_update_aggregator: MeasuredProcess,
    model_finalizer: MeasuredProcess,
) -> LearningProcess:
    """Wires the four parts into one `LearningProcess` (one federated `next`).

    Args:
        initial_model_weights_fn: a no-argument tf_computation returning the first `ModelWeights`.
        model_weights_distributor: a `DistributorProcess`.
        client_work: a `ClientWorkProcess`.
        model_update_aggregator: an aggregation process.
        model_finalizer: a `FinalizerProcess`.

    Returns:
        The `LearningProcess`; its metrics hold each part's under `distributor`, `client_work`,
        `aggregator` and `finalizer`.

    Raises:
        ProcessTypeError: if a part is not of its kind or the parts' types do not fit, naming the
            part and the types.

    Example::

        process = compose_learning_process(initial_weights, distributor, client_work, aggregator, finalizer)
        output = process.next(process.initialize(), client_datasets)
        output.metrics["aggregator"]
    """
    parts = {
        "distributor": _check_part(model_weights_distributor, "distributor", processes.DistributorProcess),
        "client_work": _check_part(client_work, "client work", processes.ClientWorkProcess),
        "aggregator": _check_part(model_update_aggregator, "aggregator"),
        "finalizer": _check_part(model_finalizer, "finalizer", processes.FinalizerProcess),
    }
    _check_fit(initial_model_weights_fn, parts)
    data_type = client_work.next.type_signature.parameter[2]
    weighted = len(parts["aggregator"].next.type_signature.parameter) == 3

    @federated_computation
    def initialize():
        return intrinsics.federated_zip(
            LearningAlgorithmState(
                global_model_weights=intrinsics.federated_eval(initial_model_weights_fn, SERVER),
                distributor=parts["distributor"].initialize(),
                client_work=parts["client_work"].initialize(),
                aggregator=parts["aggregator"].initialize(),
                finalizer=parts["finalizer"].initialize(),
            )
        )

    state_type = initialize.type_signature.result

    @federated_computation(state_type, data_type)
    def next_fn(state, client_data):
        distributed = parts["distributor"].next(state.distributor, state.global_model_weights)
        trained = parts["client_work"].next(state.client_work, distributed.result, client_data)
        if weighted:
            aggregated = parts["aggregator"].next(state.aggregator, trained.result.update, trained.result.update_weight)
        else:  # an unweighted aggregator (e.g. from an UnweightedAggregationFactory)
            aggregated = parts["aggregator"].next(state.aggregator, trained.result.update)
        finalized = parts["finalizer"].next(state.finalizer, state.global_model_weights, aggregated.result)
        new_state = intrinsics.federated_zip(
            LearningAlgorithmState(
                global_model_weights=finalized.result,
                distributor=distributed.state,
                client_work=trained.state,
                aggregator=aggregated.state,
                finalizer=finalized.state,
            )
        )
        metrics = intrinsics.federated_zip(
            dict(
                distributor=distributed.measurements,
                client_work=trained.measurements,
                aggregator=aggregated.measurements,
                finalizer=finalized.measurements,
            )
        )
        return LearningProcessOutput(state=new_state, metrics=metrics)

    # IterativeProcess checks that the state next_fn returns (the finalizer's weights included)
    # fits the state it takes, so a finalizer returning other weights is refused here.
    return LearningProcess(initialize, next_fn)
