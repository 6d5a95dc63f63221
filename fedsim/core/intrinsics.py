"""Federated and sequence intrinsics: the operations a federated computation is made of.

Each checks placements and types when the computation is traced and refuses misuse in plain
words (for example `federated_sum` of a SERVER value), then records one IR call of an
`Intrinsic` whose result type comes from the registry's type rule (`intrinsic_defs`); the
evaluator gives them meaning in each execution context.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import tensorflow as tf

from fedsim.core import building_blocks as bb
from fedsim.core import intrinsic_defs as defs
from fedsim.core import computation as computation_lib
from fedsim.core import federated_tracing as fc
from fedsim.core import structure
from fedsim.core import tensorflow_computation
from fedsim.core import wrappers
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER, Placement

__all__ = [
    "FederatedTypeError",
    "federated_value",
    "federated_broadcast",
    "federated_map",
    "federated_eval",
    "federated_zip",
    "federated_sum",
    "federated_mean",
    "federated_aggregate",
    "federated_secure_sum_bitwidth",
    "federated_secure_sum",
    "federated_min",
    "federated_max",
    "federated_select",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
]

class FederatedTypeError(TypeError):
    """An intrinsic was given a value of the wrong placement or type."""


def _tracer(name: str) -> fc.TracingContext:
    return fc.current_tracer(f"fedsim.{name}")


def _value(obj: Any, name: str, what: str) -> fc.Value:
    if isinstance(obj, fc.Value):
        return obj
    try:
        return fc.Value(fc.to_block(obj))
    except TypeError as error:
        raise FederatedTypeError(f"fedsim.{name}: the {what} cannot be used: {error}") from None


def _call(uri: str, arguments: list, placement: Optional[Placement] = None) -> fc.Value:
    """Records a call of `uri`; its result type comes from the registry's type rule."""
    blocks = [fc.to_block(a) for a in arguments]
    if len(blocks) == 1:
        parameter_type, argument = blocks[0].type_signature, blocks[0]
    else:
        argument = bb.Struct([(None, b) for b in blocks])
        parameter_type = argument.type_signature
    result_type = defs.lookup(uri).type_rule(parameter_type, placement)
    intrinsic = bb.Intrinsic(uri, ft.FunctionType(parameter_type, result_type))
    return _tracer(uri).bind(bb.Call(intrinsic, argument))


def _federated(value: fc.Value, name: str, what: str = "value") -> ft.FederatedType:
    value_type = value.type_signature
    if not isinstance(value_type, ft.FederatedType):
        raise FederatedTypeError(
            f"fedsim.{name} needs a federated {what} (placed at CLIENTS or SERVER), but got an unplaced "
            f"value of type {value_type}; place it with fedsim.federated_value or pass a federated value"
        )
    return value_type


def _at_clients(value: fc.Value, name: str, what: str = "value") -> ft.FederatedType:
    value_type = _federated(value, name, what)
    if value_type.placement is not CLIENTS:
        raise FederatedTypeError(
            f"fedsim.{name} aggregates values held by the clients, so its {what} must be placed at "
            f"CLIENTS, but it is {value_type} (placed at {value_type.placement}). A server value needs "
            f"no aggregation; to send it to the clients use fedsim.federated_broadcast"
        )
    return value_type


def _unplaced(value: fc.Value, name: str, what: str) -> ft.Type:
    value_type = value.type_signature
    if isinstance(value_type, ft.FederatedType):
        raise FederatedTypeError(
            f"fedsim.{name}: the {what} must be an unplaced value, but it is {value_type}"
        )
    return value_type


