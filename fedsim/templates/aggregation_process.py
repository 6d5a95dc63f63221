"""`AggregationProcess`: a stateful aggregation of CLIENTS values into a SERVER value.

`next(state, value@CLIENTS[, weight@CLIENTS]) -> MeasuredProcessOutput(state@SERVER,
result@SERVER, measurements@SERVER)`. Aggregators are built by factories (see
`fedsim.aggregators`) and plug into the learning processes' `model_aggregator=`.
"""

from __future__ import annotations

from fedsim.core import computation as computation_lib
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.templates.errors import ProcessTypeError
from fedsim.templates.measured_process import MeasuredProcess

__all__ = ["AggregationProcess"]


class AggregationProcess(MeasuredProcess):
    """A `MeasuredProcess` whose `next` aggregates a CLIENTS value (optionally weighted).

    Made by aggregation factories' `create`; write one to build your own aggregator.

    Args:
        initialize_fn: a no-argument computation returning the state at SERVER.
        next_fn: `(state@SERVER, value@CLIENTS[, weight@CLIENTS]) -> MeasuredProcessOutput` at SERVER.

    Raises:
        ProcessTypeError: if the parameters or results are placed elsewhere.
    """

    def __init__(self, initialize_fn: computation_lib.Computation, next_fn: computation_lib.Computation):
        super().__init__(initialize_fn, next_fn)
        parameter = next_fn.type_signature.parameter
        if not isinstance(parameter, ft.StructType) or len(parameter) not in (2, 3):
            raise ProcessTypeError(f"next_fn of an AggregationProcess takes (state, value[, weight]), got {parameter}")
        for index, what in ((1, "value"), (2, "weight")):
            if index < len(parameter):
                element = parameter[index]
                if not (isinstance(element, ft.FederatedType) and element.placement is CLIENTS):
                    raise ProcessTypeError(f"the {what} parameter of an AggregationProcess must be placed at CLIENTS, got {element}")
        for name in ("state", "result", "measurements"):
            element = next_fn.type_signature.result[name]
            if not (isinstance(element, ft.FederatedType) and element.placement is SERVER):
                raise ProcessTypeError(f"the {name} of an AggregationProcess must be placed at SERVER, got {element}")

    @property
    def is_weighted(self) -> bool:
        return len(self.next.type_signature.parameter) == 3
