"""The type system: tensors, structures, sequences, functions and federated types.

Every computation has a type signature built from these classes. They print the way TFF
prints its types, e.g. ``(<state=float32[10]@SERVER,data={<x=float32[?,784]>*}@CLIENTS> ->
float32[10]@SERVER)``, compare by value, and serialize to JSON-able dicts.

Example::

    >>> fedsim.to_type({"a": (tf.float32, [10]), "b": tf.int32})
    <a=float32[10],b=int32>
    >>> fedsim.FederatedType(tf.float32, fedsim.CLIENTS)
    {float32}@CLIENTS
"""

from __future__ import annotations

import collections
from typing import Any, Iterator, Optional, Union

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import containers
from fedsim.core.placements import CLIENTS, SERVER, Placement, placement_from_uri

__all__ = [
    "Type",
    "TensorType",
    "StructType",
    "SequenceType",
    "FunctionType",
    "FederatedType",
    "to_type",
    "infer_type",
    "type_from_json",
    "find_type_difference",
    "is_assignable_from",
    "type_at_clients",
    "type_at_server",
]


class Type:
    """Base class of fedsim types."""

    def to_json(self) -> dict:
        """The type as a JSON-able dict, the form computations carry on the wire.

        Returns:
            A dict read back by `type_from_json`.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return str(self)

    def compact_representation(self) -> str:
        """The one-line form (what `str` gives), TFF's name for it."""
        return str(self)

    def formatted_representation(self) -> str:
        """A multi-line form with one structure element per line, indented as TFF indents it."""
        return "\n".join(line.rstrip() for line in _formatted_lines(self))


def _join_lines(parts: list) -> list:
    """Concatenates line lists: each part's first line continues the previous part's last line."""
    lines = [""]
    for part in parts:
        lines[-1] += part[0]
        lines.extend(part[1:])
    return lines


def _formatted_lines(type_spec: "Type") -> list:
    if isinstance(type_spec, StructType):
        if not len(type_spec):
            return ["<>"]
        parts = []
        for index, (name, element) in enumerate(type_spec.elements):
            if index:
                parts.append([",", ""])
            element_lines = _formatted_lines(element)
            parts.append(_join_lines([[f"{name}="], element_lines]) if name is not None else element_lines)
        body = ["  " + line for line in _join_lines(parts)]
        return _join_lines([["<", ""], body, ["", ">"]])
    if isinstance(type_spec, FederatedType):
        member = _formatted_lines(type_spec.member)
        placement = [f"@{type_spec.placement}"]
        return _join_lines([member, placement]) if type_spec.all_equal else _join_lines([["{"], member, ["}"], placement])
    if isinstance(type_spec, SequenceType):
        return _join_lines([_formatted_lines(type_spec.element), ["*"]])
    if isinstance(type_spec, FunctionType):
        parameter = [""] if type_spec.parameter is None else _formatted_lines(type_spec.parameter)
        return _join_lines([["("], parameter, [" -> "], _formatted_lines(type_spec.result), [")"]])
    return [str(type_spec)]


def _dtype_name(dtype: tf.DType) -> str:
    """The dtype as TFF prints it (TFF's numpy dtypes print a string tensor as `str`)."""
    return "str" if dtype == tf.string else dtype.name


def _to_dtype(dtype: Any) -> tf.DType:
    if isinstance(dtype, tf.DType):
        return dtype
    if dtype is float:
        return tf.float32
    if dtype is int:
        return tf.int32
    if dtype is bool:
        return tf.bool
    if dtype in (str, bytes):
        return tf.string
    return tf.as_dtype(dtype)


def _to_shape(shape: Any) -> Optional[tuple]:
    if shape is None:
        return None
    if isinstance(shape, tf.TensorShape):
        return None if shape.rank is None else tuple(shape.as_list())
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(None if d is None else int(d) for d in shape)