def _function(fn: Any, parameter_type: Optional[ft.Type], name: str, what: str, unpack: bool = False) -> fc.Value:
    """A function value for `fn`, instantiating a computation without declared types."""
    if isinstance(fn, wrappers.PolymorphicComputation):
        if parameter_type is None:
            raise FederatedTypeError(f"fedsim.{name}: the {what} needs declared types")
        fn = fn.for_type(parameter_type, unpack)
    if not isinstance(fn, (computation_lib.Computation, fc.Value)):
        raise FederatedTypeError(
            f"fedsim.{name}: the {what} must be a computation (@fedsim.tf_computation or "
            f"@fedsim.federated_computation), got a {type(fn).__name__}"
        )
    value = fc.Value(fc.to_block(fn))
    function_type = value.type_signature
    if not isinstance(function_type, ft.FunctionType):
        raise FederatedTypeError(f"fedsim.{name}: the {what} must be a function, got a value of type {function_type}")
    if (function_type.parameter is None) != (parameter_type is None):
        expected = "no parameter" if parameter_type is None else f"a parameter of type {parameter_type}"
        raise FederatedTypeError(f"fedsim.{name}: the {what} must take {expected}, but its type is {function_type}")
    if parameter_type is not None:
        difference = ft.find_type_difference(function_type.parameter, parameter_type)
        if difference:
            raise structure.TypeSignatureMismatchError(
                f"fedsim.{name}: the {what} cannot take the values it would be given.\n"
                f"  expected: {function_type.parameter}\n"
                f"  given:    {parameter_type}\n"
                f"  {difference}"
            )
    if isinstance(function_type.result, ft.FederatedType):
        raise FederatedTypeError(f"fedsim.{name}: the {what} must return an unplaced value, not {function_type.result}")
    return value


def _check_leaves(value_type: ft.Type, name: str, allowed: str, what: str = "value") -> None:
    if ft.contains_sparse(value_type):
        raise FederatedTypeError(
            f"fedsim.{name} cannot aggregate the sparse tensor in {value_type} leaf by leaf (its indices would be "
            f"added); densify it with tf.sparse.to_dense in a federated_map first"
        )
    for leaf in ft.flatten_type(value_type):
        ok = isinstance(leaf, ft.TensorType) and (
            (allowed == "numeric" and (leaf.dtype.is_floating or leaf.dtype.is_integer))
            or (allowed == "floating" and leaf.dtype.is_floating)
            or (allowed == "integer" and leaf.dtype.is_integer)
        )
        if not ok:
            raise FederatedTypeError(
                f"fedsim.{name} needs {allowed} tensors, but the {what} of type {value_type} contains {leaf}"
            )


def federated_value(value: Any, placement: Placement) -> fc.Value:
    """Places an unplaced value (or Python constant) at `placement`, equal everywhere.

    Args:
        value: an unplaced traced value or a Python/numpy constant.
        placement: `fedsim.CLIENTS` or `fedsim.SERVER`.

    Returns:
        The value placed at `placement` (`T@SERVER`, or `T@CLIENTS` with one value for all clients).

    Raises:
        FederatedTypeError: if `placement` is not a placement or `value` is already placed.

    Example:
        >>> one = fedsim.federated_value(1.0, fedsim.SERVER)
    """
    if not isinstance(placement, Placement):
        raise FederatedTypeError(f"fedsim.federated_value needs fedsim.CLIENTS or fedsim.SERVER, got {placement!r}")
    value = _value(value, defs.FEDERATED_VALUE, "value")
    member = _unplaced(value, defs.FEDERATED_VALUE, "value")
    del member  # checked above: the value is unplaced
    return _call(defs.FEDERATED_VALUE, [value], placement)


def federated_broadcast(value: Any) -> fc.Value:
    """Sends a SERVER value to every client: `T@SERVER -> T@CLIENTS`.

    Args:
        value: a traced value placed at the SERVER.

    Returns:
        The same value at CLIENTS, equal for every client.

    Raises:
        FederatedTypeError: if `value` is not placed at the SERVER.

    Example:
        >>> model_at_clients = fedsim.federated_broadcast(server_model)
    """
    value = _value(value, defs.FEDERATED_BROADCAST, "value")
    value_type = _federated(value, defs.FEDERATED_BROADCAST)
    if value_type.placement is not SERVER:
        raise FederatedTypeError(
            f"fedsim.federated_broadcast sends a server value to the clients, but got {value_type} "
            f"(placed at {value_type.placement})"
        )
    return _call(defs.FEDERATED_BROADCAST, [value])


