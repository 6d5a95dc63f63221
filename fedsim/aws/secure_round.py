"""Secure aggregation in a serverless step: the server learns only the sum of the secure parts.

A step whose computation uses `federated_secure_sum_bitwidth` / `federated_secure_sum` runs the
SecAgg protocol (`fedsim.core.secagg`, the same code the simulation runs) between the silos and
the aggregation handler, through the stack's own storage:

- a silo's protocol messages are items in its own partition (`<run>#<step>#sa#<phase>`,
  attribute `secagg`); its masked input travels in its result upload, in place of the secure
  parts of its work output (the other parts, plain sums and means, stay as they were);
- the server's messages are objects under `runs/<run>/round-<step>/secagg/` that silos may read:
  `directory.json` (the signed keys), `shares-<silo>.json`, `survivors.json`, `unmask.json`;
- the handler closes each protocol phase when every silo still in it has answered, or, past the
  phase's deadline, when at least `threshold` (the round's quorum) have; a silo waiting past a
  deadline writes a `wait` item so the handler looks again. Each server message is written
  once (a retried or raced close finds what was written and goes on from it).

The step then aggregates: the plain parts of the survivors' uploads through the phases as
usual, and for the secure parts the unmasked sum the protocol gives.

Example (what the handler does with a protocol item)::

    SecureRoundServer(store, manifest).advance(run_id, step, round_item)
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import threading
import time
from typing import Any, Optional, Sequence

import attrs
import numpy as np

from fedsim.aws import protocol
from fedsim.aws.store import ObjectAbsentError, ObjectExistsError, Store
from fedsim.core import structure
from fedsim.core import types as ft
from fedsim.core.secagg import params as secagg_params

__all__ = ["PHASE_SECONDS", "SecureLayout", "default_threshold", "neighbourhood_size", "protocol_item_key", "protocol_round_key",
           "server_message_key"]

PHASE_SECONDS = 20.0  # how long a protocol phase waits for silos that may have died


def protocol_round_key(run_id: str, step: str) -> str:
    """The by_round index partition of a step's protocol items (apart from its results)."""
    return f"{protocol.round_key(run_id, step)}#sa"


def protocol_item_key(silo: str, run_id: str, step: str, phase: str) -> dict:
    return {"pk": silo, "sk": f"{protocol.round_key(run_id, step)}#sa#{phase}"}


def server_message_key(run_id: str, step: str, name: str) -> str:
    return f"{protocol.round_prefix(run_id, step)}/secagg/{name}.json"


def session_name(run_id: str, step: str) -> str:
    return f"{run_id}/{step}"


