"""The intrinsics as data: one registry entry per intrinsic.

Each entry has the intrinsic's URI, its *category* (how values move between placements, which
is what an evaluator's value domain implements), its *type rule* (parameter type -> result
type, used when a computation is traced and when one is read from bytes) and, for
aggregations, a builder of its one `aggregations.AggregationDefinition`. The tracing API
(`fedsim.core.intrinsics`), the evaluator and the compiler all read this table.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs

from fedsim.core import aggregations
from fedsim.core import structure
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER, Placement

__all__ = [
    "IntrinsicDef",
    "IntrinsicTypeError",
    "lookup",
    "check_call_type",
    "REGISTRY",
    "FEDERATED_VALUE",
    "FEDERATED_BROADCAST",
    "FEDERATED_MAP",
    "FEDERATED_EVAL",
    "FEDERATED_ZIP",
    "FEDERATED_SUM",
    "FEDERATED_MEAN",
    "FEDERATED_WEIGHTED_MEAN",
    "FEDERATED_AGGREGATE",
    "FEDERATED_SECURE_SUM_BITWIDTH",
    "FEDERATED_SECURE_SUM",
    "FEDERATED_MIN",
    "FEDERATED_MAX",
    "SEQUENCE_MAP",
    "SEQUENCE_REDUCE",
    "SEQUENCE_SUM",
]

FEDERATED_VALUE = "federated_value"
FEDERATED_BROADCAST = "federated_broadcast"
FEDERATED_MAP = "federated_map"
FEDERATED_EVAL = "federated_eval"
FEDERATED_ZIP = "federated_zip"
FEDERATED_SUM = "federated_sum"
FEDERATED_MEAN = "federated_mean"
FEDERATED_WEIGHTED_MEAN = "federated_weighted_mean"
FEDERATED_AGGREGATE = "federated_aggregate"
FEDERATED_SECURE_SUM_BITWIDTH = "federated_secure_sum_bitwidth"
FEDERATED_SECURE_SUM = "federated_secure_sum"
FEDERATED_MIN = "federated_min"
FEDERATED_MAX = "federated_max"
SEQUENCE_MAP = "sequence_map"
SEQUENCE_REDUCE = "sequence_reduce"
SEQUENCE_SUM = "sequence_sum"


class IntrinsicTypeError(TypeError):
    """An intrinsic call whose types do not follow the intrinsic's type rule."""


@attrs.frozen
class IntrinsicDef:
    """One intrinsic. `type_rule(parameter_type, placement)` returns the result type (the
    placement is used by the intrinsics that choose one: `federated_value`, `federated_eval`).
    `aggregation(parameter_type, result_type, operands, call)` builds the aggregation's
    definition from the evaluated operands after the client value (aggregations only)."""

    uri: str
    category: str  # place | broadcast | map | eval | zip | aggregation | sequence_map | sequence_reduce | sequence_sum
    type_rule: Callable[[ft.Type, Optional[Placement]], ft.Type]
    aggregation: Optional[Callable[..., aggregations.AggregationDefinition]] = None
    # Aggregations only: how many leading elements of the argument are client values (0: the
    # whole argument is the one client value), and what the other operands are: "none",
    # "constant" (evaluated once, e.g. bitwidths) or "functions" (federated_aggregate's zero
    # and functions).
    client_values: int = 0
    operands: str = "none"


def _fail(uri: str, parameter: ft.Type, why: str) -> IntrinsicTypeError:
    return IntrinsicTypeError(f"{uri} cannot take a parameter of type {parameter}: {why}")


def _elements(uri: str, parameter: ft.Type, count: int) -> list:
    if not isinstance(parameter, ft.StructType) or len(parameter) != count:
        raise _fail(uri, parameter, f"it takes a structure of {count} elements")
    return list(parameter)


def _federated(uri: str, parameter: ft.Type, value: ft.Type, placement: Optional[Placement] = None) -> ft.FederatedType:
    if not isinstance(value, ft.FederatedType) or (placement is not None and value.placement is not placement):
        where = f"placed at {placement}" if placement else "federated"
        raise _fail(uri, parameter, f"its value must be {where}, not {value}")
    return value


def _function(uri: str, parameter: ft.Type, value: ft.Type) -> ft.FunctionType:
    if not isinstance(value, ft.FunctionType):
        raise _fail(uri, parameter, f"expected a function, found {value}")
    return value


