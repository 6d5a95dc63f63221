"""The stack of execution contexts: calling a computation runs it in the current one.

The package installs the local simulation context as the default (`install_default_context`,
called by `fedsim.core`'s `__init__`), so this module depends on no context. Swap it for a
block with ``with fedsim.core.execution_context(ctx):`` or for good with
``set_default_context(ctx)``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional, Protocol

__all__ = ["Context", "execution_context", "get_context", "install_default_context", "set_default_context"]


class Context(Protocol):
    """Runs computations: `invoke(computation, argument)` returns the computation's result."""

    def invoke(self, computation: Any, argument: Any) -> Any: ...


class _ContextStack(threading.local):
    def __init__(self):
        self.stack: list = []


_stack = _ContextStack()
_installed: Optional[Context] = None  # the package's default (the local simulation context)
_default: Optional[Context] = None  # the user's, if set
_default_lock = threading.Lock()


def install_default_context(context: Context) -> None:
    """Installs the context used when no other is set (the package calls this once)."""
    global _installed
    with _default_lock:
        _installed = context


def set_default_context(context: Optional[Context]) -> None:
    """Makes `context` the context used outside any `execution_context` block.

    Args:
        context: an execution context, or `None` to restore the local simulation context.

    Example:
        >>> fedsim.core.set_default_context(fedsim.aws.AwsExecutionContext(config))
    """
    global _default
    with _default_lock:
        _default = context


def get_context() -> Context:
    """The context that a call of a computation runs in now."""
    if _stack.stack:
        return _stack.stack[-1]
    with _default_lock:
        context = _default or _installed
    if context is None:
        raise RuntimeError("no execution context is installed; import fedsim (or fedsim.core) first")
    return context


@contextlib.contextmanager
def execution_context(context: Context) -> Iterator[Context]:
    """Runs the calls made inside the block in `context`.

    Args:
        context: an execution context (`LocalExecutionContext`, `AwsExecutionContext`, ...).

    Yields:
        `context`, current for the block's duration (restored afterwards, also on error).

    Example::

        with fedsim.core.execution_context(fedsim.core.LocalExecutionContext(max_parallel_clients=1)):
            result = my_computation(server_value, client_values)
    """
    if not hasattr(context, "invoke"):
        raise TypeError(f"an execution context needs an invoke(computation, argument) method; got {context!r}")
    _stack.stack.append(context)
    try:
        yield context
    finally:
        _stack.stack.pop()
