"""The protocol's cryptographic primitives, every one from pyca `cryptography`.

- key agreement: X25519; a shared secret becomes a key through HKDF-SHA256 with the session
  and the key's purpose in `info` (keys of one session never serve another);
- signatures: Ed25519 (each client's long-term identity key signs its round keys);
- authenticated encryption: AES-256-GCM, a random 96-bit nonce per message, the session and
  both parties' ids as associated data;
- the mask generator: AES-256-CTR keyed by a 256-bit seed, its keystream read as integers.

Example::

    seed = agreed_key(own_private, peer_public, session, b"mask")
    mask = keystream(seed, 8 * length)
"""

from __future__ import annotations

import os
import threading
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

__all__ = [
    "AuthenticationError", "KEY_BYTES", "agreed_key", "decrypt", "encrypt", "identity_from_bytes", "identity_key",
    "identity_private_bytes", "keystream", "keystream_into",
    "new_agreement_key", "private_bytes", "private_from_bytes", "public_bytes", "sign", "verify",
]

KEY_BYTES = 32
_NONCE_BYTES = 12


class AuthenticationError(ValueError):
    """A signature or an authenticated ciphertext did not verify."""


def new_agreement_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def identity_key() -> Ed25519PrivateKey:
    """A new long-term identity (signing) key."""
    return Ed25519PrivateKey.generate()


def identity_private_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32 bytes of an identity key, to keep in the silo's secret store."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def identity_from_bytes(data: bytes) -> Ed25519PrivateKey:
    """An identity key from its raw 32 bytes (`identity_private_bytes`)."""
    return Ed25519PrivateKey.from_private_bytes(data)


def public_bytes(key) -> bytes:
    """The raw 32-byte public key of an X25519 or Ed25519 private or public key."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(data)


def agreed_key(own: X25519PrivateKey, peer_public: bytes, session: bytes, purpose: bytes) -> bytes:
    """A 256-bit key both parties derive: HKDF-SHA256 over X25519(own, peer).

    Raises:
      ValueError: `peer_public` is not a valid X25519 public key.
    """
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"fedsim-secagg/" + purpose + b"/" + session).derive(shared)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public: bytes, signature: bytes, message: bytes) -> None:
    """Raises `AuthenticationError` unless `signature` is `public`'s on `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError) as error:
        raise AuthenticationError("the signature does not verify") from error


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Raises `AuthenticationError` if the ciphertext or its associated data was altered."""
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], associated)
    except (InvalidTag, ValueError) as error:
        raise AuthenticationError("the ciphertext does not authenticate") from error


def _ctr(seed: bytes) -> Any:
    if len(seed) != KEY_BYTES:
        raise ValueError(f"a mask seed is {KEY_BYTES} bytes, not {len(seed)}")
    return Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()


def keystream(seed: bytes, length: int) -> bytes:
    """`length` pseudorandom bytes from a 256-bit seed: AES-256-CTR over zeros, counter from 0."""
    encryptor = _ctr(seed)
    return encryptor.update(bytes(length)) + encryptor.finalize()


_zeros_lock = threading.Lock()
_zeros: dict = {}  # length -> that many zero bytes (read only; the last two lengths kept)


def _zero_bytes(length: int) -> bytes:
    with _zeros_lock:
        zeros = _zeros.get(length)
        if zeros is None:
            while len(_zeros) >= 2:
                _zeros.pop(next(iter(_zeros)))
            zeros = _zeros[length] = bytes(length)
        return zeros


def keystream_into(seed: bytes, buffer: bytearray, length: int) -> memoryview:
    """`keystream(seed, length)` written into `buffer` (at least `length + 15` bytes), no copy.

    Why: a 20 MB model's mask is 20 MB of keystream; allocating the plaintext zeros and the
    output for every mask costs five times the cipher itself.

    Args:
      seed: the 256-bit mask seed.
      buffer: where to write (reusable across calls).
      length: how many keystream bytes.

    Returns:
      A view of the first `length` bytes of `buffer`.
    """
    if len(buffer) < length + 15:
        raise ValueError(f"the buffer holds {len(buffer)} bytes; {length + 15} are needed")
    encryptor = _ctr(seed)
    written = encryptor.update_into(_zero_bytes(length), buffer)
    if written != length:
        raise RuntimeError(f"AES-CTR wrote {written} of {length} bytes")
    return memoryview(buffer)[:length]
