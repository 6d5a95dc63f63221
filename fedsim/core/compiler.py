"""The canonical-form compiler: a one-round federated computation -> `CanonicalForm` phases.

It evaluates the computation's IR with the shared `evaluator.Evaluator` over *symbolic* values
(`SymbolicDomain`: nodes that record how each value is computed), checks that the round has
one broadcast stage and one aggregation stage, then traces each phase as a TensorFlow graph
that evaluates the nodes it needs. Aggregations come from the same definitions the local
context streams (`aggregations`), so a silo and the simulation compute the same thing.

Example::

    form = fedsim.compile_to_canonical_form(process.next)
    result = fedsim.run_canonical_form(form, state, client_datasets)
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import attrs

from fedsim.core import evaluator as evaluator_lib
from fedsim.core import intrinsic_defs as defs
from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm, CanonicalFormError, server_result_type
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.placements import CLIENTS, SERVER

__all__ = ["compile_to_canonical_form", "SymbolicDomain", "Node", "SymStruct"]


# ----------------------------------------------------------------------------------------------
# Symbolic values


_ids = itertools.count()


class Node:
    """A symbolic data value: its type (placement included) and how to compute it."""

    def __init__(self, node_kind: str, type_signature: ft.Type, inputs: tuple = (), **details: Any):
        self.id = next(_ids)
        self.kind = node_kind
        self.type_signature = type_signature
        self.inputs = inputs
        self.details = details


@attrs.define
class SymStruct:
    """A structure of symbolic values (Nodes, SymStructs or functions)."""

    elements: list
    type_signature: ft.Type


def _member(value_type: ft.Type) -> ft.Type:
    return value_type.member if isinstance(value_type, ft.FederatedType) else value_type


class SymbolicDomain:
    """Symbolic values for the evaluator: `Node`s and `SymStruct`s; functions stay functions."""

    def __init__(self, name: str):
        self.name = name

    def compiled(self, computation: Any) -> Any:
        return computation

    def struct(self, values: list, struct_type: ft.StructType) -> Any:
        return SymStruct(values, struct_type)

    def select(self, value: Any, index: int, source_type: ft.Type, result_type: ft.Type) -> Any:
        return select(value, index, result_type)

    def elements(self, value: Any, struct_type: ft.StructType) -> list:
        return [select(value, i, t) for i, t in enumerate(_member(struct_type))]

    def call(self, function: Any, argument: Any, result_type: ft.Type) -> Any:
        if isinstance(function, tfc.TensorFlowComputation):
            return Node("apply", result_type, () if argument is None else (argument,), fn=function)
        raise CanonicalFormError(f"{self.name}: cannot call a {type(function).__name__}")

    def intrinsic(self, definition: defs.IntrinsicDef, function_type: ft.FunctionType, argument: Any,
                  evaluator: evaluator_lib.Evaluator) -> Any:
        category = definition.category
        parameter_type, result_type = function_type.parameter, function_type.result
        if category == "place" and result_type.placement is SERVER:
            return Node("place", result_type, (argument,))
        if category in ("place", "broadcast"):
            return Node("broadcast", result_type, (argument,), uri=definition.uri)
        if category == "map":
            fn, value = self.elements(argument, parameter_type)
            return self._map(fn, value, result_type, evaluator)
        if category == "eval":
            return self._map(argument, None, result_type, evaluator)
        if category == "zip":
            return SymStruct(self.elements(argument, parameter_type), result_type)
        if category == "aggregation":
            return self._aggregation(definition, function_type, argument)
        raise CanonicalFormError(f"{self.name}: the intrinsic {definition.uri} has no place in canonical form (yet)")

    def _map(self, fn: Any, value: Any, result_type: ft.Type, evaluator: evaluator_lib.Evaluator) -> Any:
        if isinstance(fn, evaluator_lib.Closure):
            # A federated lambda (e.g. selecting a field of each member): apply it symbolically to
            # the placed value, and keep the placement of the result.
            return Node("place", result_type, (evaluator.apply(fn, value, _member(result_type)),))
        if not isinstance(fn, tfc.TensorFlowComputation):
            raise CanonicalFormError(f"{self.name}: federated_map needs a tf_computation, got a {type(fn).__name__}")
        return Node("apply", result_type, () if value is None else (value,), fn=fn)

    def _aggregation(self, definition: defs.IntrinsicDef, function_type: ft.FunctionType, argument: Any) -> Node:
        parameter_type = function_type.parameter
        if not definition.client_values:
            sources, operands = (argument,), []
        else:
            elements = self.elements(argument, parameter_type)
            count = definition.client_values
            sources, operands = tuple(elements[:count]), elements[count:]
        if definition.operands == "functions":
            zero, *functions = operands
            for what, fn in zip(("accumulate", "merge", "report"), functions):
                if not isinstance(fn, tfc.TensorFlowComputation):
                    raise CanonicalFormError(
                        f"{self.name}: the {what} function of a federated_aggregate must be a tf_computation to compile, "
                        f"got a {type(fn).__name__}"
                    )
            operands = [lambda: _GraphEvaluator({}).value(zero)] + functions
        elif definition.operands == "constant":
            operands = [_constant_value(operands[0], self.name)]
        built = definition.aggregation(parameter_type, function_type.result, operands, lambda fn, value: fn.call_in_graph(value))
        return Node("aggregate", function_type.result, sources, definition=built)


def select(value: Any, index: int, type_signature: ft.Type) -> Any:
    if isinstance(value, SymStruct):
        return value.elements[index]
    if isinstance(value, Node):
        return Node("select", type_signature, (value,), index=index)
    raise CanonicalFormError(f"cannot select element {index} of a {type(value).__name__}")


def _constant_value(value: Any, name: str) -> Any:
    """Evaluates a symbolic value that depends on no parameter (e.g. secure-sum bitwidths)."""
    if isinstance(value, SymStruct):
        return [_constant_value(e, name) for e in value.elements]
    if isinstance(value, Node) and value.kind == "apply" and not value.inputs:
        return value.details["fn"].call_value(None)
    if isinstance(value, Node) and value.kind == "select":
        return structure.struct_elements(_constant_value(value.inputs[0], name), _member(value.inputs[0].type_signature))[value.details["index"]]
    raise CanonicalFormError(f"{name}: a secure sum's bitwidth or max_input must be a constant")


# ----------------------------------------------------------------------------------------------
# Analysis: which nodes are reachable from which


def _children(value: Any) -> list:
    if isinstance(value, SymStruct):
        return list(value.elements)
    if isinstance(value, Node):
        return list(value.inputs)
    return []


def _reaches(value: Any, predicate: Callable[[Node], bool], memo: dict) -> bool:
    """Whether a node satisfying `predicate` is reachable from `value`."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = False
    found = (isinstance(value, Node) and predicate(value)) or any(_reaches(child, predicate, memo) for child in _children(value))
    memo[key] = found
    return found


