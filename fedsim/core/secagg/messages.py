"""What travels in a secure-sum session, and its strict JSON form.

Client -> server: `AdvertiseKeys`, `EncryptedShares`, `MaskedInput`, `UnmaskShares`.
Server -> clients: `KeyDirectory` (everyone's advertised keys), `SharesFor` (the ciphertexts
addressed to one client), `UnmaskRequest` (who survived, who dropped).

Bytes travel as base64, field elements as hexadecimal; `from_json` checks every field's type and
size before anything is used, and names the message in its error.

Example::

    message = AdvertiseKeys.from_json(text, "a's advertised keys")
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import attrs

__all__ = [
    "AdvertiseKeys", "EncryptedShares", "KeyDirectory", "MaskedInput", "ProtocolError", "ProtocolRefusal",
    "SharesFor", "UnmaskRequest", "UnmaskShares",
]

MAX_ID_CHARS = 256


class ProtocolError(RuntimeError):
    """The session cannot go on (too few clients left, a malformed message); says why."""


class ProtocolRefusal(ProtocolError):
    """A client refuses what the server sent: a key not signed by its pinned identity, a client
    both surviving and dropped, a replayed or reordered message. The refusal is the client's
    answer for the round, with its reason."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes(value: Any, what: str, size: int = -1) -> bytes:
    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None or (size >= 0 and len(data) != size):
        raise ProtocolError(f"{what}: not {'base64' if size < 0 else f'{size} bytes of base64'}")
    return data


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise ProtocolError(f"{what}: not a client id")
    return value


def _ids(value: Any, what: str) -> tuple:
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: not a list of client ids")
    ids = tuple(_id(v, what) for v in value)
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"{what}: a client id appears twice")
    return ids


def _document(text: str, kind: str, what: str) -> dict:
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"{what}: not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise ProtocolError(f"{what}: not a {kind} message")
    return document


def _mapping(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: not a mapping")
    return value


@attrs.frozen
class AdvertiseKeys:
    """A client's two public keys for the session, signed by its long-term identity key."""

    sender: str
    cipher_public: bytes  # X25519: agrees the keys that encrypt shares
    mask_public: bytes  # X25519: agrees the pairwise mask seeds
    signature: bytes  # Ed25519 over the session digest, the sender and both keys

    def to_json(self) -> str:
        return json.dumps({"kind": "advertise_keys", "sender": self.sender, "cipher_public": _b64(self.cipher_public),
                           "mask_public": _b64(self.mask_public), "signature": _b64(self.signature)})

    @classmethod
    def from_json(cls, text: str, what: str) -> "AdvertiseKeys":
        d = _document(text, "advertise_keys", what)
        return cls(_id(d.get("sender"), what), _bytes(d.get("cipher_public"), what, 32), _bytes(d.get("mask_public"), what, 32),
                   _bytes(d.get("signature"), what, 64))


@attrs.frozen
class KeyDirectory:
    """The server's list of the clients that advertised keys, with their signed keys."""

    entries: tuple  # of AdvertiseKeys

    def to_json(self) -> str:
        return json.dumps({"kind": "key_directory", "entries": [json.loads(e.to_json()) for e in self.entries]})

    @classmethod
    def from_json(cls, text: str, what: str) -> "KeyDirectory":
        d = _document(text, "key_directory", what)
        entries = d.get("entries")
        if not isinstance(entries, list):
            raise ProtocolError(f"{what}: entries is not a list")
        return cls(tuple(AdvertiseKeys.from_json(json.dumps(e), what) for e in entries))


@attrs.frozen
class EncryptedShares:
    """A client's shares of its two secrets, one ciphertext per recipient."""

    sender: str
    ciphertexts: dict  # recipient -> bytes

    def to_json(self) -> str:
        return json.dumps({"kind": "encrypted_shares", "sender": self.sender,
                           "ciphertexts": {k: _b64(v) for k, v in self.ciphertexts.items()}})

    @classmethod
    def from_json(cls, text: str, what: str) -> "EncryptedShares":
        d = _document(text, "encrypted_shares", what)
        return cls(_id(d.get("sender"), what), {_id(k, what): _bytes(v, what) for k, v in _mapping(d.get("ciphertexts"), what).items()})


@attrs.frozen
class SharesFor:
    """The ciphertexts addressed to one client, by sender."""

    recipient: str
    ciphertexts: dict  # sender -> bytes

    def to_json(self) -> str:
        return json.dumps({"kind": "shares_for", "recipient": self.recipient,
                           "ciphertexts": {k: _b64(v) for k, v in self.ciphertexts.items()}})

    @classmethod
    def from_json(cls, text: str, what: str) -> "SharesFor":
        d = _document(text, "shares_for", what)
        return cls(_id(d.get("recipient"), what), {_id(k, what): _bytes(v, what) for k, v in _mapping(d.get("ciphertexts"), what).items()})


@attrs.frozen
class MaskedInput:
    """A client's input plus its masks, modulo `2**modulus_bits`, in the session's wire dtype."""

    sender: str
    vector: bytes

    def to_json(self) -> str:
        return json.dumps({"kind": "masked_input", "sender": self.sender, "vector": _b64(self.vector)})

    @classmethod
    def from_json(cls, text: str, what: str) -> "MaskedInput":
        d = _document(text, "masked_input", what)
        return cls(_id(d.get("sender"), what), _bytes(d.get("vector"), what))


@attrs.frozen
class UnmaskRequest:
    """Who the server says survived (sent a masked input) and who dropped before it."""

    survivors: tuple
    dropped: tuple

    def to_json(self) -> str:
        return json.dumps({"kind": "unmask_request", "survivors": list(self.survivors), "dropped": list(self.dropped)})

    @classmethod
    def from_json(cls, text: str, what: str) -> "UnmaskRequest":
        d = _document(text, "unmask_request", what)
        return cls(_ids(d.get("survivors"), what), _ids(d.get("dropped"), what))


@attrs.frozen
class UnmaskShares:
    """A client's answer: shares of survivors' self-mask seeds and of dropped clients' mask keys."""

    sender: str
    seed_shares: dict  # survivor -> int
    key_shares: dict  # dropped client -> int

    def to_json(self) -> str:
        return json.dumps({"kind": "unmask_shares", "sender": self.sender,
                           "seed_shares": {k: format(v, "x") for k, v in self.seed_shares.items()},
                           "key_shares": {k: format(v, "x") for k, v in self.key_shares.items()}})

    @classmethod
    def from_json(cls, text: str, what: str) -> "UnmaskShares":
        d = _document(text, "unmask_shares", what)

        def field_elements(value: Any) -> dict:
            out = {}
            for k, v in _mapping(value, what).items():
                if not isinstance(v, str) or len(v) > 140:
                    raise ProtocolError(f"{what}: a share is not a field element")
                try:
                    out[_id(k, what)] = int(v, 16)
                except ValueError:
                    raise ProtocolError(f"{what}: a share is not hexadecimal") from None
            return out

        return cls(_id(d.get("sender"), what), field_elements(d.get("seed_shares")), field_elements(d.get("key_shares")))
