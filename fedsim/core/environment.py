"""Name bindings for interpreting the IR: a chain of scopes (lambda parameters, block locals)."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["Environment"]


class Environment:
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