def _zip_if_structure(arg: Any, name: str) -> fc.Value:
    if isinstance(arg, (list, tuple, dict)) and not isinstance(arg, fc.Value):
        return federated_zip(arg)
    value = _value(arg, name, "argument")
    if isinstance(value.type_signature, ft.StructType) and all(
        isinstance(t, ft.FederatedType) for t in value.type_signature
    ):
        return federated_zip(value)
    return value


def federated_map(fn: Any, arg: Any) -> fc.Value:
    """Applies an unplaced computation to each member of a federated value.

    `{T}@CLIENTS -> {U}@CLIENTS`, or `T@SERVER -> U@SERVER`. A structure of federated values is
    zipped first, as in TFF.

    Args:
        fn: a `tf_computation` (or `federated_computation`, or a Python function over tensors,
            traced for the member type) from T to U.
        arg: a federated value, or a tuple/list/dict of federated values at one placement.

    Returns:
        The results at the argument's placement.

    Raises:
        FederatedTypeError: if `arg` is not federated or `fn` does not accept its member type.

    Example:
        >>> updates = fedsim.federated_map(client_update, (model_at_clients, datasets))
    """
    value = _zip_if_structure(arg, defs.FEDERATED_MAP)
    value_type = _federated(value, defs.FEDERATED_MAP, "argument")
    function = _function(fn, value_type.member, defs.FEDERATED_MAP, "mapped computation", unpack=isinstance(value_type.member, ft.StructType))
    return _call(defs.FEDERATED_MAP, [function, value])


def federated_eval(fn: Any, placement: Placement) -> fc.Value:
    """Runs a no-argument computation at `placement` (each client runs its own).

    Args:
        fn: a computation (or Python function) that takes no argument.
        placement: `fedsim.CLIENTS` or `fedsim.SERVER`.

    Returns:
        Its result placed at `placement` (`{U}@CLIENTS`: one per client).

    Raises:
        FederatedTypeError: if `placement` is not a placement or `fn` takes an argument.
    """
    if not isinstance(placement, Placement):
        raise FederatedTypeError(f"fedsim.federated_eval needs fedsim.CLIENTS or fedsim.SERVER, got {placement!r}")
    function = _function(fn, None, defs.FEDERATED_EVAL, "evaluated computation")
    return _call(defs.FEDERATED_EVAL, [function], placement)


def federated_zip(value: Any) -> fc.Value:
    """Turns a structure of federated values at one placement into a federated structure.

    `<a={A}@CLIENTS,b={B}@CLIENTS> -> {<a=A,b=B>}@CLIENTS`.

    Args:
        value: a non-empty structure (tuple, list, dict or traced struct) of federated values.

    Returns:
        One federated value whose member is the structure of the members.

    Raises:
        FederatedTypeError: if an element is not federated or the placements differ.
    """
    value = _value(value, defs.FEDERATED_ZIP, "value")
    value_type = value.type_signature
    if not isinstance(value_type, ft.StructType) or len(value_type) == 0:
        raise FederatedTypeError(f"fedsim.federated_zip needs a non-empty structure of federated values, got {value_type}")
    placements = set()
    for element_name, element_type in value_type.elements:
        if not isinstance(element_type, ft.FederatedType):
            raise FederatedTypeError(
                f"fedsim.federated_zip: element {element_name or ''} of {value_type} is not federated; "
                f"every element must be placed (use federated_value or federated_broadcast)"
            )
        placements.add(element_type.placement)
    if len(placements) != 1:
        raise FederatedTypeError(f"fedsim.federated_zip: the elements of {value_type} are at different placements")
    return _call(defs.FEDERATED_ZIP, [value])


