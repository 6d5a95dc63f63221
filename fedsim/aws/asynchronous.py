"""The asynchronous (FedBuff) server: accepted updates buffered, each version published once.

An asynchronous run (`AwsExecutionContext.run_async`) uses the synchronous machinery for
everything a silo sees: step r is "training from model version r-1" (its broadcast, its silo
results, its verdicts). What differs is closing: instead of waiting for a step's quorum, the
handler (`AsyncServer.advance`, under a lease on the run's item) takes the valid updates of any
step in the order it judged them, weights each by its staleness (the current version minus the
version it trained from) and, after `buffer_size` accepted updates, publishes the next version
through the same `StalenessBuffer` the simulation uses (`fedsim.core.staleness`). An update
staler than `max_staleness` is refused and recorded with its reason.

Exactly once, whatever the retries, duplicate stream records, concurrent invocations or dead
handlers:

- a verdict is written once per (step, silo) (`verdicts.ResultJudge`);
- version v's *plan* (the updates it applies, their staleness and weight, the updates refused)
  is written once (`put_item_if_absent`) before anything is computed from it; a handler that
  takes over a dead one's lease finds the plan and finishes it;
- an update is planned only if no plan holds it; its result object, the next step and the run's
  version are written idempotently;
- updates judged valid but not yet in a plan wait in the run item (`unplanned`), written only
  by the lease's holder.

Round r's round item records version r's outcome (metrics, result, the updates applied) in the
same shape as a synchronous round's, so `lineage.read_lineage` and `fetch_global_model` read an
asynchronous run unchanged; the run's end answers the state machine's one task (step "1").

Example (what `AggregationHandler.handle` does for an asynchronous run's results)::

    AsyncServer(store, tokens, manifest, form, recall).advance(run_id, ["3", "4"])
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Iterable, Optional

import attrs
from absl import logging

from fedsim.aws import lineage, protocol, rounds, stopping
from fedsim.aws.lease import LEASE_SECONDS, Lease
from fedsim.aws.store import Store, TransientStoreError
from fedsim.aws.task_tokens import TaskTokens
from fedsim.core import staleness as staleness_lib
from fedsim.core.canonical_form import CanonicalForm

__all__ = ["ASYNCHRONOUS", "AsyncServer", "AsyncSettings", "open_async_run"]

ASYNCHRONOUS = protocol.ASYNCHRONOUS
FIRST_STEP = protocol.step_label(1)  # the step whose task token the run's end answers


@attrs.frozen
class AsyncSettings:
    """An asynchronous run's settings, as its manifest carries them.

    Attributes:
      buffer_size: K, the accepted updates per published version.
      max_staleness: updates staler than this are refused (None: none are).
      staleness_weight: `staleness -> weight` (polynomial or constant; data, not code).
      total_versions: the run ends after this many versions (or a stopping rule).
      aggregation_kinds: per aggregation of the round ("sum", "mean", "weighted_mean"): what
        the staleness weight scales (the phases read back from bytes do not say it).
    """

    buffer_size: int
    max_staleness: Optional[int]
    staleness_weight: Callable[[int], float]
    total_versions: int
    aggregation_kinds: tuple

    @classmethod
    def from_manifest(cls, manifest: dict) -> "AsyncSettings":
        """The settings of a manifest's `asynchronous` section.

        Raises:
          ValueError: a setting is missing or malformed (the message names it).
        """
        section = manifest.get(ASYNCHRONOUS)
        if not isinstance(section, dict):
            raise ValueError("the manifest of an asynchronous run has no 'asynchronous' section")
        buffer_size, max_staleness = section.get("buffer_size"), section.get("max_staleness")
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"the manifest's buffer_size must be a positive int, got {buffer_size!r}")
        if max_staleness is not None and (not isinstance(max_staleness, int) or max_staleness < 0):
            raise ValueError(f"the manifest's max_staleness must be a non-negative int or null, got {max_staleness!r}")
        weight = staleness_lib.staleness_weight_from_json(section.get("staleness_weight"), "the manifest's staleness_weight")
        kinds = section.get("aggregation_kinds")
        if not isinstance(kinds, list) or not all(isinstance(kind, str) for kind in kinds):
            raise ValueError(f"the manifest's aggregation_kinds must be a list of names, got {str(kinds)[:200]}")
        return cls(buffer_size, max_staleness, weight, int(manifest["total_rounds"]), tuple(kinds))

    def buffer(self, form: CanonicalForm) -> staleness_lib.StalenessBuffer:
        """An empty buffer for `form` with these settings.

        Raises:
          fedsim.core.staleness.AsyncUnsupportedError: the declared aggregations cannot be buffered.
          ValueError: they do not fit the form's client output.
        """
        outputs = len(form.work.type_signature.result)
        if len(self.aggregation_kinds) != outputs:
            raise ValueError(f"the manifest declares {len(self.aggregation_kinds)} aggregation kinds for a round with {outputs}")
        form = attrs.evolve(form, aggregation_kinds=self.aggregation_kinds)
        return staleness_lib.StalenessBuffer(form, self.buffer_size, self.staleness_weight, self.max_staleness)


def open_async_run(store: Store, run_id: str, manifest_key: str) -> None:
    """Writes an asynchronous run's item (version 0, nothing waiting); the driver calls it
    before opening step 1.

    Args:
      store: the stack's S3 and DynamoDB.
      run_id: the run.
      manifest_key: its manifest's S3 key.

    Raises:
      RuntimeError: the run already exists (a run is never restarted).
    """
    item = dict(protocol.async_run_item_key(run_id), status="open", version=0, unplanned=[], manifest_key=manifest_key,
                run_id=run_id, opened_at=time.time())
    if not store.put_item_if_absent(item):
        raise RuntimeError(f"asynchronous run {run_id} already exists")


class AsyncServer:
    """Publishes an asynchronous run's versions from its judged updates (see the module docstring).

    Args:
      store: the stack's S3 and DynamoDB.
      tokens: the state machine's task tokens (the run's end answers step 1's).
      manifest: reads a run's manifest by key (cached by the caller).
      form: a manifest section's checked canonical form (cached by the caller).
      recall: `(key, sha256) -> value or None`: a value this process already validated.
      lease_seconds: the run item's lease.
    """

    def __init__(self, store: Store, tokens: TaskTokens, manifest: Callable[[str], dict],
                 form: Callable[[dict], CanonicalForm], recall: Callable[[str, str], Any],
                 lease_seconds: float = LEASE_SECONDS):
        self.store, self.tokens, self.manifest, self.form, self.recall = store, tokens, manifest, form, recall
        self.lease_seconds = lease_seconds

    def advance(self, run_id: str, steps: Iterable[str]) -> str:
        """Plans and publishes every version the run's judged updates allow.

        Args:
          run_id: the run.
          steps: the steps whose results this batch named (their valid verdicts are new updates).

        Returns:
          "published N" (versions), "waiting" (fewer than K updates), "done", "failed" or
          "unknown run".

        Raises:
          fedsim.aws.store.TransientStoreError: AWS kept failing; the batch is redelivered and
            the next delivery goes on from what is written.
          RuntimeError: another handler keeps its lease (the batch is redelivered).
        """
        run_key = protocol.async_run_item_key(run_id)
        run = self.store.get_item(run_key)
        if run is None:
            logging.warning("results for unknown asynchronous run %s ignored", run_id[:40])
            return "unknown run"
        if run["status"] in ("done", "failed"):  # a redelivery after the end: what the end announces, again
            self._announce_end(run_id, run)
            return str(run["status"])
        owner = uuid.uuid4().hex
        if not self._claim(run_key, owner):
            run = self.store.get_item(run_key)
            self._announce_end(run_id, run)
            return str(run["status"])
        try:
            with Lease(self.store, run_key, owner, self.lease_seconds):
                result, final = self._advance_claimed(run_id, owner, list(steps))
            self._hold(run_key, owner, **final)  # after the lease stops renewing: releases or ends the claim
        except TransientStoreError:
            raise  # the lease runs out; a redelivery goes on from the written plan
        except Exception as error:
            cause = f"asynchronous run {run_id}: {type(error).__name__}: {error}"
            if self.store.update_claimed(run_key, owner, status="failed", cause=cause[:protocol.MAX_REASON_CHARS]):
                run = self.store.get_item(run_key)
                # the open step fails with the cause, as a synchronous round would: the caller's report names it
                self.store.transition(protocol.round_item_key(run_id, protocol.step_label(int(run["version"]) + 1)),
                                      "status", "open", "failed", cause=cause[:protocol.MAX_REASON_CHARS])
                self._announce_end(run_id, run)
            raise
        if result == "done":
            self._announce_end(run_id, self.store.get_item(run_key))
        return result

    def _claim(self, run_key: dict, owner: str) -> bool:
        """Claims the run item, waiting while another holder's lease is renewed; False once the
        run is over. Unlike a round, the run item returns to "open" after each claim."""
        deadline = time.monotonic() + 2 * self.lease_seconds + 1.0
        while True:
            if self.store.claim(run_key, time.time(), self.lease_seconds, owner=owner):
                return True
            item = self.store.get_item(run_key) or {}
            if item.get("status") not in ("open", "aggregating"):
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"asynchronous run {run_key['pk']}: claimed by {item.get('owner')} whose lease keeps "
                                   f"being renewed; this batch will be redelivered")
            time.sleep(min(0.2, self.lease_seconds / 8))

    def _advance_claimed(self, run_id: str, owner: str, steps: list) -> tuple:
        """`(what happened, the run item's last write)`: publishes versions while K updates wait."""
        run_key = protocol.async_run_item_key(run_id)
        published = 0
        while True:
            run = self.store.get_item(run_key)
            manifest = self.manifest(run["manifest_key"])
            settings = AsyncSettings.from_manifest(manifest)
            version = int(run["version"])
            plans = {int(item["sk"][1:]): item for item in self.store.query_partition(protocol.async_partition(run_id))
                     if item["sk"].startswith("v")}
            plan = plans.get(version + 1)
            if plan is None:
                plan, waiting = self._plan(run_id, run, version, plans, steps, settings)
                steps = []  # the batch's verdicts are read once; what waits is in `unplanned`
                if plan is None:
                    return (f"published {published}" if published else "waiting"), {"status": "open", "unplanned": waiting}
                if not self.store.put_item_if_absent(plan):  # another holder's plan stands
                    plan = self.store.get_item(protocol.version_item_key(run_id, version + 1))
                self._hold(run_key, owner, unplanned=[u for u in waiting if u["id"] not in _ids(plan)])
            outcome = self._publish(run_id, run, manifest, settings, plan)
            published += 1
            if not outcome["continue"]:
                return "done", {"status": "done", "version": version + 1, "outcome": json.dumps(outcome)}
            self._hold(run_key, owner, version=version + 1)

    def _hold(self, run_key: dict, owner: str, status: str = "aggregating", **values: Any) -> None:
        """Writes the run item as the lease's holder; a lost claim is an error (a redelivery goes on)."""
        if not self.store.update_claimed(run_key, owner, status=status, **values):
            raise RuntimeError(f"{run_key['pk']}: the claim was taken over; this handler stops here")

    def _plan(self, run_id: str, run: dict, version: int, plans: dict, steps: list,
              settings: AsyncSettings) -> tuple:
        """`(plan of version+1 or None, the updates waiting)`: the waiting updates and the
        batch's new valid verdicts, in the order judged, split into K accepted (each with its
        staleness and weight) and those refused for staleness."""
        handled = set().union(*(_ids(plan) for plan in plans.values())) if plans else set()
        waiting = [u for u in run.get("unplanned", []) if u["id"] not in handled]
        known = handled | {u["id"] for u in waiting}
        new = []
        for step in dict.fromkeys(steps):
            for silo, verdict in self.store.round_verdicts(run_id, step).items():
                update_id = f"{step}/{silo}"
                if verdict.get("status") == "valid" and update_id not in known:
                    new.append((float(verdict.get("judged_at", 0.0)), step, silo, verdict))
                    known.add(update_id)
        for _, step, silo, verdict in sorted(new, key=lambda entry: (entry[0], protocol.parse_step(entry[1])[0], entry[2])):
            waiting.append({"id": f"{step}/{silo}", "silo": silo, "step": step, "key": verdict["key"], "sha256": verdict["sha256"]})
        applied, refused = [], []
        for update in waiting:
            if len(applied) == settings.buffer_size:
                break
            base = protocol.parse_step(update["step"])[0] - 1
            staleness = version - base
            reason = staleness_lib.staleness_refusal(staleness, settings.max_staleness)
            if reason:
                refused.append(dict(update, base_version=base, staleness=staleness, reason=reason))
            else:
                applied.append(dict(update, base_version=base, staleness=staleness,
                                    weight=float(settings.staleness_weight(staleness))))
        if len(applied) < settings.buffer_size:
            return None, waiting
        plan = dict(protocol.version_item_key(run_id, version + 1), version=version + 1, base=version,
                    applied=applied, refused=refused, planned_at=time.time())
        return plan, waiting

    def _publish(self, run_id: str, run: dict, manifest: dict, settings: AsyncSettings, plan: dict) -> dict:
        """Computes version v from its plan (once: a result already written is reused), opens
        step v+1 unless the run ends, and records version v's outcome on step v's round item."""
        started = time.time()
        version = int(plan["version"])
        step = protocol.step_label(version)  # opened from version v-1: its carry is v-1's
        form = self.form(manifest)
        prefix = protocol.round_prefix(run_id, step)
        result_key = f"{prefix}/result.npz"
        if self.store.exists(result_key):  # taking over after the result was written
            result = protocol.decode_value(self.store.get_checked(result_key), form.result_type, f"version {version}'s result")
        else:
            buffer = settings.buffer(form)
            for update in plan["applied"]:
                value = self.recall(update["key"], update["sha256"])
                if value is None:
                    data = self.store.get_checked(update["key"], update["sha256"])
                    value = protocol.decode_value(data, form.client_output_type, f"{update['silo']}'s update", require_finite=True)
                buffer.add(value, int(update["staleness"]))
            carry = protocol.decode_value(self.store.get_checked(f"{prefix}/carry.npz"), form.carry_type, f"version {version - 1}'s carry")
            result = buffer.flush(carry)
            self.store.put_new(result_key, protocol.encode_value(result, form.result_type))
        updated_at = time.time()
        staleness = [int(u["staleness"]) for u in plan["applied"]]
        metrics = rounds.result_metrics(result, form, "training")
        metrics.update({
            "async/updates": float(len(staleness)),
            "async/mean_staleness": float(sum(staleness)) / len(staleness),
            "async/max_staleness": float(max(staleness)),
            "async/refused": float(len(plan["refused"])),
        })
        stop_reason = None
        rules = [stopping.rule_from_json(r) for r in manifest.get("stop_rules", [])]
        if rules:
            stop_reason = stopping.first_stop_reason(rules, lineage.metrics_history(self.store, run_id, version, metrics))
        if stop_reason is None and version >= settings.total_versions:
            stop_reason = f"all {settings.total_versions} versions published"
        outcome = rounds.step_outcome(
            self.store, form, result, result_key, step, version=version, evaluate=False, stop_reason=stop_reason,
            metrics=metrics, rejected={}, timings={"published_at": updated_at, "update_seconds": updated_at - started},
            aggregated=[u["silo"] for u in plan["applied"]],
            updates=[{k: u[k] for k in ("silo", "step", "base_version", "staleness", "weight")} for u in plan["applied"]],
            refused=[{k: u[k] for k in ("silo", "step", "base_version", "staleness", "reason")} for u in plan["refused"]],
            **{"continue": stop_reason is None})
        if outcome["continue"]:
            template = {"silos": list(self._step_item(run_id, step)["silos"]), "quorum": 1,
                        "manifest_key": run["manifest_key"], "mode": ASYNCHRONOUS}
            rounds.open_round(self.store, form, form.next_state(result), run_id, protocol.step_label(version + 1), template,
                              resume=True)
        round_key = protocol.round_item_key(run_id, step)
        if not self.store.transition(round_key, "status", "open", "done", outcome=json.dumps(outcome)):
            if self._step_item(run_id, step).get("status") != "done":
                raise RuntimeError(f"version {version}: step {step}'s round item could not be marked done")
        logging.info("asynchronous run %s: version %d published from %d update(s) (staleness %s)", run_id, version,
                     len(staleness), staleness)
        return outcome

    def _step_item(self, run_id: str, step: str) -> dict:
        item = self.store.get_item(protocol.round_item_key(run_id, step))
        if item is None:
            raise RuntimeError(f"asynchronous run {run_id}: step {step} was never opened")
        return item

    def _announce_end(self, run_id: str, run: dict) -> None:
        """Once the run is over (done or failed): the closed marker after its last version, which
        ends the silos' loop, and the answer to the state machine's task (from the stored outcome
        or cause). Idempotent, so a redelivery after a handler died here finishes it."""
        if run.get("status") not in ("done", "failed"):
            return
        rounds.write_closed_marker(self.store, run_id, protocol.step_label(int(run.get("version", 0)) + 1), str(run["status"]))
        first = protocol.round_item_key(run_id, FIRST_STEP)
        if (self.store.get_item(first) or {}).get("answered"):
            return
        if run["status"] == "failed":
            token = self.tokens.token(run_id, FIRST_STEP)
            if token is not None:
                self.tokens.fail(token, str(run.get("cause", "the asynchronous run failed")))
                self.store.transition(first, "answered", None, "failed")  # a later delivery does not fail it again
        elif run.get("outcome"):
            self.tokens.answer(first, self.tokens.token(run_id, FIRST_STEP), run["outcome"])


def _ids(plan: dict) -> set:
    """The updates a plan handled (applied or refused)."""
    return {u["id"] for u in list(plan.get("applied", [])) + list(plan.get("refused", []))}