def _is_aggregate(node: Node) -> bool:
    return node.kind == "aggregate"


def _describe(node: Node) -> str:
    if node.kind == "aggregate":
        return f"a {node.details['definition'].kind} aggregation"
    return f"a {node.kind} of type {node.type_signature}"


# ----------------------------------------------------------------------------------------------
# Graph evaluation of symbolic values inside a phase being traced


class _GraphEvaluator:
    def __init__(self, bound: dict):
        self.memo = dict(bound)  # node id -> graph value

    def value(self, symbolic: Any) -> Any:
        if isinstance(symbolic, SymStruct):
            member = _member(symbolic.type_signature)
            return structure.pack_struct(member, [self.value(e) for e in symbolic.elements])
        if not isinstance(symbolic, Node):
            raise CanonicalFormError(f"a {type(symbolic).__name__} cannot be a data value")
        if symbolic.id in self.memo:
            return self.memo[symbolic.id]
        node = symbolic
        if node.kind == "apply":
            fn = node.details["fn"]
            result = fn.call_in_graph(None if not node.inputs else self.value(node.inputs[0]))
        elif node.kind == "select":
            source = node.inputs[0]
            result = structure.struct_elements(self.value(source), _member(source.type_signature))[node.details["index"]]
        elif node.kind in ("broadcast", "place"):
            result = self.value(node.inputs[0])
        else:
            raise CanonicalFormError(f"internal: {_describe(node)} is not an input of this phase")
        self.memo[node.id] = result
        return result


