"""`IterativeProcess`: a pair of computations, `initialize` and `next`, over a state.

`initialize()` returns the first state; `next(state, ...)` returns the next state (or a
structure whose first element is it). The pair is checked when the process is built, so a
state that `next` cannot take is refused before any round runs.

Example::

    process = fedsim.templates.IterativeProcess(initialize_fn=init, next_fn=step)
    state = process.initialize()
    for _ in range(10):
        state = process.next(state, client_data)
"""

from __future__ import annotations

from typing import Any

from fedsim.core import computation as computation_lib
from fedsim.core import types as ft
from fedsim.templates.errors import ProcessTypeError

__all__ = ["IterativeProcess", "state_type_of_next"]


def _check_computation(fn: Any, what: str) -> computation_lib.Computation:
    if not isinstance(fn, computation_lib.Computation):
        raise TypeError(
            f"{what} must be a fedsim computation (@fedsim.tf_computation or @fedsim.federated_computation), "
            f"got {type(fn).__name__}"
        )
    return fn


def state_type_of_next(next_fn: computation_lib.Computation) -> ft.Type:
    """The type of the state parameter of `next`: its parameter, or the parameter's first element."""
    parameter = next_fn.type_signature.parameter
    if parameter is None:
        raise ProcessTypeError(f"next_fn must take the state as its (first) parameter, but its type is {next_fn.type_signature}")
    if isinstance(parameter, ft.StructType) and next_fn.unpack:
        return parameter[0]
    return parameter


def next_result_state_type(next_fn: computation_lib.Computation, state_type: ft.Type) -> ft.Type:
    result = next_fn.type_signature.result
    if ft.is_assignable_from(state_type, result):
        return result
    if isinstance(result, ft.StructType) and len(result) > 0:
        return result[0]
    return result


class IterativeProcess:
    """A stateful process: `initialize() -> state` and `next(state, ...) -> state or <state, ...>`.

    Args:
        initialize_fn: a no-argument computation returning the initial state.
        next_fn: a computation whose first parameter and first result (or whole result) is the state.

    Raises:
        TypeError: if an argument is not a computation.
        ProcessTypeError: if the state types of the two computations do not match.

    Example::

        process = fedsim.templates.IterativeProcess(initialize_fn=init, next_fn=step)
        state = process.initialize()
        state = process.next(state, client_data)
    """

    def __init__(self, initialize_fn: computation_lib.Computation, next_fn: computation_lib.Computation):
        self._initialize_fn = _check_computation(initialize_fn, "initialize_fn")
        self._next_fn = _check_computation(next_fn, "next_fn")
        if initialize_fn.type_signature.parameter is not None:
            raise ProcessTypeError(
                f"initialize_fn must take no parameter, but its type is {initialize_fn.type_signature}"
            )
        state_type = initialize_fn.type_signature.result
        next_state_type = state_type_of_next(next_fn)
        difference = ft.find_type_difference(next_state_type, state_type)
        if difference:
            raise ProcessTypeError(
                "the state returned by initialize_fn cannot be passed to next_fn.\n"
                f"  initialize_fn returns: {state_type}\n"
                f"  next_fn takes state:   {next_state_type}\n"
                f"  {difference}"
            )
        returned = next_result_state_type(next_fn, next_state_type)
        difference = ft.find_type_difference(next_state_type, returned)
        if difference:
            raise ProcessTypeError(
                "the state returned by next_fn cannot be passed back to next_fn.\n"
                f"  next_fn takes state:   {next_state_type}\n"
                f"  next_fn returns state: {returned}\n"
                f"  {difference}"
            )
        self._state_type = state_type

    @property
    def initialize(self) -> computation_lib.Computation:
        return self._initialize_fn

    @property
    def next(self) -> computation_lib.Computation:
        return self._next_fn

    @property
    def state_type(self) -> ft.Type:
        return self._state_type

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state_type} next={self._next_fn.type_signature}>"
