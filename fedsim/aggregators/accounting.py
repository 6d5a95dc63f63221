"""Privacy accounting: epsilon of DP-FedAvg for (rounds, sampling rate, noise, delta).

Uses Google's `dp-accounting` package (its Renyi-DP accountant for the Poisson-subsampled
Gaussian mechanism); install it with `pip install 'fedsim[dp]'`. It is optional because only
this helper needs it.

Example::

    epsilon = dp_epsilon(noise_multiplier=1.0, sampling_rate=50 / 3400, rounds=1500, target_delta=1e-5)
"""

from __future__ import annotations

import math

__all__ = ["dp_epsilon"]


def dp_epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, target_delta: float) -> float:
    """The epsilon after `rounds` rounds that each sample clients with probability `sampling_rate`.

    Poisson-sampled Gaussian mechanism, composed with dp-accounting's RDP accountant.

    Args:
        noise_multiplier: the noise's standard deviation over the clip norm (> 0).
        sampling_rate: the probability a client takes part in a round, in (0, 1].
        rounds: the number of rounds (>= 1).
        target_delta: delta, in (0, 1).

    Returns:
        Epsilon at `target_delta`.

    Raises:
        ValueError: if an argument is out of range.
        ImportError: if dp-accounting is not installed.

    Example:
        >>> fedsim.aggregators.dp_epsilon(1.0, 0.01, 1000, 1e-5)
    """
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"dp_epsilon: noise_multiplier must be positive and finite, got {noise_multiplier!r}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"dp_epsilon: sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"dp_epsilon: rounds must be a positive int, got {rounds!r}")
    if not 0 < target_delta < 1:
        raise ValueError(f"dp_epsilon: target_delta must be in (0, 1), got {target_delta!r}")
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError("dp_epsilon needs the dp-accounting package: pip install 'fedsim[dp]'") from error
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(target_delta))