def _trace(fn: Callable, parameter_type: Optional[ft.Type], name: str) -> tfc.TensorFlowComputation:
    return tfc.trace_tf_function(fn, parameter_type, False, name, autograph=False)


def _tuple_type(types: list) -> ft.StructType:
    return ft.StructType([(None, t) for t in types], container=tuple)


def _check_signature(computation: Any, name: str) -> tuple:
    signature = computation.type_signature
    parameter = signature.parameter
    if not (isinstance(parameter, ft.StructType) and len(parameter) == 2):
        raise CanonicalFormError(
            f"{name}: canonical form needs two parameters (server_state@SERVER, client_input@CLIENTS), "
            f"got {parameter}"
        )
    state_type, client_type = parameter[0], parameter[1]
    if not (isinstance(state_type, ft.FederatedType) and state_type.placement is SERVER):
        raise CanonicalFormError(f"{name}: the first parameter must be the server state @SERVER, got {state_type}")
    if not (isinstance(client_type, ft.FederatedType) and client_type.placement is CLIENTS and not client_type.all_equal):
        raise CanonicalFormError(f"{name}: the second parameter must be the clients' input {{T}}@CLIENTS, got {client_type}")

    def check_result(result_type: ft.Type, path: str) -> None:
        if isinstance(result_type, ft.FederatedType):
            if result_type.placement is not SERVER:
                raise CanonicalFormError(f"{name}: the result{path} is placed at CLIENTS; canonical form returns SERVER values only")
        elif isinstance(result_type, ft.StructType):
            for index, (element_name, element) in enumerate(result_type.elements):
                check_result(element, f"{path}.{element_name or index}")
        else:
            raise CanonicalFormError(f"{name}: the result{path} ({result_type}) is not placed; canonical form returns SERVER values")

    check_result(signature.result, "")
    return state_type, client_type