@attrs.frozen(repr=False)
class TensorType(Type):
    """A tensor of `dtype` and `shape` (a tuple; `None` marks an unknown dimension).

    `shape=None` means unknown rank.
    """

    dtype: tf.DType = attrs.field(converter=_to_dtype)
    shape: Optional[tuple] = attrs.field(default=(), converter=_to_shape)

    def __str__(self) -> str:
        name = _dtype_name(self.dtype)
        if self.shape is None:
            return f"{name}[*]"
        if not self.shape:
            return name
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{name}[{dims}]"

    @property
    def tensor_shape(self) -> tf.TensorShape:
        return tf.TensorShape(None if self.shape is None else list(self.shape))

    def to_spec(self) -> tf.TensorSpec:
        """The `tf.TensorSpec` of this tensor type.

        Returns:
            `tf.TensorSpec(shape, dtype)`, with unknown dimensions as `None`.
        """
        return tf.TensorSpec(self.tensor_shape, self.dtype)

    def to_json(self) -> dict:
        """The type as a JSON-able dict (see `Type.to_json`)."""
        return {
            "tensor": {
                "dtype": self.dtype.name,
                "shape": None if self.shape is None else list(self.shape),
            }
        }


@attrs.frozen(repr=False)
class StructType(Type):
    """An ordered structure of elements, each optionally named: `<a=int32,float32>`.

    `container` remembers the Python class the structure came from (dict, list, tuple, a
    namedtuple or attrs class) so results come back in the shape users passed in. It takes
    no part in equality or assignability. On the wire it is a registered name (see
    `fedsim.core.containers`); a type read from bytes whose name is not registered in this
    process keeps the name as a string and packs its values as plain structures.
    """

    elements: tuple = attrs.field(converter=lambda els: tuple((n, to_type(t)) for n, t in els))
    container: Union[type, str, None] = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self):
        names = [n for n, _ in self.elements if n is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate element names in a structure: {names}")

    def __str__(self) -> str:
        parts = [str(t) if n is None else f"{n}={t}" for n, t in self.elements]
        return "<" + ",".join(parts) + ">"

    def __len__(self) -> int:
        return len(self.elements)

    def __iter__(self) -> Iterator[Type]:
        return iter(t for _, t in self.elements)

    def names(self) -> list:
        """The element names in order, `None` for an unnamed element.

        Returns:
            A list with one name (or `None`) per element.
        """
        return [n for n, _ in self.elements]

    def index_of(self, name: str) -> int:
        """The position of the element named `name`.

        Args:
            name: an element name.

        Returns:
            Its index in `elements`.

        Raises:
            AttributeError: if no element has that name.
        """
        for i, (n, _) in enumerate(self.elements):
            if n == name:
                return i
        raise AttributeError(f"the structure {self} has no element named {name!r}")

    def __getitem__(self, key) -> Type:
        if isinstance(key, str):
            return self.elements[self.index_of(key)][1]
        return self.elements[key][1]

    def __getattr__(self, name: str) -> Type:
        """An element by name, as TFF allows (`state_type.model`); only names not otherwise attributes."""
        if name.startswith("__") or name in ("elements", "container"):
            raise AttributeError(name)
        for element_name, element_type in self.elements:
            if element_name == name:
                return element_type
        raise AttributeError(f"the structure {self} has no element named {name!r}")

    @property
    def is_named(self) -> bool:
        return bool(self.elements) and all(n is not None for n, _ in self.elements)

    def to_json(self) -> dict:
        """The type as a JSON-able dict (see `Type.to_json`); the container goes by its registered name."""
        return {
            "struct": [[n, t.to_json()] for n, t in self.elements],
            "container": containers.wire_name(self.container),
        }


@attrs.frozen(repr=False)
class SequenceType(Type):
    """A sequence of elements (a `tf.data.Dataset` at run time): `<x=float32[?,784]>*`."""

    element: Type = attrs.field(converter=lambda t: to_type(t))

    def __str__(self) -> str:
        return f"{self.element}*"

    def to_json(self) -> dict:
        """The type as a JSON-able dict (see `Type.to_json`)."""
        return {"sequence": self.element.to_json()}


@attrs.frozen(repr=False)
class FunctionType(Type):
    """A function from `parameter` (or no parameter, `None`) to `result`."""

    parameter: Optional[Type] = attrs.field(converter=lambda t: None if t is None else to_type(t))
    result: Type = attrs.field(converter=lambda t: to_type(t))

    def __str__(self) -> str:
        param = "" if self.parameter is None else str(self.parameter)
        return f"({param} -> {self.result})"

    def to_json(self) -> dict:
        """The type as a JSON-able dict (see `Type.to_json`)."""
        return {
            "function": {
                "parameter": None if self.parameter is None else self.parameter.to_json(),
                "result": self.result.to_json(),
            }
        }


@attrs.frozen(repr=False)
class FederatedType(Type):
    """A value of type `member` at a placement: `{float32}@CLIENTS`, `float32@SERVER`.

    `all_equal` says every participant holds the same value; it defaults to `True` at SERVER
    and `False` at CLIENTS (a broadcast value is `float32@CLIENTS`).
    """

    member: Type = attrs.field(converter=lambda t: to_type(t))
    placement: Placement = attrs.field()
    all_equal: Optional[bool] = attrs.field(default=None)

    def __attrs_post_init__(self):
        if not isinstance(self.placement, Placement):
            raise TypeError(
                f"a federated type needs a placement (fedsim.CLIENTS or fedsim.SERVER), "
                f"got {self.placement!r}"
            )
        if isinstance(self.member, FederatedType):
            raise TypeError(f"a federated type cannot hold another federated type ({self.member})")
        if self.all_equal is None:
            object.__setattr__(self, "all_equal", self.placement.default_all_equal)

    def __str__(self) -> str:
        placement = str(self.placement)
        if self.all_equal:
            return f"{self.member}@{placement}"
        return f"{{{self.member}}}@{placement}"

    def to_json(self) -> dict:
        """The type as a JSON-able dict (see `Type.to_json`)."""
        return {
            "federated": {
                "member": self.member.to_json(),
                "placement": self.placement.uri,
                "all_equal": self.all_equal,
            }
        }


# The dtypes a type read from bytes may name: values, never handles (resource, variant).
WIRE_DTYPES = frozenset({
    "bool", "string", "bfloat16", "float16", "float32", "float64", "complex64", "complex128",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
})
MAX_WIRE_RANK = 32
MAX_WIRE_DIMENSION = 2**40


class MalformedTypeError(ValueError):
    """A serialized type that is not well formed; the message says where."""


def type_from_json(data: Optional[dict], path: str = "type") -> Optional[Type]:
    """Inverse of `Type.to_json`, for data read from anywhere: every field is checked.

    Containers come back only through the registry of `fedsim.core.containers`; nothing is
    imported. Raises `MalformedTypeError` naming the place of the first problem.
    """
    if data is None:
        return None
    if not isinstance(data, dict) or len(data) != 1 and not (len(data) == 2 and "struct" in data):
        raise MalformedTypeError(f"{path}: not a serialized fedsim type: {str(data)[:120]}")
    try:
        if "tensor" in data:
            return _tensor_from_json(data["tensor"], path)
        if "struct" in data:
            elements = data["struct"]
            if not isinstance(elements, list):
                raise MalformedTypeError(f"{path}: a structure's elements must be a list")
            parsed = []
            for index, element in enumerate(elements):
                if not (isinstance(element, list) and len(element) == 2):
                    raise MalformedTypeError(f"{path}[{index}]: an element must be [name, type]")
                name, element_type = element
                if name is not None and not (isinstance(name, str) and 0 < len(name) <= 200):
                    raise MalformedTypeError(f"{path}[{index}]: an element name must be null or a short string")
                parsed.append((name, type_from_json(element_type, f"{path}.{name}" if name else f"{path}[{index}]")))
            try:
                container = containers.check_wire_name(data.get("container"))
            except ValueError as error:
                raise MalformedTypeError(f"{path}: {error}") from None
            return StructType(parsed, container=containers.container_class(container) or container)
        if "sequence" in data:
            return SequenceType(type_from_json(data["sequence"], f"{path}*"))
        if "function" in data:
            body = _fields(data["function"], {"parameter", "result"}, path)
            return FunctionType(
                type_from_json(body["parameter"], f"{path}(parameter)"),
                type_from_json(body["result"], f"{path}(result)"),
            )
        if "federated" in data:
            body = _fields(data["federated"], {"member", "placement", "all_equal"}, path)
            if not isinstance(body["all_equal"], bool):
                raise MalformedTypeError(f"{path}: all_equal must be true or false")
            if not isinstance(body["placement"], str):
                raise MalformedTypeError(f"{path}: a placement must be a string")
            return FederatedType(
                type_from_json(body["member"], path), placement_from_uri(body["placement"]), body["all_equal"]
            )
    except MalformedTypeError:
        raise
    except (TypeError, ValueError) as error:
        raise MalformedTypeError(f"{path}: {error}") from None
    raise MalformedTypeError(f"{path}: not a serialized fedsim type (keys {sorted(data)[:5]})")


def _fields(body: Any, names: set, path: str) -> dict:
    if not isinstance(body, dict) or set(body) != names:
        raise MalformedTypeError(f"{path}: expected the fields {sorted(names)}")
    return body


def _tensor_from_json(body: Any, path: str) -> TensorType:
    body = _fields(body, {"dtype", "shape"}, path)
    dtype, shape = body["dtype"], body["shape"]
    if dtype not in WIRE_DTYPES:
        raise MalformedTypeError(f"{path}: dtype {str(dtype)[:40]!r} is not a value dtype ({', '.join(sorted(WIRE_DTYPES))})")
    if shape is not None:
        if not isinstance(shape, list) or len(shape) > MAX_WIRE_RANK:
            raise MalformedTypeError(f"{path}: a shape must be null or a list of at most {MAX_WIRE_RANK} dimensions")
        for dim in shape:
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= MAX_WIRE_DIMENSION):
                raise MalformedTypeError(f"{path}: dimension {dim!r} is not null or an integer from 0 to 2**40")
    return TensorType(dtype, shape)


