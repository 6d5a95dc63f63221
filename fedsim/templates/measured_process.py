"""`MeasuredProcess`: an iterative process whose `next` also reports a result and measurements.

`next(state, ...)` returns `MeasuredProcessOutput(state, result, measurements)`: the new state,
what the step produced (for an aggregator, the aggregate) and what it observed (for example a
clipping norm). Aggregators and learning processes are measured processes.
"""

from __future__ import annotations

from typing import Any

import attrs

from fedsim.core import computation as computation_lib
from fedsim.core import types as ft
from fedsim.core.containers import register_container
from fedsim.templates.errors import ProcessTypeError
from fedsim.templates.iterative_process import IterativeProcess

__all__ = ["MeasuredProcess", "MeasuredProcessOutput"]


@register_container("fedsim.templates.MeasuredProcessOutput")
@attrs.frozen
class MeasuredProcessOutput:
    """The output of `MeasuredProcess.next`."""

    state: Any
    result: Any
    measurements: Any


_OUTPUT_NAMES = ["state", "result", "measurements"]


class MeasuredProcess(IterativeProcess):
    """An `IterativeProcess` whose `next` returns a `MeasuredProcessOutput`.

    Args:
        initialize_fn: a no-argument computation returning the initial state.
        next_fn: `(state, ...) -> MeasuredProcessOutput(state, result, measurements)`.

    Raises:
        ProcessTypeError: if `next_fn` does not return a `MeasuredProcessOutput` of the state.
    """

    def __init__(self, initialize_fn: computation_lib.Computation, next_fn: computation_lib.Computation):
        result = next_fn.type_signature.result
        if not (isinstance(result, ft.StructType) and result.names() == _OUTPUT_NAMES):
            raise ProcessTypeError(
                "next_fn of a MeasuredProcess must return MeasuredProcessOutput(state, result, measurements), "
                f"but it returns {result}"
            )
        super().__init__(initialize_fn, next_fn)
