"""Canonical form: a one-round federated computation as named TensorFlow phases.

A computation `(server_state@SERVER, client_input@CLIENTS) -> result@SERVER` whose clients'
work depends only on their input and on what the server broadcast, and whose server result
depends on the state and on aggregates of the clients' work, is

- `prepare(state) -> <broadcast, carry>`: server; what goes to the clients, and the server
  values the update needs that do not depend on the clients;
- `work(<client_input, broadcast>) -> client_output`: each client;
- `zero() / accumulate(<accumulator, client_output>) / merge(<a, b>) / report(accumulator)`:
  every aggregation of the round folded into one accumulator;
- `update(<carry, aggregates>) -> result`: server. When the result's first element has the
  state's type, it is the next round's state (`next_state`).

A `CanonicalForm` checks at construction that its phases fit together and names the types that
travel between them; `compiler.compile_to_canonical_form` builds one, `phase_runner` runs one.
"""

from __future__ import annotations

from typing import Any

import attrs

from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER

__all__ = ["CanonicalForm", "CanonicalFormError", "PHASE_NAMES", "server_result_type"]

PHASE_NAMES = ("prepare", "work", "zero", "accumulate", "merge", "report", "update")


class CanonicalFormError(TypeError):
    """The computation cannot be put in canonical form, or phases do not fit; the message says why."""


def server_result_type(result_type: ft.Type) -> ft.Type:
    """The computation's result with each SERVER value replaced by its member: what `update` returns."""
    if isinstance(result_type, ft.FederatedType):
        return result_type.member
    return ft.StructType([(n, server_result_type(t)) for n, t in result_type.elements], container=result_type.container)


def _pair(first: ft.Type, second: ft.Type) -> ft.StructType:
    return ft.StructType([(None, first), (None, second)], container=tuple)


def _same(what: str, expected: ft.Type, given: ft.Type) -> None:
    difference = ft.find_type_difference(expected, given)
    if difference:
        raise CanonicalFormError(f"canonical form: {what} do not fit.\n  expected: {expected}\n  given:    {given}\n  {difference}")


@attrs.frozen
class CanonicalForm:
    """The phases of one round (see the module docstring), checked to fit together."""

    type_signature: ft.FunctionType
    prepare: tfc.TensorFlowComputation
    work: tfc.TensorFlowComputation
    zero: tfc.TensorFlowComputation
    accumulate: tfc.TensorFlowComputation
    merge: tfc.TensorFlowComputation
    report: tfc.TensorFlowComputation
    update: tfc.TensorFlowComputation
    aggregation_kinds: tuple = ()
    secure_bitwidths: tuple = ()  # per aggregation: None, or the bitwidths of a secure sum in leaf order

    def __attrs_post_init__(self):
        parameter = self.type_signature.parameter
        if not (isinstance(parameter, ft.StructType) and len(parameter) == 2
                and isinstance(parameter[0], ft.FederatedType) and parameter[0].placement is SERVER
                and isinstance(parameter[1], ft.FederatedType) and parameter[1].placement is CLIENTS):
            raise CanonicalFormError(f"canonical form: the computation must take <state@SERVER, {{input}}@CLIENTS>, not {parameter}")
        for name in PHASE_NAMES:
            if not isinstance(getattr(self, name), tfc.TensorFlowComputation):
                raise CanonicalFormError(f"canonical form: the {name} phase must be a TensorFlow computation")
        prepare_result = self.prepare.type_signature.result
        if not (isinstance(prepare_result, ft.StructType) and len(prepare_result) == 2):
            raise CanonicalFormError(f"canonical form: prepare must return <broadcast, carry>, not {prepare_result}")
        _same("the state and prepare's parameter", self.state_type, self.prepare.type_signature.parameter)
        _same("the client input, the broadcast and work's parameter", _pair(self.client_input_type, self.broadcast_type),
              self.work.type_signature.parameter)
        if self.zero.type_signature.parameter is not None:
            raise CanonicalFormError("canonical form: zero takes no parameter")
        accumulator = self.accumulator_type
        _same("accumulate's parameter and <accumulator, work's result>", _pair(accumulator, self.client_output_type),
              self.accumulate.type_signature.parameter)
        _same("accumulate's result and the accumulator", accumulator, self.accumulate.type_signature.result)
        _same("merge's parameter and <accumulator, accumulator>", _pair(accumulator, accumulator), self.merge.type_signature.parameter)
        _same("merge's result and the accumulator", accumulator, self.merge.type_signature.result)
        _same("report's parameter and the accumulator", accumulator, self.report.type_signature.parameter)
        _same("update's parameter and <carry, report's result>", _pair(self.carry_type, self.aggregates_type),
              self.update.type_signature.parameter)
        _same("update's result and the computation's result", server_result_type(self.type_signature.result),
              self.update.type_signature.result)

    # The types that travel between the phases (and in a serverless run's manifest) ---------------

    @property
    def state_type(self) -> ft.Type:
        return self.type_signature.parameter[0].member

    @property
    def client_input_type(self) -> ft.Type:
        return self.type_signature.parameter[1].member

    @property
    def broadcast_type(self) -> ft.Type:
        return self.prepare.type_signature.result[0]

    @property
    def carry_type(self) -> ft.Type:
        return self.prepare.type_signature.result[1]

    @property
    def client_output_type(self) -> ft.Type:
        return self.work.type_signature.result

    @property
    def accumulator_type(self) -> ft.Type:
        return self.zero.type_signature.result

    @property
    def aggregates_type(self) -> ft.Type:
        return self.report.type_signature.result

    @property
    def result_type(self) -> ft.Type:
        return self.update.type_signature.result

    @property
    def iterates(self) -> bool:
        """Whether `update`'s first result is the next state (an iterative process's `next`)."""
        result = self.result_type
        return isinstance(result, ft.StructType) and len(result) >= 1 and result[0] == self.state_type

    def next_state(self, result: Any) -> Any:
        """The next round's state in an `update` result (its first element).

        Args:
            result: what `update` returned.

        Returns:
            The state to pass to the next round.

        Raises:
            CanonicalFormError: if the result does not start with the state (the computation does not iterate).
        """
        if not self.iterates:
            raise CanonicalFormError(f"canonical form: the result {self.result_type} does not start with the state {self.state_type}")
        return structure.struct_elements(result, self.result_type)[0]

    def phases(self) -> dict:
        """`{name: TensorFlowComputation}` for the seven phases."""
        return {name: getattr(self, name) for name in PHASE_NAMES}

    def types_json(self) -> dict:
        """The types a serverless run's manifest carries, as JSON."""
        return {
            "signature": self.type_signature.to_json(),
            "state": self.state_type.to_json(),
            "broadcast": self.broadcast_type.to_json(),
            "client_input": self.client_input_type.to_json(),
            "client_output": self.client_output_type.to_json(),
        }

    @classmethod
    def from_phases(cls, type_signature: ft.FunctionType, phases: dict) -> "CanonicalForm":
        """Rebuilds (and so re-checks) a form from phases read back from bytes."""
        missing = [name for name in PHASE_NAMES if name not in phases]
        if missing:
            raise CanonicalFormError(f"canonical form: phases {missing} are missing")
        return cls(type_signature, *[phases[name] for name in PHASE_NAMES])
