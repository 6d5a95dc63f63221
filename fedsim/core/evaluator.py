"""The one interpreter of the IR, over a pluggable value domain.

The local context evaluates a computation on concrete values; the canonical-form compiler
evaluates it on symbolic values. Both use this evaluator, so they share every rule of the IR:
scoping of references and block locals, inlining of lambdas, selections, structures, and the
lookup of each intrinsic in the registry (`intrinsic_defs`). A `Domain` says only what a value
*is*: how to make a structure, select from one, call a TensorFlow computation, and carry out an
intrinsic of each category.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from fedsim.core import building_blocks as bb
from fedsim.core import intrinsic_defs
from fedsim.core import types as ft

__all__ = ["Closure", "Domain", "Environment", "Evaluator"]


class Environment:
    """Name bindings: a chain of scopes (lambda parameters, block locals)."""

    def __init__(self, parent: Optional["Environment"] = None):
        self.parent = parent
        self.values: dict = {}

    def bind(self, name: str, value: Any) -> None:
        self.values[name] = value

    def lookup(self, name: str) -> Any:
        env = self
        while env is not None:
            if name in env.values:
                return env.values[name]
            env = env.parent
        raise NameError(f"unbound reference {name!r} in the computation")


class Closure:
    """A lambda of the IR with the environment it was evaluated in."""

    def __init__(self, block: bb.Lambda, env: Environment):
        self.block = block
        self.env = env


class Domain(Protocol):
    """What values are, for one use of the evaluator."""

    def compiled(self, computation: Any) -> Any: ...

    def struct(self, values: list, struct_type: ft.StructType) -> Any: ...

    def select(self, value: Any, index: int, source_type: ft.Type, result_type: ft.Type) -> Any: ...

    def elements(self, value: Any, struct_type: ft.StructType) -> list: ...

    def call(self, function: Any, argument: Any, result_type: ft.Type) -> Any: ...

    def intrinsic(self, definition: intrinsic_defs.IntrinsicDef, function_type: ft.FunctionType,
                  argument: Any, evaluator: "Evaluator") -> Any: ...


class Evaluator:
    """Evaluates building blocks in a domain; `apply` calls a function value (lambdas inline)."""

    def __init__(self, domain: Domain):
        self.domain = domain

    def evaluate(self, block: bb.BuildingBlock, env: Environment) -> Any:
        if isinstance(block, bb.Reference):
            return env.lookup(block.name)
        if isinstance(block, bb.Call):
            if isinstance(block.function, bb.Intrinsic):
                definition = intrinsic_defs.lookup(block.function.uri)
                argument = self.evaluate(block.argument, env)
                return self.domain.intrinsic(definition, block.function.type_signature, argument, self)
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
            return self.domain.compiled(block.computation)
        if isinstance(block, bb.Struct):
            return self.domain.struct([self.evaluate(e, env) for _, e in block.elements], block.type_signature)
        if isinstance(block, bb.Selection):
            source = self.evaluate(block.source, env)
            return self.domain.select(source, block.index, block.source.type_signature, block.type_signature)
        if isinstance(block, bb.Intrinsic):
            raise TypeError(f"the intrinsic {block.uri} can only be called, not used as a value")
        raise TypeError(f"cannot evaluate a {type(block).__name__}")

    def apply(self, function: Any, argument: Any, result_type: ft.Type) -> Any:
        """Calls a function value: a lambda is inlined; anything else goes to the domain."""
        if isinstance(function, Closure):
            env = Environment(function.env)
            if function.block.parameter_name is not None:
                env.bind(function.block.parameter_name, argument)
            return self.evaluate(function.block.result, env)
        return self.domain.call(function, argument, result_type)

    def run(self, computation_ir: bb.Lambda, argument: Any) -> Any:
        """Evaluates a computation's lambda and applies it to `argument`."""
        function = self.evaluate(computation_ir, Environment())
        return self.apply(function, argument, computation_ir.type_signature.result)