def _is_dtype_like(obj: Any) -> bool:
    if isinstance(obj, (tf.DType, np.dtype)) or obj in (float, int, bool, str, bytes):
        return True
    if isinstance(obj, type) and issubclass(obj, np.generic):
        return True
    if isinstance(obj, str):
        try:
            tf.as_dtype(obj)
            return True
        except TypeError:
            return False
    return False


def _is_shape_like(obj: Any) -> bool:
    if isinstance(obj, (tf.TensorShape, int, np.integer)):
        return True
    return isinstance(obj, (list, tuple)) and all(d is None or isinstance(d, (int, np.integer)) for d in obj)


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def sparse_type(dtype: Any, shape: Any) -> "StructType":
    """A `tf.SparseTensor` of `dtype` and dense `shape`: `<indices=int64[?,rank],values=dtype[?],dense_shape=int64[rank]>`.

    The number of stored values is dynamic, so only the rank of the dense shape is kept.
    """
    rank = None if tf.TensorShape(shape).rank is None else tf.TensorShape(shape).rank
    return StructType(
        [("indices", TensorType(tf.int64, (None, rank))), ("values", TensorType(dtype, (None,))),
         ("dense_shape", TensorType(tf.int64, (rank,)))],
        container=tf.SparseTensor,
    )


