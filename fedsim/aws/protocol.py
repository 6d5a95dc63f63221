"""What the server, the silos and the notebook agree on: object keys, records, value encoding.

S3 (one bucket):
    computations/<sha256>                     a serialized phase, content-addressed (never rewritten)
    runs/<run>/manifest.json                  the run's phase keys, types and round settings
    runs/<run>/round-<r>/broadcast.npz        prepare's broadcast for round r
    runs/<run>/round-<r>/carry.npz            prepare's carry (server only)
    runs/<run>/round-<r>/result.npz           update's result of round r (its first element is the new state)
    runs/<run>/round-<r>.eval/...             the same for round r's evaluation step (the new model on held-out data)
    runs/<run>/model/...                      the final global model to serve (Keras file, SavedModel, model card)
    silos/<silo>/<run>/round-<r>/work.npz     a silo's work output (only that silo may write here)

DynamoDB (one table, stream of new images):
    pk="round#<run>",  sk="<r>"               the round: expected silos, quorum, status, lease, outcome, and the
                                              task token (from the server's own queue, never from a silo)
    pk="<silo>",       sk="<run>#<r>"         a silo's result: key, sha256, size (GSI by_round: round_key),
                                              or `refused`: why the silo would not run the round's computation
    pk="verdict#<run>#<r>", sk="<silo>"       the server's verdict on that result (valid / rejected / late, the
                                              key and sha256 it checked): only the server writes these (a silo's
                                              role may write items under its own partition key only)

Values are `.npz` archives of a value's leaves in the order of its fedsim type (no pickle,
members stored uncompressed); decoding checks every leaf's dtype and shape from its header
against the type before reading data, and (optionally) finiteness.
Message bodies and records carry keys and checksums, never model bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from fedsim.core import structure
from fedsim.core import types as ft

__all__ = [
    "InvalidValueError",
    "computation_key",
    "decode_value",
    "encode_value",
    "parse_step",
    "step_label",
    "round_item_key",
    "round_prefix",
    "sha256",
    "silo_result_key",
    "silo_item_key",
    "verdict_item_key",
    "verdict_partition",
]


MAX_REASON_CHARS = 2000  # a silo's refusal reason, as stored and shown


class InvalidValueError(ValueError):
    """A stored value does not match its type (or is not finite); the message says which leaf."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def computation_key(digest: str) -> str:
    return f"computations/{digest}"


EVALUATION_SUFFIX = ".eval"


def step_label(round_num: int, evaluation: bool = False) -> str:
    """A run's steps: round r's training is step "r"; its evaluation of the new model, "r.eval"."""
    return f"{int(round_num)}{EVALUATION_SUFFIX if evaluation else ''}"


def parse_step(text: Any) -> tuple:
    """`(round_num, is_evaluation)` of a step label; ValueError if it is not one."""
    text = str(text)
    body = text[: -len(EVALUATION_SUFFIX)] if text.endswith(EVALUATION_SUFFIX) else text
    if not body.isdigit() or len(body) > 9 or int(body) < 1:
        raise ValueError(f"{text[:40]!r} is not a step label (a round number, or one followed by {EVALUATION_SUFFIX!r})")
    return int(body), body != text


def round_prefix(run_id: str, round_num: int) -> str:
    return f"runs/{run_id}/round-{round_num}"


def closed_key(run_id: str, round_num: Any) -> str:
    """The server's marker that a step is over (done or failed); silos may read it."""
    return f"{round_prefix(run_id, round_num)}/closed.json"


def silo_result_key(silo_id: str, run_id: str, round_num: int) -> str:
    return f"silos/{silo_id}/{run_id}/round-{round_num}/work.npz"


def round_item_key(run_id: str, round_num: int) -> dict:
    return {"pk": f"round#{run_id}", "sk": str(round_num)}


def silo_item_key(silo_id: str, run_id: str, round_num: int) -> dict:
    return {"pk": silo_id, "sk": f"{run_id}#{round_num}"}


def verdict_partition(run_id: str, round_num: int) -> str:
    return f"verdict#{run_id}#{round_num}"