def _place(member: ft.Type, placement: Optional[Placement], all_equal: bool) -> ft.Type:
    if placement is None:
        return member
    return ft.FederatedType(member, placement, all_equal if placement is SERVER else False)


def _sequence(uri: str, parameter: ft.Type, value: ft.Type) -> tuple:
    """(sequence type, placement or None, all_equal) of a sequence operand."""
    if isinstance(value, ft.FederatedType):
        sequence, placement, all_equal = value.member, value.placement, value.all_equal
    else:
        sequence, placement, all_equal = value, None, True
    if not isinstance(sequence, ft.SequenceType):
        raise _fail(uri, parameter, f"expected a sequence, found {value}")
    return sequence, placement, all_equal


# Type rules ----------------------------------------------------------------------------------

def _value_rule(parameter, placement):
    if isinstance(parameter, ft.FederatedType) or placement is None:
        raise _fail(FEDERATED_VALUE, parameter, "it places an unplaced value")
    return ft.FederatedType(parameter, placement, all_equal=True)


def _broadcast_rule(parameter, placement):
    value = _federated(FEDERATED_BROADCAST, parameter, parameter, SERVER)
    return ft.FederatedType(value.member, CLIENTS, all_equal=True)


def _map_rule(parameter, placement):
    function, value = _elements(FEDERATED_MAP, parameter, 2)
    function = _function(FEDERATED_MAP, parameter, function)
    value = _federated(FEDERATED_MAP, parameter, value)
    if function.parameter is None or not ft.is_assignable_from(function.parameter, value.member):
        raise _fail(FEDERATED_MAP, parameter, f"the function takes {function.parameter}, the members are {value.member}")
    return ft.FederatedType(function.result, value.placement, value.placement is SERVER)


def _eval_rule(parameter, placement):
    function = _function(FEDERATED_EVAL, parameter, parameter)
    if function.parameter is not None or placement is None:
        raise _fail(FEDERATED_EVAL, parameter, "it evaluates a no-argument function at a placement")
    return ft.FederatedType(function.result, placement, placement is SERVER)


def _zip_rule(parameter, placement):
    if not isinstance(parameter, ft.StructType) or not len(parameter):
        raise _fail(FEDERATED_ZIP, parameter, "it zips a non-empty structure of federated values")
    elements = [_federated(FEDERATED_ZIP, parameter, t) for t in parameter]
    placements = {t.placement for t in elements}
    if len(placements) != 1:
        raise _fail(FEDERATED_ZIP, parameter, "its elements are at different placements")
    member = ft.StructType([(name, t.member) for name, t in parameter.elements], container=parameter.container)
    return ft.FederatedType(member, placements.pop(), all(t.all_equal for t in elements))


def _numeric(uri, parameter, member, floating_only=False, integer_only=False):
    if ft.contains_sparse(member):
        raise _fail(uri, parameter, "a sparse tensor cannot be aggregated leaf by leaf (its indices would be added); "
                                    "densify it with tf.sparse.to_dense in a federated_map first")
    for leaf in ft.flatten_type(member):
        ok = isinstance(leaf, ft.TensorType) and (
            leaf.dtype.is_floating if floating_only else leaf.dtype.is_integer if integer_only
            else leaf.dtype.is_floating or leaf.dtype.is_integer
        )
        if not ok:
            raise _fail(uri, parameter, f"its values must be numeric tensors, found {leaf}")


def _sum_rule(parameter, placement):
    value = _federated(FEDERATED_SUM, parameter, parameter, CLIENTS)
    _numeric(FEDERATED_SUM, parameter, value.member)
    return ft.FederatedType(value.member, SERVER)


def _extremum_rule(uri):
    def rule(parameter, placement):
        value = _federated(uri, parameter, parameter, CLIENTS)
        _numeric(uri, parameter, value.member)
        return ft.FederatedType(value.member, SERVER)

    return rule


def _mean_rule(parameter, placement):
    value = _federated(FEDERATED_MEAN, parameter, parameter, CLIENTS)
    _numeric(FEDERATED_MEAN, parameter, value.member, floating_only=True)
    return ft.FederatedType(value.member, SERVER)