def is_sparse_type(type_spec: Type) -> bool:
    return isinstance(type_spec, StructType) and containers.resolve(type_spec.container) is tf.SparseTensor


def contains_sparse(type_spec: Type) -> bool:
    """Whether a sparse tensor occurs anywhere in `type_spec` (an arithmetic aggregation must refuse it)."""
    if is_sparse_type(type_spec):
        return True
    if isinstance(type_spec, StructType):
        return any(contains_sparse(t) for t in type_spec)
    if isinstance(type_spec, FederatedType):
        return contains_sparse(type_spec.member)
    return False


def to_type(spec: Any) -> Type:
    """Converts a type-like Python object into a fedsim `Type`.

    Args:
        spec: a fedsim type; a dtype (`tf.float32`, `np.int32`, `"float32"`, `float`); a
            `(dtype, shape)` pair; a `tf.TensorSpec`, `tf.SparseTensorSpec` or
            `tf.data.DatasetSpec`; or a dict, list, tuple, namedtuple or attrs class of those.

    Returns:
        The fedsim `Type`; structures remember their Python container.

    Raises:
        TypeError: if `spec` is none of the above.

    Example:
        >>> fedsim.to_type(collections.OrderedDict(x=(tf.float32, [None, 784]), y=tf.int32))
        <x=float32[?,784],y=int32>
    """
    if isinstance(spec, Type):
        return spec
    if _is_dtype_like(spec):
        return TensorType(spec)
    if isinstance(spec, tf.TensorSpec):
        return TensorType(spec.dtype, spec.shape)
    if isinstance(spec, tf.SparseTensorSpec):
        return sparse_type(spec.dtype, spec.shape)
    if isinstance(spec, tf.data.DatasetSpec):
        return SequenceType(to_type(spec.element_spec))
    if (
        isinstance(spec, tuple)
        and not _is_namedtuple(spec)
        and len(spec) == 2
        and _is_dtype_like(spec[0])
        and _is_shape_like(spec[1])
    ):
        return TensorType(spec[0], spec[1])
    if isinstance(spec, collections.OrderedDict):
        return StructType([(k, to_type(v)) for k, v in spec.items()], container=collections.OrderedDict)
    if isinstance(spec, dict):
        return StructType([(k, to_type(v)) for k, v in spec.items()], container=dict)
    if _is_namedtuple(spec):
        return StructType([(k, to_type(v)) for k, v in spec._asdict().items()], container=type(spec))
    if attrs.has(type(spec)):
        return StructType(
            [(f.name, to_type(getattr(spec, f.name))) for f in attrs.fields(type(spec))],
            container=type(spec),
        )
    if isinstance(spec, (list, tuple)):
        return StructType([(None, to_type(v)) for v in spec], container=type(spec))
    raise TypeError(f"cannot convert {spec!r} (of Python type {type(spec).__name__}) to a fedsim type")


