"""Errors raised when a process is assembled from computations that do not fit together."""

__all__ = ["ProcessTypeError"]


class ProcessTypeError(TypeError):
    """`initialize` and `next` of a process disagree on the type of the state."""
