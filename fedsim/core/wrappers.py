"""The decorators users write: `tf_computation` and `federated_computation`.

Both accept the same forms: ``@decorator(type, ...)`` (the parameter types), ``@decorator``
(no parameter, or types inferred on the first call: a polymorphic computation traced once per
argument type), and ``decorator(fn, type, ...)``. They return a `Computation` that runs in the
current execution context.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable

import tensorflow as tf

from fedsim.core import computation as computation_lib
from fedsim.core import types as ft
from fedsim.core.federated_tracing import trace_federated_function, type_of_call_argument
from fedsim.core.tensorflow_computation import trace_tf_function

__all__ = ["tf_computation", "federated_computation", "PolymorphicComputation", "make_computation", "parameter_type_from_args"]


def parameter_type_from_args(fn: Callable, arg_types: tuple) -> tuple:
    """The parameter type for `fn` given decorator types, and whether to unpack it.

    One type: the function's single parameter (or, for a function of N>1 parameters given a
    struct of N elements, its elements). N types for N parameters: a struct named after them.
    """
    try:
        parameters = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        parameters = []
    if not arg_types:
        if parameters and all(p.default is p.empty for p in parameters):
            return None, False, True  # polymorphic: types come from the first call
        return None, False, False
    if len(arg_types) == 1:
        parameter = ft.to_type(arg_types[0])
        unpack = (
            len(parameters) > 1
            and isinstance(parameter, ft.StructType)
            and len(parameter) == len(parameters)
        )
        return parameter, unpack, False
    if len(parameters) != len(arg_types):
        raise TypeError(
            f"{getattr(fn, '__name__', fn)} takes {len(parameters)} parameters but {len(arg_types)} types were given"
        )
    return ft.StructType([(p.name, ft.to_type(t)) for p, t in zip(parameters, arg_types)]), True, False


class PolymorphicComputation:
    """A function given no types: traced once per distinct argument type, on first use."""

    is_polymorphic = True

    def __init__(self, fn: Callable, trace: Callable, name: str):
        self._fn = fn
        self._trace = trace
        self._name = name
        self._concrete: dict = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    @property
    def name(self) -> str:
        return self._name

    def for_type(self, parameter_type: ft.Type, unpack: bool) -> computation_lib.Computation:
        key = (parameter_type, unpack)
        with self._lock:
            if key not in self._concrete:
                self._concrete[key] = self._trace(self._fn, parameter_type, unpack, self._name)
            return self._concrete[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{self._name}: a computation without declared types takes positional arguments only")
        if len(args) == 1:
            concrete = self.for_type(type_of_call_argument(args[0]), False)
            return concrete(args[0])
        parameter_type = ft.StructType([(None, type_of_call_argument(a)) for a in args])
        return self.for_type(parameter_type, True)(*args)

    def __repr__(self) -> str:
        return f"<PolymorphicComputation {self._name}>"


def tf_computation(*args: Any) -> Any:
    """Decorates a Python function that uses TensorFlow as a fedsim computation.

    Forms: ``@tf_computation`` / ``@tf_computation()`` (no parameter, or types inferred on the
    first call), ``@tf_computation(type, ...)``, and ``tf_computation(fn, type, ...)``.
    The function is traced exactly once per parameter type into a pure, serializable graph.

    Args:
        *args: the function and/or its parameter types (anything `to_type` accepts, one per
            parameter, or a single structure type).

    Returns:
        A `TensorFlowComputation` (or, without declared types, a polymorphic computation that
        traces on first call), or a decorator that makes one.

    Raises:
        TypeError: if the types are not type-like, or a polymorphic computation is called with
            keyword arguments.

    Example::

        @fedsim.tf_computation({"x": (tf.float32, [None, 2])})
        def total(batch):
            return tf.reduce_sum(batch["x"])
    """
    if args and callable(args[0]) and not isinstance(args[0], (tf.DType, type)) and not isinstance(args[0], ft.Type):
        return make_computation(args[0], args[1:], trace_tf_function)

    def decorator(fn: Callable) -> Any:
        return make_computation(fn, args, trace_tf_function)

    return decorator


def make_computation(fn: Callable, arg_types: tuple, trace: Callable) -> Any:
    """A traced computation for `fn` and declared types (or a polymorphic one if none)."""
    name = getattr(fn, "__name__", "computation")
    parameter_type, unpack, polymorphic = parameter_type_from_args(fn, arg_types)
    if polymorphic:
        return PolymorphicComputation(fn, trace, name)
    return trace(fn, parameter_type, unpack, name)


def federated_computation(*args: Any) -> Any:
    """Decorates a Python function over federated values as a traced, serializable computation.

    Forms as for `tf_computation`: ``@federated_computation(type, ...)``,
    ``@federated_computation`` for no parameter, ``federated_computation(fn, type, ...)``. The
    body is traced once into an IR over intrinsics; calling the result runs it in the current
    execution context.

    Args:
        *args: the function and/or its parameter types.

    Returns:
        A `FederatedComputation`, or a decorator that makes one.

    Raises:
        TypeError: if the types are not type-like.
        FederatedTypeError: if an intrinsic in the body is given a value of the wrong placement or type.

    Example::

        @fedsim.federated_computation(
            fedsim.FederatedType(tf.float32, fedsim.SERVER),
            fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
        def spread(offset, readings):
            shifted = fedsim.federated_map(add, fedsim.federated_zip(
                [fedsim.federated_broadcast(offset), readings]))
            return fedsim.federated_sum(shifted)
    """
    if args and callable(args[0]) and not isinstance(args[0], (tf.DType, type, ft.Type)):
        return make_computation(args[0], args[1:], trace_federated_function)

    def decorator(fn: Callable) -> Any:
        return make_computation(fn, args, trace_federated_function)

    return decorator
