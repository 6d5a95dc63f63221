"""The intermediate representation that `federated_computation` traces to.

A small lambda calculus over federated values, as in TFF: references, lambdas, calls,
structures, selections, blocks (let-bindings), intrinsics and embedded TensorFlow
computations. Each node knows its type; `to_json` gives a deterministic, JSON-able form in
which embedded TensorFlow computations are referred to by the SHA-256 of their bytes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from fedsim.core import containers, intrinsic_defs
from fedsim.core import types as ft
from fedsim.core.errors import SerializationError

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
    "free_names",
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
    def __init__(self, elements: list, container: Any = None):
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


def free_names(block: BuildingBlock) -> frozenset:
    """The names `block` refers to without binding them itself (computed once per node).

    Args:
        block: a building block.

    Returns:
        The names of the references in `block` that no lambda parameter or block local inside
        it binds: what it reads from the environment it is evaluated in.

    Example:
        >>> free_names(Lambda("x", t, Struct([Reference("x", t), Reference("y", t)])))
        frozenset({'y'})
    """
    cached = block.__dict__.get("_free_names")
    if cached is not None:
        return cached
    if isinstance(block, Reference):
        names: set = {block.name}
    elif isinstance(block, Lambda):
        names = set(free_names(block.result)) - {block.parameter_name}
    elif isinstance(block, Block):
        names, bound = set(), set()
        for name, value in block.locals:
            names |= free_names(value) - bound
            bound.add(name)
        names |= free_names(block.result) - bound
    else:
        names = set().union(*(free_names(child) for child in block.children()))
    block.__dict__["_free_names"] = result = frozenset(names)
    return result


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


def from_json(data: Any, resolve: Callable, path: str = "ir") -> BuildingBlock:
    """Inverse of `to_json`; `resolve(key)` returns the embedded TensorFlow computation.

    The data may come from anywhere: every field is checked and a problem raises `ValueError`
    naming its place in the IR. Types are read with `types.type_from_json` (no imports).
    """
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: not a serialized building block")
    kinds = [key for key in _KINDS if key in data]
    kind = kinds[0] if len(kinds) == 1 else None
    try:
        if kind == "ref":
            _expect(data, {"ref", "type"}, path)
            return Reference(_name(data["ref"], path), ft.type_from_json(data["type"], f"{path}.type"))
        if kind == "lambda":
            body = _expect(data["lambda"], {"parameter", "parameter_type", "result"}, path)
            parameter = None if body["parameter"] is None else _name(body["parameter"], path)
            return Lambda(
                parameter,
                ft.type_from_json(body["parameter_type"], f"{path}.parameter_type"),
                from_json(body["result"], resolve, f"{path}.result"),
            )
        if kind == "call":
            body = _expect(data["call"], {"function", "argument"}, path)
            argument = None if body["argument"] is None else from_json(body["argument"], resolve, f"{path}.argument")
            return Call(from_json(body["function"], resolve, f"{path}.function"), argument)
        if kind == "struct":
            _expect(data, {"struct", "container"}, path)
            if not isinstance(data["struct"], list):
                raise ValueError("a structure's elements must be a list")
            elements = []
            for index, element in enumerate(data["struct"]):
                if not (isinstance(element, list) and len(element) == 2):
                    raise ValueError(f"element {index} must be [name, block]")
                name = None if element[0] is None else _name(element[0], path)
                elements.append((name, from_json(element[1], resolve, f"{path}[{index}]")))
            name = containers.check_wire_name(data["container"])
            return Struct(elements, containers.container_class(name) or name)
        if kind == "select":
            body = _expect(data["select"], {"source", "index"}, path)
            if isinstance(body["index"], bool) or not isinstance(body["index"], int):
                raise ValueError("a selection index must be an integer")
            return Selection(from_json(body["source"], resolve, f"{path}.source"), body["index"])
        if kind == "block":
            body = _expect(data["block"], {"locals", "result"}, path)
            if not isinstance(body["locals"], list) or not all(isinstance(b, list) and len(b) == 2 for b in body["locals"]):
                raise ValueError("a block's locals must be a list of [name, block]")
            return Block(
                [(_name(name, path), from_json(value, resolve, f"{path}.{name}")) for name, value in body["locals"]],
                from_json(body["result"], resolve, f"{path}.result"),
            )
        if kind == "intrinsic":
            _expect(data, {"intrinsic", "type"}, path)
            uri, intrinsic_type = _name(data["intrinsic"], path), ft.type_from_json(data["type"], f"{path}.type")
            intrinsic_defs.check_call_type(uri, intrinsic_type)  # known, and typed by its rule
            return Intrinsic(uri, intrinsic_type)
        if kind == "compiled":
            _expect(data, {"compiled"}, path)
            return Compiled(resolve(data["compiled"]))
    except (ft.MalformedTypeError, SerializationError):
        raise
    except (TypeError, ValueError, IndexError) as error:
        if str(error).startswith(path):
            raise ValueError(str(error)) from None
        raise ValueError(f"{path}: {error}") from None
    raise ValueError(f"{path}: not a serialized building block (keys {sorted(data)[:5]})")


_KINDS = ("ref", "lambda", "call", "struct", "select", "block", "intrinsic", "compiled")


def _expect(body: Any, keys: set, path: str) -> dict:
    if not isinstance(body, dict) or set(body) != keys:
        found = sorted(body)[:6] if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"{path}: expected the fields {sorted(keys)}, found {found}")
    return body


def _name(name: Any, path: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ValueError(f"{path}: a name must be a string of 1 to 200 characters, got {str(name)[:60]!r}")
    return name
