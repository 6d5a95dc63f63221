"""The server's side of a secure-sum session: it collects, forwards, and in the end learns the sum.

The server never holds an unmasked input: it holds masked vectors, the clients' public keys,
ciphertexts it cannot read, and after the unmask step shares that reconstruct the survivors'
self-mask seeds and the dropped clients' mask keys, which remove exactly the masks that do not
cancel from the *sum* of the masked vectors.

Each `close_*` step freezes who takes part from then on and raises `ProtocolError` when fewer
than `threshold` clients are left.

Example::

    server = SecAggServer(params)
    for message in advertised: server.receive_keys(message)
    directory = server.close_advertising()
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from fedsim.core.secagg import crypto, shamir, vectors
from fedsim.core.secagg.messages import (
    AdvertiseKeys, EncryptedShares, KeyDirectory, MaskedInput, ProtocolError, SharesFor, UnmaskRequest, UnmaskShares,
)
from fedsim.core.secagg.params import SecAggParams

__all__ = ["SecAggServer"]


class SecAggServer:
    """One session on the server (see the module docstring)."""

    def __init__(self, params: SecAggParams):
        self.params = params
        self._keys: dict = {}  # U1: sender -> AdvertiseKeys
        self._shares: dict = {}  # U2: sender -> EncryptedShares
        self._masked: dict = {}  # U3: sender -> vector
        self._signatures: dict = {}
        self._unmask: dict = {}  # U4: sender -> UnmaskShares
        self._step = "advertising"
        self.survivors: Optional[tuple] = None
        self.dropped: Optional[tuple] = None

    def _expect(self, step: str, sender: str, allowed, what: str) -> None:
        if self._step != step:
            raise ProtocolError(f"{what} from {sender} arrived at step '{self._step}'")
        if sender not in allowed:
            raise ProtocolError(f"{what} from {sender}, who is not in this step of session {self.params.session}")

    def _at_least_threshold(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise ProtocolError(f"session {self.params.session}: only {count} clients {what}; the threshold is {self.params.threshold}")

    def neighbours(self, client: str) -> frozenset:
        return self.params.neighbourhood(client, list(self._keys))

    # 1 ------------------------------------------------------------------------------------------
    def receive_keys(self, message: AdvertiseKeys) -> None:
        self._expect("advertising", message.sender, self.params.participants, "advertised keys")
        self._keys.setdefault(message.sender, message)

    def close_advertising(self) -> KeyDirectory:
        self._at_least_threshold(len(self._keys), "advertised keys")
        self._step = "sharing"
        return KeyDirectory(tuple(self._keys[s] for s in sorted(self._keys)))

    # 2 ------------------------------------------------------------------------------------------
    def receive_shares(self, message: EncryptedShares) -> None:
        self._expect("sharing", message.sender, self._keys, "encrypted shares")
        if set(message.ciphertexts) != set(self.neighbours(message.sender)):
            raise ProtocolError(f"the shares of {message.sender} are not addressed to its neighbours")
        self._shares.setdefault(message.sender, message)

    def close_sharing(self) -> dict:
        """recipient -> `SharesFor`: what each client that shared receives."""
        self._at_least_threshold(len(self._shares), "shared keys")
        self._step = "masking"
        return {recipient: SharesFor(recipient, {sender: shares.ciphertexts[recipient] for sender, shares in sorted(self._shares.items())
                                                 if recipient in shares.ciphertexts})
                for recipient in sorted(self._shares)}

    # 3 ------------------------------------------------------------------------------------------
    def receive_masked(self, message: MaskedInput) -> None:
        self._expect("masking", message.sender, self._shares, "a masked input")
        if message.sender not in self._masked:
            self._masked[message.sender] = vectors.from_wire(message.vector, self.params.vector_length, self.params.modulus_bits,
                                                             self.params.wire_dtype, f"{message.sender}'s masked input")

    def close_masking(self) -> tuple:
        """The survivors (clients whose masked inputs are in), for each to sign."""
        self._at_least_threshold(len(self._masked), "sent masked inputs")
        self._step = "signing"
        self.survivors = tuple(sorted(self._masked))
        self.dropped = tuple(sorted(set(self._shares) - set(self._masked)))
        return self.survivors

    # 4 ------------------------------------------------------------------------------------------
    def receive_signature(self, sender: str, signature: bytes) -> None:
        self._expect("signing", sender, self._masked, "a signature on the survivors")
        self._signatures.setdefault(sender, signature)

    def close_signing(self) -> tuple:
        """`(UnmaskRequest, signatures)` for every survivor."""
        self._at_least_threshold(len(self._signatures), "signed the survivors' list")
        self._step = "unmasking"
        return UnmaskRequest(self.survivors, self.dropped), dict(self._signatures)

    # 5 ------------------------------------------------------------------------------------------
    def receive_unmask(self, message: UnmaskShares) -> None:
        self._expect("unmasking", message.sender, self._signatures, "unmask shares")
        self._unmask.setdefault(message.sender, message)

    def result(self) -> np.ndarray:
        """The sum of the survivors' inputs modulo `2**modulus_bits` (uint64).

        Raises:
          ProtocolError: fewer than `threshold` answered the unmask step, or a secret cannot be
            reconstructed from the shares that came in.
        """
        self._at_least_threshold(len(self._unmask), "answered the unmask step")
        self._step = "done"
        bits, length = self.params.modulus_bits, self.params.vector_length
        total = vectors.ModularSum(length, bits)
        for vector in self._masked.values():
            total.add(vector)
        for survivor in self.survivors:
            seed = self._reconstruct(survivor, "seed_shares", "self-mask seed").to_bytes(crypto.KEY_BYTES, "big")
            total.add_mask(seed, sign=-1)
        for dropped in self.dropped:
            key = crypto.private_from_bytes(self._reconstruct(dropped, "key_shares", "mask key").to_bytes(crypto.KEY_BYTES, "big"))
            for survivor in self.survivors:
                if dropped not in self._shares or survivor not in self.neighbours(dropped):
                    continue
                seed = crypto.agreed_key(key, self._keys[survivor].mask_public, self.params.digest, b"mask")
                # the survivor added +PRG(s_uv) if its id sorts first, else -PRG(s_uv): take it back out
                total.add_mask(seed, sign=-1 if survivor < dropped else 1)
        return total.value()

    def _reconstruct(self, owner: str, field: str, what: str) -> int:
        shares = {self.params.point(message.sender): getattr(message, field)[owner]
                  for message in self._unmask.values() if owner in getattr(message, field)}
        if len(shares) < self.params.threshold:
            raise ProtocolError(f"session {self.params.session}: {len(shares)} shares of {owner}'s {what}; "
                                f"{self.params.threshold} are needed")
        secret = shamir.combine(dict(sorted(shares.items())[: self.params.threshold]))
        if secret >> (8 * crypto.KEY_BYTES):
            raise ProtocolError(f"session {self.params.session}: the shares of {owner}'s {what} do not fit together")
        return secret
