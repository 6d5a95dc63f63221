"""Canonical form: a one-round federated computation as named TensorFlow phases.

A computation `(server_state@SERVER, client_input@CLIENTS) -> result@SERVER` whose clients'
work depends only on their input and on what the server broadcast, and whose server result
depends on the state and on aggregates of the clients' work, compiles to

- `prepare(state) -> (broadcast, carry)`: server; what goes to the clients, and the server
  values the update needs that do not depend on the clients;
- `work(client_input, broadcast) -> client_output`: each client;
- `zero() / accumulate(accumulator, client_output) / merge(a, b) / report(accumulator)`:
  the aggregation of every `federated_sum/mean/aggregate/secure_sum_bitwidth` of the round,
  folded into one accumulator (`secure_bitwidths` lists the secure-sum parts);
- `update(carry, aggregates) -> result`: server.

Each phase is a `TensorFlowComputation`, so each serializes and runs where it is needed (the
silo runs `work`, an aggregation Lambda runs the rest). The compiler partially evaluates the
computation's IR symbolically, then traces each phase as a graph that calls the embedded
TensorFlow computations. A computation that needs two communication stages (a value derived
from an aggregate broadcast back in the same round) is refused with a message naming it.

Example::

    form = fedsim.core.canonical_form.compile_to_canonical_form(process.next)
    result = fedsim.core.canonical_form.run_canonical_form(form, state, client_datasets)
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import building_blocks as bb
from fedsim.core import intrinsics as ops
from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.environment import Environment
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.placements import CLIENTS, SERVER

__all__ = ["CanonicalForm", "CanonicalFormError", "compile_to_canonical_form", "run_canonical_form"]


class CanonicalFormError(TypeError):
    """The computation cannot be put in canonical form; the message says which part prevents it."""


@attrs.frozen
class CanonicalForm:
    """The phases of one round; see the module docstring."""

    type_signature: ft.FunctionType
    prepare: tfc.TensorFlowComputation
    work: tfc.TensorFlowComputation
    zero: tfc.TensorFlowComputation
    accumulate: tfc.TensorFlowComputation
    merge: tfc.TensorFlowComputation
    report: tfc.TensorFlowComputation
    update: tfc.TensorFlowComputation
    aggregation_kinds: tuple
    secure_bitwidths: tuple  # per aggregation: None, or the flat bitwidths of a secure sum

    def phases(self) -> dict:
        """`{name: TensorFlowComputation}` for the seven phases."""
        return {name: getattr(self, name) for name in ("prepare", "work", "zero", "accumulate", "merge", "report", "update")}


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


@attrs.define
class Closure:
    block: bb.Lambda
    env: Environment


AGGREGATES = {
    ops.FEDERATED_SUM: "sum",
    ops.FEDERATED_MEAN: "mean",
    ops.FEDERATED_WEIGHTED_MEAN: "weighted_mean",
    ops.FEDERATED_AGGREGATE: "aggregate",
    ops.FEDERATED_SECURE_SUM_BITWIDTH: "secure_sum",
}


def _member(value_type: ft.Type) -> ft.Type:
    return value_type.member if isinstance(value_type, ft.FederatedType) else value_type


class _Interpreter:
    """Evaluates the IR to symbolic values, inlining lambdas and blocks."""

    def __init__(self, name: str):
        self.name = name

    def evaluate(self, block: bb.BuildingBlock, env: Environment) -> Any:
        if isinstance(block, bb.Reference):
            return env.lookup(block.name)
        if isinstance(block, bb.Call):
            if isinstance(block.function, bb.Intrinsic):
                return self._intrinsic(block.function, block.argument, self.evaluate(block.argument, env))
            function = self.evaluate(block.function, env)
            argument = None if block.argument is None else self.evaluate(block.argument, env)
            return self.apply(function, argument, block.type_signature)
        if isinstance(block, bb.Block):
            inner = Environment(env)
            for name, value in block.locals:
                inner.bind(name, self.evaluate(value, inner))
            return self.evaluate(block.result, inner)
        if isinstance(block, bb.Lambda):
            return Closure(block, env)
        if isinstance(block, bb.Compiled):
            return block.computation
        if isinstance(block, bb.Struct):
            return SymStruct([self.evaluate(e, env) for _, e in block.elements], block.type_signature)
        if isinstance(block, bb.Selection):
            return select(self.evaluate(block.source, env), block.index, block.type_signature)
        raise CanonicalFormError(f"{self.name}: cannot compile a {type(block).__name__} used as a value")

    def apply(self, function: Any, argument: Any, result_type: ft.Type) -> Any:
        if isinstance(function, Closure):
            env = Environment(function.env)
            if function.block.parameter_name is not None:
                env.bind(function.block.parameter_name, argument)
            return self.evaluate(function.block.result, env)
        if isinstance(function, tfc.TensorFlowComputation):
            return Node("apply", result_type, () if argument is None else (argument,), fn=function)
        raise CanonicalFormError(f"{self.name}: cannot call a {type(function).__name__}")

    def _intrinsic(self, intrinsic: bb.Intrinsic, argument_block: bb.BuildingBlock, argument: Any) -> Any:
        uri = intrinsic.uri
        result_type = intrinsic.type_signature.result

        def elements():
            return [select(argument, i, t) for i, t in enumerate(_struct_types(argument_block.type_signature))]

        if uri == ops.FEDERATED_VALUE and result_type.placement is SERVER:
            return Node("place", result_type, (argument,))
        if uri in (ops.FEDERATED_VALUE, ops.FEDERATED_BROADCAST):
            return Node("broadcast", result_type, (argument,), uri=uri)
        if uri == ops.FEDERATED_MAP:
            fn, value = elements()
            return self._map(fn, value, result_type)
        if uri == ops.FEDERATED_EVAL:
            return self._map(argument, None, result_type)
        if uri == ops.FEDERATED_ZIP:
            return SymStruct(elements(), result_type)
        if uri in AGGREGATES:
            kind = AGGREGATES[uri]
            if kind == "weighted_mean":
                inputs = tuple(elements())
            elif kind == "aggregate":
                value, zero, accumulate, merge, report = elements()
                for what, fn in (("accumulate", accumulate), ("merge", merge), ("report", report)):
                    if not isinstance(fn, tfc.TensorFlowComputation):
                        raise CanonicalFormError(
                            f"{self.name}: the {what} function of a federated_aggregate must be a tf_computation to compile, "
                            f"got a {type(fn).__name__}"
                        )
                inputs = (value,)
                node = Node("aggregate", result_type, inputs, kind=kind, zero=zero, accumulate=accumulate, merge=merge, report=report)
                return node
            elif kind == "secure_sum":
                value, bitwidth = elements()
                widths = _constant_value(bitwidth, self.name)
                node = Node("aggregate", result_type, (value,), kind=kind, bitwidths=tuple(int(w) for w in tf.nest.flatten(widths)))
                return node
            else:
                inputs = (argument,)
            node = Node("aggregate", result_type, inputs, kind=kind)
            return node
        raise CanonicalFormError(f"{self.name}: the intrinsic {uri} has no place in canonical form (yet)")

    def _map(self, fn: Any, value: Any, result_type: ft.Type) -> Any:
        if isinstance(fn, Closure):
            # A federated lambda (e.g. selecting a field of each member): apply it symbolically to
            # the placed value, and keep the placement of the result.
            return Node("place", result_type, (self.apply(fn, value, _member(result_type)),))
        if not isinstance(fn, tfc.TensorFlowComputation):
            raise CanonicalFormError(f"{self.name}: federated_map needs a tf_computation, got a {type(fn).__name__}")
        return Node("apply", result_type, () if value is None else (value,), fn=fn)


def _struct_types(value_type: ft.Type) -> list:
    member = _member(value_type)
    return [t for t in member] if isinstance(member, ft.StructType) else []


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
    raise CanonicalFormError(f"{name}: a secure sum's bitwidth must be a constant")


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
        return f"a {node.details['kind']} aggregation"
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
    return tfc.trace_tf_function(fn, parameter_type, False, name)


def _tuple_type(types: list) -> ft.StructType:
    return ft.StructType([(None, t) for t in types], container=tuple)


# ----------------------------------------------------------------------------------------------
# The accumulator of each kind of aggregation, in TensorFlow


def _zeros(value_type: ft.Type) -> Any:
    return structure.unflatten_value(value_type, [tf.zeros(leaf.shape, leaf.dtype) for leaf in ft.flatten_type(value_type)])


def _leaves(value: Any, value_type: ft.Type) -> list:
    return structure.flatten_value(value, value_type)


class _Kind:
    """zero/accumulate/merge/report for one aggregation, as graph functions."""

    def __init__(self, node: Node):
        self.node = node
        self.kind = node.details["kind"]
        self.result_type = _member(node.type_signature)
        if self.kind == "weighted_mean":
            self.value_type = _member(node.inputs[0].type_signature)
            self.weight_type = _member(node.inputs[1].type_signature)
            self.input_type = _tuple_type([self.value_type, self.weight_type])
        else:
            self.value_type = _member(node.inputs[0].type_signature)
            self.input_type = self.value_type

    def zero(self) -> Any:
        if self.kind == "sum":
            return _zeros(self.value_type)
        if self.kind in ("mean", "weighted_mean"):
            return (_zeros(self.value_type), tf.constant(0.0, tf.float64))
        if self.kind == "secure_sum":
            return tuple(tf.zeros(leaf.shape, tf.int64) for leaf in ft.flatten_type(self.value_type))
        return _GraphEvaluator({}).value(self.node.details["zero"])

    def accumulate(self, accumulator: Any, client_output: Any) -> Any:
        if self.kind == "sum":
            leaves = [a + v for a, v in zip(_leaves(accumulator, self.value_type), _leaves(client_output, self.value_type))]
            return structure.unflatten_value(self.value_type, leaves)
        if self.kind in ("mean", "weighted_mean"):
            total, weight_sum = accumulator
            if self.kind == "mean":
                value, weight = client_output, tf.constant(1.0, tf.float64)
            else:
                value, weight = client_output
                weight = tf.cast(weight, tf.float64)
            leaves = [a + v * tf.cast(weight, v.dtype) for a, v in zip(_leaves(total, self.value_type), _leaves(value, self.value_type))]
            return (structure.unflatten_value(self.value_type, leaves), weight_sum + weight)
        if self.kind == "secure_sum":
            widths = self.node.details["bitwidths"]
            if len(widths) == 1:
                widths = widths * len(ft.flatten_type(self.value_type))
            checked = []
            for total, leaf, width in zip(accumulator, _leaves(client_output, self.value_type), widths):
                leaf = tf.cast(leaf, tf.int64)
                with tf.control_dependencies([
                    tf.debugging.assert_non_negative(leaf, message="federated_secure_sum_bitwidth: a client value is negative"),
                    tf.debugging.assert_less(leaf, tf.constant(2**width, tf.int64),
                                             message=f"federated_secure_sum_bitwidth: a client value is >= 2**{width}"),
                ]):
                    checked.append(total + leaf)
            return tuple(checked)
        return self.node.details["accumulate"].call_in_graph((accumulator, client_output))

    def merge(self, first: Any, second: Any) -> Any:
        if self.kind == "aggregate":
            return self.node.details["merge"].call_in_graph((first, second))
        return tf.nest.map_structure(lambda a, b: a + b, first, second)

    def report(self, accumulator: Any) -> Any:
        if self.kind == "sum":
            return accumulator
        if self.kind in ("mean", "weighted_mean"):
            total, weight_sum = accumulator
            leaves = [t / tf.cast(weight_sum, t.dtype) for t in _leaves(total, self.value_type)]
            return structure.unflatten_value(self.result_type, leaves)
        if self.kind == "secure_sum":
            return structure.unflatten_value(
                self.result_type, [tf.cast(t, leaf.dtype) for t, leaf in zip(accumulator, ft.flatten_type(self.result_type))]
            )
        return self.node.details["report"].call_in_graph(accumulator)


# ----------------------------------------------------------------------------------------------
# The compiler


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


def _server_result_type(result_type: ft.Type) -> ft.Type:
    if isinstance(result_type, ft.FederatedType):
        return result_type.member
    return ft.StructType([(n, _server_result_type(t)) for n, t in result_type.elements], container=result_type.container)


def compile_to_canonical_form(computation: Any) -> CanonicalForm:
    """The canonical form of a federated computation, or a `CanonicalFormError` saying why not."""
    if not isinstance(computation, FederatedComputation):
        raise CanonicalFormError(f"canonical form compiles a @fedsim.federated_computation, got {type(computation).__name__}")
    name = computation.name
    state_type, client_type = _check_signature(computation, name)

    interpreter = _Interpreter(name)
    state_param = Node("param", state_type, name="server_state")
    client_param = Node("param", client_type, name="client_input")
    function = interpreter.evaluate(computation.ir, Environment())
    arguments = SymStruct([state_param, client_param], computation.type_signature.parameter)
    result = interpreter.apply(function, arguments, computation.type_signature.result)

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
    kinds = [_Kind(a) for a in _collect(result, _is_aggregate)]  # the aggregations the result uses

    # prepare: state -> (broadcast values, carry)
    carry = _carry(result, client_param)
    broadcast_sources = [node.inputs[0] for node in broadcasts]

    def prepare_fn(state):
        evaluator = _GraphEvaluator({state_param.id: state})
        return tuple(evaluator.value(s) for s in broadcast_sources), tuple(evaluator.value(c) for c in carry)

    prepare = _trace(prepare_fn, _member(state_type), "prepare")
    broadcast_type, carry_type = prepare.type_signature.result[0], prepare.type_signature.result[1]

    # work: (client_input, broadcast) -> the inputs of every aggregation
    def work_fn(argument):
        client_input, broadcast_values = argument
        bound = {client_param.id: client_input}
        bound.update({node.id: value for node, value in zip(broadcasts, broadcast_values)})
        evaluator = _GraphEvaluator(bound)
        return tuple(
            (evaluator.value(k.node.inputs[0]), evaluator.value(k.node.inputs[1])) if k.kind == "weighted_mean" else evaluator.value(k.node.inputs[0])
            for k in kinds
        )

    work = _trace(work_fn, _tuple_type([_member(client_type), broadcast_type]), "work")
    client_output_type = work.type_signature.result

    zero = _trace(lambda: tuple(k.zero() for k in kinds), None, "zero")
    accumulator_type = zero.type_signature.result
    accumulate = _trace(
        lambda argument: tuple(k.accumulate(a, v) for k, a, v in zip(kinds, argument[0], argument[1])),
        _tuple_type([accumulator_type, client_output_type]),
        "accumulate",
    )
    merge = _trace(
        lambda argument: tuple(k.merge(a, b) for k, a, b in zip(kinds, argument[0], argument[1])),
        _tuple_type([accumulator_type, accumulator_type]),
        "merge",
    )
    report = _trace(lambda accumulators: tuple(k.report(a) for k, a in zip(kinds, accumulators)), accumulator_type, "report")
    aggregates_type = report.type_signature.result

    # update: (carry, aggregates) -> result (SERVER members)
    def update_fn(argument):
        carry_values, aggregate_values = argument
        bound = {node.id: value for node, value in zip(carry, carry_values)}
        bound.update({k.node.id: value for k, value in zip(kinds, aggregate_values)})
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
        aggregation_kinds=tuple(k.kind for k in kinds),
        secure_bitwidths=tuple(k.node.details.get("bitwidths") for k in kinds),
    )


def _pack_result(evaluator: _GraphEvaluator, result: SymStruct) -> Any:
    member = _server_result_type(result.type_signature)
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


# ----------------------------------------------------------------------------------------------
# A reference executor: the phases by hand


def run_canonical_form(form: CanonicalForm, server_state: Any, client_inputs: list, merge_every: int = 0) -> Any:
    """Runs the phases in order on one machine: what any executor of the form must reproduce.

    With `merge_every=k > 0`, clients are accumulated in groups of k and the groups merged,
    as a distributed aggregation would.
    """
    if not client_inputs:
        raise ValueError("run_canonical_form: the list of client inputs is empty")
    state_type = form.type_signature.parameter[0].member
    client_type = form.type_signature.parameter[1].member
    state = structure.check_and_normalize(server_state, state_type, "the server state")
    broadcast, carry = form.prepare.call_value(state)
    total, group, in_group = None, form.zero.call_value(None), 0
    for index, client_input in enumerate(client_inputs):
        value = structure.check_and_normalize(client_input, client_type, f"client {index}'s input")
        output = form.work.call_value((value, broadcast))
        group = form.accumulate.call_value((group, output))
        in_group += 1
        if merge_every and in_group == merge_every:
            total = group if total is None else form.merge.call_value((total, group))
            group, in_group = form.zero.call_value(None), 0
    if in_group or total is None:
        total = group if total is None else form.merge.call_value((total, group))
    aggregates = form.report.call_value(total)
    result = form.update.call_value((carry, aggregates))
    return _scalars(result)


def _scalars(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value