def federated_sum(value: Any) -> fc.Value:
    """Sums a CLIENTS value at the SERVER: `{T}@CLIENTS -> T@SERVER` (numeric T).

    Args:
        value: a value at CLIENTS whose leaves are numeric tensors.

    Returns:
        The leaf-wise sum at the SERVER (zeros over zero clients).

    Raises:
        FederatedTypeError: if `value` is not at CLIENTS or has a non-numeric leaf.

    Example:
        >>> total = fedsim.federated_sum(counts)
    """
    value = _value(value, defs.FEDERATED_SUM, "value")
    value_type = _at_clients(value, defs.FEDERATED_SUM)
    _check_leaves(value_type.member, defs.FEDERATED_SUM, "numeric")
    return _call(defs.FEDERATED_SUM, [value])


def _extremum(uri: str, value: Any) -> fc.Value:
    value = _value(value, uri, "value")
    value_type = _at_clients(value, uri)
    _check_leaves(value_type.member, uri, "numeric")
    return _call(uri, [value])


def federated_min(value: Any) -> fc.Value:
    """The leaf-wise minimum of a CLIENTS value at the SERVER: `{T}@CLIENTS -> T@SERVER` (numeric T).

    Over zero clients each leaf is its dtype's largest value, as in TFF.

    Args:
        value: a value at CLIENTS whose leaves are numeric tensors.

    Returns:
        The leaf-wise minimum at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not at CLIENTS or has a non-numeric leaf.
    """
    return _extremum(defs.FEDERATED_MIN, value)


def federated_max(value: Any) -> fc.Value:
    """The leaf-wise maximum of a CLIENTS value at the SERVER: `{T}@CLIENTS -> T@SERVER` (numeric T).

    Over zero clients each leaf is its dtype's smallest value, as in TFF.

    Args:
        value: a value at CLIENTS whose leaves are numeric tensors.

    Returns:
        The leaf-wise maximum at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not at CLIENTS or has a non-numeric leaf.
    """
    return _extremum(defs.FEDERATED_MAX, value)


def federated_mean(value: Any, weight: Any = None) -> fc.Value:
    """The (weighted) mean of a CLIENTS value at the SERVER: `{T}@CLIENTS -> T@SERVER`.

    Args:
        value: a value at CLIENTS whose leaves are floating-point tensors.
        weight: optional numeric scalar per client (`{float32}@CLIENTS`); without it every
            client counts equally.

    Returns:
        The (weighted) leaf-wise mean at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not at CLIENTS, has a non-floating leaf, or `weight` is
            not a numeric scalar at CLIENTS.

    Example:
        >>> mean_model = fedsim.federated_mean(client_models, weight=num_examples)
    """
    value = _value(value, defs.FEDERATED_MEAN, "value")
    value_type = _at_clients(value, defs.FEDERATED_MEAN)
    _check_leaves(value_type.member, defs.FEDERATED_MEAN, "floating")
    if weight is None:
        return _call(defs.FEDERATED_MEAN, [value])
    weight = _value(weight, defs.FEDERATED_MEAN, "weight")
    weight_type = _at_clients(weight, defs.FEDERATED_MEAN, "weight")
    member = weight_type.member
    if not (isinstance(member, ft.TensorType) and member.shape == () and (member.dtype.is_floating or member.dtype.is_integer)):
        raise FederatedTypeError(
            f"fedsim.federated_mean: the weight must be a numeric scalar per client, such as "
            f"{{float32}}@CLIENTS, but it is {weight_type}"
        )
    return _call(defs.FEDERATED_WEIGHTED_MEAN, [value, weight])


