"""Computations to bytes and back: JSON for the structure, TensorFlow's GraphDef for graphs.

Layout: an 8-byte magic, the length of a JSON header, the header, then the blobs (serialized
GraphDefs), each listed in the header with its size and SHA-256. Embedded TensorFlow
computations are stored once each, under the hash of their bytes; the header is written with
sorted keys, so equal computations give equal bytes.

The bytes carry data only (format 2): types name fields, dtypes, shapes and placements, and a
Python container only by a registered name (`fedsim.core.containers`). Reading them never
imports a module, unpickles or calls a class that was not registered in the reading process,
and every graph is checked against an op allowlist (`fedsim.core.op_allowlist`) before it
can run. Format 1, which named containers as import paths, is refused. A computation over
sequences carries its fast form too (`sequences`: datasets fed as tensors), checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Callable

from fedsim.core import building_blocks as bb
from fedsim.core import computation as computation_lib
from fedsim.core import federated_tracing as fc
from fedsim.core import op_allowlist
from fedsim.core import sequences
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft
from fedsim.core.errors import SerializationError

__all__ = ["serialize_computation", "deserialize_computation", "computation_hash", "read_envelope", "SerializationError", "FORMAT_VERSION"]

_MAGIC = b"FEDSIM\x00\x01"
_LENGTH = struct.Struct(">Q")
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 64 * 2**20
MAX_GRAPHS = 10_000


def computation_hash(data: bytes) -> str:
    """The SHA-256 of serialized bytes: what a silo pins (`--accept`) and S3 keys name.

    Args:
        data: serialized computation bytes.

    Returns:
        The hex digest.
    """
    return hashlib.sha256(bytes(data)).hexdigest()


def _tf_header(computation: tfc.TensorFlowComputation, add_blob: Callable[[bytes], int]) -> dict:
    header = {
        "kind": "tensorflow",
        "name": computation.name,
        "type": computation.type_signature.to_json(),
        "unpack": computation.unpack,
        "graph": add_blob(computation.graph_def),
        "parameter_names": computation.parameter_names,
        "result_names": computation.result_names,
    }
    fast = computation.fast_graph()  # datasets fed as tensors: silos run it too
    if fast is not None:
        header["fast"] = {"graph": add_blob(fast.graph_def), "parameter_names": fast.input_names,
                          "result_names": fast.output_names}
    return header


def serialize_computation(computation: computation_lib.Computation) -> bytes:
    """Serializes a `tf_computation` or `federated_computation` to bytes.

    The bytes hold the type signatures, the IR and each TensorFlow graph with a checksum; they
    carry no Python code, so a silo can vet and run them.

    Args:
        computation: a fedsim computation.

    Returns:
        The serialized bytes (deterministic for a given computation).

    Raises:
        TypeError: if `computation` is not a fedsim computation.

    Example:
        >>> data = fedsim.serialize_computation(process.next)
        >>> fedsim.computation_hash(data)  # what a silo pins
    """
    blobs: list = []
    blob_index: dict = {}

    def add_blob(data: bytes) -> int:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in blob_index:
            blob_index[digest] = len(blobs)
            blobs.append(data)
        return blob_index[digest]

    def embed(tf_computation: tfc.TensorFlowComputation) -> dict:
        return _tf_header(tf_computation, add_blob)

    if isinstance(computation, tfc.TensorFlowComputation):
        root = embed(computation)
    elif isinstance(computation, fc.FederatedComputation):
        root = {
            "kind": "federated",
            "name": computation.name,
            "unpack": computation.unpack,
            "ir": computation.ir.to_json(embed),
        }
    else:
        raise TypeError(f"cannot serialize {computation!r}: not a fedsim computation")
    header = {
        "format": FORMAT_VERSION,
        "root": root,
        "blobs": [{"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for b in blobs],
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b"".join([_MAGIC, _LENGTH.pack(len(header_bytes)), header_bytes, *blobs])


def deserialize_computation(
    data: bytes, allowed_ops: op_allowlist.OpAllowlist = op_allowlist.DEFAULT_OP_ALLOWLIST
) -> computation_lib.Computation:
    """Rebuilds a computation from `serialize_computation` bytes.

    The bytes are untrusted: every checksum, field and type is checked, and every graph (with
    its function library) must use only ops of `allowed_ops`.

    Args:
        data: the serialized bytes.
        allowed_ops: the op allowlist the graphs must keep to (fedsim's default allowlist).

    Returns:
        The computation, callable in any execution context.

    Raises:
        TypeError: if `data` is not bytes.
        SerializationError: if the bytes are malformed, truncated or corrupt, naming the place.
        op_allowlist.DisallowedOpError: if a graph uses an op outside `allowed_ops`.

    Example::

        computation = fedsim.deserialize_computation(open("next.bin", "rb").read())
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"deserialize_computation takes bytes, got {type(data).__name__}")
    data = bytes(data)
    header, blobs = read_envelope(data)
    try:
        root = header["root"]
        kind = root.get("kind") if isinstance(root, dict) else None
        if kind == "tensorflow":
            computation = _TensorFlowReader(blobs, allowed_ops).read(root, "the computation")
        elif kind == "federated":
            _expect_keys(root, {"kind", "name", "unpack", "ir"}, "the federated computation")
            reader = _TensorFlowReader(blobs, allowed_ops)
            ir = bb.from_json(root["ir"], lambda entry: reader.read(entry, "an embedded TensorFlow computation"))
            if not isinstance(ir, bb.Lambda):
                raise SerializationError("a serialized federated computation must be a lambda")
            computation = fc.FederatedComputation(ir, _text(root["name"], "name"), _flag(root["unpack"], "unpack"))
        else:
            raise SerializationError(f"unknown computation kind {str(kind)[:40]!r} (expected 'tensorflow' or 'federated')")
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError("the serialized computation is nested too deeply to read") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise SerializationError(f"malformed serialized computation: {error}") from None
    return computation