def _weighted_mean_rule(parameter, placement):
    value, weight = _elements(FEDERATED_WEIGHTED_MEAN, parameter, 2)
    value = _federated(FEDERATED_WEIGHTED_MEAN, parameter, value, CLIENTS)
    weight = _federated(FEDERATED_WEIGHTED_MEAN, parameter, weight, CLIENTS)
    _numeric(FEDERATED_WEIGHTED_MEAN, parameter, value.member, floating_only=True)
    if not (isinstance(weight.member, ft.TensorType) and weight.member.shape == ()):
        raise _fail(FEDERATED_WEIGHTED_MEAN, parameter, f"the weight must be a scalar per client, not {weight}")
    _numeric(FEDERATED_WEIGHTED_MEAN, parameter, weight.member)
    return ft.FederatedType(value.member, SERVER)


def _aggregate_rule(parameter, placement):
    value, zero, accumulate, merge, report = _elements(FEDERATED_AGGREGATE, parameter, 5)
    value = _federated(FEDERATED_AGGREGATE, parameter, value, CLIENTS)
    for what, function, expected in (
        ("accumulate", accumulate, ft.StructType([(None, zero), (None, value.member)])),
        ("merge", merge, ft.StructType([(None, zero), (None, zero)])),
    ):
        function = _function(FEDERATED_AGGREGATE, parameter, function)
        if function.parameter is None or not ft.is_assignable_from(function.parameter, expected) or not ft.is_assignable_from(zero, function.result):
            raise _fail(FEDERATED_AGGREGATE, parameter, f"{what} must be <U,{'T' if what == 'accumulate' else 'U'}> -> U")
    report = _function(FEDERATED_AGGREGATE, parameter, report)
    if report.parameter is None or not ft.is_assignable_from(report.parameter, zero):
        raise _fail(FEDERATED_AGGREGATE, parameter, "report must take the accumulator")
    return ft.FederatedType(report.result, SERVER)


def _secure_sum_rule_for(uri: str, what: str):
    """`<{int T}@CLIENTS, one `what` per leaf of T> -> T@SERVER`, for both secure sums."""
    def rule(parameter, placement):
        value, bounds = _elements(uri, parameter, 2)
        value = _federated(uri, parameter, value, CLIENTS)
        _numeric(uri, parameter, value.member, integer_only=True)
        if len(ft.flatten_type(bounds)) != len(ft.flatten_type(value.member)):
            raise _fail(uri, parameter, f"one {what} per leaf of the value")
        return ft.FederatedType(value.member, SERVER)

    return rule


def _sequence_map_rule(parameter, placement):
    function, value = _elements(SEQUENCE_MAP, parameter, 2)
    function = _function(SEQUENCE_MAP, parameter, function)
    sequence, where, all_equal = _sequence(SEQUENCE_MAP, parameter, value)
    if function.parameter is None or not ft.is_assignable_from(function.parameter, sequence.element):
        raise _fail(SEQUENCE_MAP, parameter, f"the function takes {function.parameter}, the elements are {sequence.element}")
    return _place(ft.SequenceType(function.result), where, all_equal)


def _sequence_reduce_rule(parameter, placement):
    value, zero, function = _elements(SEQUENCE_REDUCE, parameter, 3)
    sequence, where, all_equal = _sequence(SEQUENCE_REDUCE, parameter, value)
    function = _function(SEQUENCE_REDUCE, parameter, function)
    if function.parameter is None or not ft.is_assignable_from(function.parameter, ft.StructType([(None, zero), (None, sequence.element)])):
        raise _fail(SEQUENCE_REDUCE, parameter, "the reduction must be <U,T> -> U")
    return _place(zero, where, all_equal)


def _sequence_sum_rule(parameter, placement):
    sequence, where, all_equal = _sequence(SEQUENCE_SUM, parameter, parameter)
    _numeric(SEQUENCE_SUM, parameter, sequence.element)
    return _place(sequence.element, where, all_equal)


# Aggregation definitions from the evaluated operands ------------------------------------------

def _member(value_type: ft.Type) -> ft.Type:
    return value_type.member if isinstance(value_type, ft.FederatedType) else value_type


def _sum(parameter, result, operands, call):
    return aggregations.Sum(_member(parameter))


def _mean(parameter, result, operands, call):
    return aggregations.Mean(_member(parameter))


def _weighted_mean(parameter, result, operands, call):
    return aggregations.WeightedMean(_member(parameter[0]), _member(parameter[1]))