def federated_aggregate(value: Any, zero: Any, accumulate: Any, merge: Any, report: Any) -> fc.Value:
    """The general aggregation: `{T}@CLIENTS -> R@SERVER`.

    Starting from `zero` (U), clients' values are folded in with `accumulate: <U,T> -> U`,
    partial accumulators combined with `merge: <U,U> -> U`, and the total turned into the
    result with `report: U -> R`.

    Args:
        value: a value at CLIENTS (a tuple of CLIENTS values is zipped first, as in TFF).
        zero: the unplaced initial accumulator (U).
        accumulate: computation `<U,T> -> U`.
        merge: computation `<U,U> -> U`.
        report: computation `U -> R`.

    Returns:
        The reported result at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not at CLIENTS or `zero` is placed.
        TypeSignatureMismatchError: if `accumulate` or `merge` does not return U.
    """
    name = defs.FEDERATED_AGGREGATE
    value = _zip_if_structure(value, name)  # a tuple of CLIENTS values is zipped, as in TFF
    value_type = _at_clients(value, name)
    zero = _value(zero, name, "zero")
    zero_type = _unplaced(zero, name, "zero")
    accumulate_fn = _function(accumulate, ft.StructType([(None, zero_type), (None, value_type.member)]), name, "accumulate", unpack=True)
    _check_result(accumulate_fn, zero_type, name, "accumulate")
    merge_fn = _function(merge, ft.StructType([(None, zero_type), (None, zero_type)]), name, "merge", unpack=True)
    _check_result(merge_fn, zero_type, name, "merge")
    report_fn = _function(report, zero_type, name, "report")
    return _call(name, [value, zero, accumulate_fn, merge_fn, report_fn])


def _check_result(function: fc.Value, expected: ft.Type, name: str, what: str) -> None:
    difference = ft.find_type_difference(expected, function.type_signature.result)
    if difference:
        raise structure.TypeSignatureMismatchError(
            f"fedsim.{name}: {what} must return the accumulator type.\n"
            f"  expected: {expected}\n  given:    {function.type_signature.result}\n  {difference}"
        )


def _constant_per_leaf(constant: Any, member: ft.Type, name: str, what: str, low: int, high: int) -> list:
    """A Python int, or a structure of them matching `member`, as one int per leaf (type order)."""
    if isinstance(constant, fc.Value):
        raise FederatedTypeError(f"fedsim.{name}: the {what} must be a Python int (or a structure of them), not a traced value")
    if isinstance(constant, (int, np.integer)) and not isinstance(constant, bool):
        values = [constant] * len(ft.flatten_type(member))
    else:
        try:  # a structure matching the value's type, read in the type's order (dict keys by name)
            values = structure.flatten_value(constant, member)
        except structure.TypeSignatureMismatchError as mismatch:
            raise FederatedTypeError(
                f"fedsim.{name}: the {what} structure {constant!r} does not match the value type {member}: {mismatch}"
            ) from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise FederatedTypeError(f"fedsim.{name}: the {what} must be a Python int from {low} to {high}, got {value!r}")
    return [int(v) for v in values]


def _secure_sum(name: str, value: Any, constant: Any, what: str, low: int, high: int) -> fc.Value:
    value = _value(value, name, "value")
    value_type = _at_clients(value, name)
    _check_leaves(value_type.member, name, "integer")
    member = value_type.member
    per_leaf = _constant_per_leaf(constant, member, name, what, low, high)
    int64_member = structure.unflatten_value(member, [np.int64(v) for v in per_leaf])
    return _call(name, [value, fc.Value(fc.to_block(int64_member))])


def federated_secure_sum_bitwidth(value: Any, bitwidth: Any) -> fc.Value:
    """A secure sum of integer CLIENTS values, each in `[0, 2**bitwidth)`: `{T}@CLIENTS -> T@SERVER`.

    The local context checks each client's range and sums exactly (or runs the secure
    aggregation protocol among simulated clients with `secure_aggregation="protocol"`); on the
    AWS executor it runs as the secure aggregation protocol among the silos.

    Args:
        value: a value at CLIENTS whose leaves are integer tensors.
        bitwidth: a Python int from 1 to 62, or a structure of them matching T.

    Returns:
        The leaf-wise sum at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not integer at CLIENTS or `bitwidth` is out of range or
            does not match T.
    """
    return _secure_sum(defs.FEDERATED_SECURE_SUM_BITWIDTH, value, bitwidth, "bitwidth", 1, 62)