@attrs.frozen
class SecureLayout:
    """Which parts of a step's work output are secure sums, and how they travel.

    Attributes:
      output_type: the work's output type (a tuple, one element per aggregation).
      bitwidths: per aggregation, None (plain) or the secure sum's bitwidths in leaf order.
    """

    output_type: ft.StructType
    bitwidths: tuple

    @classmethod
    def of(cls, output_type: ft.Type, bitwidths: Optional[Sequence]) -> Optional["SecureLayout"]:
        """The layout, or None when no aggregation of the step is a secure sum."""
        if not bitwidths or all(b is None for b in bitwidths):
            return None
        if not isinstance(output_type, ft.StructType) or len(output_type) != len(bitwidths):
            raise ValueError(f"the secure sums' bitwidths ({len(bitwidths)}) do not fit the work's output {output_type}")
        return cls(output_type, tuple(None if b is None else tuple(int(w) for w in b) for b in bitwidths))

    @property
    def secure(self) -> tuple:
        return tuple(i for i, b in enumerate(self.bitwidths) if b is not None)

    @property
    def leaf_types(self) -> list:
        return [leaf for i in self.secure for leaf in ft.flatten_type(self.output_type[i])]

    @property
    def shapes(self) -> list:
        return [tuple(leaf.shape) for leaf in self.leaf_types]

    @property
    def vector_length(self) -> int:
        return sum(int(np.prod(shape, dtype=np.int64)) for shape in self.shapes)

    @property
    def value_bits(self) -> int:
        return max(w for i in self.secure for w in self.bitwidths[i])

    def modulus_bits(self, silos: int) -> int:
        """Bits of the protocol's modulus: the sum of `silos` values never wraps."""
        return self.value_bits + max(1, math.ceil(math.log2(silos + 1)))

    def params(self, run_id: str, step: str, silos: Sequence[str], threshold: int,
               neighbours: Optional[int] = None) -> secagg_params.SecAggParams:
        bits = self.modulus_bits(len(silos))
        if bits > 64:
            raise ValueError(f"a secure sum of {len(silos)} values of {self.value_bits} bits does not fit 64 bits")
        return secagg_params.SecAggParams(session=session_name(run_id, step), participants=tuple(sorted(silos)),
                                          threshold=threshold, modulus_bits=bits, vector_length=self.vector_length,
                                          neighbours=neighbours)

    def step_params(self, section: dict, run_id: str, step: str, silos: Sequence[str]) -> secagg_params.SecAggParams:
        """The session's parameters from the step's manifest section (`secure_threshold`, and
        `secure_neighbours` for SecAgg+): what the silos and the handler both use.

        Raises:
          ValueError: the threshold is not a majority of a neighbourhood (all the step's silos
            for SecAgg, `neighbours + 1` of them for SecAgg+), or the neighbours are not an even
            number >= 2; the message says which.
        """
        neighbours, threshold = section.get("secure_neighbours"), section.get("secure_threshold")
        if neighbours is not None and (not isinstance(neighbours, int) or isinstance(neighbours, bool) or neighbours < 2 or neighbours % 2):
            raise ValueError(f"the secure step's neighbours {neighbours!r} are not an even number >= 2 (SecAgg+)")
        group = neighbourhood_size(len(silos), neighbours)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or not (group // 2 < threshold <= group or group < 3 and threshold == group):
            raise ValueError(f"the secure step's threshold {threshold!r} is not a majority of its neighbourhoods of {group} silos")
        return self.params(run_id, step, silos, threshold, neighbours)


    def upload_type(self, silos: int) -> ft.StructType:
        """What a silo uploads: the plain parts of its output, then its masked vector."""
        dtype = np.uint32 if self.modulus_bits(silos) <= 32 else np.uint64
        plain = [(None, self.output_type[i]) for i in range(len(self.bitwidths)) if i not in self.secure]
        return ft.StructType(plain + [(None, ft.TensorType(dtype, [self.vector_length]))], container=tuple)

    def split(self, output: Any) -> tuple:
        """`(plain parts, the secure parts packed into one vector)` of a work output.

        Raises:
          ValueError: a secure value is outside its range (the intrinsic's own check).
        """
        from fedsim.core.secagg import vectors

        elements = structure.struct_elements(output, self.output_type)
        plain = tuple(e for i, e in enumerate(elements) if i not in self.secure)
        leaves = []
        for i in self.secure:
            for leaf, width in zip(structure.flatten_value(elements[i], self.output_type[i]), self.bitwidths[i]):
                leaf = np.asarray(leaf)
                if leaf.size and (leaf.min() < 0 or int(leaf.max()) >> width):
                    raise ValueError(f"a secure-sum value is outside [0, 2**{width})")
                leaves.append(leaf)
        return plain, vectors.pack(leaves, self.value_bits)

    def secure_zeros(self) -> dict:
        """Zeros (eager tensors) in place of each secure sum: what `accumulate` folds for it,
        built once per step (a 20 MB model's zeros per silo cost more than the fold)."""
        import tensorflow as tf

        return {i: structure.unflatten_value(self.output_type[i], [tf.zeros(leaf.shape, leaf.dtype) for leaf in ft.flatten_type(self.output_type[i])])
                for i in self.secure}

    def full_output(self, plain: Sequence[Any], zeros: dict) -> Any:
        """A work output with the plain parts given and `zeros` (`secure_zeros()`) for the
        secure parts (what `accumulate` folds; the secure totals come from the protocol)."""
        plain = list(plain)
        elements = [zeros[i] if i in self.secure else plain.pop(0) for i in range(len(self.output_type))]
        return structure.pack_struct(self.output_type, elements)

    def with_secure_totals(self, accumulator: Any, accumulator_type: ft.StructType, total: np.ndarray) -> Any:
        """The accumulator with each secure sum's total set to the protocol's (int64 leaves)."""
        from fedsim.core.secagg import vectors

        leaves = vectors.unpack(total, self.shapes)
        elements = list(structure.struct_elements(accumulator, accumulator_type))
        for i in self.secure:
            count = len(ft.flatten_type(self.output_type[i]))
            elements[i] = tuple(leaves[:count])
            leaves = leaves[count:]
        return structure.pack_struct(accumulator_type, elements)


def neighbourhood_size(silos: int, neighbours: Optional[int]) -> int:
    """How many silos (itself included) each silo shares masks and secrets with."""
    return silos if neighbours is None else min(silos, neighbours + 1)


def default_threshold(quorum: int, silos: int, neighbours: Optional[int] = None) -> int:
    """The secure threshold a run uses: its quorum, within a neighbourhood, and never less than a
    majority of one (fewer colluding silos learn nothing; a majority cannot be split in two)."""
    group = neighbourhood_size(silos, neighbours)
    return group if group < 3 else max(group // 2 + 1, min(quorum, group))


def read_server_message(store: Store, run_id: str, step: str, name: str) -> Optional[dict]:
    """A server message of the step's protocol, or None if it is not written yet."""
    try:
        return json.loads(store.get_checked(server_message_key(run_id, step, name)))
    except ObjectAbsentError:
        return None


def write_server_message(store: Store, run_id: str, step: str, name: str, document: dict) -> dict:
    """Writes a server message once; a raced or retried close gets what was written first."""
    try:
        store.put_new(server_message_key(run_id, step, name), json.dumps(document, sort_keys=True).encode())
        return json.loads(json.dumps(document, sort_keys=True))  # as a reader will see it
    except ObjectExistsError:
        return read_server_message(store, run_id, step, name)


class _PublishedMessages:
    """The server messages a handler process has written or read. Each is written once and never
    changed, so a copy never goes stale: a warm handler reads each from S3 at most once, not on
    every invocation of the step (what is not written yet is always asked for again)."""

    LIMIT = 1024

    def __init__(self):
        self._documents: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def read(self, store: Store, run_id: str, step: str, name: str) -> Optional[dict]:
        key = (store.config.bucket, server_message_key(run_id, step, name))
        with self._lock:
            if key in self._documents:
                return self._documents[key]
        return self._keep(key, read_server_message(store, run_id, step, name))

    def write(self, store: Store, run_id: str, step: str, name: str, document: dict) -> dict:
        return self._keep((store.config.bucket, server_message_key(run_id, step, name)),
                          write_server_message(store, run_id, step, name, document))

    def _keep(self, key: tuple, document: Optional[dict]) -> Optional[dict]:
        if document is not None:
            with self._lock:
                self._documents[key] = document
                while len(self._documents) > self.LIMIT:
                    self._documents.popitem(last=False)
        return document


_PUBLISHED = _PublishedMessages()
PUBLISH_THREADS = 8  # the per-recipient share messages are written side by side


def deadline_passed(opened_at: float, now: Optional[float] = None) -> bool:
    return (time.time() if now is None else now) > opened_at + PHASE_SECONDS


@attrs.frozen
class ClosedProtocol:
    """Everything the server kept of a finished session, to replay into a `SecAggServer`."""

    directory: tuple  # AdvertiseKeys JSON texts, as published
    shares: dict  # sender -> EncryptedShares JSON text (U2)
    survivors: tuple  # whose masked inputs are in (U3)
    signatures: dict  # survivor -> signature bytes
    unmask: dict  # sender -> UnmaskShares JSON text


class SecurePhases:
    """The server's progress through one secure step, read from the store each time (any handler
    invocation may move it on): it publishes each phase's message once the phase is complete.

    Args:
      store: the stack's store.
      run_id, step, round_item: the step.
      params: the session's parameters.
    """

    def __init__(self, store: Store, run_id: str, step: str, round_item: dict, params: secagg_params.SecAggParams):
        self.store, self.run_id, self.step, self.round_item, self.params = store, run_id, step, round_item, params
        self.silos = tuple(sorted(round_item["silos"]))
        self.threshold = params.threshold
        self.items: dict = {}
        for record in store.by_round_key(protocol_round_key(run_id, step)):
            phase = str(record.get("sk", "")).rsplit("#", 1)[-1]
            silo, text = record.get("pk"), record.get("secagg")
            if silo in self.silos and isinstance(text, str) and _well_formed(phase, silo, text):
                self.items[(silo, phase)] = text

    def _answered(self, phase: str, among) -> list:
        return [s for s in among if (s, phase) in self.items]

    @property
    def refused(self) -> dict:
        """silo -> the reason it refused what the server sent (it takes no further part)."""
        return {silo: text for (silo, phase), text in self.items.items() if phase == "refusal"}

    def _expected(self, phase: str, among, verdicts: dict) -> list:
        """Who a phase still waits for: not a silo that refused, nor one whose result (a
        refusal of the work) came before it answered."""
        refused = self.refused
        return [s for s in among if (s, phase) in self.items or (s not in refused and s not in verdicts)]

    def _complete(self, answered: list, expected, opened_at: float, what: str) -> Optional[bool]:
        """True: close the phase now; None: wait; raises ProtocolError when it can no longer complete."""
        if len(answered) == len(expected):
            if len(answered) < self.threshold:
                raise _too_few(self, len(answered), what)
            return True
        if deadline_passed(opened_at):
            if len(answered) >= self.threshold:
                return True
            raise _too_few(self, len(answered), what)
        return None

    def _message(self, name: str) -> Optional[dict]:
        return _PUBLISHED.read(self.store, self.run_id, self.step, name)

    def _publish(self, name: str, document: dict) -> dict:
        return _PUBLISHED.write(self.store, self.run_id, self.step, name, dict(document, published_at=time.time()))

    def advance(self, verdicts: dict) -> Optional[ClosedProtocol]:
        """Publishes what the phases so far allow; returns the finished session, or None while
        it waits.

        Args:
          verdicts: silo -> the server's verdict on its result (its masked input).

        Raises:
          ProtocolError: a phase ended with fewer than `threshold` silos.
        """
        from fedsim.core.secagg.messages import EncryptedShares, SharesFor

        directory = self._message("directory")
        if directory is None:
            answered = self._answered("advertise", self.silos)
            expected = self._expected("advertise", self.silos, verdicts)
            if not self._complete(answered, expected, float(self.round_item["opened_at"]), "advertised keys"):
                return None
            entries = [json.loads(self.items[(s, "advertise")]) for s in answered]
            directory = self._publish("directory", {"entries": entries})
        members = [entry.get("sender") for entry in directory["entries"]]
        sharing = self._message("sharing")
        if sharing is None:
            answered = self._answered("shares", members)
            expected = self._expected("shares", members, verdicts)
            if not self._complete(answered, expected, float(directory["published_at"]), "shared keys"):
                return None
            shares = {s: EncryptedShares.from_json(self.items[(s, "shares")], f"{s}'s shares") for s in answered}

            def forward(recipient: str) -> None:
                forwarded = SharesFor(recipient, {s: m.ciphertexts[recipient] for s, m in sorted(shares.items()) if recipient in m.ciphertexts})
                self._publish(f"shares-{recipient}", json.loads(forwarded.to_json()))

            with concurrent.futures.ThreadPoolExecutor(min(PUBLISH_THREADS, len(answered))) as pool:
                list(pool.map(forward, answered))  # every one written (or an error raised) before `sharing`
            sharing = self._publish("sharing", {"senders": answered})
        senders = list(sharing["senders"])
        survivors = self._message("survivors")
        if survivors is None:
            judged = [s for s in senders if s in verdicts or s in self.refused]
            valid = [s for s in senders if verdicts.get(s, {}).get("status") == "valid"]
            if len(judged) < len(senders) and not deadline_passed(float(sharing["published_at"])):
                return None
            if len(valid) < self.threshold:
                raise _too_few(self, len(valid), "sent valid masked inputs")
            survivors = self._publish("survivors", {"survivors": valid, "dropped": sorted(set(senders) - set(valid))})
        alive = list(survivors["survivors"])
        unmask = self._message("unmask")
        if unmask is None:
            answered = self._answered("signature", alive)
            if not self._complete(answered, self._expected("signature", alive, {}), float(survivors["published_at"]), "signed the survivors"):
                return None
            request = {"kind": "unmask_request", "survivors": alive, "dropped": list(survivors["dropped"])}
            unmask = self._publish("unmask", {"request": request, "signatures": {s: self.items[(s, "signature")] for s in answered}})
        signers = list(unmask["signatures"])
        answered = self._answered("unmask", signers)
        if not self._complete(answered, self._expected("unmask", signers, {}), float(unmask["published_at"]), "answered the unmask step"):
            return None
        import base64

        return ClosedProtocol(
            directory=tuple(json.dumps(entry) for entry in directory["entries"]),
            shares={s: self.items[(s, "shares")] for s in senders},
            survivors=tuple(alive),
            signatures={s: base64.b64decode(v) for s, v in unmask["signatures"].items()},
            unmask={s: self.items[(s, "unmask")] for s in answered},
        )


def _well_formed(phase: str, silo: str, text: str) -> bool:
    """Whether a silo's protocol item is a message of its phase, sent in its own name (a silo's
    items are input: a malformed one counts as no answer and is never forwarded to other silos)."""
    import base64
    import binascii

    from fedsim.core.secagg.messages import AdvertiseKeys, EncryptedShares, ProtocolError, UnmaskShares

    kinds = {"advertise": AdvertiseKeys, "shares": EncryptedShares, "unmask": UnmaskShares}
    try:
        if phase in kinds:
            return kinds[phase].from_json(text, f"{silo}'s {phase} item").sender == silo
        if phase == "signature":
            return len(base64.b64decode(text, validate=True)) == 64
    except (ProtocolError, binascii.Error, ValueError):
        return False
    return phase.startswith(("wait-", "refusal"))


def _too_few(phases: SecurePhases, count: int, what: str) -> Exception:
    from fedsim.core.secagg.messages import ProtocolError

    # a refusal is the silo's own text (input): shown cut to the length a silo may write
    refused = "; ".join(f"{silo}: {reason[:protocol.MAX_REASON_CHARS]}" for silo, reason in sorted(phases.refused.items()))
    return ProtocolError(f"secure step {phases.step}: only {count} silo(s) {what}; the threshold is {phases.threshold}"
                         + (f" (refused by {refused})" if refused else ""))


def unmasked_sum(params: secagg_params.SecAggParams, closed: ClosedProtocol, masked: dict) -> np.ndarray:
    """The sum of the survivors' inputs: the session replayed into a `SecAggServer`.

    Args:
      params: the session's parameters.
      closed: what the server kept of the session.
      masked: survivor -> its masked vector (uint64), from its checked upload.

    Raises:
      ProtocolError: the session's messages do not fit together, or a secret cannot be rebuilt.
    """
    from fedsim.core.secagg import vectors
    from fedsim.core.secagg.messages import AdvertiseKeys, EncryptedShares, MaskedInput, UnmaskShares
    from fedsim.core.secagg.server import SecAggServer

    server = SecAggServer(params)
    for text in closed.directory:
        server.receive_keys(AdvertiseKeys.from_json(text, "an advertised key"))
    server.close_advertising()
    for sender, text in sorted(closed.shares.items()):
        server.receive_shares(EncryptedShares.from_json(text, f"{sender}'s shares"))
    server.close_sharing()
    for survivor in closed.survivors:
        server.receive_masked(MaskedInput(survivor, vectors.to_wire(masked[survivor], params.wire_dtype)))
    server.close_masking()
    for signer, signature in sorted(closed.signatures.items()):
        server.receive_signature(signer, signature)
    server.close_signing()
    for sender, text in sorted(closed.unmask.items()):
        server.receive_unmask(UnmaskShares.from_json(text, f"{sender}'s unmask shares"))
    return server.result()