def compile_to_canonical_form(computation: Any) -> CanonicalForm:
    """The canonical form of a federated computation, or a `CanonicalFormError` saying why not.

    The canonical form splits one round into phases (prepare, work at clients, aggregations,
    update), which is what the AWS executor and the phase runner execute.

    Args:
        computation: a `FederatedComputation` of type `(state@SERVER, data@CLIENTS) -> <state@SERVER, ...>`.

    Returns:
        A `CanonicalForm`.

    Raises:
        CanonicalFormError: if the computation cannot be put in canonical form, naming why.

    Example:
        >>> form = fedsim.compile_to_canonical_form(process.next)
        >>> result = fedsim.run_canonical_form(form, state, client_datasets)
    """
    if not isinstance(computation, FederatedComputation):
        raise CanonicalFormError(f"canonical form compiles a @fedsim.federated_computation, got {type(computation).__name__}")
    name = computation.name
    state_type, client_type = _check_signature(computation, name)

    state_param = Node("param", state_type, name="server_state")
    client_param = Node("param", client_type, name="client_input")
    arguments = SymStruct([state_param, client_param], computation.type_signature.parameter)
    result = evaluator_lib.Evaluator(SymbolicDomain(name)).run(computation.ir, arguments)

    # Every broadcast must depend only on the state (one broadcast stage).
    broadcasts = _collect(result, lambda n: n.kind == "broadcast")
    for node in broadcasts:
        if _reaches(node.inputs[0], _is_aggregate, {}):
            raise CanonicalFormError(
                f"{name}: a value broadcast to the clients ({node.type_signature}) is computed from an aggregate of the same "
                f"round; canonical form has one broadcast stage and one aggregation stage. Split the computation into two rounds."
            )
        if _reaches(node.inputs[0], lambda n: n is client_param, {}):
            raise CanonicalFormError(f"{name}: a broadcast value depends on the clients' input")
    aggregates = _collect(result, _is_aggregate)  # the aggregations the result uses
    definitions = [node.details["definition"] for node in aggregates]

    # prepare: state -> (broadcast values, carry)
    carry = _carry(result, client_param)
    broadcast_sources = [node.inputs[0] for node in broadcasts]

    def prepare_fn(state):
        evaluator = _GraphEvaluator({state_param.id: state})
        return tuple(evaluator.value(s) for s in broadcast_sources), tuple(evaluator.value(c) for c in carry)

    prepare = _trace(prepare_fn, _member(state_type), "prepare")
    broadcast_type, carry_type = prepare.type_signature.result[0], prepare.type_signature.result[1]

    # work: (client_input, broadcast) -> the input of every aggregation
    def work_fn(argument):
        client_input, broadcast_values = argument
        bound = {client_param.id: client_input}
        bound.update({node.id: value for node, value in zip(broadcasts, broadcast_values)})
        evaluator = _GraphEvaluator(bound)
        return tuple(
            evaluator.value(node.inputs[0]) if len(node.inputs) == 1 else tuple(evaluator.value(i) for i in node.inputs)
            for node in aggregates
        )

    work = _trace(work_fn, _tuple_type([_member(client_type), broadcast_type]), "work")
    client_output_type = work.type_signature.result

    zero = _trace(lambda: tuple(d.zero() for d in definitions), None, "zero")
    accumulator_type = zero.type_signature.result
    accumulate = _trace(
        lambda argument: tuple(d.accumulate(a, v) for d, a, v in zip(definitions, argument[0], argument[1])),
        _tuple_type([accumulator_type, client_output_type]),
        "accumulate",
    )
    merge = _trace(
        lambda argument: tuple(d.merge(a, b) for d, a, b in zip(definitions, argument[0], argument[1])),
        _tuple_type([accumulator_type, accumulator_type]),
        "merge",
    )
    report = _trace(lambda accumulators: tuple(d.report(a) for d, a in zip(definitions, accumulators)), accumulator_type, "report")
    aggregates_type = report.type_signature.result

    # update: (carry, aggregates) -> result (SERVER members)
    def update_fn(argument):
        carry_values, aggregate_values = argument
        bound = {node.id: value for node, value in zip(carry, carry_values)}
        bound.update({node.id: value for node, value in zip(aggregates, aggregate_values)})
        evaluator = _GraphEvaluator(bound)
        return evaluator.value(result) if not isinstance(result, SymStruct) else _pack_result(evaluator, result)

    update = _trace(update_fn, _tuple_type([carry_type, aggregates_type]), "update")
    return CanonicalForm(
        type_signature=computation.type_signature,
        prepare=prepare,
        work=work,
        zero=zero,
        accumulate=accumulate,
        merge=merge,
        report=report,
        update=update,
        aggregation_kinds=tuple(d.kind for d in definitions),
        secure_bitwidths=tuple(getattr(d, "bitwidths", None) for d in definitions),
    )


def _pack_result(evaluator: _GraphEvaluator, result: SymStruct) -> Any:
    member = server_result_type(result.type_signature)
    values = [_pack_result(evaluator, e) if isinstance(e, SymStruct) else evaluator.value(e) for e in result.elements]
    return structure.pack_struct(member, values)


def _collect(value: Any, predicate: Callable[[Node], bool]) -> list:
    found, seen, stack = [], set(), [value]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, Node) and predicate(current):
            found.append(current)
        stack.extend(_children(current))
    return sorted(found, key=lambda n: n.id)


def _carry(result: Any, client_param: Node) -> list:
    """The server nodes the update needs that do not depend on any aggregate: computed by prepare."""
    carry, seen = [], set()

    def visit(value: Any) -> None:
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, Node):
            if value.kind == "aggregate":
                return
            if not _reaches(value, _is_aggregate, {}):
                if isinstance(value.type_signature, ft.FederatedType) or value.kind == "param":
                    carry.append(value)
                    return
        for child in _children(value):
            visit(child)

    visit(result)
    return sorted(carry, key=lambda n: n.id)