def federated_secure_sum(value: Any, max_input: Any) -> fc.Value:
    """A secure sum of integer CLIENTS values, each in `[0, max_input]`: `{T}@CLIENTS -> T@SERVER`.

    TFF's spelling; runs as `federated_secure_sum_bitwidth` does.

    Args:
        value: a value at CLIENTS whose leaves are integer tensors.
        max_input: a Python int from 0 to 2**62, or a structure of them matching T.

    Returns:
        The leaf-wise sum at the SERVER.

    Raises:
        FederatedTypeError: if `value` is not integer at CLIENTS or `max_input` is out of range or
            does not match T.
    """
    return _secure_sum(defs.FEDERATED_SECURE_SUM, value, max_input, "max_input", 0, 2**62)


def federated_select(client_keys: Any, max_key: Any, server_val: Any, select_fn: Any) -> fc.Value:
    """Each client receives `select_fn(server_val, key)` for each of its keys, as a sequence.

    It is a broadcast of the server value and a client-side selection, so it compiles to the
    canonical form like any other broadcast and map.

    Args:
        client_keys: `{int32[n]}@CLIENTS`, each key in `[0, max_key)`.
        max_key: an integer scalar at the SERVER.
        server_val: a value at the SERVER.
        select_fn: a `tf_computation` (or a Python function over tensors)
            `(server_val member, int32) -> U`.

    Returns:
        `{U*}@CLIENTS`: one sequence per client, one element per key.

    Raises:
        FederatedTypeError: if an argument has the wrong placement or type.
    """
    name = "federated_select"
    keys = _value(client_keys, name, "client_keys")
    keys_type = _at_clients(keys, name, "client_keys")
    key_member = keys_type.member
    if not (isinstance(key_member, ft.TensorType) and key_member.dtype.is_integer and len(key_member.shape) == 1):
        raise FederatedTypeError(f"fedsim.{name}: client_keys must be a vector of integer keys per client, such as {{int32[3]}}@CLIENTS, got {keys_type}")
    max_key = _value(max_key, name, "max_key")
    max_key_type = _federated(max_key, name, "max_key")
    if max_key_type.placement is not SERVER or not (isinstance(max_key_type.member, ft.TensorType) and max_key_type.member.shape == ()):
        raise FederatedTypeError(f"fedsim.{name}: max_key must be an integer scalar at the SERVER, got {max_key_type}")
    server_val = _value(server_val, name, "server_val")
    server_type = _federated(server_val, name, "server_val")
    if server_type.placement is not SERVER:
        raise FederatedTypeError(f"fedsim.{name}: server_val must be placed at the SERVER, got {server_type}")
    key_type = ft.TensorType(key_member.dtype)
    if isinstance(select_fn, wrappers.PolymorphicComputation):
        select_fn = select_fn.for_type(ft.StructType([(None, server_type.member), (None, key_type)]), True)
    if isinstance(select_fn, computation_lib.Computation):
        if not isinstance(select_fn, tensorflow_computation.TensorFlowComputation):
            raise FederatedTypeError(f"fedsim.{name}: select_fn must be a tf_computation (or a Python function over tensors)")
        computation = select_fn
        select = lambda value, key: computation.call_in_graph((value, key))  # noqa: E731
    elif callable(select_fn):
        select = select_fn
    else:
        raise FederatedTypeError(f"fedsim.{name}: select_fn must be a computation or a function, got {select_fn!r}")

    def select_all(keys, max_key, value):
        keys = tf.cast(keys, key_member.dtype)
        with tf.control_dependencies([
            tf.debugging.assert_non_negative(keys, message="federated_select: a client key is negative"),
            tf.debugging.assert_less(keys, tf.cast(max_key, keys.dtype), message="federated_select: a client key is >= max_key"),
        ]):
            keys = tf.identity(keys)
        return tf.data.Dataset.from_tensor_slices(keys).map(lambda key: select(value, key))

    select_all = wrappers.tf_computation(select_all, key_member, max_key_type.member, server_type.member)
    together = federated_zip((keys, federated_broadcast(max_key), federated_broadcast(server_val)))
    return federated_map(select_all, together)


