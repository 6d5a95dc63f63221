"""The client's side of a secure-sum session: a state machine that refuses what it should not do.

Steps, each at most once and in order (anything else is a replayed or reordered message):
1. `advertise()`: two fresh X25519 key pairs, signed with the client's long-term identity key;
2. `share_keys(directory)`: checks every listed key against the signer's pinned identity, then
   shares its self-mask seed and its mask key t-out-of-n (Shamir) among its neighbours, each
   share encrypted for its recipient (AES-GCM under an X25519 + HKDF key);
3. `masked_input(shares, x)`: `y = x + PRG(b) + sum over neighbours v of +/-PRG(s_uv) mod 2**k`;
4. `sign_survivors(survivors)`: signs the list of clients whose masked inputs the server holds
   (the consistency check: the server cannot tell clients different lists);
5. `unmask(request)`: checks that no client is both surviving and dropped, that the list is the
   one at least `threshold` survivors signed, then reveals, per neighbour, one kind of share
   only: the self-mask seed's share of a survivor, the mask key's share of a dropped client.

Example::

    client = SecAggClient("a", params, identity_key, pinned_identities)
    advertised = client.advertise()
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

import numpy as np

from fedsim.core.secagg import crypto, shamir, vectors
from fedsim.core.secagg.messages import (
    AdvertiseKeys, EncryptedShares, KeyDirectory, MaskedInput, ProtocolRefusal, SharesFor, UnmaskRequest, UnmaskShares,
)
from fedsim.core.secagg.params import SecAggParams

__all__ = ["SecAggClient", "advertised_bytes", "share_associated_data", "survivors_bytes"]

_STEPS = ("new", "advertised", "shared", "masked", "signed", "unmasked")


def advertised_bytes(params: SecAggParams, sender: str, cipher_public: bytes, mask_public: bytes) -> bytes:
    """What a client's identity key signs when it advertises its session keys."""
    return b"advertise|" + params.digest + b"|" + sender.encode() + b"|" + cipher_public + mask_public


def survivors_bytes(params: SecAggParams, survivors) -> bytes:
    """What a survivor signs in the consistency check: the session and the sorted survivors."""
    return b"survivors|" + params.digest + b"|" + json.dumps(sorted(survivors)).encode()


def share_associated_data(params: SecAggParams, sender: str, recipient: str) -> bytes:
    return b"share|" + params.digest + b"|" + json.dumps([sender, recipient]).encode()


