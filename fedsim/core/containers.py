"""Python containers of structures, restored by registered name, never by import.

A `StructType` remembers the Python class a structure came from (a dict, a namedtuple, an attrs
class) so results come back in the shape users passed in. On the wire that class is a *name*
only. A name is turned back into a class only through this registry: the built-in containers,
fedsim's own value classes (registered where they are defined) and the classes a user registers.
An unknown name is kept as a name (so the type re-serializes to the same bytes) and its values
are plain structures: a dict when every element is named, a tuple otherwise. Nothing read from
bytes ever imports a module or calls a class that was not registered in this process.

Example::

    @fedsim.register_container("my_project.ServerState")
    @attrs.frozen
    class ServerState:
        weights: Any
        round_num: Any
"""

from __future__ import annotations

import collections
import re
import threading
from typing import Any, Optional, Union

import tensorflow as tf

__all__ = [
    "register_container", "container_name", "container_class", "registered_containers", "SPARSE_FIELDS", "is_sparse",
]

# A `tf.SparseTensor` is a structure of three tensors, restored as a `tf.SparseTensor`.
SPARSE_FIELDS = ("indices", "values", "dense_shape")

_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*([./][A-Za-z_][A-Za-z0-9_]*)*")

_lock = threading.Lock()
_by_name: dict = {
    "dict": dict,
    "odict": collections.OrderedDict,
    "list": list,
    "tuple": tuple,
    "sparse_tensor": tf.SparseTensor,
}
_by_class: dict = {kind: name for name, kind in _by_name.items()}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > 200 or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"a container name is a dotted identifier of at most 200 characters "
            f"(for example 'my_project.ServerState'), got {name!r}"
        )
    return name


def register_container(name_or_class: Union[str, type, None] = None, name: Optional[str] = None) -> Any:
    """Registers a Python class as the container of structures named `name`.

    Forms: ``register_container(cls, "name")``, ``@register_container("name")`` and
    ``@register_container`` (the name is then ``module.QualifiedName``). The name is what
    travels on the wire; renaming the module later does not change a computation's bytes if
    the name stays. A name read from the wire is only ever looked up here, never imported.

    Args:
        name_or_class: the class, or (as a decorator factory) the name.
        name: the wire name, when the class is given.

    Returns:
        The class (so it works as a decorator), or a decorator.

    Raises:
        ValueError: if the name is already registered for another class.

    Example::

        @fedsim.register_container("myproject.Batch")
        @attrs.define
        class Batch:
            x: Any
            y: Any
    """
    if isinstance(name_or_class, type):
        return _register(name_or_class, name)

    def decorator(cls: type) -> type:
        return _register(cls, name_or_class if name_or_class is not None else name)

    return decorator


def _register(cls: type, name: Optional[str]) -> type:
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
    _check_name(name)
    if cls in (dict, collections.OrderedDict, list, tuple, tf.SparseTensor):
        raise ValueError(f"{cls.__name__} is a built-in container; it needs no registration")
    with _lock:
        known = _by_name.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"the container name {name!r} is already registered for {known!r}")
        known_name = _by_class.get(cls)
        if known_name is not None and known_name != name:
            raise ValueError(f"{cls!r} is already registered as {known_name!r}")
        _by_name[name] = cls
        _by_class[cls] = name
    return cls


def is_sparse(value: Any) -> bool:
    """Whether a value is a sparse tensor (eager, symbolic, or TF1's `SparseTensorValue`)."""
    return isinstance(value, (tf.SparseTensor, tf.compat.v1.SparseTensorValue))


def container_name(cls: Optional[type]) -> Optional[str]:
    """The registered name of `cls`, or None for no container or an unregistered class."""
    if cls is None:
        return None
    with _lock:
        return _by_class.get(cls)


def container_class(name: Optional[str]) -> Optional[type]:
    """The class registered as `name` in this process, or None. Never imports anything."""
    if name is None:
        return None
    with _lock:
        return _by_name.get(name)


def registered_containers() -> dict:
    """A copy of the registry: name -> class."""
    with _lock:
        return dict(_by_name)


def resolve(container: Union[type, str, None]) -> Optional[type]:
    """A StructType's container as a class: a class as it is, a name through the registry."""
    if isinstance(container, str):
        return container_class(container)
    return container


def wire_name(container: Union[type, str, None]) -> Optional[str]:
    """What a StructType's container is on the wire: its registered name, or None."""
    if isinstance(container, str):
        return container
    return container_name(container)


def check_wire_name(name: Any) -> Optional[str]:
    """A container name read from bytes: null or a string of at most 200 characters.

    Any such string is accepted; one that is not registered here only means "a plain structure".
    """
    if name is None or (isinstance(name, str) and len(name) <= 200):
        return name
    raise ValueError(f"a container name must be null or a string of at most 200 characters, got {name!r:.80}")