def infer_type(value: Any) -> Type:
    """The type of a Python value: numpy arrays, tensors, scalars, datasets and structures.

    Python `float` infers as float32 and `int` as int32, as in TFF.

    Args:
        value: a tensor, variable, numpy value, Python scalar or string, dataset, sparse tensor,
            computation, or a structure of those.

    Returns:
        Its fedsim `Type`.

    Raises:
        TypeError: if no type can be inferred for `value`.

    Example:
        >>> fedsim.infer_type([1.0, np.zeros([2], np.int64)])
        <float32,int64[2]>
    """
    if isinstance(getattr(value, "type_signature", None), FunctionType):  # a computation
        return value.type_signature
    if isinstance(value, tf.data.Dataset):
        return SequenceType(to_type(value.element_spec))
    if containers.is_sparse(value):
        return sparse_type(value.values.dtype, [None] * int(np.shape(value.dense_shape)[0]))
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return TensorType(value.dtype, value.shape)
    if isinstance(value, (np.ndarray, np.generic)):
        return TensorType(value.dtype, value.shape)
    if isinstance(value, bool):
        return TensorType(tf.bool)
    if isinstance(value, int):
        return TensorType(tf.int32)
    if isinstance(value, float):
        return TensorType(tf.float32)
    if isinstance(value, (str, bytes)):
        return TensorType(tf.string)
    if isinstance(value, collections.OrderedDict):
        return StructType([(k, infer_type(v)) for k, v in value.items()], container=collections.OrderedDict)
    if isinstance(value, dict):
        return StructType([(k, infer_type(v)) for k, v in value.items()], container=dict)
    if _is_namedtuple(value):
        return StructType([(k, infer_type(v)) for k, v in value._asdict().items()], container=type(value))
    if attrs.has(type(value)):
        return StructType(
            [(f.name, infer_type(getattr(value, f.name))) for f in attrs.fields(type(value))],
            container=type(value),
        )
    if isinstance(value, (list, tuple)):
        return StructType([(None, infer_type(v)) for v in value], container=type(value))
    raise TypeError(f"cannot infer a fedsim type for a value of Python type {type(value).__name__}")


def _join(path: str, part: str) -> str:
    return f"{path}{part}"