def _sequence_operand(value: Any, name: str) -> tuple:
    """(value, element type) for a sequence or federated sequence."""
    value = _value(value, name, "sequence")
    value_type = value.type_signature
    sequence_type = value_type.member if isinstance(value_type, ft.FederatedType) else value_type
    if not isinstance(sequence_type, ft.SequenceType):
        raise FederatedTypeError(f"fedsim.{name} needs a sequence (a dataset), got {value_type}")
    return value, sequence_type.element


def sequence_map(fn: Any, value: Any) -> fc.Value:
    """Maps a computation over a sequence's elements: `(T -> U), T* -> U*` (also pointwise at a placement).

    Args:
        fn: a `tf_computation` from T to U.
        value: a sequence `T*` (or a federated sequence).

    Returns:
        The mapped sequence `U*` (at the same placement).

    Raises:
        FederatedTypeError: if `value` is not a sequence or `fn` is not a `tf_computation`.
    """
    value, element = _sequence_operand(value, defs.SEQUENCE_MAP)
    function = _function(fn, element, defs.SEQUENCE_MAP, "mapped computation")
    _require_tensorflow(function, defs.SEQUENCE_MAP)
    return _call(defs.SEQUENCE_MAP, [function, value])


def sequence_reduce(value: Any, zero: Any, op: Any) -> fc.Value:
    """Folds a sequence: `T*, U, (<U,T> -> U) -> U` (also pointwise at a placement).

    Args:
        value: a sequence `T*` (or a federated sequence).
        zero: the unplaced initial accumulator (U).
        op: a `tf_computation` `<U,T> -> U`.

    Returns:
        The folded value U (at the sequence's placement).

    Raises:
        FederatedTypeError: if `value` is not a sequence or `op` is not a `tf_computation`.
        TypeSignatureMismatchError: if `op` does not return U.
    """
    value, element = _sequence_operand(value, defs.SEQUENCE_REDUCE)
    zero = _value(zero, defs.SEQUENCE_REDUCE, "zero")
    zero_type = _unplaced(zero, defs.SEQUENCE_REDUCE, "zero")
    function = _function(op, ft.StructType([(None, zero_type), (None, element)]), defs.SEQUENCE_REDUCE, "reduction", unpack=True)
    _require_tensorflow(function, defs.SEQUENCE_REDUCE)
    _check_result(function, zero_type, defs.SEQUENCE_REDUCE, "the reduction")
    return _call(defs.SEQUENCE_REDUCE, [value, zero, function])


def sequence_sum(value: Any) -> fc.Value:
    """Sums a sequence's elements: `T* -> T` (numeric T; also pointwise at a placement).

    Args:
        value: a sequence of numeric elements (or a federated sequence).

    Returns:
        The element-wise sum T (at the sequence's placement).

    Raises:
        FederatedTypeError: if `value` is not a sequence of numeric elements.
    """
    value, element = _sequence_operand(value, defs.SEQUENCE_SUM)
    _check_leaves(element, defs.SEQUENCE_SUM, "numeric", "sequence element")
    return _call(defs.SEQUENCE_SUM, [value])


def _require_tensorflow(function: fc.Value, name: str) -> None:
    if not isinstance(function.block, bb.Compiled):
        raise FederatedTypeError(f"fedsim.{name} needs a @fedsim.tf_computation as its function")