def _secure_sum(parameter, result, operands, call):
    (bitwidth,) = operands  # a concrete constant, in the type's leaf order
    widths = structure.flatten_value(bitwidth, parameter[1])
    return aggregations.SecureSum(_member(parameter[0]), tuple(int(w) for w in widths))


def _secure_sum_max_input(parameter, result, operands, call):
    (max_input,) = operands  # a concrete constant, in the type's leaf order
    bounds = structure.flatten_value(max_input, parameter[1])
    return aggregations.SecureSumMaxInput(_member(parameter[0]), tuple(int(b) for b in bounds))


def _extremum(kind):
    return lambda parameter, result, operands, call: aggregations.Extremum(_member(parameter), kind)


def _aggregate(parameter, result, operands, call):
    zero, accumulate, merge, report = operands  # zero: a thunk giving the zero in the caller's domain
    return aggregations.Aggregate(_member(parameter[0]), zero, accumulate, merge, report, _member(result), call)


REGISTRY = {
    d.uri: d
    for d in (
        IntrinsicDef(FEDERATED_VALUE, "place", _value_rule),
        IntrinsicDef(FEDERATED_BROADCAST, "broadcast", _broadcast_rule),
        IntrinsicDef(FEDERATED_MAP, "map", _map_rule),
        IntrinsicDef(FEDERATED_EVAL, "eval", _eval_rule),
        IntrinsicDef(FEDERATED_ZIP, "zip", _zip_rule),
        IntrinsicDef(FEDERATED_SUM, "aggregation", _sum_rule, _sum),
        IntrinsicDef(FEDERATED_MEAN, "aggregation", _mean_rule, _mean),
        IntrinsicDef(FEDERATED_WEIGHTED_MEAN, "aggregation", _weighted_mean_rule, _weighted_mean, client_values=2),
        IntrinsicDef(FEDERATED_AGGREGATE, "aggregation", _aggregate_rule, _aggregate, client_values=1, operands="functions"),
        IntrinsicDef(FEDERATED_SECURE_SUM_BITWIDTH, "aggregation", _secure_sum_rule_for(FEDERATED_SECURE_SUM_BITWIDTH, "bitwidth"), _secure_sum, client_values=1, operands="constant"),
        IntrinsicDef(FEDERATED_SECURE_SUM, "aggregation", _secure_sum_rule_for(FEDERATED_SECURE_SUM, "max_input"), _secure_sum_max_input,
                     client_values=1, operands="constant"),
        IntrinsicDef(FEDERATED_MIN, "aggregation", _extremum_rule(FEDERATED_MIN), _extremum("min")),
        IntrinsicDef(FEDERATED_MAX, "aggregation", _extremum_rule(FEDERATED_MAX), _extremum("max")),
        IntrinsicDef(SEQUENCE_MAP, "sequence_map", _sequence_map_rule),
        IntrinsicDef(SEQUENCE_REDUCE, "sequence_reduce", _sequence_reduce_rule),
        IntrinsicDef(SEQUENCE_SUM, "sequence_sum", _sequence_sum_rule),
    )
}


def lookup(uri: str) -> IntrinsicDef:
    """The registry entry of `uri`; an unknown URI is an `IntrinsicTypeError` naming it."""
    definition = REGISTRY.get(uri)
    if definition is None:
        raise IntrinsicTypeError(f"unknown intrinsic {uri[:80]!r}; fedsim knows {', '.join(sorted(REGISTRY))}")
    return definition


def check_call_type(uri: str, function_type: Any) -> None:
    """Checks an intrinsic node's declared type against the intrinsic's rule (for IR read from bytes)."""
    definition = lookup(uri)
    if not isinstance(function_type, ft.FunctionType) or function_type.parameter is None:
        raise IntrinsicTypeError(f"the intrinsic {uri} must have a function type with a parameter, not {function_type}")
    declared = function_type.result
    placement = declared.placement if isinstance(declared, ft.FederatedType) else None
    expected = definition.type_rule(function_type.parameter, placement)
    if isinstance(expected, ft.FederatedType) and isinstance(declared, ft.FederatedType) and expected.placement is CLIENTS:
        # Whether a CLIENTS value is all-equal only narrows type checks; execution does not depend on it.
        expected = ft.FederatedType(expected.member, CLIENTS, declared.all_equal)
    if expected != declared:
        raise IntrinsicTypeError(f"the intrinsic {uri} on {function_type.parameter} gives {expected}, but the IR declares {declared}")
