"""Opening a step of a serverless run: prepare's broadcast and carry written, the round item put.

Both the notebook's driver (the first round) and the aggregation handler (every later step)
open rounds, through `open_round` here.

Example::

    open_round(store, form, state, run_id, protocol.step_label(1), template)
"""

from __future__ import annotations

import time
from typing import Any

from fedsim.aws import protocol
from fedsim.aws.store import Store
from fedsim.core import phase_runner
from fedsim.core.canonical_form import CanonicalForm

__all__ = ["open_round", "section_of"]


def open_round(store: Store, form: CanonicalForm, state: Any, run_id: str, step: str, template: dict,
               resume: bool = False) -> None:
    """Runs prepare on `state`, uploads the broadcast and carry, and opens step `step`.

    Args:
      store: the stack's S3 and DynamoDB.
      form: the step's canonical form (training's, or the evaluation's).
      state: the server state the step starts from.
      run_id: the run.
      step: the step label (`protocol.step_label`): "3" or "3.eval".
      template: `silos`, `quorum` and `manifest_key` of the run's rounds.
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
    if not store.put_item_if_absent(item):
        raise RuntimeError(f"step {step} of run {run_id} is already open; it is never reopened")


def section_of(manifest: dict, step: str) -> dict:
    """The part of the manifest a step runs: the training phases, or the evaluation's."""
    _, is_evaluation = protocol.parse_step(step)
    return manifest["evaluation"] if is_evaluation else manifest
