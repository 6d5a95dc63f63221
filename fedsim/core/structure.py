"""Python values against fedsim types: checking, converting, flattening and packing.

Values cross the boundary between users and computations here. A value is checked against
the type it must have, converted to its canonical form (numpy arrays of the declared dtype,
`tf.data.Dataset`s, Python containers), flattened into leaves for TensorFlow, and packed back
into the containers the type remembers.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import containers
from fedsim.core import types as ft

__all__ = [
    "TypeSignatureMismatchError",
    "check_and_normalize",
    "struct_elements",
    "pack_struct",
    "flatten_value",
    "unflatten_value",
    "flatten_metrics",
    "to_mapping",
    "named_items",
    "leaves",
    "map_leaves",
    "pack_like",
    "map_structure",
]


class TypeSignatureMismatchError(TypeError):
    """A value given to a computation does not match the type it expects.

    The message shows the expected type, the given type and where they first differ.
    """


class _Mismatch(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _where(path: str) -> str:
    return path or "the top level"


def describe_value_type(value: Any) -> str:
    try:
        return str(ft.infer_type(value))
    except TypeError:
        return f"a Python {type(value).__name__}"


def mismatch_error(what: str, expected: ft.Type, value: Any, reason: str) -> TypeSignatureMismatchError:
    return TypeSignatureMismatchError(
        f"{what} does not match the expected type.\n"
        f"  expected: {expected}\n"
        f"  given:    {describe_value_type(value)}\n"
        f"  {reason}"
    )


def check_and_normalize(value: Any, type_spec: ft.Type, what: str = "the argument") -> Any:
    """Checks `value` against `type_spec` and returns it in canonical form.

    Raises `TypeSignatureMismatchError` naming `what`, both types and the first difference.
    """
    try:
        return _normalize(value, type_spec, "")
    except _Mismatch as mismatch:
        raise mismatch_error(what, type_spec, value, mismatch.reason) from None


def _is_python_number(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, (list, tuple)) and value:
        return all(_is_python_number(v) for v in value)
    return False


def _is_python_strings(value: Any) -> bool:
    """A (nested) Python list of str/bytes: a string tensor where the type says tensor, as in TFF."""
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, (str, bytes)) or _is_python_strings(v) for v in value)
    return False


def _normalize_tensor(value: Any, type_spec: ft.TensorType, path: str) -> np.ndarray:
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype != type_spec.dtype.as_numpy_dtype and not (
            type_spec.dtype == tf.string and array.dtype.kind in "OSU"
        ):
            raise _Mismatch(
                f"at {_where(path)}: expected dtype {type_spec.dtype.name}, given a numpy array of "
                f"dtype {array.dtype} (cast it, e.g. value.astype(np.{type_spec.dtype.name}))"
            )
    elif _is_python_number(value) or isinstance(value, (str, bytes)) or (type_spec.dtype == tf.string and _is_python_strings(value)):
        array = np.asarray(value)
        target = type_spec.dtype
        if array.dtype.kind == "f" and not (target.is_floating):
            raise _Mismatch(f"at {_where(path)}: expected {type_spec}, given the Python float value {value!r}")
        if array.dtype.kind in "iu" and not (target.is_floating or target.is_integer):
            raise _Mismatch(f"at {_where(path)}: expected {type_spec}, given the Python int value {value!r}")
        if array.dtype.kind in "SU" and target != tf.string:
            raise _Mismatch(f"at {_where(path)}: expected {type_spec}, given the string {value!r}")
        if target != tf.string:
            _check_range(array, type_spec, path, value)
            array = array.astype(target.as_numpy_dtype)
    else:
        raise _Mismatch(
            f"at {_where(path)}: expected a tensor {type_spec}, given {describe_value_type(value)}"
        )
    difference = ft.find_type_difference(type_spec, ft.TensorType(type_spec.dtype, array.shape), path)
    if difference:
        raise _Mismatch(difference)
    return array


def _check_range(array: np.ndarray, type_spec: ft.TensorType, path: str, value: Any) -> None:
    """Python numbers must fit the dtype they become (no silent wrap-around or overflow to inf)."""
    target = type_spec.dtype
    if not array.size or array.dtype.kind not in "iuf" or target == tf.bool:
        return
    if target.is_integer:
        info = np.iinfo(target.as_numpy_dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise _Mismatch(
                f"at {_where(path)}: the Python int value {value!r} does not fit {target.name} "
                f"(range {info.min} to {info.max}); give a numpy value of a wider dtype, e.g. np.int64({value!r})"
                if not isinstance(value, (list, tuple)) else
                f"at {_where(path)}: a Python int in {value!r} does not fit {target.name} (range {info.min} to {info.max})"
            )
    elif target.is_floating and array.dtype.kind in "iuf":
        limit = float(np.finfo(target.as_numpy_dtype).max)
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        if finite.size and float(np.max(np.abs(finite.astype(np.float64)))) > limit:
            raise _Mismatch(f"at {_where(path)}: the Python number {value!r} overflows {target.name} (largest {limit:g})")


def struct_elements(value: Any, struct_type: ft.StructType) -> list:
    """The element values of a structure `value`, in the order of `struct_type`.

    Raises `TypeSignatureMismatchError` when `value` is not such a structure.
    """
    try:
        return _elements(value, struct_type, "")
    except _Mismatch as mismatch:
        raise TypeSignatureMismatchError(mismatch.reason) from None


def _elements(value: Any, struct_type: ft.StructType, path: str) -> list:
    names = struct_type.names()
    if containers.is_sparse(value):
        if tuple(names) != containers.SPARSE_FIELDS:
            raise _Mismatch(f"at {_where(path)}: expected a structure {struct_type}, given a sparse tensor")
        return [value.indices, value.values, value.dense_shape]
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if k not in names]
        if missing or extra or None in names:
            raise _Mismatch(
                f"at {_where(path)}: expected a structure with elements {names}, given a dict with keys "
                f"{list(value)}" + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else "")
            )
        return [value[n] for n in names]
    if attrs.has(type(value)):
        fields = [f.name for f in attrs.fields(type(value))]
        if fields != names:
            raise _Mismatch(f"at {_where(path)}: expected elements {names}, given {type(value).__name__} with fields {fields}")
        return [getattr(value, n) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise _Mismatch(
                f"at {_where(path)}: expected a structure of {len(names)} elements {struct_type}, given "
                f"{len(value)} elements"
            )
        if hasattr(type(value), "_fields"):
            fields = list(type(value)._fields)
            for index, (want, have) in enumerate(zip(names, fields)):
                if want is not None and want != have:
                    raise _Mismatch(f"at {_where(path)}: element {index} should be named {want!r}, given {have!r}")
        return list(value)
    raise _Mismatch(f"at {_where(path)}: expected a structure {struct_type}, given {describe_value_type(value)}")


def pack_struct(struct_type: ft.StructType, values: list, like: Any = None) -> Any:
    """Builds the Python container for a structure from its element values.

    Uses the type's remembered container (a class, or a name registered in
    `fedsim.core.containers`); else the container of `like`; else a dict when every element is
    named and a tuple otherwise.
    """
    container = containers.resolve(struct_type.container)
    if container is None and like is not None and isinstance(like, (dict, list, tuple)) or (
        container is None and like is not None and attrs.has(type(like))
    ):
        container = type(like)
    names = struct_type.names()
    if container is None:
        container = dict if struct_type.is_named else (tuple if not any(names) else None)
    if container is None:
        raise TypeError(f"a structure with some unnamed elements ({struct_type}) has no Python form")
    if issubclass(container, dict):
        return container(zip(names, values))
    if container is tf.SparseTensor:
        return tf.SparseTensor(*values)
    if attrs.has(container):
        return container(**dict(zip(names, values)))
    if issubclass(container, tuple) and hasattr(container, "_fields"):
        return container(*values)
    return container(values)


def _dataset_of(items: Any, element_type: ft.Type, path: str) -> tf.data.Dataset:
    """A `tf.data.Dataset` of a Python list's items, each checked against the element type."""
    element_leaves = ft.flatten_type(element_type)
    rows = [flatten_value(_normalize(item, element_type, f"{path}[{i}]"), element_type) for i, item in enumerate(items)]
    columns = []
    uneven = False
    for k, leaf in enumerate(element_leaves):
        if not isinstance(leaf, ft.TensorType):
            raise _Mismatch(f"at {_where(path)}: a list can stand for a sequence of tensors and structures only, not of {element_type}")
        values = [row[k] for row in rows]
        shapes = {np.shape(v) for v in values}
        uneven = uneven or len(shapes) > 1
        shape = shapes.pop() if len(shapes) == 1 else tuple(d or 0 for d in (leaf.shape or ()))
        if not uneven:
            columns.append(np.asarray(values, leaf.dtype.as_numpy_dtype).reshape((len(values),) + tuple(shape)))
    if uneven:  # items of different shapes (batches with a smaller last one): one element each, in order
        datasets = [tf.data.Dataset.from_tensors(tuple(np.asarray(v, t.dtype.as_numpy_dtype) for v, t in zip(row, element_leaves)))
                    for row in rows]
        dataset = datasets[0]
        for more in datasets[1:]:
            dataset = dataset.concatenate(more)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(tuple(columns))
    return dataset.map(lambda *leaves: unflatten_value(element_type, list(leaves)))


