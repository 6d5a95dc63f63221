"""The intermediate representation that `federated_computation` traces to.

A small lambda calculus over federated values, as in TFF: references, lambdas, calls,
structures, selections, blocks (let-bindings), intrinsics and embedded TensorFlow
computations. Each node knows its type; `to_json` gives a deterministic, JSON-able form in
which embedded TensorFlow computations are referred to by the SHA-256 of their bytes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from fedsim.core import types as ft

__all__ = [
    "BuildingBlock",
    "Reference",
    "Lambda",
    "Call",
    "Struct",
    "Selection",
    "Block",
    "Intrinsic",
    "Compiled",
    "from_json",
]


class BuildingBlock:
    """A node of the IR. `type_signature` is its fedsim type."""

    type_signature: ft.Type

    def children(self) -> list:
        return []

    def to_json(self, embed: Callable) -> dict:
        """JSON form; `embed(tf_computation) -> key` stores embedded TensorFlow computations."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.compact()})"

    def compact(self) -> str:
        raise NotImplementedError


class Reference(BuildingBlock):
    def __init__(self, name: str, type_signature: ft.Type):
        self.name = name
        self.type_signature = type_signature

    def to_json(self, embed):
        return {"ref": self.name, "type": self.type_signature.to_json()}

    def compact(self):
        return self.name


class Lambda(BuildingBlock):
    def __init__(self, parameter_name: Optional[str], parameter_type: Optional[ft.Type], result: BuildingBlock):
        self.parameter_name = parameter_name
        self.parameter_type = parameter_type
        self.result = result
        self.type_signature = ft.FunctionType(parameter_type, result.type_signature)

    def children(self):
        return [self.result]

    def to_json(self, embed):
        return {
            "lambda": {
                "parameter": self.parameter_name,
                "parameter_type": None if self.parameter_type is None else self.parameter_type.to_json(),
                "result": self.result.to_json(embed),
            }
        }

    def compact(self):
        return f"({self.parameter_name or ''} -> {self.result.compact()})"


class Call(BuildingBlock):
    def __init__(self, function: BuildingBlock, argument: Optional[BuildingBlock]):
        function_type = function.type_signature
        if not isinstance(function_type, ft.FunctionType):
            raise TypeError(f"cannot call a value of non-function type {function_type}")
        if (argument is None) != (function_type.parameter is None):
            raise TypeError(f"a call of {function_type} has the wrong number of arguments")
        if argument is not None:
            difference = ft.find_type_difference(function_type.parameter, argument.type_signature)
            if difference:
                raise TypeError(
                    f"argument of type {argument.type_signature} does not fit parameter {function_type.parameter}: {difference}"
                )
        self.function = function
        self.argument = argument
        self.type_signature = function_type.result

    def children(self):
        return [self.function] + ([self.argument] if self.argument is not None else [])

    def to_json(self, embed):
        return {
            "call": {
                "function": self.function.to_json(embed),
                "argument": None if self.argument is None else self.argument.to_json(embed),
            }
        }

    def compact(self):
        return f"{self.function.compact()}({'' if self.argument is None else self.argument.compact()})"


class Struct(BuildingBlock):
    def __init__(self, elements: list, container: Optional[type] = None):
        self.elements = [(name, element) for name, element in elements]
        self.type_signature = ft.StructType(
            [(name, element.type_signature) for name, element in self.elements], container=container
        )

    def children(self):
        return [element for _, element in self.elements]

    def to_json(self, embed):
        container = self.type_signature.to_json()["container"]
        return {
            "struct": [[name, element.to_json(embed)] for name, element in self.elements],
            "container": container,
        }

    def compact(self):
        return "<" + ",".join(
            e.compact() if n is None else f"{n}={e.compact()}" for n, e in self.elements
        ) + ">"


class Selection(BuildingBlock):
    def __init__(self, source: BuildingBlock, index: int):
        source_type = source.type_signature
        if not isinstance(source_type, ft.StructType):
            raise TypeError(f"cannot select from a value of non-structure type {source_type}")
        if not 0 <= index < len(source_type):
            raise IndexError(f"index {index} out of range for {source_type}")
        self.source = source
        self.index = index
        self.type_signature = source_type[index]

    def children(self):
        return [self.source]

    def to_json(self, embed):
        return {"select": {"source": self.source.to_json(embed), "index": self.index}}

    def compact(self):
        return f"{self.source.compact()}[{self.index}]"


class Block(BuildingBlock):
    """`let name1 = value1, name2 = value2, ... in result`; each value is computed once."""

    def __init__(self, locals_: list, result: BuildingBlock):
        self.locals = list(locals_)
        self.result = result
        self.type_signature = result.type_signature

    def children(self):
        return [value for _, value in self.locals] + [self.result]

    def to_json(self, embed):
        return {
            "block": {
                "locals": [[name, value.to_json(embed)] for name, value in self.locals],
                "result": self.result.to_json(embed),
            }
        }

    def compact(self):
        bindings = ", ".join(f"{n}={v.compact()}" for n, v in self.locals)
        return f"(let {bindings} in {self.result.compact()})"


class Intrinsic(BuildingBlock):
    def __init__(self, uri: str, type_signature: ft.FunctionType):
        self.uri = uri
        self.type_signature = type_signature

    def to_json(self, embed):
        return {"intrinsic": self.uri, "type": self.type_signature.to_json()}

    def compact(self):
        return self.uri


class Compiled(BuildingBlock):
    """An embedded `TensorFlowComputation`."""

    def __init__(self, computation: Any):
        self.computation = computation
        self.type_signature = computation.type_signature

    def to_json(self, embed):
        return {"compiled": embed(self.computation)}

    def compact(self):
        return f"comp#{self.computation.name}"


def from_json(data: dict, resolve: Callable) -> BuildingBlock:
    """Inverse of `to_json`; `resolve(key)` returns the embedded TensorFlow computation."""
    if "ref" in data:
        return Reference(data["ref"], ft.type_from_json(data["type"]))
    if "lambda" in data:
        body = data["lambda"]
        return Lambda(body["parameter"], ft.type_from_json(body["parameter_type"]), from_json(body["result"], resolve))
    if "call" in data:
        body = data["call"]
        argument = None if body["argument"] is None else from_json(body["argument"], resolve)
        return Call(from_json(body["function"], resolve), argument)
    if "struct" in data:
        container = ft._container_from_json(data.get("container"))
        return Struct([(name, from_json(element, resolve)) for name, element in data["struct"]], container)
    if "select" in data:
        return Selection(from_json(data["select"]["source"], resolve), data["select"]["index"])
    if "block" in data:
        body = data["block"]
        return Block(
            [(name, from_json(value, resolve)) for name, value in body["locals"]],
            from_json(body["result"], resolve),
        )
    if "intrinsic" in data:
        return Intrinsic(data["intrinsic"], ft.type_from_json(data["type"]))
    if "compiled" in data:
        return Compiled(resolve(data["compiled"]))
    raise ValueError(f"not a serialized building block: {sorted(data)}")
