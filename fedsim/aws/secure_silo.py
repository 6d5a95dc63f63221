"""A silo's side of a secure step: it takes part in the protocol and uploads only a masked input.

`SecureSiloRound.run` drives one `fedsim.core.secagg.client.SecAggClient` through the step's
protocol: it writes each of its messages as an item in its own partition, waits for the
server's answer object (writing a `wait` item past each phase's deadline, so the handler looks
again), and uploads, in place of the secure parts of its work output, its masked vector. What
the server sends is refused when it should be (`ProtocolRefusal`): the refusal is written as
the silo's `refusal` item and the silo stops taking part.

Example (what the silo agent does for a secure step)::

    SecureSiloRound(agent.store, "a", run_id, step, params, identity, pinned).run(plain, vector, upload)
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

from fedsim.aws import protocol, secure_round
from fedsim.aws.store import AccessDeniedError, Store
from fedsim.core.secagg.client import SecAggClient
from fedsim.core.secagg.messages import KeyDirectory, ProtocolError, SharesFor, UnmaskRequest
from fedsim.core.secagg.params import SecAggParams

__all__ = ["ProtocolTimeout", "SecureSiloRound"]

POLL_SECONDS = 0.1  # how often a silo looks for the server's next message
CLOSED_POLL_SECONDS = 1.0  # how often it looks whether the step closed without it


class ProtocolTimeout(ProtocolError):
    """The server's next message did not come within the round's deadline (the step closed or
    failed without this silo)."""


class SecureSiloRound:
    """One silo's session of a secure step.

    Args:
      store: the silo's store (its own credentials).
      silo_id: this silo.
      run_id, step: the step.
      params: the session's parameters (from the run's manifest and the round message).
      identity: the silo's long-term Ed25519 identity key.
      pinned: silo id -> the raw public identity key this silo pinned for it.
      deadline_seconds: how long to wait for the server in all.
    """

    def __init__(self, store: Store, silo_id: str, run_id: str, step: str, params: SecAggParams, identity: Any,
                 pinned: Mapping[str, bytes], deadline_seconds: float = 300.0):
        self.store, self.silo_id, self.run_id, self.step = store, silo_id, run_id, step
        self.client = SecAggClient(silo_id, params, identity, pinned)
        self.deadline = time.monotonic() + deadline_seconds
        self._waits = 0
        self._left = threading.Event()

    def run(self, vector: np.ndarray, upload: Callable[[bytes], None]) -> str:
        """Takes part in every phase; `upload(masked_vector_bytes)` uploads the result.

        Returns:
          "reported" (the silo's unmask shares are in), or "not a survivor".

        Raises:
          ProtocolRefusal: what the server sent was refused (the refusal item is written).
          ProtocolTimeout: the server did not answer in time, or the silo left (`leave`).
        """
        return self.finish(self.exchange_keys(), vector, upload)

    def exchange_keys(self) -> SharesFor:
        """The phases before the masked input (advertise keys, share them): they need only the
        round's fresh keys, not the work's output, so a silo runs them while its work runs.

        Returns:
          The shares the other silos sent this one (the input of `finish`).

        Raises:
          as `run`.
        """
        with self._refusals_written():
            self._send("advertise", self.client.advertise().to_json())
            directory = KeyDirectory.from_json(json.dumps({"kind": "key_directory", **self._await("directory")}), "the key directory")
            self._send("shares", self.client.share_keys(directory).to_json())
            return SharesFor.from_json(json.dumps(self._await(f"shares-{self.silo_id}")), f"the shares for {self.silo_id}")

    def finish(self, shares: SharesFor, vector: np.ndarray, upload: Callable[[bytes], None]) -> str:
        """The phases from the masked input on: uploads `vector` masked, signs the survivors,
        answers the unmask step and waits for the step to close.

        Args:
          shares: what `exchange_keys` returned.
          vector: the secure parts of the work's output, packed.
          upload: uploads the masked vector's bytes (with the output's plain parts).

        Returns, raises: as `run`.
        """
        with self._refusals_written():
            upload(self.client.masked_input(shares, vector).vector)
            survivors = self._await("survivors")
            if self.silo_id not in survivors.get("survivors", []):
                return "not a survivor"
            signature = self.client.sign_survivors(tuple(survivors["survivors"]))
            self._send("signature", base64.b64encode(signature).decode())
            unmask = self._await("unmask")
            request = UnmaskRequest.from_json(json.dumps(unmask.get("request")), "the unmask request")
            signatures = {str(k): base64.b64decode(v) for k, v in dict(unmask.get("signatures", {})).items()}
            self._send("unmask", self.client.unmask(request, signatures).to_json())
            self._await_closed()
            return "reported"

    def leave(self) -> None:
        """Stops waiting for the server (another thread's `exchange_keys` raises
        `ProtocolTimeout`): the silo's work failed, so it drops out of the session."""
        self._left.set()

    @contextlib.contextmanager
    def _refusals_written(self):
        try:
            yield
        except ProtocolError as refusal:
            if not isinstance(refusal, ProtocolTimeout):
                self._send("refusal", str(refusal)[:protocol.MAX_REASON_CHARS])
            raise

    def _send(self, phase: str, message: str) -> None:
        item = dict(secure_round.protocol_item_key(self.silo_id, self.run_id, self.step, phase))
        item.update({"round_key": secure_round.protocol_round_key(self.run_id, self.step), "secagg": message,
                     "written_at": time.time()})
        self.store.put_item_if_absent(item)

    def _await(self, name: str) -> dict:
        """The server's message `name`, polled for; past each phase deadline a `wait` item asks
        the handler to look again (it closes the phase without the silos that died)."""
        nudge_at = time.monotonic() + secure_round.PHASE_SECONDS + 1.0
        check_closed_at = time.monotonic() + CLOSED_POLL_SECONDS
        while True:
            document = self._read(name)
            if document is not None:
                if not isinstance(document, dict):
                    raise ProtocolError(f"the server's {name} message is not an object")
                return document
            now = time.monotonic()
            if now > check_closed_at:  # a step closed without this silo: looked for less often
                if self._read_closed():
                    raise ProtocolTimeout(f"step {self.step} closed before the server's {name} message came")
                check_closed_at = now + CLOSED_POLL_SECONDS
            if now > self.deadline:
                raise ProtocolTimeout(f"the server's {name} message did not come within the round's deadline")
            if self._left.is_set():
                raise ProtocolTimeout(f"silo {self.silo_id} left the session before the server's {name} message")
            if now > nudge_at:
                self._waits += 1
                self._send(f"wait-{self._waits}", name)
                nudge_at = now + secure_round.PHASE_SECONDS
            time.sleep(POLL_SECONDS)

    def _await_closed(self) -> None:
        """Waits (nudging past each phase deadline) until the step is closed: if a silo died
        after signing, the handler closes the last phase without it only when asked again."""
        nudge_at = time.monotonic() + secure_round.PHASE_SECONDS + 1.0
        while not self._read_closed() and time.monotonic() < self.deadline:
            if time.monotonic() > nudge_at:
                self._waits += 1
                self._send(f"wait-{self._waits}", "closed")
                nudge_at = time.monotonic() + secure_round.PHASE_SECONDS
            time.sleep(POLL_SECONDS)

    def _read(self, name: str) -> Optional[Any]:
        try:
            return secure_round.read_server_message(self.store, self.run_id, self.step, name)
        except AccessDeniedError:
            return None  # S3 answers 403 for an object not yet written when the reader may not list
        except ValueError as error:
            raise ProtocolError(f"the server's {name} message is not JSON: {error}") from None

    def _read_closed(self) -> bool:
        try:
            return self.store.exists(protocol.closed_key(self.run_id, self.step))
        except AccessDeniedError:
            return False
