"""Closing a step of a serverless run: quorum, claim, aggregate, update, open what comes next.

`AggregationHandler.handle` is what the results table's stream invokes (through the Lambda
entry point, `fedsim.aws.handler.handler`). For each batch of silo records it

In an asynchronous run (`fedsim.aws.asynchronous`) there is no quorum: the judged updates go
to the run's buffer (`AsyncServer.advance`) instead of step 2.

1. reads each round the batch names once, and has every result judged side by side
   (`verdicts.ResultJudge`: valid, rejected with its reason, or late; the first verdict
   stands); a valid result is folded into its round's running aggregate at once, so closing a
   round costs one `report`, not one download and `accumulate` per silo;
2. when a round's quorum of valid verdicts is in (read strongly consistent), claims the round
   (`lease.claim_or_wait`, kept alive by `lease.Lease`), folds in any valid result another
   process judged, runs report and update, writes the result once, opens the next step
   (`rounds.open_round`), records the outcome and answers the step's task token
   (`task_tokens.TaskTokens`); a round found done but unanswered is answered from its stored
   outcome. As soon as the quorum can no longer be met, the step's task fails naming the
   rejected results.

Transient AWS failures propagate (after the store's retries): the batch is redelivered, and
nothing already written is lost, because every write is idempotent.

Example (what the local stack does with each batch of stream records)::

    AggregationHandler(config).handle({"Records": records})
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import uuid
from typing import Any, Optional

import attrs
import numpy as np
from absl import logging

from fedsim.aws import lineage, protocol, rounds, secure_round, stopping
from fedsim.aws.asynchronous import ASYNCHRONOUS, AsyncServer
from fedsim.aws.config import StackConfig
from fedsim.aws.lease import LEASE_SECONDS, Lease, claim_or_wait
from fedsim.aws.store import Store, TransientStoreError, unmarshal_image
from fedsim.aws.task_tokens import TaskTokens
from fedsim.aws.verdicts import ResultJudge
from fedsim.core import phase_runner, structure
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm
from fedsim.core.secagg.messages import ProtocolError

__all__ = ["AggregationHandler"]

VALIDATION_THREADS = 8  # results of one stream batch judged at once


@attrs.define
class _RunningAggregate:
    """A step's valid results folded so far by this process, and whose they are."""

    aggregation: phase_runner.Aggregation
    silos: set = attrs.field(factory=set)
    lock: threading.Lock = attrs.field(factory=threading.Lock)