def read_envelope(data: bytes) -> tuple:
    """`(header, graph blobs)` of serialized bytes: the format and every checksum verified,
    nothing deserialized. For tools that look at a computation without building it."""
    if not data.startswith(_MAGIC):
        raise SerializationError("these bytes are not a serialized fedsim computation (bad magic header)")
    offset = len(_MAGIC)
    if len(data) < offset + _LENGTH.size:
        raise SerializationError("serialized computation is truncated (no header length)")
    (header_length,) = _LENGTH.unpack_from(data, offset)
    offset += _LENGTH.size
    if header_length > MAX_HEADER_BYTES:
        raise SerializationError(f"serialized computation declares a header of {header_length} bytes, over {MAX_HEADER_BYTES}")
    if len(data) < offset + header_length:
        raise SerializationError(f"serialized computation is truncated: header needs {header_length} bytes")
    try:
        header = json.loads(data[offset:offset + header_length])
    except RecursionError:
        raise SerializationError("serialized computation has a header nested too deeply to read") from None
    except ValueError as error:
        raise SerializationError(f"serialized computation has a corrupt header: {error}") from None
    offset += header_length
    if not isinstance(header, dict):
        raise SerializationError("serialized computation has a corrupt header: not a JSON object")
    version = header.get("format")
    if version == 1:
        raise SerializationError(
            "these bytes are in fedsim's serialization format 1, which named Python classes as import paths "
            f"and is no longer read; serialize the computation again with this fedsim (format {FORMAT_VERSION})"
        )
    if version != FORMAT_VERSION:
        raise SerializationError(f"unsupported serialization format {version!r:.20} (this fedsim reads format {FORMAT_VERSION})")
    _expect_keys(header, {"format", "root", "blobs"}, "the header")
    entries = header["blobs"]
    if not isinstance(entries, list) or len(entries) > MAX_GRAPHS:
        raise SerializationError(f"the header's graph list must be a list of at most {MAX_GRAPHS} entries")
    blobs = []
    for index, entry in enumerate(entries):
        _expect_keys(entry, {"size", "sha256"}, f"graph entry {index}")
        size = entry["size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise SerializationError(f"graph entry {index} has an invalid size {str(size)[:20]!r}")
        blob = data[offset:offset + size]
        if len(blob) != size:
            raise SerializationError(f"serialized computation is truncated in graph {index}")
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise SerializationError(f"graph {index} of the serialized computation is corrupt (checksum mismatch)")
        blobs.append(blob)
        offset += size
    if offset != len(data):
        raise SerializationError(f"{len(data) - offset} unexpected bytes after the serialized computation")
    return header, blobs


class _TensorFlowReader:
    """Builds embedded TensorFlow computations from header entries, each graph checked once."""

    def __init__(self, blobs: list, allowed_ops: op_allowlist.OpAllowlist):
        self._blobs = blobs
        self._allowed_ops = allowed_ops
        self._checked: set = set()
        self._cache: dict = {}

    def read(self, entry: Any, what: str) -> tfc.TensorFlowComputation:
        keys = {"kind", "name", "type", "unpack", "graph", "parameter_names", "result_names"}
        _expect_keys(entry, keys | ({"fast"} if isinstance(entry, dict) and "fast" in entry else set()), what)
        if entry["kind"] != "tensorflow":
            raise SerializationError(f"{what} is not of kind 'tensorflow'")
        key = json.dumps(entry, sort_keys=True)
        if key in self._cache:
            return self._cache[key]
        name = _text(entry["name"], f"{what}'s name")
        type_signature = ft.type_from_json(entry["type"], f"the type of {name!r}")
        if not isinstance(type_signature, ft.FunctionType):
            raise SerializationError(f"{what} {name!r} has the type {type_signature}, not a function type")
        source = None
        if "fast" in entry:
            fast = entry["fast"]
            _expect_keys(fast, {"graph", "parameter_names", "result_names"}, f"{what} {name!r}'s fast form")
            if type_signature.parameter is None or not any(
                    isinstance(leaf, ft.SequenceType) for leaf in ft.flatten_type(type_signature.parameter)):
                raise SerializationError(f"{what} {name!r} has a fast form but no sequence in its parameter")
            fast_names = _names(fast["parameter_names"], f"{name!r}'s fast parameter names")
            if len(fast_names) != len(sequences.fast_input_specs(type_signature.parameter)):
                raise SerializationError(f"{what} {name!r}'s fast form has {len(fast_names)} inputs, not what its type gives")
            source = tfc.imported_fast_form(self._checked_graph(fast["graph"], what, name), fast_names,
                                            _names(fast["result_names"], f"{name!r}'s fast result names"),
                                            type_signature.parameter)
        computation = tfc.TensorFlowComputation(
            self._checked_graph(entry["graph"], what, name),
            _names(entry["parameter_names"], f"{name!r}'s parameter names"),
            _names(entry["result_names"], f"{name!r}'s result names"),
            type_signature,
            name,
            _flag(entry["unpack"], f"{name!r}'s unpack flag"),
            source=source,
        )
        self._cache[key] = computation
        return computation

    def _checked_graph(self, index: Any, what: str, name: str) -> bytes:
        """Graph blob `index`, its ops checked against the allowlist (once per blob)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self._blobs):
            raise SerializationError(f"{what} {name!r} refers to graph {str(index)[:20]!r}, which is not in the bytes")
        if index not in self._checked:
            op_allowlist.check_graph(self._blobs[index], self._allowed_ops, name)
            self._checked.add(index)
        return self._blobs[index]


def _expect_keys(body: Any, keys: set, what: str) -> None:
    if not isinstance(body, dict) or set(body) != keys:
        found = sorted(body)[:8] if isinstance(body, dict) else type(body).__name__
        raise SerializationError(f"{what} must have the fields {sorted(keys)}, found {found}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 500:
        raise SerializationError(f"{what} must be a string of at most 500 characters")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SerializationError(f"{what} must be true or false")
    return value


def _names(values: Any, what: str) -> list:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) <= 500 for v in values):
        raise SerializationError(f"{what} must be a list of strings")
    return values