def verdict_item_key(run_id: str, round_num: int, silo_id: str) -> dict:
    return {"pk": verdict_partition(run_id, round_num), "sk": silo_id}


def round_key(run_id: str, round_num: int) -> str:
    """The GSI partition of a round's silo results."""
    return f"{run_id}#{round_num}"


def encode_value(value: Any, value_type: ft.Type) -> bytes:
    leaves = structure.flatten_value(structure.check_and_normalize(value, value_type, "the value to store"), value_type)
    stream = io.BytesIO()
    np.savez(stream, **{f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    return stream.getvalue()


_MAX_NPY_HEADER_BYTES = 64 * 1024  # a .npy header is a short dict literal


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, index: int) -> tuple:
    """`(shape, dtype)` from a member's `.npy` header, read without reading the data."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(member, max_header_size=_MAX_NPY_HEADER_BYTES)
        except Exception as error:  # noqa: BLE001 - numpy raises several kinds for a malformed header
            raise InvalidValueError(f"{what}: tensor {index} has no readable .npy header ({type(error).__name__}: {error})") from None
    return tuple(shape), dtype


def decode_value(data: bytes, value_type: ft.Type, what: str, require_finite: bool = False) -> Any:
    """The value stored in `data`, checked leaf by leaf against `value_type`.

    Bounded before anything is decoded: the archive's members must be stored (not compressed,
    so nothing inflates beyond the bytes received), and each member's `.npy` header (dtype,
    shape) must match its leaf type and account for the member's declared size before its data
    is read. A zip bomb or a header claiming a huge shape is refused having read only headers.
    """
    expected = ft.flatten_type(value_type)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = sorted(archive.infolist(), key=lambda info: info.filename)
    except Exception as error:  # noqa: BLE001 - zipfile raises several kinds for corrupt archives
        raise InvalidValueError(f"{what}: not a readable value archive ({type(error).__name__}: {error})") from None
    with archive:
        if len(infos) != len(expected):
            raise InvalidValueError(f"{what}: {len(infos)} tensors, expected {len(expected)} for {value_type}")
        for index, (info, leaf_type) in enumerate(zip(infos, expected)):
            if info.compress_type != zipfile.ZIP_STORED:
                raise InvalidValueError(f"{what}: tensor {index} is compressed; values are stored uncompressed (np.savez)")
            if info.file_size > len(data):
                raise InvalidValueError(f"{what}: tensor {index} declares {info.file_size} bytes in an archive of {len(data)}")
            shape, dtype = _member_header(archive, info, what, index)
            if dtype.hasobject:
                raise InvalidValueError(f"{what}: tensor {index} holds Python objects; only numeric and string arrays are read")
            if dtype != leaf_type.dtype.as_numpy_dtype and not (leaf_type.dtype.name == "string" and dtype.kind in "SU"):
                raise InvalidValueError(f"{what}: tensor {index} has dtype {dtype}, expected {leaf_type.dtype.name} ({leaf_type})")
            if not leaf_type.tensor_shape.is_compatible_with(shape):
                raise InvalidValueError(f"{what}: tensor {index} has shape {list(shape)}, expected {leaf_type}")
            if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
                raise InvalidValueError(f"{what}: tensor {index} claims shape {list(shape)}, more data than its {info.file_size} bytes")
        leaves = []
        for index, (info, leaf_type) in enumerate(zip(infos, expected)):
            with archive.open(info) as member:
                try:
                    leaf = np.lib.format.read_array(member, allow_pickle=False, max_header_size=_MAX_NPY_HEADER_BYTES)
                except Exception as error:  # noqa: BLE001 - truncated data, a bad CRC
                    raise InvalidValueError(f"{what}: tensor {index} cannot be read ({type(error).__name__}: {error})") from None
            if require_finite and leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
                raise InvalidValueError(f"{what}: tensor {index} ({leaf_type}) has non-finite values (NaN or inf)")
            leaves.append(leaf)
    return structure.unflatten_value(value_type, [leaf[()] if leaf.ndim == 0 else leaf for leaf in leaves])


def dumps(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True).encode()