class SecAggClient:
    """One client's session (see the module docstring).

    Args:
      client_id: this client's id (one of `params.participants`).
      params: the session's parameters.
      identity: this client's long-term Ed25519 identity key.
      pinned: client id -> the raw Ed25519 public identity key pinned for it (out of band, at
        onboarding); a key not signed by its owner's pinned identity is refused.

    Raises (from every step):
      ProtocolRefusal: what the server sent is refused; the message says why.
    """

    def __init__(self, client_id: str, params: SecAggParams, identity, pinned: Mapping[str, bytes]):
        if client_id not in params.participants:
            raise ValueError(f"{client_id} is not a participant of session {params.session}")
        self.id, self.params, self.identity, self.pinned = client_id, params, identity, dict(pinned)
        self._step = "new"
        self._cipher_key = crypto.new_agreement_key()
        self._mask_key = crypto.new_agreement_key()
        self._seed = os.urandom(crypto.KEY_BYTES)  # b_u: the self-mask seed
        self._directory: dict = {}
        self._neighbours: frozenset = frozenset()
        self._received: dict = {}  # sender -> (seed share, key share)
        self._survivors: Optional[tuple] = None

    def _advance(self, expected: str, new: str, what: str) -> None:
        if self._step != expected:
            raise ProtocolRefusal(f"{self.id}: {what} arrived when the session is at step '{self._step}'; "
                                  f"a replayed or reordered message is refused")
        self._step = new

    def _refuse(self, reason: str):
        self._step = "refused"
        raise ProtocolRefusal(f"{self.id}: {reason}")

    # 1 ------------------------------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        self._advance("new", "advertised", "a request to advertise keys")
        cipher_public, mask_public = crypto.public_bytes(self._cipher_key), crypto.public_bytes(self._mask_key)
        signature = crypto.sign(self.identity, advertised_bytes(self.params, self.id, cipher_public, mask_public))
        return AdvertiseKeys(self.id, cipher_public, mask_public, signature)

    # 2 ------------------------------------------------------------------------------------------
    def share_keys(self, directory: KeyDirectory) -> EncryptedShares:
        self._advance("advertised", "shared", "the key directory")
        entries = {}
        for entry in directory.entries:
            if entry.sender in entries:
                self._refuse(f"the key directory lists {entry.sender} twice")
            if entry.sender not in self.params.participants:
                self._refuse(f"the key directory lists {entry.sender}, not a participant")
            if entry.sender not in self.pinned:
                self._refuse(f"no identity key is pinned for {entry.sender}")
            try:
                crypto.verify(self.pinned[entry.sender], entry.signature,
                              advertised_bytes(self.params, entry.sender, entry.cipher_public, entry.mask_public))
            except crypto.AuthenticationError:
                self._refuse(f"the keys listed for {entry.sender} are not signed by its pinned identity key")
            entries[entry.sender] = entry
        own = entries.get(self.id)
        if own is None or own.cipher_public != crypto.public_bytes(self._cipher_key) or own.mask_public != crypto.public_bytes(self._mask_key):
            self._refuse("the key directory does not hold this client's own keys")
        if len(entries) < self.params.threshold:
            self._refuse(f"only {len(entries)} clients advertised keys; the threshold is {self.params.threshold}")
        self._directory = entries
        self._neighbours = self.params.neighbourhood(self.id, list(entries))
        holders = {self.params.point(v): v for v in self._neighbours}
        threshold = self.params.threshold
        seed_shares = shamir.split(int.from_bytes(self._seed, "big"), threshold, list(holders))
        key_shares = shamir.split(int.from_bytes(crypto.private_bytes(self._mask_key), "big"), threshold, list(holders))
        ciphertexts = {}
        for point, recipient in holders.items():
            plaintext = seed_shares[point].to_bytes(shamir.SHARE_BYTES, "big") + key_shares[point].to_bytes(shamir.SHARE_BYTES, "big")
            key = crypto.agreed_key(self._cipher_key, entries[recipient].cipher_public, self.params.digest, b"share")
            ciphertexts[recipient] = crypto.encrypt(key, plaintext, share_associated_data(self.params, self.id, recipient))
        return EncryptedShares(self.id, ciphertexts)

    # 3 ------------------------------------------------------------------------------------------
    def masked_input(self, shares: SharesFor, vector: np.ndarray) -> MaskedInput:
        """`vector`: this client's input, `vector_length` integers in `[0, 2**modulus_bits)`."""
        self._advance("shared", "masked", "the shares for this client")
        bits = self.params.modulus_bits
        if shares.recipient != self.id:
            self._refuse(f"shares addressed to {shares.recipient} were sent to {self.id}")
        if self.id not in shares.ciphertexts:
            self._refuse("this client's own share is missing from what the server forwarded")
        for sender, ciphertext in shares.ciphertexts.items():
            if sender not in self._neighbours:
                self._refuse(f"a share from {sender}, who is not a neighbour in this session")
            key = crypto.agreed_key(self._cipher_key, self._directory[sender].cipher_public, self.params.digest, b"share")
            try:
                plaintext = crypto.decrypt(key, ciphertext, share_associated_data(self.params, sender, self.id))
            except crypto.AuthenticationError:
                self._refuse(f"the share from {sender} does not authenticate")
            if len(plaintext) != 2 * shamir.SHARE_BYTES:
                self._refuse(f"the share from {sender} has the wrong size")
            self._received[sender] = (int.from_bytes(plaintext[:shamir.SHARE_BYTES], "big"),
                                      int.from_bytes(plaintext[shamir.SHARE_BYTES:], "big"))
        if len(self._received) < self.params.threshold:
            self._refuse(f"only {len(self._received)} neighbours shared keys; the threshold is {self.params.threshold}")
        vector = np.asarray(vector)
        if vector.shape != (self.params.vector_length,):
            raise ValueError(f"{self.id}: the input has shape {vector.shape}, the session's is ({self.params.vector_length},)")
        masked = vectors.ModularSum(len(vector), bits)
        masked.add(vectors.pack([vector], bits))
        masked.add_mask(self._seed)
        for peer in sorted(self._received):
            if peer == self.id:
                continue
            seed = crypto.agreed_key(self._mask_key, self._directory[peer].mask_public, self.params.digest, b"mask")
            masked.add_mask(seed, sign=1 if self.id < peer else -1)
        return MaskedInput(self.id, vectors.to_wire(masked.value(), self.params.wire_dtype))

    # 4 ------------------------------------------------------------------------------------------
    def sign_survivors(self, survivors) -> bytes:
        self._advance("masked", "signed", "the list of survivors to sign")
        survivors = tuple(survivors)
        if self.id not in survivors:
            self._refuse("the list of survivors to sign does not hold this client")
        if len(set(survivors)) < self.params.threshold:
            self._refuse(f"only {len(set(survivors))} survivors; the threshold is {self.params.threshold}")
        self._survivors = tuple(sorted(set(survivors)))
        return crypto.sign(self.identity, survivors_bytes(self.params, self._survivors))

    # 5 ------------------------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest, signatures: Mapping[str, bytes]) -> UnmaskShares:
        """`signatures`: survivor -> its signature on the survivors' list (the consistency check)."""
        self._advance("signed", "unmasked", "the unmask request")
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = sorted(survivors & dropped)
        if both:
            self._refuse(f"the server lists {', '.join(both)} as both surviving and dropped")
        if tuple(sorted(survivors)) != self._survivors:
            self._refuse("the unmask request's survivors are not the list this client signed")
        signed = 0
        for signer, signature in signatures.items():
            if signer in survivors and signer in self.pinned:
                try:
                    crypto.verify(self.pinned[signer], signature, survivors_bytes(self.params, self._survivors))
                    signed += 1
                except crypto.AuthenticationError:
                    self._refuse(f"{signer}'s signature on the survivors' list does not verify")
        if signed < self.params.threshold:
            self._refuse(f"only {signed} survivors signed the survivors' list; the threshold is {self.params.threshold}")
        unaccounted = sorted(set(self._received) - survivors - dropped)
        if unaccounted:
            self._refuse(f"the unmask request does not say whether {', '.join(unaccounted)} survived")
        if self.id not in survivors:
            self._refuse("the unmask request lists this client as dropped")
        seed_shares = {v: self._received[v][0] for v in self._received if v in survivors}
        key_shares = {v: self._received[v][1] for v in self._received if v in dropped}
        return UnmaskShares(self.id, seed_shares, key_shares)
