"""TFF's context setters (`tff.backends.native.*`, `tff.backends.test.*`), selecting fedsim's local context.

TFF tutorials start with, for example, `tff.backends.native.set_sync_local_cpp_execution_context()`.
fedsim has one local runtime, so every setter installs a `LocalExecutionContext` as the default
(and every `create_*` returns one). `default_num_clients` is honoured (the number of clients when
a computation has no CLIENTS-placed argument); TFF's other tuning arguments are accepted and
have no effect here.

Example::

    import fedsim as tff
    tff.backends.native.set_sync_local_cpp_execution_context(default_num_clients=3)
"""

from __future__ import annotations

import types
from typing import Any

from fedsim.core import context_stack
from fedsim.core.local_context import LocalExecutionContext

__all__ = ["native", "test", "create_local_context"]


def create_local_context(default_num_clients: int = 0, max_concurrent_computation_calls: int = -1, **tff_options: Any) -> LocalExecutionContext:
    """A local context from TFF's arguments (0 clients: unknown, as in TFF)."""
    del max_concurrent_computation_calls, tff_options  # TFF's executor tuning: nothing to tune here
    if not isinstance(default_num_clients, int) or default_num_clients < 0:
        raise ValueError(f"default_num_clients must be a non-negative int, got {default_num_clients!r}")
    return LocalExecutionContext(default_num_clients=default_num_clients or None)


def _setter(name: str):
    def set_context(*args: Any, **kwargs: Any) -> None:
        context_stack.set_default_context(create_local_context(*args, **kwargs))

    set_context.__name__ = name
    set_context.__doc__ = f"TFF's `{name}`: makes fedsim's local context the default."
    return set_context


def _creator(name: str):
    def create_context(*args: Any, **kwargs: Any) -> LocalExecutionContext:
        return create_local_context(*args, **kwargs)

    create_context.__name__ = name
    create_context.__doc__ = f"TFF's `{name}`: a fedsim local context."
    return create_context


def _namespace(name: str, flavours: tuple) -> types.ModuleType:
    module = types.ModuleType(f"fedsim.backends.{name}", f"TFF's tff.backends.{name} context setters (fedsim's local context).")
    for flavour in flavours:
        setattr(module, f"set_{flavour}_execution_context", _setter(f"set_{flavour}_execution_context"))
        setattr(module, f"create_{flavour}_execution_context", _creator(f"create_{flavour}_execution_context"))
    return module


native = _namespace("native", ("sync_local_cpp", "async_local_cpp", "local_python", "localhost_cpp", "local_cpp", "mergeable_comp"))
test = _namespace("test", ("sync_test_cpp", "async_test_cpp", "test_python", "test"))
