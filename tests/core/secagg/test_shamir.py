"""Shamir sharing against its definition: shares are points of a random polynomial of degree t-1
whose value at 0 is the secret."""

import itertools
import secrets

import pytest

from fedsim.core.secagg import shamir

P = shamir.PRIME


def _value_at(points: dict, x: int) -> int:
    """Lagrange interpolation of `points` evaluated at `x`, written out independently."""
    total = 0
    for i, yi in points.items():
        term = yi
        for j in points:
            if j != i:
                term = term * (x - j) * pow(i - j, P - 2, P) % P  # Fermat inverse: P is prime
        total = (total + term) % P
    return total


@pytest.mark.parametrize("threshold, holders", [(1, 4), (2, 3), (3, 5), (4, 7)])
def test_any_threshold_shares_give_the_secret_and_all_lie_on_one_polynomial(threshold, holders):
    secret = secrets.randbelow(P)
    shares = shamir.split(secret, threshold, list(range(1, holders + 1)))
    for subset in itertools.combinations(shares, threshold):
        assert shamir.combine({x: shares[x] for x in subset}) == secret
        assert _value_at({x: shares[x] for x in subset}, 0) == secret
    basis = {x: shares[x] for x in list(shares)[:threshold]}
    for x in shares:  # degree t-1: t points determine every other share
        assert _value_at(basis, x) == shares[x]


def test_fewer_than_threshold_shares_do_not_give_the_secret_and_splits_are_random():
    secret = int.from_bytes(secrets.token_bytes(32), "big")
    first, second = shamir.split(secret, 3, [1, 2, 3, 4, 5]), shamir.split(secret, 3, [1, 2, 3, 4, 5])
    assert first != second  # fresh coefficients each time
    assert shamir.combine({1: first[1], 2: first[2]}) != secret
    # With t-1 shares fixed, every candidate secret is consistent with some polynomial of degree t-1:
    # the t-1 shares plus (0, candidate) always interpolate to a valid polynomial.
    candidate = 12345
    points = {0: candidate, 1: first[1], 2: first[2]}
    assert _value_at({1: first[1], 2: first[2], 3: _value_at(points, 3)}, 0) == candidate


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(1, 4, [1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(1, 2, [1, 1, 2])
    with pytest.raises(ValueError, match="secret"):
        shamir.split(P, 2, [1, 2])
    with pytest.raises(ValueError, match="no shares"):
        shamir.combine({})