def _normalize(value: Any, type_spec: ft.Type, path: str) -> Any:
    if isinstance(type_spec, ft.TensorType):
        return _normalize_tensor(value, type_spec, path)
    if isinstance(type_spec, ft.StructType):
        elements = _elements(value, type_spec, path)
        normalized = []
        for index, ((name, element_type), element) in enumerate(zip(type_spec.elements, elements)):
            part = f".{name}" if name is not None else f"[{index}]"
            normalized.append(_normalize(element, element_type, path + part))
        return pack_struct(type_spec, normalized, like=value)
    if isinstance(type_spec, ft.SequenceType):
        if isinstance(value, (list, tuple)):  # TFF accepts a Python list for a sequence
            value = _dataset_of(value, type_spec.element, path)
        if not isinstance(value, tf.data.Dataset):
            raise _Mismatch(f"at {_where(path)}: expected a tf.data.Dataset of {type_spec.element}, given {describe_value_type(value)}")
        difference = ft.find_type_difference(type_spec, ft.infer_type(value), path)
        if difference:
            raise _Mismatch(difference)
        return value
    if isinstance(type_spec, ft.FunctionType):
        given = ft.infer_type(value) if hasattr(value, "type_signature") else None
        if given is None:
            raise _Mismatch(f"at {_where(path)}: expected a computation {type_spec}, given {describe_value_type(value)}")
        difference = ft.find_type_difference(type_spec, given, path)
        if difference:
            raise _Mismatch(difference)
        return value
    raise _Mismatch(f"at {_where(path)}: a value of type {type_spec} cannot be given here")


