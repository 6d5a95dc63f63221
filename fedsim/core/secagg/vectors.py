"""Vectors modulo `2**bits`: masks from seeds, the wire form of a masked vector, and the
packing of a secure sum's integer leaves into one vector and back.

Example::

    vector = pack([np.array([1, 2]), np.array([[3]])], bits=16)
    masked = add(vector, mask(seed, len(vector), bits=16), bits=16)
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from fedsim.core.secagg import crypto
from fedsim.core.secagg.messages import ProtocolError

__all__ = ["ModularSum", "add", "from_wire", "mask", "pack", "subtract", "to_wire", "unpack"]


def _modulus_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def mask(seed: bytes, length: int, bits: int) -> np.ndarray:
    """The pseudorandom vector of `length` integers in `[0, 2**bits)` that `seed` expands to."""
    width = 4 if bits <= 32 else 8
    words = np.frombuffer(crypto.keystream(seed, width * length), dtype="<u4" if width == 4 else "<u8")
    return words.astype(np.uint64) & _modulus_mask(bits)


class ModularSum:
    """A running sum modulo `2**bits` of vectors and seed-expanded masks, added in place.

    Why: a masked input is the input plus one mask per neighbour, and the server's unmasking
    subtracts as many; with 20 MB models each is millions of entries. The sum is kept in the
    mask's own word (uint32 up to 32 bits), where adding wraps modulo `2**32`, a multiple of
    `2**bits`, so it is reduced once at the end instead of after every term (the same result as
    `add`/`subtract` term by term).

    Args:
        length: entries of each vector.
        bits: the modulus's bits (1..64).

    Example:
        >>> total = ModularSum(3, bits=8); total.add(np.array([250, 1, 2], np.uint64)); total.add_mask(b"k" * 32, sign=1)
    """

    def __init__(self, length: int, bits: int):
        self.bits = bits
        self._dtype = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
        self._total = np.zeros(length, self._dtype)
        self._scratch: Optional[bytearray] = None  # one mask's keystream, reused
    def add(self, vector: np.ndarray, sign: int = 1) -> None:
        """Adds (`sign=1`) or subtracts (`sign=-1`) a vector of integers in `[0, 2**bits)`."""
        operation = np.add if sign > 0 else np.subtract
        operation(self._total, np.asarray(vector).astype(self._dtype, copy=False), out=self._total)

    def add_mask(self, seed: bytes, sign: int = 1) -> None:
        """Adds (or subtracts) the mask `seed` expands to (`mask(seed, length, bits)`)."""
        length = self._dtype.itemsize * len(self._total)
        if self._scratch is None:
            self._scratch = bytearray(length + 16)
        words = np.frombuffer(crypto.keystream_into(seed, self._scratch, length), dtype=self._dtype)
        (np.add if sign > 0 else np.subtract)(self._total, words, out=self._total)

    def value(self) -> np.ndarray:
        """The sum modulo `2**bits`, as uint64."""
        return (self._total & self._dtype.type((1 << self.bits) - 1)).astype(np.uint64)


def add(first: np.ndarray, second: np.ndarray, bits: int) -> np.ndarray:
    return (first + second) & _modulus_mask(bits)  # uint64 wraps modulo 2**64, a multiple of 2**bits


def subtract(first: np.ndarray, second: np.ndarray, bits: int) -> np.ndarray:
    return (first - second) & _modulus_mask(bits)


def to_wire(vector: np.ndarray, dtype: np.dtype) -> bytes:
    return vector.astype(dtype).tobytes()


def from_wire(data: bytes, length: int, bits: int, dtype: np.dtype, what: str) -> np.ndarray:
    """A masked vector as received, checked: its size, and every entry below `2**bits`; in
    the wire's dtype (a read-only view of `data`).

    Raises:
      ProtocolError: the bytes are not `length` entries of `dtype` below `2**bits`.
    """
    if len(data) != length * dtype.itemsize:
        raise ProtocolError(f"{what}: {len(data)} bytes, expected {length} entries of {dtype.itemsize} bytes")
    vector = np.frombuffer(data, dtype=dtype)
    if bits < 64 and vector.size and int(vector.max()) >> bits:
        raise ProtocolError(f"{what}: an entry is not below 2**{bits}")
    return vector


def pack(leaves: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """Integer leaves, each entry in `[0, 2**bits)`, as one uint64 vector.

    Raises:
      ValueError: an entry is negative or not below `2**bits`, or a leaf is not integer.
    """
    parts = []
    for index, leaf in enumerate(leaves):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind not in "iu":
            raise ValueError(f"leaf {index}: a secure sum adds integers, not {leaf.dtype}")
        if leaf.size and (int(leaf.min()) < 0 or int(leaf.max()) >> bits):
            raise ValueError(f"leaf {index}: values must be in [0, 2**{bits})")
        parts.append(leaf.astype(np.uint64).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def unpack(vector: np.ndarray, shapes: Sequence[tuple]) -> list:
    """The vector cut back into leaves of `shapes`, as int64."""
    leaves, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        leaves.append(vector[start:start + size].astype(np.int64).reshape(shape))
        start += size
    if start != len(vector):
        raise ValueError(f"the vector has {len(vector)} entries, the shapes {start}")
    return leaves