def find_type_difference(target: Type, source: Type, path: str = "") -> Optional[str]:
    """Why a value of type `source` cannot be used where `target` is expected, or None.

    The answer names the place (`.a[1]`) and the two types there, so error messages can show
    exactly where two large types differ.
    """
    where = path or "the top level"
    if isinstance(target, TensorType):
        if not isinstance(source, TensorType):
            return f"at {where}: expected a tensor {target}, given {source}"
        if target.dtype != source.dtype:
            return f"at {where}: expected dtype {target.dtype.name}, given {source.dtype.name} ({target} vs {source})"
        if target.shape is None:
            return None
        if source.shape is None or len(source.shape) != len(target.shape):
            return f"at {where}: expected shape {target}, given {source} (rank differs)"
        for axis, (want, have) in enumerate(zip(target.shape, source.shape)):
            if want is not None and want != have:
                return f"at {where}: expected {target}, given {source} (dimension {axis}: {want} vs {'?' if have is None else have})"
        return None
    if isinstance(target, StructType):
        if not isinstance(source, StructType):
            return f"at {where}: expected a structure {target}, given {source}"
        if len(target) != len(source):
            return f"at {where}: expected a structure of {len(target)} elements, given {len(source)} ({target} vs {source})"
        for index, ((t_name, t_type), (s_name, s_type)) in enumerate(zip(target.elements, source.elements)):
            if t_name is not None and s_name is not None and t_name != s_name:
                return f"at {where}: element {index} is named {t_name!r} in the expected type but {s_name!r} in the given one"
            part = f".{t_name}" if t_name is not None else f"[{index}]"
            difference = find_type_difference(t_type, s_type, _join(path, part))
            if difference:
                return difference
        return None
    if isinstance(target, SequenceType):
        if not isinstance(source, SequenceType):
            return f"at {where}: expected a sequence {target}, given {source}"
        return find_type_difference(target.element, source.element, _join(path, "*"))
    if isinstance(target, FunctionType):
        if not isinstance(source, FunctionType):
            return f"at {where}: expected a function {target}, given {source}"
        if (target.parameter is None) != (source.parameter is None):
            return f"at {where}: expected {target}, given {source} (parameters differ)"
        if target.parameter is not None:
            difference = find_type_difference(source.parameter, target.parameter, _join(path, "(parameter)"))
            if difference:
                return difference
        return find_type_difference(target.result, source.result, _join(path, "(result)"))
    if isinstance(target, FederatedType):
        if not isinstance(source, FederatedType):
            return f"at {where}: expected a federated value {target}, given an unplaced {source}"
        if target.placement != source.placement:
            return f"at {where}: expected a value placed at {target.placement}, given one at {source.placement} ({target} vs {source})"
        if target.all_equal and not source.all_equal:
            return f"at {where}: expected one value equal at all {target.placement} ({target}), given {source}"
        return find_type_difference(target.member, source.member, path)
    raise TypeError(f"not a fedsim type: {target!r}")


def type_at_clients(type_spec: Any, all_equal: bool = False) -> FederatedType:
    """`{T}@CLIENTS` (or `T@CLIENTS` with `all_equal`), as TFF's `tff.types.type_at_clients`.

    Args:
        type_spec: anything `to_type` accepts.
        all_equal: whether every client holds the same value.

    Returns:
        The `FederatedType` at CLIENTS.

    Raises:
        TypeError: if `type_spec` is not type-like or is already federated.

    Example:
        >>> fedsim.type_at_clients(tf.float32)
        {float32}@CLIENTS
    """
    return FederatedType(type_spec, CLIENTS, all_equal)


def type_at_server(type_spec: Any) -> FederatedType:
    """`T@SERVER`, as TFF's `tff.types.type_at_server`.

    Args:
        type_spec: anything `to_type` accepts.

    Returns:
        The `FederatedType` at the SERVER.

    Raises:
        TypeError: if `type_spec` is not type-like or is already federated.
    """
    return FederatedType(type_spec, SERVER)


def is_assignable_from(target: Type, source: Type) -> bool:
    """Whether a value of type `source` may be used where `target` is expected.

    `find_type_difference` says why not.

    Args:
        target: the expected type.
        source: the given type.

    Returns:
        True if every value of `source` is a valid `target` (unknown dimensions in `target`
        accept any size).
    """
    return find_type_difference(target, source) is None


def flatten_type(type_spec: Type) -> list:
    """The leaves (tensor and sequence types) of a type, depth first."""
    if isinstance(type_spec, StructType):
        return [leaf for element in type_spec for leaf in flatten_type(element)]
    return [type_spec]
