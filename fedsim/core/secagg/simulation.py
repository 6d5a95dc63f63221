"""The protocol run among simulated clients: the exact sum, what each party sent, dropouts.

One implementation of the protocol (`client`, `server`) serves both this simulation and the
silos; here the messages go through their JSON forms, as they would on the wire, so their
sizes are measured.

Example::

    outcome = run_protocol({"a": x_a, "b": x_b, "c": x_c}, threshold=2, modulus_bits=32,
                           drop={"c": "unmask"})   # c dies after sending its masked input
    outcome.total   # x_a + x_b + x_c modulo 2**32
"""

from __future__ import annotations

import collections
from typing import Mapping, Optional

import attrs
import numpy as np

from fedsim.core.secagg import crypto
from fedsim.core.secagg.client import SecAggClient
from fedsim.core.secagg.messages import (
    AdvertiseKeys, EncryptedShares, KeyDirectory, MaskedInput, SharesFor, UnmaskRequest, UnmaskShares,
)
from fedsim.core.secagg.params import SecAggParams
from fedsim.core.secagg.server import SecAggServer

__all__ = ["DROP_POINTS", "ProtocolOutcome", "run_protocol"]

# Where a client may die: before the step named (it took part in every step before it).
DROP_POINTS = ("share_keys", "masked_input", "sign", "unmask")


@attrs.frozen
class ProtocolOutcome:
    """What a session gave: the sum, whose inputs it holds, and the bytes each client sent."""

    total: np.ndarray  # uint64, modulo 2**modulus_bits
    included: tuple  # the clients whose inputs are in the sum (the survivors)
    uploaded_bytes: dict  # client -> bytes it sent (masked vector raw, other messages as JSON)
    vector_bytes: int  # bytes of one masked vector on the wire


def run_protocol(inputs: Mapping[str, np.ndarray], threshold: int, modulus_bits: int, *,
                 neighbours: Optional[int] = None, drop: Optional[Mapping[str, str]] = None,
                 session: str = "simulation", identities: Optional[Mapping[str, object]] = None) -> ProtocolOutcome:
    """Runs one secure-sum session among `inputs`' clients.

    Args:
      inputs: client id -> its vector of integers in `[0, 2**modulus_bits)` (all one length).
      threshold: shares needed to reconstruct (see `SecAggParams`).
      modulus_bits: the sum is modulo `2**modulus_bits`.
      neighbours: None for SecAgg, an even neighbourhood size for SecAgg+.
      drop: client id -> the step before which it dies (one of `DROP_POINTS`).
      session: the session's name.
      identities: client id -> its Ed25519 identity key (default: fresh ones, all pinned).

    Returns:
      A `ProtocolOutcome`.

    Raises:
      ProtocolError: too many clients dropped for the threshold.
    """
    drop = dict(drop or {})
    unknown = {point for point in drop.values() if point not in DROP_POINTS}
    if unknown:
        raise ValueError(f"drop points must be among {DROP_POINTS}, not {sorted(unknown)}")
    ids = tuple(sorted(inputs))
    length = len(next(iter(inputs.values()))) if inputs else 0
    params = SecAggParams(session=session, participants=ids, threshold=threshold, modulus_bits=modulus_bits,
                          vector_length=length, neighbours=neighbours)
    identities = dict(identities or {c: crypto.identity_key() for c in ids})
    pinned = {c: crypto.public_bytes(identities[c]) for c in ids}
    clients = {c: SecAggClient(c, params, identities[c], pinned) for c in ids}
    server = SecAggServer(params)
    sent = collections.Counter()

    def alive(client: str, step: str) -> bool:
        return client not in drop or DROP_POINTS.index(drop[client]) > DROP_POINTS.index(step)

    def wire(message, kind, what):  # through the JSON form, as on the wire
        text = message.to_json()
        return kind.from_json(text, what), len(text)

    for c in ids:
        message, size = wire(clients[c].advertise(), AdvertiseKeys, f"{c}'s keys")
        sent[c] += size
        server.receive_keys(message)
    directory, _ = wire(server.close_advertising(), KeyDirectory, "the key directory")
    for c in ids:
        if alive(c, "share_keys"):
            message, size = wire(clients[c].share_keys(directory), EncryptedShares, f"{c}'s shares")
            sent[c] += size
            server.receive_shares(message)
    forwarded = server.close_sharing()
    vector_bytes = length * params.wire_dtype.itemsize
    for c, shares in forwarded.items():
        if alive(c, "masked_input"):
            shares, _ = wire(shares, SharesFor, f"the shares for {c}")
            message, _ = wire(clients[c].masked_input(shares, np.asarray(inputs[c])), MaskedInput, f"{c}'s masked input")
            sent[c] += vector_bytes + 100  # the vector's bytes as stored (an .npz member), plus its record
            server.receive_masked(message)
    survivors = server.close_masking()
    for c in survivors:
        if alive(c, "sign"):
            signature = clients[c].sign_survivors(survivors)
            sent[c] += len(signature) + len(c)
            server.receive_signature(c, signature)
    request, signatures = server.close_signing()
    for c in signatures:
        if alive(c, "unmask"):
            request_seen, _ = wire(request, UnmaskRequest, "the unmask request")
            message, size = wire(clients[c].unmask(request_seen, signatures), UnmaskShares, f"{c}'s unmask shares")
            sent[c] += size
            server.receive_unmask(message)
    return ProtocolOutcome(server.result(), survivors, dict(sent), vector_bytes)
