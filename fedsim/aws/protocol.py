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
    pk="async#<run>",  sk="run"               an asynchronous run: its published version, its lease, the valid
                                              updates not yet in a version (`fedsim.aws.asynchronous`)
    pk="async#<run>",  sk="v<000000007>"      version 7's plan: the updates it applies (silo, base version,
                                              staleness, weight) and those refused, written once

In an asynchronous run, step r is "training from model version r-1": its broadcast is version
r-1's, its silo results are updates based on version r-1, and its round item's outcome is
version r (the buffer that published it may hold updates from earlier steps too).

Values are `.npz` archives of a value's leaves in the order of its fedsim type (no pickle,
members stored uncompressed); decoding checks every leaf's dtype and shape from its header
against the type before reading data, and (optionally) finiteness.
Message bodies and records carry keys and checksums, never model bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from fedsim.core import structure, value_archive
from fedsim.core import types as ft
from fedsim.core.value_archive import InvalidValueError

__all__ = [
    "ASYNCHRONOUS",
    "InvalidValueError",
    "async_partition",
    "async_run_item_key",
    "version_item_key",
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
    "work_pin",
]


ASYNCHRONOUS = "asynchronous"  # the manifest's and round items' `mode` of an asynchronous run
MAX_REASON_CHARS = 2000  # a silo's refusal reason, as stored and shown


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def work_pin(work_sha256: str, secure_sums: Any = None) -> str:
    """What a silo pins for a step's work: the work computation's SHA-256 when the step has no
    secure sums; with secure sums, the SHA-256 of that hash and the step's secure layout (which
    leaves of the work's output go through secure aggregation, with their bitwidths) together.

    Why: the silo runs only the work phase, and the manifest says which parts of its output are
    uploaded masked. A silo that pinned a computation together with its secure layout refuses a
    manifest that drops or changes the layout, so a server cannot turn a secure sum into a plain
    upload of the silo's update.

    Args:
        work_sha256: the work computation's SHA-256 (hex).
        secure_sums: the manifest's `secure_sums` (per aggregation: None or bitwidths), or None.

    Returns:
        The hex digest to pin (`--accept`).

    Example:
        >>> work_pin("ab" * 32) == "ab" * 32
        True
    """
    if not secure_sums:
        return work_sha256
    layout = json.dumps(secure_sums, separators=(",", ":"))
    return sha256(f"{work_sha256}\nsecure_sums={layout}".encode())


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


def round_prefix(run_id: str, step: str) -> str:
    """The S3 prefix of a step's server objects (broadcast, result, closed marker)."""
    return f"runs/{run_id}/round-{step}"


def closed_key(run_id: str, step: str) -> str:
    """The server's marker that a step is over (done or failed); silos may read it."""
    return f"{round_prefix(run_id, step)}/closed.json"


def silo_result_key(silo_id: str, run_id: str, step: str) -> str:
    """Where a silo uploads its work for a step (under its own prefix)."""
    return f"silos/{silo_id}/{run_id}/round-{step}/work.npz"


def round_item_key(run_id: str, step: str) -> dict:
    return {"pk": f"round#{run_id}", "sk": str(step)}


def silo_item_key(silo_id: str, run_id: str, step: str) -> dict:
    return {"pk": silo_id, "sk": f"{run_id}#{step}"}


def verdict_partition(run_id: str, step: str) -> str:
    return f"verdict#{run_id}#{step}"


def verdict_item_key(run_id: str, step: str, silo_id: str) -> dict:
    return {"pk": verdict_partition(run_id, step), "sk": silo_id}


def async_partition(run_id: str) -> str:
    """The partition of an asynchronous run's records (its run item and version plans)."""
    return f"async#{run_id}"


def async_run_item_key(run_id: str) -> dict:
    """The key of an asynchronous run's item (version, lease, updates waiting for a version)."""
    return {"pk": async_partition(run_id), "sk": "run"}


def version_item_key(run_id: str, version: int) -> dict:
    """The key of version `version`'s plan in an asynchronous run."""
    return {"pk": async_partition(run_id), "sk": f"v{int(version):09d}"}


def round_key(run_id: str, step: str) -> str:
    """The GSI partition of a round's silo results."""
    return f"{run_id}#{step}"


def _leaf_specs(value_type: ft.Type) -> list:
    specs = []
    for leaf_type in ft.flatten_type(value_type):
        dtype = np.bytes_ if leaf_type.dtype.name == "string" else leaf_type.dtype.as_numpy_dtype
        dims = tuple(leaf_type.tensor_shape.as_list()) if leaf_type.tensor_shape.rank is not None else None
        specs.append(value_archive.LeafSpec(dtype, dims, label=str(leaf_type)))
    return specs


def encode_value(value: Any, value_type: ft.Type) -> bytes:
    """`value` (checked against `value_type`) as fedsim's value archive (`fedsim.core.value_archive`)."""
    return value_archive.encode_leaves(
        structure.flatten_value(structure.check_and_normalize(value, value_type, "the value to store"), value_type))


def decode_value(data: bytes, value_type: ft.Type, what: str, require_finite: bool = False) -> Any:
    """The value stored in `data`, checked leaf by leaf against `value_type` before any data is
    read (see `fedsim.core.value_archive.decode_leaves`; raises `InvalidValueError`)."""
    leaves = value_archive.decode_leaves(data, _leaf_specs(value_type), what, require_finite)
    return structure.unflatten_value(value_type, leaves)


def dumps(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True).encode()
