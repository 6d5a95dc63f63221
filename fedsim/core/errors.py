"""Errors shared by the modules that read computations from bytes."""

__all__ = ["SerializationError"]


class SerializationError(ValueError):
    """Bytes that are not a (complete, uncorrupted, acceptable) serialized fedsim computation."""
