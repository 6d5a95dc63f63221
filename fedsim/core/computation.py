"""The base class of computations and how a Python call becomes one argument value."""

from __future__ import annotations

from typing import Any, Optional

from fedsim.core import context_stack
from fedsim.core import types as ft

__all__ = ["Computation", "pack_call_arguments"]


class Computation:
    """A typed, serializable computation; calling it runs it in the current context.

    Subclasses: `TensorFlowComputation` (from `tf_computation`) and `FederatedComputation`
    (from `federated_computation`).

    Args:
        type_signature: the computation's `FunctionType`.
        name: a name for messages (the Python function's).
        unpack: whether the Python function took the parameter's elements as separate arguments.
    """

    def __init__(self, type_signature: ft.FunctionType, name: str, unpack: bool):
        self._type_signature = type_signature
        self._name = name
        self._unpack = unpack

    @property
    def type_signature(self) -> ft.FunctionType:
        return self._type_signature

    @property
    def name(self) -> str:
        return self._name

    @property
    def unpack(self) -> bool:
        """Whether the Python function took the parameter's elements as separate arguments."""
        return self._unpack

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argument = pack_call_arguments(self, args, kwargs)
        return context_stack.get_context().invoke(self, argument)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name}: {self._type_signature}>"


def pack_call_arguments(computation: Computation, args: tuple, kwargs: dict) -> Any:
    """Turns `comp(*args, **kwargs)` into the single argument value the type expects."""
    parameter: Optional[ft.Type] = computation.type_signature.parameter
    name = computation.name
    if parameter is None:
        if args or kwargs:
            raise TypeError(f"{name} takes no argument (type {computation.type_signature}), but was given {len(args) + len(kwargs)}")
        return None
    takes_elements = computation.unpack and isinstance(parameter, ft.StructType)
    if not kwargs and len(args) == 1 and not takes_elements:
        return args[0]
    if not isinstance(parameter, ft.StructType):
        raise TypeError(
            f"{name} takes one argument of type {parameter}, but was given "
            f"{len(args)} positional and {len(kwargs)} keyword arguments"
        )
    names = parameter.names()
    if len(args) + len(kwargs) != len(names):
        raise TypeError(
            f"{name} takes {len(names)} arguments ({parameter}), but was given {len(args) + len(kwargs)}"
        )
    values = list(args)
    for element_name in names[len(args):]:
        if element_name is None or element_name not in kwargs:
            raise TypeError(f"{name}: missing argument {element_name!r} (parameter type {parameter})")
        values.append(kwargs.pop(element_name))
    if kwargs:
        raise TypeError(f"{name}: unexpected keyword arguments {sorted(kwargs)}")
    if parameter.is_named:
        return dict(zip(names, values))
    return tuple(values)
