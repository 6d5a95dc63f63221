"""Opening a step of a serverless run: prepare's broadcast and carry written, the round item put.

Both the notebook's driver (the first round) and the aggregation handler (every later step)
open rounds, through `open_round` here.

Example::

    open_round(store, form, state, run_id, protocol.step_label(1), template)
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from absl import logging

from fedsim.aws import protocol
from fedsim.aws.store import ObjectExistsError, Store, TransientStoreError
from fedsim.core import phase_runner, structure
from fedsim.core.canonical_form import CanonicalForm
from fedsim.core.structure import flatten_metrics

__all__ = ["open_round", "result_metrics", "section_of", "step_outcome", "write_closed_marker"]


def open_round(store: Store, form: CanonicalForm, state: Any, run_id: str, step: str, template: dict,
               resume: bool = False) -> None:
    """Runs prepare on `state`, uploads the broadcast and carry, and opens step `step`.

    Args:
      store: the stack's S3 and DynamoDB.
      form: the step's canonical form (training's, or the evaluation's).
      state: the server state the step starts from.
      run_id: the run.
      step: the step label (`protocol.step_label`): "3" or "3.eval".
      template: `silos`, `quorum` and `manifest_key` of the run's rounds (and `mode`:
        "asynchronous" for an asynchronous run's steps).
      resume: a handler taking over a dead one's claim: what was already written stays (objects
        and the round item are written once) instead of being an error.

    Raises:
      RuntimeError: the step is already open and `resume` is false (a step is never reopened).
      fedsim.aws.store.TransientStoreError: AWS kept failing; nothing written is lost, retry.
    """
    prefix = protocol.round_prefix(run_id, step)
    if resume and store.get_item(protocol.round_item_key(run_id, step)) is not None:
        return
    broadcast, carry = phase_runner.prepare(form.prepare, state)
    for name, value, value_type in (("broadcast", broadcast, form.broadcast_type), ("carry", carry, form.carry_type)):
        if not (resume and store.exists(f"{prefix}/{name}.npz")):
            store.put_new(f"{prefix}/{name}.npz", protocol.encode_value(value, value_type))
    item = dict(protocol.round_item_key(run_id, step))
    item.update({
        "status": "open",
        "run_id": run_id,
        "round": protocol.parse_step(step)[0],
        "silos": list(template["silos"]),
        "quorum": int(template["quorum"]),
        "manifest_key": template["manifest_key"],
        "opened_at": time.time(),
    })
    if template.get("mode"):  # "asynchronous": the step keeps taking (stale) updates after its version
        item["mode"] = template["mode"]
    if not store.put_item_if_absent(item):
        raise RuntimeError(f"step {step} of run {run_id} is already open; it is never reopened")


def section_of(manifest: dict, step: str) -> dict:
    """The part of the manifest a step runs: the training phases, or the evaluation's."""
    _, is_evaluation = protocol.parse_step(step)
    return manifest["evaluation"] if is_evaluation else manifest


def write_closed_marker(store: Store, run_id: str, step: str, status: str) -> None:
    """Writes the step's closed marker, which silos may read: a late silo skips the work (in an
    asynchronous run, the marker after the last version ends the silos' loop). Best effort:
    without it a late silo only works for nothing.

    Args:
      store: the stack's S3 and DynamoDB.
      run_id: the run.
      step: the step label.
      status: "done" or "failed".
    """
    try:
        store.put_new(protocol.closed_key(run_id, step), json.dumps({"status": status}).encode())
    except (TransientStoreError, ObjectExistsError) as error:
        logging.warning("round %s of run %s: the closed marker was not written (%s)", step, run_id, error)


def result_metrics(result: Any, form: CanonicalForm, prefix: str) -> dict:
    """A step's scalar metrics from its update's result, flattened as `run_training_process`
    names them (`training/...`, `evaluation/...`); non-finite values become None (JSON has no NaN).

    Args:
      result: the update phase's result (next state first, then metrics).
      form: the step's canonical form.
      prefix: "training" or "evaluation".

    Returns:
      `{name: float or None}`.
    """
    mapping = structure.to_mapping(result, form.result_type)
    metrics = mapping.get("metrics", {}) if isinstance(mapping, dict) else (mapping[1] if len(mapping) > 1 else {})
    flat = flatten_metrics(metrics, prefix + "/") if isinstance(metrics, dict) else {}
    return {name: (value if math.isfinite(value) else None) for name, value in flat.items()}


def step_outcome(store: Store, form: CanonicalForm, result: Any, result_key: str, step: str, **fields: Any) -> dict:
    """A done step's outcome, as its round item records it (one shape for synchronous rounds and
    asynchronous versions; `lineage` reads it): where its result is (S3 version id, sha256), the
    sha256 of the state it holds, and `fields` (metrics, contributors, what comes next...).

    Args:
      store: the stack's S3 and DynamoDB.
      form: the step's canonical form.
      result: the update phase's result (written at `result_key`).
      result_key: its S3 key.
      step: the step label.
      **fields: the rest of the outcome: `evaluate`, `continue`, `stop_reason`, `metrics`,
        `aggregated`, `rejected`, `timings`, ...

    Returns:
      The outcome document (JSON-able).
    """
    round_num = protocol.parse_step(step)[0]
    stored = store.version_of(result_key)
    return {
        "round": round_num,
        "step": step,
        "next_round": round_num + 1,
        "eval_step": protocol.step_label(round_num, evaluation=True),
        "result_key": result_key,
        "result_version": stored["version_id"],
        "result_sha256": stored["sha256"],
        "state_sha256": protocol.sha256(protocol.encode_value(form.next_state(result), form.state_type)),
        **fields,
    }
