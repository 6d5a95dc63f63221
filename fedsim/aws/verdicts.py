"""The server's verdict on one silo's result: valid, rejected (with the reason), or late.

A silo's record is input, never truth. The judge checks that the result belongs to an open
round and to one of its silos, then verifies the uploaded object (size limit, SHA-256, dtypes
and shapes of the work phase's output type, finite values) and writes its verdict in an item
only the server may write; the first verdict stands. Only a definite answer about the object
(absent, too large, a wrong checksum, type or value) rejects it: throttling, 5xx, a cut body or
a lost connection propagate after the store's retries, so the stream batch is redelivered and
the result is judged then.

Example::

    judge = ResultJudge(store, manifests)
    round_item = judge.judge(silo_record, round_item)
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Optional

from absl import logging

from fedsim.aws import protocol, rounds
from fedsim.aws.store import ObjectAbsentError, Store

__all__ = ["ResultJudge", "VALIDATED_CACHE_BYTES"]

VALIDATED_CACHE_BYTES = 512 * 2**20


class ResultJudge:
    """Judges silo results and remembers (up to a byte budget) the values it found valid, so
    that aggregating them does not download and decode them a second time.

    Args:
      store: the stack's S3 and DynamoDB.
      manifest: reads a run's manifest by key (cached by the caller).
      on_valid: called with `(round_item, silo, value)` once this judge's valid verdict stands;
        it returns whether it took the value (the handler folds it into the round's running
        aggregate); a value not taken is remembered for `recall`.
      upload_type: `(manifest, round_item) -> the type a result must have` (default: the work
        phase's output type; a secure step's uploads carry a masked vector instead).
    """

    def __init__(self, store: Store, manifest: Callable[[str], dict],
                 on_valid: Optional[Callable[[dict, str, Any], bool]] = None,
                 upload_type: Optional[Callable[[dict, dict], Any]] = None):
        self.store, self.manifest, self.on_valid, self.upload_type = store, manifest, on_valid, upload_type
        self._validated: collections.OrderedDict = collections.OrderedDict()
        self._validated_bytes = 0
        self._lock = threading.Lock()

    def judge(self, item: dict, round_item: Optional[dict]) -> Optional[dict]:
        """Writes the server's verdict on the silo result `item` (once: the first stands).

        Args:
          item: the silo's record, as the stream delivered it.
          round_item: the round it names, as read once for the batch (None: unknown round).

        Returns:
          The round item if the round may still need closing or answering, else None.
        """
        run_id, step = item["round_key"].rsplit("#", 1)
        if item["sk"] != item["round_key"]:
            logging.warning("result of %s filed under %r for round %r ignored", item["pk"], item["sk"][:100], item["round_key"][:100])
            return None
        if round_item is None:
            logging.warning("result of %s for unknown round %s ignored", item["pk"], item["round_key"])
            return None
        silo = item["pk"]
        judged = self.store.get_item(protocol.verdict_item_key(run_id, step, silo)) is not None
        # an asynchronous run's step stays open to (stale) updates after its version is published
        taking = round_item["status"] == "open" or round_item["status"] == "done" and round_item.get("mode") == protocol.ASYNCHRONOUS
        if not taking:
            if not judged:
                self._verdict(run_id, step, silo, "late")
                logging.info("late result of %s for round %s ignored (round %s)", silo, step, round_item["status"])
            # a retried delivery: an expired claim may need taking over, a done round answering
            return round_item if round_item["status"] in ("aggregating", "done") else None
        if judged:
            return round_item  # a rewritten record does not change the verdict
        reason, value, size = self._check(item, round_item)
        if reason is None:
            # what the silo said of its work is kept with the verdict, as the silo said it when judged
            standing = self._verdict(run_id, step, silo, "valid", key=item["key"], sha256=item["sha256"],
                                     size=silo_number(item.get("size")), silo_work_seconds=silo_number(item.get("work_seconds")))
            ours = standing.get("status") == "valid" and standing.get("sha256") == item["sha256"]
            if ours and not (self.on_valid is not None and self.on_valid(round_item, silo, value)):
                self._remember((item["key"], item["sha256"]), value, size)
        else:
            self._verdict(run_id, step, silo, "rejected", reason=reason)
            logging.warning("round %s: rejected the result of %s: %s", step, silo, reason)
        return round_item

    def recall(self, key: str, sha256: str) -> Optional[Any]:
        """A value this process validated (and forgets it: it is aggregated once)."""
        with self._lock:
            cached = self._validated.pop((key, sha256), None)
            if cached is None:
                return None
            self._validated_bytes -= cached[1]
            return cached[0]

    def _remember(self, key: tuple, value: Any, size: int) -> None:
        with self._lock:
            self._validated[key] = (value, size)
            self._validated_bytes += size
            while self._validated_bytes > VALIDATED_CACHE_BYTES and self._validated:
                _, (_, evicted) = self._validated.popitem(last=False)
                self._validated_bytes -= evicted

    def _verdict(self, run_id: str, step: str, silo: str, status: str, **values: Any) -> dict:
        """Records the server's verdict unless one exists; returns the verdict that stands."""
        verdict = dict(protocol.verdict_item_key(run_id, step, silo), status=status, judged_at=time.time(), **values)
        if self.store.put_item_if_absent(verdict):
            return verdict
        standing = self.store.get_item(protocol.verdict_item_key(run_id, step, silo))
        if standing is None:
            raise RuntimeError(f"the verdict on {silo}'s result in round {step} could be neither written nor read")
        return standing

    def _check(self, item: dict, round_item: dict) -> tuple:
        """`(reason, None, 0)` for a result to reject, `(None, value, its bytes)` for a valid one."""
        silo = item["pk"]
        if silo not in round_item["silos"]:
            return f"{silo} is not a silo of this round", None, 0
        if "refused" in item:  # the silo would not (or could not) run the round; its words, bounded
            return f"the silo refused the round: {str(item['refused'])[:protocol.MAX_REASON_CHARS]}", None, 0
        run_id, step = item["round_key"].rsplit("#", 1)
        expected_key = protocol.silo_result_key(silo, run_id, step)
        if item.get("key") != expected_key:
            return f"result key {str(item.get('key'))[:200]!r} is not {expected_key!r}", None, 0
        if not isinstance(item.get("sha256"), str) or len(item["sha256"]) != 64:
            return "the result's record has no valid sha256", None, 0
        manifest = self.manifest(round_item["manifest_key"])
        if self.upload_type is not None:
            expected = self.upload_type(manifest, round_item)
        else:
            expected = self.store.get_computation(rounds.section_of(manifest, step)["phases"]["work"]).type_signature.result
        try:
            data = self.store.get_checked(item["key"], item["sha256"], max_bytes=int(manifest["max_result_bytes"]))
            value = protocol.decode_value(data, expected, f"{silo}'s result", require_finite=True)
        except protocol.InvalidValueError as error:
            return str(error), None, 0
        except ObjectAbsentError:
            return f"the result object {item['key'][:200]!r} does not exist", None, 0
        return None, value, len(data)


def silo_number(value: Any) -> Optional[float]:
    """A number a silo wrote in its record (a size, its work seconds), or None if it is not one."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
