"""Claiming a round for aggregation, with a lease kept alive while the claimant works.

A claim is a conditional write of a unique owner id and a lease end; a claim whose lease ran
out is free to take over. `Lease` renews it every third of its length while the work inside
runs, so a live handler keeps its claim however long it works and a dead one (a killed
process, a Lambda timeout) loses it within one lease.

Example::

    if claim_or_wait(store, round_key, owner):
        with Lease(store, round_key, owner):
            ...  # aggregate
"""

from __future__ import annotations

import threading
import time

from absl import logging

from fedsim.aws.store import Store

__all__ = ["LEASE_SECONDS", "Lease", "claim_or_wait"]

LEASE_SECONDS = 30.0  # renewed every 10 s while the holder works: a dead holder's claim is free within 30 s


def claim_or_wait(store: Store, round_key: dict, owner: str, lease_seconds: float = LEASE_SECONDS) -> bool:
    """Claims the round for `owner`, waiting while another claimant's live lease is renewed.

    Returns:
      True once claimed (also when the holder died and its lease ran out); False when the round
      was finished meanwhile.

    Raises:
      RuntimeError: a holder neither finished nor let go within `2 * lease_seconds`; the caller
        lets it propagate so its batch is redelivered (never reported as handled).
    """
    deadline = time.monotonic() + 2 * lease_seconds + 1.0
    while True:
        if store.claim(round_key, time.time(), lease_seconds, owner=owner):
            return True
        item = store.get_item(round_key) or {}
        if item.get("status") != "aggregating":
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {round_key['pk']}: claimed by {item.get('owner')} whose lease keeps being "
                               f"renewed; this batch will be redelivered")
        time.sleep(min(1.0, lease_seconds / 4))


class Lease:
    """Keeps `owner`'s claim on a round renewed while the `with` block runs."""

    def __init__(self, store: Store, round_key: dict, owner: str, lease_seconds: float = LEASE_SECONDS):
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

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