def flatten_value(value: Any, type_spec: ft.Type) -> list:
    """The leaves of a normalized value, in the order of `types.flatten_type`."""
    if isinstance(type_spec, ft.StructType):
        elements = struct_elements(value, type_spec)
        return [leaf for element, t in zip(elements, type_spec) for leaf in flatten_value(element, t)]
    return [value]


def unflatten_value(type_spec: ft.Type, leaves: list) -> Any:
    """Inverse of `flatten_value`: packs leaves into containers of `type_spec`."""
    iterator = iter(leaves)

    def build(t: ft.Type) -> Any:
        if isinstance(t, ft.StructType):
            return pack_struct(t, [build(element) for element in t])
        return next(iterator)

    result = build(type_spec)
    remaining = sum(1 for _ in iterator)
    if remaining:
        raise ValueError(f"{remaining} leaves left over when packing a value of type {type_spec}")
    return result


def map_structure(fn, type_spec: ft.Type, *values: Any) -> Any:
    """Applies `fn(leaf_type, *leaves)` leaf by leaf over values of `type_spec`."""
    flat = [flatten_value(v, type_spec) for v in values]
    leaf_types = ft.flatten_type(type_spec)
    return unflatten_value(type_spec, [fn(t, *leaves) for t, *leaves in zip(leaf_types, *flat)])


