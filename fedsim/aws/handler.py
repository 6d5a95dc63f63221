"""The aggregation handler: a Lambda (`handler(event, context)`) fed by the results table's stream.

For each new silo result it
1. checks the result belongs to an open round and to one of its silos (late or foreign: ignored),
2. verifies the uploaded object (size limit, SHA-256, dtypes and shapes of the work phase's
   output type, finite values) and marks the result `valid` or `rejected` with the reason (a
   silo that refused the round's computation is rejected with the silo's reason),
3. when the round's quorum of valid results is in, claims the round with a conditional write
   (so a record delivered twice aggregates once), runs zero/accumulate/report and update, writes
   the result under a new key, prepares the next round if there is one, and answers the round's
   task token with `SendTaskSuccess`; as soon as the quorum can no longer be met,
   `SendTaskFailure` names the rejected results.

Example (what the local stack does with each batch of stream records)::

    AggregationHandler(config).handle({"Records": records})
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from typing import Any, Optional

from absl import logging

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.aws.store import Store, unmarshal_image
from fedsim.core import phase_runner, structure
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm
from fedsim.core.structure import flatten_metrics

__all__ = ["AggregationHandler", "handler", "NO_METRIC"]

NO_METRIC = 1e308  # what the state machine's Choice compares when no stop metric is set
VALIDATED_CACHE_BYTES = 512 * 2**20


class AggregationHandler:
    def __init__(self, config: StackConfig, store: Optional[Store] = None):
        self.config = config
        self.store = store or Store(config)
        self.sfn = config.client("stepfunctions")
        self._manifests: dict = {}
        # Results validated by this process, kept (up to a byte budget) so that aggregating them
        # does not download and decode them a second time.
        self._validated: collections.OrderedDict = collections.OrderedDict()
        self._validated_bytes = 0

    def manifest(self, key: str) -> dict:
        if key not in self._manifests:
            self._manifests[key] = self.store.get_json(key)
        return self._manifests[key]

    def _remember(self, key: tuple, value: Any, size: int) -> None:
        self._validated[key] = (value, size)
        self._validated_bytes += size
        while self._validated_bytes > VALIDATED_CACHE_BYTES and self._validated:
            _, (_, evicted) = self._validated.popitem(last=False)
            self._validated_bytes -= evicted

    def handle(self, event: dict) -> list:
        """Processes every INSERT of a silo result in `event["Records"]`; returns what happened to each round.

        Results are validated one by one; each round they belong to is then checked for its
        quorum once per batch.
        """
        rounds: dict = {}
        for record in event.get("Records", []):
            if record.get("eventName") != "INSERT":
                continue
            item = unmarshal_image(record["dynamodb"]["NewImage"])
            if item["pk"].startswith("round#"):
                continue
            round_item = self.validate_result(item)
            if round_item is not None:
                rounds[item["round_key"]] = round_item
        outcomes = []
        for round_key, round_item in rounds.items():
            run_id, round_text = round_key.rsplit("#", 1)
            outcomes.append(self._maybe_close(run_id, int(round_text), round_item))
        return outcomes

    # One silo result ---------------------------------------------------------------------------

    def validate_result(self, item: dict) -> Optional[dict]:
        """Marks the result valid, rejected (with the reason) or late; returns its open round, if any."""
        run_id, round_text = item["round_key"].rsplit("#", 1)
        round_num = int(round_text)
        round_item = self.store.get_item(protocol.round_item_key(run_id, round_num))
        silo_key = {"pk": item["pk"], "sk": item["sk"]}
        if round_item is None:
            logging.warning("result of %s for unknown round %s ignored", item["pk"], item["round_key"])
            return None
        if round_item["status"] != "open":
            self.store.transition(silo_key, "status", None, "late")
            logging.info("late result of %s for round %d ignored (round %s)", item["pk"], round_num, round_item["status"])
            return None
        reason = self._check(item, round_item)
        if reason is None:
            self.store.transition(silo_key, "status", None, "valid")
        else:
            self.store.transition(silo_key, "status", None, "rejected", reason=reason)
            logging.warning("round %d: rejected the result of %s: %s", round_num, item["pk"], reason)
        return round_item

    def _check(self, item: dict, round_item: dict) -> Optional[str]:
        silo = item["pk"]
        if silo not in round_item["silos"]:
            return f"{silo} is not a silo of this round"
        if "refused" in item:  # the silo would not run the round's computation; its words, bounded
            return f"the silo refused the round: {str(item['refused'])[:protocol.MAX_REASON_CHARS]}"
        run_id, round_text = item["round_key"].rsplit("#", 1)
        expected_key = protocol.silo_result_key(silo, run_id, int(round_text))
        if item.get("key") != expected_key:
            return f"result key {item.get('key')!r} is not {expected_key!r}"
        manifest = self.manifest(round_item["manifest_key"])
        work = self.store.get_computation(manifest["phases"]["work"])
        try:
            data = self.store.get_checked(item["key"], item.get("sha256"), max_bytes=int(manifest["max_result_bytes"]))
            value = protocol.decode_value(data, work.type_signature.result, f"{silo}'s result", require_finite=True)
            self._remember((item["key"], item["sha256"]), value, len(data))
        except protocol.InvalidValueError as error:
            return str(error)
        except Exception as error:  # a missing object, a network failure: the result cannot be used
            return f"cannot read the result: {type(error).__name__}: {error}"
        return None

    # Closing a round -----------------------------------------------------------------------------

    def _maybe_close(self, run_id: str, round_num: int, round_item: dict) -> str:
        results = self.store.round_results(run_id, round_num)
        by_silo = {r["pk"]: r for r in results if r["pk"] in round_item["silos"]}
        valid = [s for s in round_item["silos"] if by_silo.get(s, {}).get("status") == "valid"]
        rejected = {s: r.get("reason", "") for s, r in by_silo.items() if r.get("status") == "rejected"}
        quorum = int(round_item["quorum"])
        round_key = protocol.round_item_key(run_id, round_num)
        token = next((r["task_token"] for r in results if r.get("task_token")), None)
        if len(valid) >= quorum:
            if not self.store.transition(round_key, "status", "open", "aggregating"):
                return "already claimed"
            try:
                outcome = self._aggregate(run_id, round_num, round_item, [by_silo[s] for s in valid], rejected)
            except Exception as error:
                cause = f"round {round_num}: aggregation failed: {type(error).__name__}: {error}"
                self.store.transition(round_key, "status", "aggregating", "failed", cause=cause)
                self._fail(token, cause)
                raise
            self.store.transition(round_key, "status", "aggregating", "done", outcome=json.dumps(outcome))
            self.sfn.send_task_success(taskToken=token, output=json.dumps(outcome))
            return "aggregated"
        answered = len(valid) + len(rejected)
        if len(valid) + len(round_item["silos"]) - answered < quorum:  # the quorum can no longer be met
            pending = [s for s in round_item["silos"] if s not in valid and s not in rejected]
            cause = (
                f"round {round_num}: {len(valid)} valid result(s), quorum {quorum}; rejected: "
                + "; ".join(f"{silo}: {reason}" for silo, reason in sorted(rejected.items()))
                + (f"; not waiting for {', '.join(pending)}" if pending else "")
            )
            if self.store.transition(round_key, "status", "open", "failed", cause=cause):
                self._fail(token, cause)
            return "failed"
        return "waiting"

    def _fail(self, token: Optional[str], cause: str) -> None:
        if token:
            self.sfn.send_task_failure(taskToken=token, error="RoundFailed", cause=cause[:32000])

    def form(self, manifest: dict) -> CanonicalForm:
        """The run's phases as a checked canonical form (they must fit together and iterate)."""
        phases = {name: self.store.get_computation(ref) for name, ref in manifest["phases"].items()}
        signature = ft.type_from_json(manifest["types"]["signature"], "the manifest's signature")
        return CanonicalForm.from_phases(signature, phases)

    def _aggregate(self, run_id: str, round_num: int, round_item: dict, results: list, rejected: dict) -> dict:
        claimed_at = time.time()
        manifest = self.manifest(round_item["manifest_key"])
        form = self.form(manifest)
        aggregation = phase_runner.Aggregation.of(form)
        for result in results:
            cached = self._validated.pop((result["key"], result["sha256"]), None)
            if cached is not None:
                value, size = cached
                self._validated_bytes -= size
            else:  # validated by another invocation: fetch and check it again
                data = self.store.get_checked(result["key"], result["sha256"])
                value = protocol.decode_value(data, form.client_output_type, f"{result['pk']}'s result", require_finite=True)
            aggregation.add(value)
        aggregates = aggregation.result()
        aggregated_at = time.time()
        prefix = protocol.round_prefix(run_id, round_num)
        carry = protocol.decode_value(self.store.get_checked(f"{prefix}/carry.npz"), form.carry_type, "the round's carry")
        result = phase_runner.update(form.update, carry, aggregates)
        result_key = f"{prefix}/result.npz"
        self.store.put_new(result_key, protocol.encode_value(result, form.result_type))
        updated_at = time.time()

        metric = NO_METRIC
        if manifest.get("stop_metric"):
            flat = flatten_metrics(structure.to_mapping(result, form.result_type))
            if manifest["stop_metric"] in flat and math.isfinite(flat[manifest["stop_metric"]]):
                metric = float(flat[manifest["stop_metric"]])
        outcome = {
            "round": round_num,
            "next_round": round_num + 1,
            "metric": metric,
            "result_key": result_key,
            "aggregated": [r["pk"] for r in results],
            "rejected": rejected,
            "timings": {"claimed_at": claimed_at, "aggregate_seconds": aggregated_at - claimed_at,
                        "update_seconds": updated_at - aggregated_at},
        }
        if round_num < int(manifest["total_rounds"]) and metric > float(manifest["stop_metric_below"]):
            prepare_round(self.store, form, form.next_state(result), run_id, round_num + 1, round_item)
        outcome["timings"]["prepare_next_seconds"] = time.time() - updated_at
        return outcome


