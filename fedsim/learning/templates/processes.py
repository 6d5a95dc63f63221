"""The four kinds of part a learning process is composed of, with TFF's names and type checks.

Each is a `MeasuredProcess` whose `next` has the shape its role needs; the constructor checks
that shape, so a part that does not fit its role is refused where it is built, with the part
and the type named:

- `DistributorProcess`: `next(state@SERVER, weights@SERVER)` -> weights at CLIENTS;
- `ClientWorkProcess`: `next(state@SERVER, weights@CLIENTS, data@CLIENTS)` -> `ClientResult`@CLIENTS;
- `AggregationProcess` (fedsim.templates'): `next(state@SERVER, update@CLIENTS[, weight@CLIENTS])` -> update@SERVER;
- `FinalizerProcess`: `next(state@SERVER, weights@SERVER, update@SERVER)` -> weights@SERVER.

Example::

    distributor = fedsim.learning.templates.build_broadcast_process(model_weights_type)
    finalizer = fedsim.learning.templates.build_apply_optimizer_finalizer(server_optimizer_fn, model_weights_type)
"""

from __future__ import annotations

from typing import Any, Callable

from fedsim.core import types as ft
from fedsim.core.computation import Computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.templates import AggregationProcess, MeasuredProcess, ProcessTypeError

__all__ = ["DistributorProcess", "ClientWorkProcess", "FinalizerProcess", "AggregationProcess", "check_placed"]


def check_placed(type_spec: ft.Type, placement: Any, part: str, what: str) -> ft.Type:
    """The member type of `type_spec`, which must be placed at `placement`; else ProcessTypeError."""
    if not isinstance(type_spec, ft.FederatedType) or type_spec.placement is not placement:
        raise ProcessTypeError(f"the {part}'s {what} must be placed at {placement}, but its type is {type_spec}")
    return type_spec.member


def _parameters(next_fn: Computation, count: int, part: str, names: str) -> list:
    parameter = next_fn.type_signature.parameter
    elements = list(parameter) if isinstance(parameter, ft.StructType) else ([] if parameter is None else [parameter])
    if len(elements) != count:
        raise ProcessTypeError(f"the {part}'s next must take {count} arguments ({names}), but it takes {parameter}")
    return elements


class DistributorProcess(MeasuredProcess):
    """Sends the global model weights from the server to the clients (TFF's name).

    Args:
        initialize_fn: a no-argument computation returning the state at SERVER.
        next_fn: `(state@SERVER, weights@SERVER) -> MeasuredProcessOutput(state, weights@CLIENTS, measurements)`.

    Raises:
        ProcessTypeError: if the computations do not have this kind of process's types.
    """

    def __init__(self, initialize_fn: Computation, next_fn: Computation):
        super().__init__(initialize_fn, next_fn)
        _, weights = _parameters(next_fn, 2, "distributor", "state, weights@SERVER")
        weights = check_placed(weights, SERVER, "distributor", "weights argument")
        result = check_placed(next_fn.type_signature.result["result"], CLIENTS, "distributor", "result")
        if ft.find_type_difference(weights, result):
            raise ProcessTypeError(f"the distributor must deliver the weights it is given ({weights}), but delivers {result}")


class ClientWorkProcess(MeasuredProcess):
    """The clients' local work: weights and data at CLIENTS in, a `ClientResult` out (TFF's name).

    Args:
        initialize_fn: a no-argument computation returning the state at SERVER.
        next_fn: `(state@SERVER, weights@CLIENTS, data@CLIENTS) -> MeasuredProcessOutput(state, ClientResult@CLIENTS, measurements)`.

    Raises:
        ProcessTypeError: if the computations do not have this kind of process's types.
    """

    def __init__(self, initialize_fn: Computation, next_fn: Computation):
        super().__init__(initialize_fn, next_fn)
        _, weights, data = _parameters(next_fn, 3, "client work", "state, weights@CLIENTS, data@CLIENTS")
        check_placed(weights, CLIENTS, "client work", "weights argument")
        check_placed(data, CLIENTS, "client work", "data argument")
        result = check_placed(next_fn.type_signature.result["result"], CLIENTS, "client work", "result")
        if not (isinstance(result, ft.StructType) and result.names() == ["update", "update_weight"]):
            raise ProcessTypeError(
                f"the client work must return ClientResult(update, update_weight) at CLIENTS, but returns {result}")


class FinalizerProcess(MeasuredProcess):
    """Applies the aggregated update to the global weights at the server (TFF's name).

    Args:
        initialize_fn: a no-argument computation returning the state at SERVER.
        next_fn: `(state@SERVER, weights@SERVER, update@SERVER) -> MeasuredProcessOutput(state, weights@SERVER, measurements)`.

    Raises:
        ProcessTypeError: if the computations do not have this kind of process's types.
    """

    def __init__(self, initialize_fn: Computation, next_fn: Computation):
        super().__init__(initialize_fn, next_fn)
        _, weights, update = _parameters(next_fn, 3, "finalizer", "state, weights@SERVER, update@SERVER")
        weights = check_placed(weights, SERVER, "finalizer", "weights argument")
        check_placed(update, SERVER, "finalizer", "update argument")
        result = check_placed(next_fn.type_signature.result["result"], SERVER, "finalizer", "result")
        if ft.find_type_difference(weights, result):
            raise ProcessTypeError(f"the finalizer must return weights of the type it takes ({weights}), but returns {result}")


def as_part(process: MeasuredProcess, kind: Callable[[Computation, Computation], MeasuredProcess]) -> MeasuredProcess:
    """`process` as the part class `kind` (checked), unless it already is one."""
    return process if isinstance(process, kind) else kind(process.initialize, process.next)
