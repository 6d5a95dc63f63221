"""Computations to bytes and back: JSON for the structure, TensorFlow's GraphDef for graphs.

Layout: an 8-byte magic, the length of a JSON header, the header, then the blobs (serialized
GraphDefs), each listed in the header with its size and SHA-256. Embedded TensorFlow
computations are stored once each, under the hash of their bytes; the header is written with
sorted keys, so equal computations give equal bytes. No pickle and no Python source: the bytes
run in a process that never imported the code that defined the computation.
"""

from __future__ import annotations

import hashlib
import json
import struct

from fedsim.core import building_blocks as bb
from fedsim.core import computation as computation_lib
from fedsim.core import federated_tracing as fc
from fedsim.core import tensorflow_computation as tfc
from fedsim.core import types as ft

__all__ = ["serialize_computation", "deserialize_computation", "SerializationError"]

_MAGIC = b"FEDSIM\x00\x01"
_LENGTH = struct.Struct(">Q")


class SerializationError(ValueError):
    """Bytes that are not a (complete, uncorrupted) serialized fedsim computation."""


def _tf_header(computation: tfc.TensorFlowComputation, blob: int) -> dict:
    return {
        "kind": "tensorflow",
        "name": computation.name,
        "type": computation.type_signature.to_json(),
        "unpack": computation.unpack,
        "graph": blob,
        "parameter_names": computation.parameter_names,
        "result_names": computation.result_names,
    }


def serialize_computation(computation: computation_lib.Computation) -> bytes:
    """Serializes a `tf_computation` or `federated_computation` to bytes."""
    blobs: list = []
    blob_index: dict = {}

    def add_blob(data: bytes) -> int:
        digest = hashlib.sha256(data).hexdigest()
        if digest not in blob_index:
            blob_index[digest] = len(blobs)
            blobs.append(data)
        return blob_index[digest]

    def embed(tf_computation: tfc.TensorFlowComputation) -> dict:
        return _tf_header(tf_computation, add_blob(tf_computation.graph_def))

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
        "format": 1,
        "root": root,
        "blobs": [{"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for b in blobs],
    }
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b"".join([_MAGIC, _LENGTH.pack(len(header_bytes)), header_bytes, *blobs])


def deserialize_computation(data: bytes) -> computation_lib.Computation:
    """Rebuilds a computation from `serialize_computation` bytes, verifying every checksum."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"deserialize_computation takes bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data.startswith(_MAGIC):
        raise SerializationError("these bytes are not a serialized fedsim computation (bad magic header)")
    offset = len(_MAGIC)
    if len(data) < offset + _LENGTH.size:
        raise SerializationError("serialized computation is truncated (no header length)")
    (header_length,) = _LENGTH.unpack_from(data, offset)
    offset += _LENGTH.size
    if len(data) < offset + header_length:
        raise SerializationError(f"serialized computation is truncated: header needs {header_length} bytes")
    try:
        header = json.loads(data[offset:offset + header_length])
    except ValueError as error:
        raise SerializationError(f"serialized computation has a corrupt header: {error}") from None
    offset += header_length
    if header.get("format") != 1:
        raise SerializationError(f"unsupported serialization format {header.get('format')!r}")
    blobs = []
    for index, entry in enumerate(header["blobs"]):
        blob = data[offset:offset + entry["size"]]
        if len(blob) != entry["size"]:
            raise SerializationError(f"serialized computation is truncated in graph {index}")
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise SerializationError(f"graph {index} of the serialized computation is corrupt (checksum mismatch)")
        blobs.append(blob)
        offset += entry["size"]
    if offset != len(data):
        raise SerializationError(f"{len(data) - offset} unexpected bytes after the serialized computation")
    cache: dict = {}

    def resolve(entry: dict) -> tfc.TensorFlowComputation:
        key = json.dumps(entry, sort_keys=True)
        if key not in cache:
            cache[key] = tfc.TensorFlowComputation(
                blobs[entry["graph"]],
                entry["parameter_names"],
                entry["result_names"],
                ft.type_from_json(entry["type"]),
                entry["name"],
                entry["unpack"],
            )
        return cache[key]

    root = header["root"]
    if root["kind"] == "tensorflow":
        return resolve(root)
    ir = bb.from_json(root["ir"], resolve)
    if not isinstance(ir, bb.Lambda):
        raise SerializationError("a serialized federated computation must be a lambda")
    return fc.FederatedComputation(ir, root["name"], root["unpack"])
