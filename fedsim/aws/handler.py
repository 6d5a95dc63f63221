"""The aggregation handler: a Lambda (`handler(event, context)`) fed by the results table's stream.

For each new or rewritten silo result it
1. checks the result belongs to an open round and to one of its silos (late or foreign: ignored),
2. verifies the uploaded object (size limit, SHA-256, dtypes and shapes of the work phase's
   output type, finite values) and records the server's *verdict* (`valid` or `rejected` with
   the reason) in an item only the server writes; the first verdict stands, and what a silo
   writes in its own record (a status, a token) is never taken as true,
3. when the round's quorum of valid verdicts is in (read strongly consistent), claims the round
   with a lease (a conditional write; a later invocation takes over an expired lease, so a
   handler that died does not lose the round), runs zero/accumulate/report and update, writes
   the result once, prepares the next round, records the outcome and answers the round's task
   token; a round found done but unanswered is answered from its stored outcome. As soon as
   the quorum can no longer be met, `SendTaskFailure` names the rejected results.

Example (what the local stack does with each batch of stream records)::

    AggregationHandler(config).handle({"Records": records})
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
import math
import os
import time
import uuid
from typing import Any, Optional

from absl import logging

from fedsim.aws import protocol, stopping
from fedsim.aws.config import StackConfig
from fedsim.aws.store import ObjectAbsentError, ObjectExistsError, Store, TransientStoreError, unmarshal_image
from fedsim.core import phase_runner, structure
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm
from fedsim.core.structure import flatten_metrics

__all__ = ["AggregationHandler", "handler"]

VALIDATED_CACHE_BYTES = 512 * 2**20
LEASE_SECONDS = 30.0  # renewed every 10 s while the holder works: a dead holder's claim is free within 30 s
TOKEN_WAIT_SECONDS = 20.0  # how long a round message may take to reach the server's queue
VALIDATION_THREADS = 8  # results of one stream batch judged at once


class AggregationHandler:
    def __init__(self, config: StackConfig, store: Optional[Store] = None, lease_seconds: float = LEASE_SECONDS):
        """`lease_seconds`: how long a claim on a round holds before another invocation may take
        it over (a handler that died mid-aggregation leaves its claim behind)."""
        self.config = config
        self.lease_seconds = lease_seconds
        self.store = store or Store(config)
        self.sfn = config.client("stepfunctions")
        self.sqs = config.client("sqs")
        self._manifests: dict = {}
        # Results validated by this process, kept (up to a byte budget) so that aggregating them
        # does not download and decode them a second time.
        self._validated: collections.OrderedDict = collections.OrderedDict()
        self._validated_bytes = 0
        self._validated_lock = threading.Lock()

    def manifest(self, key: str) -> dict:
        if key not in self._manifests:
            self._manifests[key] = self.store.get_json(key)
        return self._manifests[key]

    def _remember(self, key: tuple, value: Any, size: int) -> None:
        with self._validated_lock:
            self._validated[key] = (value, size)
            self._validated_bytes += size
            while self._validated_bytes > VALIDATED_CACHE_BYTES and self._validated:
                _, (_, evicted) = self._validated.popitem(last=False)
                self._validated_bytes -= evicted

    def _recall(self, key: tuple) -> Optional[Any]:
        """A result this process validated (and forgets it: it is aggregated once)."""
        with self._validated_lock:
            cached = self._validated.pop(key, None)
            if cached is None:
                return None
            self._validated_bytes -= cached[1]
            return cached

    def handle(self, event: dict) -> list:
        """Processes the silo results in `event["Records"]` (new or rewritten records alike; a
        silo's record is input, never trusted); returns what happened to each round.

        Results are judged side by side; each round they belong to is then checked once per batch.
        """
        items = []
        for record in event.get("Records", []):
            if record.get("eventName") not in ("INSERT", "MODIFY") or "NewImage" not in record.get("dynamodb", {}):
                continue
            item = unmarshal_image(record["dynamodb"]["NewImage"])
            if not isinstance(item.get("round_key"), str) or "#" not in item["round_key"] or str(item.get("pk", "")).startswith(("round#", "verdict#")):
                continue
            items.append(item)
        # Judging a result is mostly waiting on S3 and DynamoDB: the batch's results are judged
        # side by side (each verdict is a conditional write, so the order does not matter).
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(VALIDATION_THREADS, len(items)))) as pool:
            judged = list(pool.map(self.validate_result, items))
        rounds: dict = {}
        for item, round_item in zip(items, judged):
            if round_item is not None:
                rounds[item["round_key"]] = round_item
        outcomes = []
        for round_key, round_item in rounds.items():
            run_id, step = round_key.rsplit("#", 1)
            outcomes.append(self._maybe_close(run_id, step, round_item))
        return outcomes

    # One silo result ---------------------------------------------------------------------------

    def validate_result(self, item: dict) -> Optional[dict]:
        """Writes the server's verdict on a silo's result (once: the first verdict stands);
        returns the round if it may still need closing or answering."""
        run_id, round_num = item["round_key"].rsplit("#", 1)  # round_num: the step label ("3", or "3.eval")
        try:
            protocol.parse_step(round_num)
        except ValueError:
            logging.warning("result of %s with a malformed round key %r ignored", item["pk"], item["round_key"][:100])
            return None
        if item["sk"] != item["round_key"]:
            logging.warning("result of %s filed under %r for round %r ignored", item["pk"], item["sk"][:100], item["round_key"][:100])
            return None
        round_item = self.store.get_item(protocol.round_item_key(run_id, round_num))
        if round_item is None:
            logging.warning("result of %s for unknown round %s ignored", item["pk"], item["round_key"])
            return None
        silo = item["pk"]
        judged = self.store.get_item(protocol.verdict_item_key(run_id, round_num, silo)) is not None
        if round_item["status"] != "open":
            if not judged:
                self._verdict(run_id, round_num, silo, "late")
                logging.info("late result of %s for round %s ignored (round %s)", silo, round_num, round_item["status"])
            # a retried delivery: an expired claim may need taking over, a done round answering
            return round_item if round_item["status"] in ("aggregating", "done") else None
        if judged:
            return round_item  # a rewritten record does not change the verdict
        reason = self._check(item, round_item)
        if reason is None:
            # what the silo said of its work is kept with the verdict, as the silo said it when judged
            self._verdict(run_id, round_num, silo, "valid", key=item["key"], sha256=item["sha256"],
                          size=_silo_number(item.get("size")), silo_work_seconds=_silo_number(item.get("work_seconds")))
        else:
            self._verdict(run_id, round_num, silo, "rejected", reason=reason)
            logging.warning("round %s: rejected the result of %s: %s", round_num, silo, reason)
        return round_item

    def _verdict(self, run_id: str, round_num: int, silo: str, status: str, **values: Any) -> dict:
        """Records the server's verdict unless one exists; returns the verdict that stands."""
        verdict = dict(protocol.verdict_item_key(run_id, round_num, silo), status=status, judged_at=time.time(), **values)
        if self.store.put_item_if_absent(verdict):
            return verdict
        standing = self.store.get_item(protocol.verdict_item_key(run_id, round_num, silo))
        if standing is None:
            raise RuntimeError(f"the verdict on {silo}'s result in round {round_num} could be neither written nor read")
        return standing

    def _check(self, item: dict, round_item: dict) -> Optional[str]:
        silo = item["pk"]
        if silo not in round_item["silos"]:
            return f"{silo} is not a silo of this round"
        if "refused" in item:  # the silo would not (or could not) run the round; its words, bounded
            return f"the silo refused the round: {str(item['refused'])[:protocol.MAX_REASON_CHARS]}"
        run_id, step = item["round_key"].rsplit("#", 1)
        expected_key = protocol.silo_result_key(silo, run_id, step)
        if item.get("key") != expected_key:
            return f"result key {str(item.get('key'))[:200]!r} is not {expected_key!r}"
        if not isinstance(item.get("sha256"), str) or len(item["sha256"]) != 64:
            return "the result's record has no valid sha256"
        section = _section(self.manifest(round_item["manifest_key"]), round_item)
        work = self.store.get_computation(section["phases"]["work"])
        # Only a definite answer about the object is a verdict: absent, too large, a wrong checksum,
        # type or value. Throttling, 5xx, a cut body or a lost connection propagate (after the
        # store's retries): the batch fails and is redelivered, and the result is judged then.
        try:
            data = self.store.get_checked(item["key"], item["sha256"], max_bytes=int(self.manifest(round_item["manifest_key"])["max_result_bytes"]))
            value = protocol.decode_value(data, work.type_signature.result, f"{silo}'s result", require_finite=True)
            self._remember((item["key"], item["sha256"]), value, len(data))
        except protocol.InvalidValueError as error:
            return str(error)
        except ObjectAbsentError:
            return f"the result object {item['key'][:200]!r} does not exist"
        return None

    # Closing a round -----------------------------------------------------------------------------

    def _maybe_close(self, run_id: str, round_num: str, round_item: dict) -> str:
        round_key = protocol.round_item_key(run_id, round_num)
        if round_item["status"] == "done":  # aggregated, maybe not answered: answer from the stored outcome
            if not round_item.get("answered"):
                self._answer(round_key, self._token(run_id, round_num), round_item["outcome"])
                return "answered"
            return "already answered"
        verdicts = self.store.round_verdicts(run_id, round_num)
        valid = [s for s in round_item["silos"] if verdicts.get(s, {}).get("status") == "valid"]
        rejected = {s: v.get("reason", "") for s, v in verdicts.items() if v.get("status") == "rejected" and s in round_item["silos"]}
        quorum = int(round_item["quorum"])
        if len(valid) >= quorum:
            owner = uuid.uuid4().hex
            if not self._claim_or_wait(round_key, owner):
                return self._maybe_close(run_id, round_num, self.store.get_item(round_key))  # done meanwhile
            try:
                with _Lease(self.store, round_key, owner, self.lease_seconds):
                    outcome = self._aggregate(run_id, round_num, round_item, [verdicts[s] for s in valid], rejected)
            except TransientStoreError:
                raise  # AWS had a bad minute: the claim's lease runs out and a redelivery takes over
            except Exception as error:
                cause = f"round {round_num}: aggregation failed: {type(error).__name__}: {error}"
                if self.store.transition(round_key, "status", "aggregating", "failed", cause=cause):
                    self._close(run_id, round_num, "failed")
                    self._fail(self._token(run_id, round_num), cause)
                raise
            text = json.dumps(outcome)
            if not self.store.transition(round_key, "status", "aggregating", "done", outcome=text):
                raise RuntimeError(f"round {round_num}: the claim was lost before the outcome was recorded "
                                   f"(status is now {self.store.get_item(round_key)['status']})")
            self._close(run_id, round_num, "done")
            self._answer(round_key, self._token(run_id, round_num), text)
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
                self._close(run_id, round_num, "failed")
                self._fail(self._token(run_id, round_num), cause)
            return "failed"
        return "waiting"

    def _claim_or_wait(self, round_key: dict, owner: str) -> bool:
        """Claims the round; if another invocation holds a live lease, waits while it is renewed:
        True once claimed (also when the holder died and its lease ran out), False when the
        round was finished meanwhile. A holder that neither finishes nor lets go within
        `2 * lease_seconds` is reported by raising, so the batch is redelivered."""
        deadline = time.monotonic() + 2 * self.lease_seconds + 1.0
        while True:
            if self.store.claim(round_key, time.time(), self.lease_seconds, owner=owner):
                return True
            item = self.store.get_item(round_key) or {}
            if item.get("status") != "aggregating":
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"round {round_key['pk']}: claimed by {item.get('owner')} whose lease keeps being "
                                   f"renewed; this batch will be redelivered")
            time.sleep(min(1.0, self.lease_seconds / 4))

    def _close(self, run_id: str, round_num: str, status: str) -> None:
        """Writes the round's closed marker, which silos may read: a late silo skips the work.
        Best effort: without it a late silo only works for nothing."""
        try:
            self.store.put_new(protocol.closed_key(run_id, round_num), json.dumps({"status": status}).encode())
        except (TransientStoreError, ObjectExistsError) as error:
            logging.warning("round %s of run %s: the closed marker was not written (%s)", round_num, run_id, error)

    def _token(self, run_id: str, round_num: int) -> Optional[str]:
        """The round's task token, from the round item the server wrote (never from a silo's record).

        The state machine's round message reaches the server's own queue as well as the silos';
        tokens found there are stored in their round items (once), so any invocation can answer.
        """
        round_key = protocol.round_item_key(run_id, round_num)
        deadline = time.monotonic() + TOKEN_WAIT_SECONDS
        while True:
            item = self.store.get_item(round_key) or {}
            if isinstance(item.get("task_token"), str):
                return item["task_token"]
            if not self.config.server_queue_url or not self._collect_tokens() and time.monotonic() > deadline:
                logging.warning("round %s of run %s: no task token from the server's queue", round_num, run_id)
                return None

    def _collect_tokens(self) -> int:
        """Moves the tokens of the round messages in the server's queue into their round items."""
        messages = self.sqs.receive_message(QueueUrl=self.config.server_queue_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            try:
                body = json.loads(message["Body"])
                request = json.loads(body["Message"]) if "Message" in body else body  # the SNS envelope
                run_id, round_num, token = str(request["run_id"]), str(request["round"]), request["task_token"]
                protocol.parse_step(round_num)
                if not isinstance(token, str):
                    raise TypeError("task_token is not a string")
            except (ValueError, KeyError, TypeError) as error:
                logging.warning("server queue: a message that is not a round message was dropped (%s)", error)
            else:
                self.store.transition(protocol.round_item_key(run_id, round_num), "task_token", None, token)
            self.sqs.delete_message(QueueUrl=self.config.server_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def _answer(self, round_key: dict, token: Optional[str], output: str) -> None:
        """Answers the round's task with the stored outcome; marks the round answered."""
        if token is None:
            return  # a later delivery answers from the stored outcome
        try:
            self.sfn.send_task_success(taskToken=token, output=output)
        except (self.sfn.exceptions.TaskTimedOut, self.sfn.exceptions.TaskDoesNotExist):
            pass  # already answered, or past its deadline: nothing more to say
        self.store.transition(round_key, "answered", None, "yes")

    def _fail(self, token: Optional[str], cause: str) -> None:
        if token is not None:
            try:
                self.sfn.send_task_failure(taskToken=token, error="RoundFailed", cause=cause[:32000])
            except (self.sfn.exceptions.TaskTimedOut, self.sfn.exceptions.TaskDoesNotExist):
                pass

    def form(self, manifest: dict) -> CanonicalForm:
        """The run's phases as a checked canonical form (they must fit together and iterate)."""
        phases = {name: self.store.get_computation(ref) for name, ref in manifest["phases"].items()}
        signature = ft.type_from_json(manifest["types"]["signature"], "the manifest's signature")
        return CanonicalForm.from_phases(signature, phases)

    def _aggregate(self, run_id: str, step: str, round_item: dict, results: list, rejected: dict) -> dict:
        """Aggregates a step's valid results, writes its result once, and decides what comes next:
        round r's evaluation step, round r+1, or the end of the run (and why)."""
        claimed_at = time.time()
        manifest = self.manifest(round_item["manifest_key"])
        round_num, is_evaluation = protocol.parse_step(step)
        section = _section(manifest, round_item)
        form = self.form(section)
        aggregation = phase_runner.Aggregation.of(form)
        for result in results:
            cached = self._recall((result["key"], result["sha256"]))
            if cached is not None:
                value, _ = cached
            else:  # validated by another invocation: fetch and check it again
                data = self.store.get_checked(result["key"], result["sha256"])
                value = protocol.decode_value(data, form.client_output_type, f"{result['sk']}'s result", require_finite=True)
            aggregation.add(value)
        aggregates = aggregation.result()
        aggregated_at = time.time()
        prefix = protocol.round_prefix(run_id, step)
        carry = protocol.decode_value(self.store.get_checked(f"{prefix}/carry.npz"), form.carry_type, "the round's carry")
        result_key = f"{prefix}/result.npz"
        if self.store.exists(result_key):  # taking over from a handler that died after writing it: written once
            result = protocol.decode_value(self.store.get_checked(result_key), form.result_type, f"round {step}'s result")
        else:
            result = phase_runner.update(form.update, carry, aggregates)
            self.store.put_new(result_key, protocol.encode_value(result, form.result_type))
        result_version = self.store.version_of(result_key)
        updated_at = time.time()

        metrics = _round_metrics(result, form, "evaluation" if is_evaluation else "training")
        evaluate = (not is_evaluation and manifest.get("evaluation") is not None
                    and (round_num % int(manifest["evaluation"]["every"]) == 0 or round_num == int(manifest["total_rounds"])))
        stop_reason = None
        if not evaluate:  # the round is complete: judge the stopping rules on every round's metrics so far
            rules = [stopping.rule_from_json(r) for r in manifest.get("stop_rules", [])]
            if rules:  # the history is read back from earlier rounds' items only when a rule needs it
                current = {**(self._training_metrics(run_id, round_num) if is_evaluation else {}), **metrics}
                stop_reason = stopping.first_stop_reason(rules, self._history(run_id, round_num, current))
            if stop_reason is None and round_num >= int(manifest["total_rounds"]):
                stop_reason = f"all {manifest['total_rounds']} rounds done"
        outcome = {
            "round": round_num,
            "step": step,
            "next_round": round_num + 1,
            "evaluate": evaluate,
            "eval_step": protocol.step_label(round_num, evaluation=True),
            "continue": not evaluate and stop_reason is None,
            "stop_reason": stop_reason,
            "metrics": metrics,
            "result_key": result_key,
            "result_version": result_version["version_id"],
            "result_sha256": result_version["sha256"],
            "state_sha256": protocol.sha256(protocol.encode_value(form.next_state(result), form.state_type)),
            "aggregated": [r["sk"] for r in results],
            "rejected": rejected,
            "timings": {"claimed_at": claimed_at, "aggregate_seconds": aggregated_at - claimed_at,
                        "update_seconds": updated_at - aggregated_at},
        }
        template = {key: round_item[key] for key in ("silos", "quorum", "manifest_key")}
        if evaluate:
            evaluation = manifest["evaluation"]
            evaluation_form = self.form(evaluation)
            bridge = self.store.get_computation(evaluation["bridge"])
            previous = self._evaluation_state(run_id, round_num, evaluation, evaluation_form)
            evaluation_state = bridge.call_value((form.next_state(result), previous))
            prepare_round(self.store, evaluation_form, evaluation_state, run_id, outcome["eval_step"], template, resume=True)
        elif outcome["continue"]:
            state = form.next_state(result) if not is_evaluation else self._training_state(run_id, round_num, manifest)
            prepare_round(self.store, self.form(manifest), state, run_id, round_num + 1, template, resume=True)
        outcome["timings"]["prepare_next_seconds"] = time.time() - updated_at
        return outcome

    def _training_state(self, run_id: str, round_num: int, manifest: dict) -> Any:
        """The server state after round `round_num`'s training (from its stored result)."""
        form = self.form(manifest)
        data = self.store.get_checked(f"{protocol.round_prefix(run_id, round_num)}/result.npz")
        return form.next_state(protocol.decode_value(data, form.result_type, f"round {round_num}'s result"))

    def _evaluation_state(self, run_id: str, round_num: int, evaluation: dict, form: CanonicalForm) -> Any:
        """The evaluation process's state before round `round_num`'s evaluation: the last
        evaluation step's new state, or the state the run started with."""
        for earlier in range(round_num - 1, 0, -1):
            key = f"{protocol.round_prefix(run_id, protocol.step_label(earlier, evaluation=True))}/result.npz"
            if self.store.exists(key):
                return form.next_state(protocol.decode_value(self.store.get_checked(key), form.result_type, f"round {earlier}'s evaluation"))
        return protocol.decode_value(self.store.get_checked(evaluation["initial_state_key"]), form.state_type,
                                     "the evaluation's initial state")

    def _training_metrics(self, run_id: str, round_num: int) -> dict:
        item = self.store.get_item(protocol.round_item_key(run_id, round_num)) or {}
        return json.loads(item["outcome"])["metrics"] if item.get("outcome") else {}

    def _history(self, run_id: str, round_num: int, current: dict) -> list:
        """`[(round, metrics), ...]` for rounds 1..round_num, training and evaluation metrics together."""
        history = []
        for earlier in range(1, round_num):
            metrics = self._training_metrics(run_id, earlier)
            item = self.store.get_item(protocol.round_item_key(run_id, protocol.step_label(earlier, evaluation=True))) or {}
            if item.get("outcome"):
                metrics.update(json.loads(item["outcome"])["metrics"])
            history.append((earlier, metrics))
        history.append((round_num, current))
        return history


class _Lease:
    """Keeps a claim's lease renewed (every third of it) while the work inside runs, so a live
    handler keeps its claim however long it works and a dead one loses it within one lease."""

    def __init__(self, store: Store, round_key: dict, owner: str, lease_seconds: float):
        self.store, self.round_key, self.owner, self.lease_seconds = store, round_key, owner, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="fedsim-lease", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                if not self.store.renew(self.round_key, self.owner, time.time(), self.lease_seconds):
                    logging.warning("round %s: the claim was taken over; the lease is no longer renewed", self.round_key["pk"])
                    return
            except Exception as error:  # noqa: BLE001 - a failed renewal is tried again at the next tick
                logging.warning("round %s: renewing the lease failed (%s)", self.round_key["pk"], error)

    def __enter__(self) -> "_Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _round_metrics(result: Any, form: CanonicalForm, prefix: str) -> dict:
    """A step's scalar metrics, flattened as `run_training_process` names them (`training/...`,
    `evaluation/...`); non-finite values become None (JSON has no NaN)."""
    mapping = structure.to_mapping(result, form.result_type)
    metrics = mapping.get("metrics", {}) if isinstance(mapping, dict) else (mapping[1] if len(mapping) > 1 else {})
    flat = flatten_metrics(metrics, prefix + "/") if isinstance(metrics, dict) else {}
    return {name: (value if math.isfinite(value) else None) for name, value in flat.items()}


def prepare_round(store: Store, form: CanonicalForm, state: Any, run_id: str, round_num: Any, template: dict,
                  resume: bool = False) -> None:
    """Runs prepare on `state`, uploads the broadcast and carry, and opens round `round_num`.

    With `resume` (a handler taking over a dead one's claim), what was already written stays:
    objects and the round item are written once.
    """
    prefix = protocol.round_prefix(run_id, round_num)
    if resume and store.get_item(protocol.round_item_key(run_id, round_num)) is not None:
        return
    broadcast, carry = phase_runner.prepare(form.prepare, state)
    for name, value, value_type in (("broadcast", broadcast, form.broadcast_type), ("carry", carry, form.carry_type)):
        if not (resume and store.exists(f"{prefix}/{name}.npz")):
            store.put_new(f"{prefix}/{name}.npz", protocol.encode_value(value, value_type))
    item = dict(protocol.round_item_key(run_id, round_num))
    item.update({
        "status": "open",
        "run_id": run_id,
        "round": protocol.parse_step(round_num)[0],
        "silos": list(template["silos"]),
        "quorum": int(template["quorum"]),
        "manifest_key": template["manifest_key"],
        "opened_at": time.time(),
    })
    if not store.put_item_if_absent(item):
        raise RuntimeError(f"round {round_num} of run {run_id} is already open; it is never reopened")


def _section(manifest: dict, round_item: dict) -> dict:
    """The part of the manifest a step runs: the training phases, or the evaluation's."""
    _, is_evaluation = protocol.parse_step(round_item["sk"])
    return manifest["evaluation"] if is_evaluation else manifest


def _silo_number(value: Any) -> Optional[float]:
    """A number a silo wrote in its record (a size, its work seconds), or None if it is not one."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


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
        server_queue_url=os.environ.get("FEDSIM_SERVER_QUEUE_URL", ""),
    )


_HANDLER: Optional[AggregationHandler] = None


def handler(event: dict, context: Any) -> dict:
    """The Lambda entry point (DynamoDB stream event source)."""
    del context
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = AggregationHandler(_config_from_environment())
    return {"outcomes": _HANDLER.handle(event)}