def named_items(value: Any) -> Any:
    """`(name, element)` pairs of a Python structure (dict, namedtuple, attrs class, list,
    tuple, sparse tensor) in its own order, or None when `value` is not a structure."""
    if containers.is_sparse(value):
        return list(zip(containers.SPARSE_FIELDS, (value.indices, value.values, value.dense_shape)))
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return list(value._asdict().items())
    if attrs.has(type(value)):
        return [(f.name, getattr(value, f.name)) for f in attrs.fields(type(value))]
    if isinstance(value, (list, tuple)):
        return [(None, element) for element in value]
    return None


def _items(value: Any) -> Any:
    """(container rebuild function, elements) of a Python structure, or None for a leaf."""
    if containers.is_sparse(value):
        return (lambda elements: tf.SparseTensor(*elements)), [value.indices, value.values, value.dense_shape]
    if isinstance(value, dict):
        keys = list(value)
        return (lambda elements: type(value)(zip(keys, elements))), list(value.values())
    if attrs.has(type(value)):
        names = [f.name for f in attrs.fields(type(value))]
        return (lambda elements: type(value)(**dict(zip(names, elements)))), [getattr(value, n) for n in names]
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return (lambda elements: type(value)(*elements)), list(value)
    if isinstance(value, (list, tuple)):
        return (lambda elements: type(value)(elements)), list(value)
    return None


def leaves(value: Any) -> list:
    """The leaves of one Python structure in its own order (dict keys as inserted, never sorted).

    For walking a single value (e.g. tensors inside a tf_computation); pairing two values leaf
    by leaf goes through their type (`flatten_value`).
    """
    items = _items(value)
    if items is None:
        return [value]
    return [leaf for element in items[1] for leaf in leaves(element)]


def map_leaves(fn: Any, value: Any) -> Any:
    """`fn` applied to every leaf of one structure, in the same containers."""
    items = _items(value)
    if items is None:
        return fn(value)
    rebuild, elements = items
    return rebuild([map_leaves(fn, element) for element in elements])


def pack_like(value: Any, new_leaves: list) -> Any:
    """`new_leaves` (in the order of `leaves(value)`) in the containers of `value`."""
    iterator = iter(new_leaves)
    return map_leaves(lambda _: next(iterator), value)


def to_mapping(value: Any, type_spec: ft.Type) -> Any:
    """A value with every named structure as a dict (unnamed ones as lists), in the type's order."""
    if isinstance(type_spec, ft.StructType):
        elements = [to_mapping(e, t) for e, t in zip(struct_elements(value, type_spec), type_spec)]
        names = type_spec.names()
        if type_spec.is_named:
            return dict(zip(names, elements))
        return elements
    return value


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict:
    """`{"a": {"b": 1.0}}` -> `{"a/b": 1.0}`, keeping numeric scalars only.

    The names `run_training_process`, History, CSV and TensorBoard use.

    Args:
        metrics: nested mappings of metrics.
        prefix: prepended to every name.

    Returns:
        A flat dict of name -> Python number.

    Example:
        >>> fedsim.simulation.flatten_metrics({"train": {"loss": np.float32(0.5)}})
        {'train/loss': 0.5}
    """
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name + "/"))
        elif isinstance(value, (numbers.Number, np.number, np.ndarray)) and np.ndim(value) == 0 and not isinstance(value, bool):
            flat[name] = float(value) if np.issubdtype(np.asarray(value).dtype, np.floating) else int(value)
    return flat