class AggregationHandler:
    """The server's side of a serverless run (see the module docstring).

    Args:
      config: the stack (bucket, table, queues, endpoint).
      store: its S3 and DynamoDB (default: one made from `config`).
      lease_seconds: how long a claim on a round holds unless renewed (a handler that died
        mid-aggregation loses its claim within this).
    """

    def __init__(self, config: StackConfig, store: Optional[Store] = None, lease_seconds: float = LEASE_SECONDS):
        self.config = config
        self.lease_seconds = lease_seconds
        self.store = store or Store(config)
        self.tokens = TaskTokens(config, self.store)
        self.judge = ResultJudge(self.store, self.manifest, on_valid=self._fold, upload_type=self._upload_type)
        self._manifests: dict = {}
        self._forms: dict = {}
        self._running: dict = {}
        self._running_lock = threading.Lock()
        self.asynchronous = AsyncServer(self.store, self.tokens, self.manifest, self.form, self.judge.recall, lease_seconds)

    def manifest(self, key: str) -> dict:
        """A run's manifest (read once per process).

        Args:
            key: the manifest's S3 key.

        Returns:
            The manifest document.
        """
        if key not in self._manifests:
            self._manifests[key] = self.store.get_json(key)
        return self._manifests[key]

    def form(self, section: dict) -> CanonicalForm:
        """The phases of a manifest section as a checked canonical form (built once per section).

        Args:
            section: a manifest section (`train` or an evaluation), naming its phases' computations.

        Returns:
            The `CanonicalForm`, its computations vetted against the op allowlist.

        Raises:
            SerializationError: if a phase's bytes fail the checks.
        """
        key = json.dumps(section["phases"], sort_keys=True)
        if key not in self._forms:
            phases = {name: self.store.get_computation(ref) for name, ref in section["phases"].items()}
            signature = ft.type_from_json(section["types"]["signature"], "the manifest's signature")
            self._forms[key] = CanonicalForm.from_phases(signature, phases)
        return self._forms[key]

    def handle(self, event: dict) -> list:
        """Processes the silo results in `event["Records"]` (new or rewritten records alike; a
        silo's record is input, never trusted).

        Args:
          event: a DynamoDB stream event (`Records` of `INSERT`/`MODIFY` with `NewImage`).

        Returns:
          What happened to each round the batch named ("aggregated", "waiting", "failed", ...).

        Raises:
          fedsim.aws.store.TransientStoreError: AWS kept failing; the batch is to be redelivered.
        """
        items, protocol_steps = [], {}
        for record in event.get("Records", []):
            if record.get("eventName") not in ("INSERT", "MODIFY") or "NewImage" not in record.get("dynamodb", {}):
                continue
            item = unmarshal_image(record["dynamodb"]["NewImage"])
            if not isinstance(item.get("round_key"), str) or "#" not in item["round_key"] or str(item.get("pk", "")).startswith(("round#", "verdict#")):
                continue
            if item["round_key"].endswith("#sa"):  # a silo's message in a secure step's protocol
                protocol_steps[item["round_key"][: -len("#sa")]] = None
                continue
            try:
                protocol.parse_step(item["round_key"].rsplit("#", 1)[1])
            except ValueError:
                logging.warning("result of %s with a malformed round key %r ignored", item.get("pk"), item["round_key"][:100])
                continue
            items.append(item)
        round_items = {}  # each round the batch names, read once
        for round_key in dict.fromkeys(item["round_key"] for item in items):
            run_id, step = round_key.rsplit("#", 1)
            round_items[round_key] = self.store.get_item(protocol.round_item_key(run_id, step))
        # Judging a result is mostly waiting on S3 and DynamoDB: the batch's results are judged
        # side by side (each verdict is a conditional write, so the order does not matter).
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(VALIDATION_THREADS, len(items)))) as pool:
            judged = list(pool.map(lambda item: self.judge.judge(item, round_items[item["round_key"]]), items))
        to_close: dict = {}
        for item, round_item in zip(items, judged):
            if round_item is not None:
                to_close[item["round_key"]] = round_item
        for round_key in protocol_steps:
            if round_key not in to_close and "#" in round_key:
                run_id, step = round_key.rsplit("#", 1)
                try:
                    protocol.parse_step(step)
                except ValueError:
                    continue
                round_item = self.store.get_item(protocol.round_item_key(run_id, step))
                if round_item is not None and round_item["status"] in ("open", "aggregating", "done"):
                    to_close[round_key] = round_item
        outcomes, asynchronous_steps = [], {}
        for round_key, round_item in to_close.items():
            run_id, step = round_key.rsplit("#", 1)
            if round_item.get("mode") == ASYNCHRONOUS:  # no quorum: the run's buffer takes the updates
                asynchronous_steps.setdefault(run_id, []).append(step)
            else:
                outcomes.append(self._maybe_close(run_id, step, round_item))
        for run_id, steps in asynchronous_steps.items():
            outcomes.append(self.asynchronous.advance(run_id, steps))
        return outcomes

    # Secure steps -------------------------------------------------------------------------------

    def _layout(self, manifest: dict, step: str) -> Optional[secure_round.SecureLayout]:
        """The step's secure sums (None for a plain step)."""
        section = rounds.section_of(manifest, step)
        if not section.get("secure_sums"):
            return None  # a plain step: its phases are not even read here
        return secure_round.SecureLayout.of(self.form(section).client_output_type, section.get("secure_sums"))

    def _upload_type(self, manifest: dict, round_item: dict) -> ft.Type:
        """What a silo's result must be: the work's output, or in a secure step its plain parts
        and its masked vector."""
        layout = self._layout(manifest, round_item["sk"])
        if layout is None:
            return self.form(rounds.section_of(manifest, round_item["sk"])).client_output_type
        return layout.upload_type(len(round_item["silos"]))

    def _secure_aggregates(self, run_id: str, step: str, round_item: dict, layout: secure_round.SecureLayout,
                           closed: secure_round.ClosedProtocol, verdicts: dict) -> Any:
        """The step's aggregates: the survivors' plain parts folded as usual, and for the secure
        sums the protocol's unmasked total (the server never holds an unmasked input)."""
        manifest = self.manifest(round_item["manifest_key"])
        form = self.form(rounds.section_of(manifest, step))
        upload_type = layout.upload_type(len(round_item["silos"]))
        params = layout.step_params(rounds.section_of(manifest, step), run_id, step, round_item["silos"])
        accumulator, masked, zeros = form.zero.call_value(None), {}, layout.secure_zeros()
        for silo in closed.survivors:
            verdict = verdicts[silo]
            value = self.judge.recall(verdict["key"], verdict["sha256"])
            if value is None:
                data = self.store.get_checked(verdict["key"], verdict["sha256"])
                value = protocol.decode_value(data, upload_type, f"{silo}'s result", require_finite=True)
            elements = structure.struct_elements(value, upload_type)
            masked[silo] = np.asarray(elements[-1])
            accumulator = form.accumulate.call_value((accumulator, layout.full_output(elements[:-1], zeros)), as_numpy=False)
        total = secure_round.unmasked_sum(params, closed, masked)
        return form.report.call_value(layout.with_secure_totals(accumulator, form.accumulator_type, total))

    # The running aggregate ----------------------------------------------------------------------

    def _fold(self, round_item: dict, silo: str, value: Any) -> bool:
        """Folds a result whose valid verdict stands into its step's running aggregate (once);
        False for a secure step's (masked) result, which is kept for the protocol instead."""
        if round_item.get("mode") == ASYNCHRONOUS or self._layout(self.manifest(round_item["manifest_key"]), round_item["sk"]) is not None:
            return False
        step_key = (round_item["run_id"], round_item["sk"])
        with self._running_lock:
            running = self._running.get(step_key)
            if running is None:
                form = self.form(rounds.section_of(self.manifest(round_item["manifest_key"]), round_item["sk"]))
                running = self._running[step_key] = _RunningAggregate(phase_runner.Aggregation.of(form))
        with running.lock:
            if silo not in running.silos:
                running.aggregation.add(value)
                running.silos.add(silo)
        return True

    def _aggregates(self, run_id: str, step: str, form: CanonicalForm, results: list) -> Any:
        """The step's aggregates over `results` (its valid verdicts): the running aggregate of
        this process, plus the results another process judged, fetched and checked again."""
        with self._running_lock:
            running = self._running.pop((run_id, step), None)
        silos = {result["sk"] for result in results}
        if running is None or not running.silos <= silos:
            running = _RunningAggregate(phase_runner.Aggregation.of(form))
        with running.lock:
            for result in results:
                if result["sk"] in running.silos:
                    continue
                value = self.judge.recall(result["key"], result["sha256"])
                if value is None:
                    data = self.store.get_checked(result["key"], result["sha256"])
                    value = protocol.decode_value(data, form.client_output_type, f"{result['sk']}'s result", require_finite=True)
                running.aggregation.add(value)
                running.silos.add(result["sk"])
            return running.aggregation.result()

    def _forget(self, run_id: str, step: str) -> None:
        with self._running_lock:
            self._running.pop((run_id, step), None)

    # Closing a round -----------------------------------------------------------------------------

    def _maybe_close(self, run_id: str, step: str, round_item: dict) -> str:
        round_key = protocol.round_item_key(run_id, step)
        if round_item["status"] == "done":  # aggregated, maybe not answered: answer from the stored outcome
            self._forget(run_id, step)
            if not round_item.get("answered"):
                self.tokens.answer(round_key, self.tokens.token(run_id, step), round_item["outcome"])
                return "answered"
            return "already answered"
        verdicts = self.store.round_verdicts(run_id, step)
        valid = [s for s in round_item["silos"] if verdicts.get(s, {}).get("status") == "valid"]
        rejected = {s: v.get("reason", "") for s, v in verdicts.items() if v.get("status") == "rejected" and s in round_item["silos"]}
        quorum = int(round_item["quorum"])
        manifest = self.manifest(round_item["manifest_key"])
        layout = self._layout(manifest, step)
        closed = None
        if layout is not None:
            try:
                params = layout.step_params(rounds.section_of(manifest, step), run_id, step, round_item["silos"])
            except ValueError as error:
                return self._fail_open(run_id, step, str(error))
        if layout is not None and round_item["status"] == "open":
            try:
                closed = secure_round.SecurePhases(self.store, run_id, step, round_item, params).advance(verdicts)
            except ProtocolError as error:
                return self._fail_open(run_id, step, str(error))
            if closed is None:
                return "waiting"
            valid = list(closed.survivors)
        elif layout is not None:  # a claim to take over: the session is over, read it back
            closed = secure_round.SecurePhases(self.store, run_id, step, round_item, params).advance(verdicts)
            if closed is None:
                return "waiting"
            valid = list(closed.survivors)
        if len(valid) >= quorum:
            owner = uuid.uuid4().hex
            if not claim_or_wait(self.store, round_key, owner, self.lease_seconds):
                return self._maybe_close(run_id, step, self.store.get_item(round_key))  # done meanwhile
            try:
                with Lease(self.store, round_key, owner, self.lease_seconds):
                    aggregates = None
                    if layout is not None:
                        aggregates = self._secure_aggregates(run_id, step, round_item, layout, closed, verdicts)
                    outcome = self._aggregate(run_id, step, round_item, [verdicts[s] for s in valid], rejected, aggregates)
            except TransientStoreError:
                raise  # AWS had a bad minute: the claim's lease runs out and a redelivery takes over
            except Exception as error:
                cause = f"round {step}: aggregation failed: {type(error).__name__}: {error}"
                if self.store.transition(round_key, "status", "aggregating", "failed", cause=cause):
                    self._close(run_id, step, "failed")
                    self.tokens.fail(self.tokens.token(run_id, step), cause)
                raise
            text = json.dumps(outcome)
            if not self.store.transition(round_key, "status", "aggregating", "done", outcome=text):
                raise RuntimeError(f"round {step}: the claim was lost before the outcome was recorded "
                                   f"(status is now {self.store.get_item(round_key)['status']})")
            self._close(run_id, step, "done")
            self.tokens.answer(round_key, self.tokens.token(run_id, step), text)
            return "aggregated"
        answered = len(valid) + len(rejected)
        if len(valid) + len(round_item["silos"]) - answered < quorum:  # the quorum can no longer be met
            pending = [s for s in round_item["silos"] if s not in valid and s not in rejected]
            cause = (
                f"round {step}: {len(valid)} valid result(s), quorum {quorum}; rejected: "
                + "; ".join(f"{silo}: {reason}" for silo, reason in sorted(rejected.items()))
                + (f"; not waiting for {', '.join(pending)}" if pending else "")
            )
            return self._fail_open(run_id, step, cause)
        return "waiting"

    def _fail_open(self, run_id: str, step: str, cause: str) -> str:
        """Fails an open step that can no longer complete, naming why."""
        self._forget(run_id, step)
        if self.store.transition(protocol.round_item_key(run_id, step), "status", "open", "failed", cause=cause):
            self._close(run_id, step, "failed")
            self.tokens.fail(self.tokens.token(run_id, step), cause)
        return "failed"

    def _close(self, run_id: str, step: str, status: str) -> None:
        rounds.write_closed_marker(self.store, run_id, step, status)

    def _aggregate(self, run_id: str, step: str, round_item: dict, results: list, rejected: dict,
                   aggregates: Any = None) -> dict:
        """Aggregates a step's valid results, writes its result once, and decides what comes next:
        round r's evaluation step, round r+1, or the end of the run (and why)."""
        claimed_at = time.time()
        manifest = self.manifest(round_item["manifest_key"])
        round_num, is_evaluation = protocol.parse_step(step)
        form = self.form(rounds.section_of(manifest, step))
        if aggregates is None:
            aggregates = self._aggregates(run_id, step, form, results)
        aggregated_at = time.time()
        prefix = protocol.round_prefix(run_id, step)
        carry = protocol.decode_value(self.store.get_checked(f"{prefix}/carry.npz"), form.carry_type, "the round's carry")
        result_key = f"{prefix}/result.npz"
        if self.store.exists(result_key):  # taking over from a handler that died after writing it: written once
            result = protocol.decode_value(self.store.get_checked(result_key), form.result_type, f"round {step}'s result")
        else:
            result = phase_runner.update(form.update, carry, aggregates)
            self.store.put_new(result_key, protocol.encode_value(result, form.result_type))
        updated_at = time.time()

        metrics = rounds.result_metrics(result, form, "evaluation" if is_evaluation else "training")
        evaluate = (not is_evaluation and manifest.get("evaluation") is not None
                    and (round_num % int(manifest["evaluation"]["every"]) == 0 or round_num == int(manifest["total_rounds"])))
        privacy = {}
        if manifest.get("privacy") is not None and not is_evaluation:
            privacy = self._privacy(run_id, round_num, manifest, metrics, len(results), form.next_state(result),
                                    len(round_item["silos"]))
            metrics.update(privacy.pop("metrics"))
        stop_reason = None
        if not evaluate:  # the round is complete: judge the stopping rules on every round's metrics so far
            rules = [stopping.rule_from_json(r) for r in manifest.get("stop_rules", [])]
            if rules:  # the history is read back from earlier rounds' items only when a rule needs it
                training = lineage.step_metrics(self.store, run_id, protocol.step_label(round_num)) if is_evaluation else {}
                history = lineage.metrics_history(self.store, run_id, round_num, {**training, **metrics})
                stop_reason = stopping.first_stop_reason(rules, history)
            if stop_reason is None and round_num >= int(manifest["total_rounds"]):
                stop_reason = f"all {manifest['total_rounds']} rounds done"
            if stop_reason is None:  # the next round would exceed the privacy budget (judged with the training step)
                training_outcome = privacy if not is_evaluation else lineage.step_outcome(self.store, run_id, protocol.step_label(round_num))
                stop_reason = training_outcome.get("privacy_stop")
        outcome = rounds.step_outcome(
            self.store, form, result, result_key, step, evaluate=evaluate, stop_reason=stop_reason, metrics=metrics,
            aggregated=[r["sk"] for r in results], rejected=rejected,
            timings={"claimed_at": claimed_at, "aggregate_seconds": aggregated_at - claimed_at,
                     "update_seconds": updated_at - aggregated_at},
            **privacy, **{"continue": not evaluate and stop_reason is None})
        template = {key: round_item[key] for key in ("silos", "quorum", "manifest_key")}
        if evaluate:
            evaluation = manifest["evaluation"]
            evaluation_form = self.form(evaluation)
            bridge = self.store.get_computation(evaluation["bridge"])
            previous = self._evaluation_state(run_id, round_num, evaluation, evaluation_form)
            evaluation_state = bridge.call_value((form.next_state(result), previous))
            rounds.open_round(self.store, evaluation_form, evaluation_state, run_id, outcome["eval_step"], template, resume=True)
        elif outcome["continue"]:
            state = form.next_state(result) if not is_evaluation else self._training_state(run_id, round_num, manifest)
            rounds.open_round(self.store, self.form(manifest), state, run_id, protocol.step_label(round_num + 1), template, resume=True)
        outcome["timings"]["prepare_next_seconds"] = time.time() - updated_at
        return outcome

    def _privacy(self, run_id: str, round_num: int, manifest: dict, metrics: dict, cohort: int, next_state: Any,
                 next_cohort: int) -> dict:
        """The run's privacy ledger after this round (rebuilt from earlier rounds' outcomes): its
        `privacy/...` metrics, and `privacy_stop`, why the next round may not run (or None)."""
        from fedsim.aggregators.accounting import PrivacyLedger  # dp-accounting: only for runs that keep a ledger

        ledger = PrivacyLedger.from_json(manifest["privacy"])
        for earlier in range(1, round_num):
            outcome = lineage.step_outcome(self.store, run_id, protocol.step_label(earlier))
            ledger.record(earlier, outcome.get("metrics", {}), len(outcome.get("aggregated", [])), account=False)
        spent = ledger.record(round_num, metrics, cohort)
        privacy_stop = None
        if round_num < int(manifest["total_rounds"]):
            privacy_stop = ledger.refusal(next_state, next_cohort)
        return {"metrics": {f"privacy/{name}": value for name, value in spent.items()}, "privacy_stop": privacy_stop}

    def _training_state(self, run_id: str, round_num: int, manifest: dict) -> Any:
        """The server state after round `round_num`'s training (from its stored result)."""
        form = self.form(manifest)
        data = self.store.get_checked(f"{protocol.round_prefix(run_id, protocol.step_label(round_num))}/result.npz")
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