def prepare_round(store: Store, form: CanonicalForm, state: Any, run_id: str, round_num: int, template: dict) -> None:
    """Runs prepare on `state`, uploads the broadcast and carry, and opens round `round_num`."""
    broadcast, carry = phase_runner.prepare(form.prepare, state)
    prefix = protocol.round_prefix(run_id, round_num)
    store.put_new(f"{prefix}/broadcast.npz", protocol.encode_value(broadcast, form.broadcast_type))
    store.put_new(f"{prefix}/carry.npz", protocol.encode_value(carry, form.carry_type))
    item = dict(protocol.round_item_key(run_id, round_num))
    item.update({
        "status": "open",
        "run_id": run_id,
        "round": round_num,
        "silos": list(template["silos"]),
        "quorum": int(template["quorum"]),
        "manifest_key": template["manifest_key"],
        "opened_at": time.time(),
    })
    if not store.put_item_if_absent(item):
        raise RuntimeError(f"round {round_num} of run {run_id} is already open; it is never reopened")


def _config_from_environment() -> StackConfig:
    return StackConfig(
        region=os.environ.get("AWS_REGION", "us-east-1"),
        bucket=os.environ["FEDSIM_BUCKET"],
        table=os.environ["FEDSIM_TABLE"],
        stream_arn="",
        topic_arn="",
        state_machine_arn="",
        silo_queues={},
        endpoint_url=os.environ.get("FEDSIM_ENDPOINT_URL"),
    )


_HANDLER: Optional[AggregationHandler] = None


def handler(event: dict, context: Any) -> dict:
    """The Lambda entry point (DynamoDB stream event source)."""
    del context
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = AggregationHandler(_config_from_environment())
    return {"outcomes": _HANDLER.handle(event)}
