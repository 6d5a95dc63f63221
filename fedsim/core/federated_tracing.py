"""`federated_computation`: a Python function over federated values, traced to the IR.

While the function runs, its parameters are `Value`s: symbolic federated values whose
operations (intrinsics, calls of computations, selections) record IR nodes. Every call is
bound to a named local of one `Block`, so each is computed once. The traced `Lambda` is the
computation: typed, serializable and run by whichever execution context is current.

The decorator users write is `fedsim.federated_computation` (`wrappers`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import building_blocks as bb
from fedsim.core import computation as computation_lib
from fedsim.core import context_stack
from fedsim.core import intrinsic_defs as defs
from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft

__all__ = ["FederatedComputation", "Value", "TracingContext", "current_tracer", "to_block", "trace_federated_function", "type_of_call_argument"]


class FederatedComputation(computation_lib.Computation):
    """A traced federated computation: `ir` is a `Lambda` building block.

    Made by `federated_computation`; `deserialize_computation` rebuilds one.

    Args:
        ir: the computation's IR.
        name: a name for messages.
        unpack: whether the Python function took the parameter's elements as separate arguments.
    """

    def __init__(self, ir: bb.Lambda, name: str, unpack: bool = False):
        super().__init__(ir.type_signature, name, unpack)
        self.ir = ir


class Value:
    """A symbolic value inside a federated computation being traced.

    Structures support `value.name`, `value[i]` and unpacking; federated structures support
    `value.name` too (a member-wise selection); function values can be called.

    Args:
        block: the IR node the value stands for.
    """

    def __init__(self, block: bb.BuildingBlock):
        self._block = block

    @property
    def block(self) -> bb.BuildingBlock:
        """The IR node this value stands for."""
        return self._block

    @property
    def type_signature(self) -> ft.Type:
        return self._block.type_signature

    def __repr__(self) -> str:
        return f"<fedsim.Value of type {self.type_signature}>"

    def _select(self, key: Any) -> "Value":
        value_type = self.type_signature
        member = value_type.member if isinstance(value_type, ft.FederatedType) else value_type
        if not isinstance(member, ft.StructType):
            raise AttributeError(f"a value of type {value_type} is not a structure; cannot select {key!r}")
        if isinstance(key, str):
            index = member.index_of(key)
        else:
            index = int(key)
            if not -len(member) <= index < len(member):
                raise IndexError(f"index {key} out of range for {value_type}")
            index %= len(member)
        if isinstance(value_type, ft.FederatedType):
            return _select_member(self, index)
        return Value(bb.Selection(self._block, index))

    def __getattr__(self, name: str) -> "Value":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._select(name)

    def __getitem__(self, key: Any) -> "Value":
        return self._select(key)

    def __len__(self) -> int:
        member = self.type_signature
        if isinstance(member, ft.FederatedType):
            member = member.member
        if not isinstance(member, ft.StructType):
            raise TypeError(f"a value of type {self.type_signature} has no length")
        return len(member)

    def __iter__(self):
        return (self._select(i) for i in range(len(self)))

    def __call__(self, *args: Any, **kwargs: Any) -> "Value":
        function_type = self.type_signature
        if not isinstance(function_type, ft.FunctionType):
            raise TypeError(f"a value of type {function_type} is not a function")
        return current_tracer("calling a function value").invoke_block(self._block, args, kwargs)

    def __bool__(self) -> bool:
        raise TypeError(
            "a federated value being traced has no truth value: Python `if`/`while` on it cannot be "
            "traced; put data-dependent control flow inside a tf_computation"
        )


class TracingContext:
    """The context while a federated computation is traced: calls become IR, bound as locals."""

    def __init__(self):
        self.locals: list = []

    def bind(self, block: bb.BuildingBlock) -> Value:
        name = f"_v{len(self.locals) + 1}"
        self.locals.append((name, block))
        return Value(bb.Reference(name, block.type_signature))

    def invoke(self, computation: Any, argument: Any) -> Value:
        return self._call(to_block(computation), argument, computation.name)

    def invoke_block(self, function: bb.BuildingBlock, args: tuple, kwargs: dict) -> Value:
        shim = computation_lib.Computation(function.type_signature, "function value", unpack=len(args) + len(kwargs) > 1)
        argument = computation_lib.pack_call_arguments(shim, args, kwargs)
        return self._call(function, argument, "function value")

    def _call(self, function: bb.BuildingBlock, argument: Any, name: str) -> Value:
        function_type = function.type_signature
        argument_block = None if argument is None else to_block(argument)
        if argument_block is not None and function_type.parameter is not None:
            difference = ft.find_type_difference(function_type.parameter, argument_block.type_signature)
            if difference:
                hint = ""
                if _has_federated(argument_block.type_signature) and not _has_federated(function_type.parameter):
                    hint = "\n  a computation on unplaced values is applied to a federated value with fedsim.federated_map"
                raise structure.TypeSignatureMismatchError(
                    f"the argument of {name} does not match its parameter type.\n"
                    f"  expected: {function_type.parameter}\n"
                    f"  given:    {argument_block.type_signature}\n"
                    f"  {difference}{hint}"
                )
        return self.bind(bb.Call(function, argument_block))


def _has_federated(type_spec: ft.Type) -> bool:
    if isinstance(type_spec, ft.FederatedType):
        return True
    return isinstance(type_spec, ft.StructType) and any(_has_federated(t) for t in type_spec)


def _select_member(value: Value, index: int) -> Value:
    """`value[index]` for a federated structure: a federated_map of a selection lambda."""
    value_type = value.type_signature
    member = value_type.member
    selector = bb.Lambda("_member", member, bb.Selection(bb.Reference("_member", member), index))
    argument = bb.Struct([(None, selector), (None, value.block)])
    result_type = defs.lookup(defs.FEDERATED_MAP).type_rule(argument.type_signature, None)
    intrinsic = bb.Intrinsic(defs.FEDERATED_MAP, ft.FunctionType(argument.type_signature, result_type))
    return current_tracer("selecting from a federated value").bind(bb.Call(intrinsic, argument))


def current_tracer(what: str) -> TracingContext:
    context = context_stack.get_context()
    if not isinstance(context, TracingContext):
        raise RuntimeError(
            f"{what} is only possible inside a function decorated with @fedsim.federated_computation"
        )
    return context


def type_of_call_argument(argument: Any) -> ft.Type:
    """The type of an argument given to a polymorphic computation."""
    if isinstance(argument, Value):
        return argument.type_signature
    if _contains_value(argument):
        return to_block(argument).type_signature
    return ft.infer_type(argument)


def _contains_value(obj: Any) -> bool:
    if isinstance(obj, Value):
        return True
    if isinstance(obj, dict):
        return any(_contains_value(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains_value(v) for v in obj)
    if attrs.has(type(obj)):
        return any(_contains_value(getattr(obj, f.name)) for f in attrs.fields(type(obj)))
    return False


def constant_block(value: Any) -> bb.BuildingBlock:
    """An IR node computing a Python/numpy constant (an embedded no-argument TF computation)."""
    value_type = ft.infer_type(value)
    normalized = structure.check_and_normalize(value, value_type, "the constant")
    leaves = structure.flatten_value(normalized, value_type)

    def make_constant():
        return structure.unflatten_value(value_type, [tf.constant(leaf) for leaf in leaves])

    computation = tfc.trace_tf_function(make_constant, None, False, "constant", autograph=False)
    return bb.Call(bb.Compiled(computation), None)


def to_block(obj: Any) -> bb.BuildingBlock:
    """Converts a traced value, computation, structure or constant into an IR node."""
    if isinstance(obj, Value):
        return obj._block
    if isinstance(obj, tfc.TensorFlowComputation):
        return bb.Compiled(obj)
    if isinstance(obj, FederatedComputation):
        return obj.ir
    if getattr(obj, "is_polymorphic", False):
        raise TypeError(
            f"{obj.name} has no declared types, so it cannot be passed as a value here; "
            f"declare its parameter types in the decorator"
        )
    if isinstance(obj, (dict, list, tuple)) or attrs.has(type(obj)):
        if _contains_value(obj) or any(isinstance(v, computation_lib.Computation) for v in _children(obj)):
            items = structure.named_items(obj)
            return bb.Struct([(name, to_block(element)) for name, element in items], container=type(obj))
    if isinstance(obj, (np.ndarray, np.generic, int, float, bool, str, bytes, dict, list, tuple)) or attrs.has(type(obj)):
        tracer = current_tracer("using a Python constant")
        return tracer.bind(constant_block(obj))._block
    if obj is None:
        raise TypeError("a federated computation produced None where a value was expected (did the function return?)")
    raise TypeError(f"cannot use a {type(obj).__name__} in a federated computation")


def _children(obj: Any) -> list:
    return [element for _, element in structure.named_items(obj)]


def trace_federated_function(
    fn: Callable, parameter_type: Optional[ft.Type], unpack: bool, name: str
) -> FederatedComputation:
    """Runs `fn` on symbolic values and returns the traced computation."""
    tracer = TracingContext()
    parameter_name = None if parameter_type is None else "arg"
    with context_stack.execution_context(tracer):
        if parameter_type is None:
            result = fn()
        else:
            parameter = bb.Reference(parameter_name, parameter_type)
            if unpack:
                result = fn(*[Value(bb.Selection(parameter, i)) for i in range(len(parameter_type))])
            else:
                result = fn(Value(parameter))
        if result is None:
            raise TypeError(f"the federated computation {name} returned None; it must return a value")
        result_block = to_block(result)
    body = bb.Block(tracer.locals, result_block) if tracer.locals else result_block
    return FederatedComputation(bb.Lambda(parameter_name, parameter_type, body), name, unpack)
