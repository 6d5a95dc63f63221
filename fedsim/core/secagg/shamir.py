"""Shamir's t-out-of-n secret sharing over the prime field GF(2**521 - 1).

A secret `s` (an integer below the prime) is the constant term of a random polynomial `f` of
degree `t - 1`; holder `x` (an integer in 1..prime-1) gets `f(x)`. Any `t` shares give `s` back
by Lagrange interpolation at 0; fewer give no information about it. The prime is the Mersenne
prime M521, so a 32-byte key or seed is one field element.

Example::

    shares = split(secret, threshold=3, holders=[1, 2, 3, 4, 5])
    assert combine({x: shares[x] for x in (2, 4, 5)}) == secret
"""

from __future__ import annotations

import secrets
from typing import Mapping, Sequence

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

PRIME = 2**521 - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):  # Horner's rule
        value = (value * x + coefficient) % PRIME
    return value


def split(secret: int, threshold: int, holders: Sequence[int]) -> dict:
    """Shares of `secret`, one per holder: `{x: f(x)}`.

    Args:
      secret: an integer in `[0, PRIME)`.
      threshold: how many shares give the secret back (at least 1, at most the holders).
      holders: distinct evaluation points in `[1, PRIME)`.

    Raises:
      ValueError: the secret, threshold or holders are out of range.
    """
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be in [0, 2**521 - 1)")
    if len(set(holders)) != len(holders) or any(not 0 < x < PRIME for x in holders):
        raise ValueError("holders must be distinct integers in [1, 2**521 - 1)")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold {threshold} is not between 1 and the {len(holders)} holders")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in holders}


def combine(shares: Mapping[int, int]) -> int:
    """The secret from `{x: share}` (at least `threshold` of them; more are fine).

    Raises:
      ValueError: no shares, or a share or point out of the field.
    """
    if not shares:
        raise ValueError("no shares to combine")
    points = list(shares)
    if any(not 0 < x < PRIME for x in points) or any(not 0 <= y < PRIME for y in shares.values()):
        raise ValueError("a share is not a point of the field")
    secret = 0
    for i in points:
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * (-j) % PRIME
                denominator = denominator * (i - j) % PRIME
        secret = (secret + shares[i] * numerator * pow(denominator, -1, PRIME)) % PRIME
    return secret
