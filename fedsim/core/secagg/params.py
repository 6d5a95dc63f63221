"""`SecAggParams`: what every party of one secure-sum session agrees on before it starts.

The session string names the round (e.g. "run-7/3"); it and every parameter are bound into the
session digest, which every signature, key derivation and ciphertext of the session carries, so
a message of one session (or of other parameters) is worthless in another.

Example::

    params = SecAggParams(session="run-7/3", participants=("a", "b", "c", "d", "e"), threshold=3,
                          modulus_bits=20, vector_length=1000)
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

import attrs
import numpy as np

__all__ = ["SecAggParams"]


def _participants(value: Sequence[str]) -> tuple:
    return tuple(str(v) for v in value)


@attrs.frozen
class SecAggParams:
    """One session's parameters.

    Attributes:
      session: names the round; never reused.
      participants: the ids of the clients asked to take part (each one's Shamir point is its
        1-based position here).
      threshold: shares needed to reconstruct a secret; the round completes if at least this many
        clients answer the last step, and fewer colluding with the server learn nothing.
      modulus_bits: sums are computed modulo `2**modulus_bits` (at most 64).
      vector_length: the number of integers each client contributes.
      neighbours: None for the complete graph (SecAgg); an even number `k` for SecAgg+, where
        each client shares keys and masks with `k` neighbours on a Harary graph whose order is
        derived from the session (no party chooses it).
    """

    session: str
    participants: tuple = attrs.field(converter=_participants)
    threshold: int
    modulus_bits: int
    vector_length: int
    neighbours: Optional[int] = None
    _digest: bytes = attrs.field(init=False, repr=False, eq=False, default=b"")

    def __attrs_post_init__(self):
        if len(set(self.participants)) != len(self.participants) or not self.participants:
            raise ValueError("participants must be distinct, and at least one")
        if not 1 <= self.threshold <= len(self.participants):
            raise ValueError(f"threshold {self.threshold} is not between 1 and the {len(self.participants)} participants")
        if not 1 <= self.modulus_bits <= 64:
            raise ValueError(f"modulus_bits must be in [1, 64], not {self.modulus_bits}")
        if self.vector_length < 0:
            raise ValueError("vector_length must be >= 0")
        if self.neighbours is not None:
            if self.neighbours < 2 or self.neighbours % 2:
                raise ValueError(f"neighbours must be an even number >= 2 (SecAgg+), not {self.neighbours}")
            if self.threshold > self.neighbours + 1:
                raise ValueError(f"threshold {self.threshold} exceeds a neighbourhood of {self.neighbours} + the client")
        document = json.dumps(attrs.asdict(self, filter=lambda field, _: field.name != "_digest"), sort_keys=True).encode()
        object.__setattr__(self, "_digest", hashlib.sha256(b"fedsim-secagg/v1/" + document).digest())

    @property
    def digest(self) -> bytes:
        """SHA-256 of every parameter: what the session's signatures and keys are bound to."""
        return self._digest

    @property
    def wire_dtype(self) -> np.dtype:
        """The unsigned dtype a masked vector travels in."""
        return np.dtype("<u4") if self.modulus_bits <= 32 else np.dtype("<u8")

    def point(self, client: str) -> int:
        """The client's Shamir evaluation point (its 1-based position among the participants).

        Args:
            client: a participant's id.

        Returns:
            Its evaluation point.

        Raises:
            ValueError: if `client` is not a participant.
        """
        return self.participants.index(client) + 1

    def neighbourhood(self, client: str, present: Sequence[str]) -> frozenset:
        """The clients among `present` that `client` shares keys and masks with (itself included).

        All of `present` for SecAgg; SecAgg+'s Harary-graph neighbours when `neighbours` is set.

        Args:
            client: a participant's id.
            present: the participants taking part in this step.

        Returns:
            The neighbourhood, a frozenset of ids.
        """
        present = sorted(set(present))
        if self.neighbours is None or self.neighbours + 1 >= len(present):
            return frozenset(present)
        order = sorted(present, key=lambda c: hashlib.sha256(self.digest + c.encode()).digest())
        position = order.index(client)
        half = self.neighbours // 2
        return frozenset(order[(position + step) % len(order)] for step in range(-half, half + 1))
