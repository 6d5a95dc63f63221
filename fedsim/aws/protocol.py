"""What the server, the silos and the notebook agree on: object keys, records, value encoding.

S3 (one bucket):
    computations/<sha256>                     a serialized phase, content-addressed (never rewritten)
    runs/<run>/manifest.json                  the run's phase keys, types and round settings
    runs/<run>/round-<r>/broadcast.npz        prepare's broadcast for round r
    runs/<run>/round-<r>/carry.npz            prepare's carry (server only)
    runs/<run>/round-<r>/result.npz           update's result of round r (its first element is the new state)
    silos/<silo>/<run>/round-<r>/work.npz     a silo's work output (only that silo may write here)

DynamoDB (one table, stream of new images):
    pk="round#<run>",  sk="<r>"               the round: expected silos, quorum, status, outcome
    pk="<silo>",       sk="<run>#<r>"         a silo's result: key, sha256, size, token (GSI by_round: round_key),
                                              or `refused`: why the silo would not run the round's computation

Values are `.npz` archives of a value's leaves in the order of its fedsim type (no pickle);
decoding checks every leaf's dtype and shape against the type, and (optionally) finiteness.
Message bodies and records carry keys and checksums, never model bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from fedsim.core import structure
from fedsim.core import types as ft

__all__ = [
    "InvalidValueError",
    "computation_key",
    "decode_value",
    "encode_value",
    "round_item_key",
    "round_prefix",
    "sha256",
    "silo_result_key",
    "silo_item_key",
]


MAX_REASON_CHARS = 2000  # a silo's refusal reason, as stored and shown


class InvalidValueError(ValueError):
    """A stored value does not match its type (or is not finite); the message says which leaf."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def computation_key(digest: str) -> str:
    return f"computations/{digest}"


def round_prefix(run_id: str, round_num: int) -> str:
    return f"runs/{run_id}/round-{round_num}"


def silo_result_key(silo_id: str, run_id: str, round_num: int) -> str:
    return f"silos/{silo_id}/{run_id}/round-{round_num}/work.npz"


def round_item_key(run_id: str, round_num: int) -> dict:
    return {"pk": f"round#{run_id}", "sk": str(round_num)}


def silo_item_key(silo_id: str, run_id: str, round_num: int) -> dict:
    return {"pk": silo_id, "sk": f"{run_id}#{round_num}"}


def round_key(run_id: str, round_num: int) -> str:
    """The GSI partition of a round's silo results."""
    return f"{run_id}#{round_num}"


def encode_value(value: Any, value_type: ft.Type) -> bytes:
    leaves = structure.flatten_value(structure.check_and_normalize(value, value_type, "the value to store"), value_type)
    stream = io.BytesIO()
    np.savez(stream, **{f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    return stream.getvalue()


def decode_value(data: bytes, value_type: ft.Type, what: str, require_finite: bool = False) -> Any:
    """The value stored in `data`, checked leaf by leaf against `value_type`."""
    expected = ft.flatten_type(value_type)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files)
            leaves = [archive[name] for name in names]
    except Exception as error:  # zipfile/numpy raise several kinds for corrupt archives
        raise InvalidValueError(f"{what}: not a readable value archive ({type(error).__name__}: {error})") from None
    if len(leaves) != len(expected):
        raise InvalidValueError(f"{what}: {len(leaves)} tensors, expected {len(expected)} for {value_type}")
    for index, (leaf, leaf_type) in enumerate(zip(leaves, expected)):
        if leaf.dtype != leaf_type.dtype.as_numpy_dtype and not (leaf_type.dtype.name == "string" and leaf.dtype.kind in "SUO"):
            raise InvalidValueError(f"{what}: tensor {index} has dtype {leaf.dtype}, expected {leaf_type.dtype.name} ({leaf_type})")
        if not leaf_type.tensor_shape.is_compatible_with(leaf.shape):
            raise InvalidValueError(f"{what}: tensor {index} has shape {list(leaf.shape)}, expected {leaf_type}")
        if require_finite and leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
            raise InvalidValueError(f"{what}: tensor {index} ({leaf_type}) has non-finite values (NaN or inf)")
    return structure.unflatten_value(value_type, [leaf[()] if leaf.ndim == 0 else leaf for leaf in leaves])


def dumps(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True).encode()
