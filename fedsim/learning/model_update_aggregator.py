"""TFF's recommended aggregators for model updates, composed from `fedsim.aggregators`.

Each is a factory for `build_weighted_fed_avg(..., model_aggregator=...)`, with TFF's
composition and constants: adaptive zeroing (a norm quickly tracking somewhat above the 98th
percentile) around adaptive L2 clipping (the 80th percentile) around the mean, with DP noise,
compression or a secure sum in the middle.

Example::

    process = fedsim.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn, model_aggregator=fedsim.learning.robust_aggregator())
"""

from __future__ import annotations

import math

from fedsim import aggregators

__all__ = ["robust_aggregator", "dp_aggregator", "compression_aggregator", "ddp_secure_aggregator", "secure_aggregator"]


def _zeroing(inner):
    norm = aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=10.0, target_quantile=0.98, learning_rate=math.log(10.0), multiplier=2.0, increment=1.0)
    return aggregators.zeroing_factory(norm, inner)


def _clipping(inner):
    norm = aggregators.PrivateQuantileEstimationProcess.no_noise(initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2)
    return aggregators.clipping_factory(norm, inner)


def _bounded(factory, zeroing: bool, clipping: bool):
    if clipping:
        factory = _clipping(factory)
    if zeroing:
        factory = _zeroing(factory)
    return factory


def _mean(weighted: bool, value_sum_factory=None):
    if weighted:
        return aggregators.MeanFactory(value_sum_factory)
    return aggregators.UnweightedMeanFactory(value_sum_factory)


def robust_aggregator(*, zeroing: bool = True, clipping: bool = True, weighted: bool = True):
    """The mean inside adaptive clipping and adaptive zeroing.

    Args:
        zeroing: wrap in adaptive zeroing (updates far above the 98th percentile norm become zero).
        clipping: wrap in adaptive clipping to the 80th percentile norm.
        weighted: a weighted mean (for `build_weighted_fed_avg`) or an unweighted one.

    Returns:
        An aggregation factory for `model_aggregator=`.

    Example:
        >>> process = build_weighted_fed_avg(model_fn, opt_fn, model_aggregator=robust_aggregator())
    """
    return _bounded(_mean(weighted), zeroing, clipping)


def dp_aggregator(noise_multiplier: float, clients_per_round: float, zeroing: bool = True):
    """DP-FedAvg's Gaussian mechanism with adaptive clipping, inside adaptive zeroing (unweighted).

    As TFF's: the value noise is `noise_multiplier` times the clip and the unclipped count has
    its own noise (`DifferentiallyPrivateFactory.adaptive_clip_average`), so small cohorts work.

    Args:
        noise_multiplier: the Gaussian noise's standard deviation over the clip norm.
        clients_per_round: the expected cohort size (the mean's denominator).
        zeroing: wrap in adaptive zeroing.

    Returns:
        An unweighted aggregation factory (use with `build_unweighted_fed_avg`).

    Raises:
        ValueError: if `noise_multiplier` is negative or `clients_per_round` not positive.

    Example:
        >>> process = build_unweighted_fed_avg(model_fn, opt_fn, model_aggregator=dp_aggregator(1.0, 10))
    """
    factory = aggregators.DifferentiallyPrivateFactory.adaptive_clip_average(noise_multiplier, clients_per_round)
    return _zeroing(factory) if zeroing else factory


def ddp_secure_aggregator(noise_multiplier: float, expected_clients_per_round: int, bits: int = 20, zeroing: bool = True,
                          l2_clip: float = 0.1):
    """Distributed DP: each client's discrete Gaussian share, summed by secure aggregation (unweighted mean).

    TFF's `ddp_secure_aggregator`, with a fixed clip (TFF's default `auto_l2_clip=False` clip is
    0.1): `UnweightedMeanFactory(DistributedDpSumFactory(...))`, inside adaptive zeroing.

    Args:
        noise_multiplier: the sum's noise stddev over the clip, at `expected_clients_per_round`.
        expected_clients_per_round: the clients whose noise shares make up the target noise.
        bits: each client's integer coordinate lies in `[0, 2**bits)`.
        zeroing: wrap in adaptive zeroing.
        l2_clip: the L2 norm each client's update is clipped to.

    Returns:
        An unweighted aggregation factory (use with `build_unweighted_fed_avg`).

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> process = build_unweighted_fed_avg(model_fn, opt_fn, model_aggregator=ddp_secure_aggregator(1.0, 10))
    """
    factory = aggregators.UnweightedMeanFactory(
        aggregators.DistributedDpSumFactory(noise_multiplier, expected_clients_per_round, bits=bits, l2_clip=l2_clip))
    return _zeroing(factory) if zeroing else factory


def compression_aggregator(*, zeroing: bool = True, clipping: bool = True, weighted: bool = True):
    """The mean of 8-bit quantized updates (leaves above 20,000 elements), clipped and zeroed.

    Args:
        zeroing: wrap in adaptive zeroing (updates far above the 98th percentile norm become zero).
        clipping: wrap in adaptive clipping to the 80th percentile norm.
        weighted: a weighted mean (for `build_weighted_fed_avg`) or an unweighted one.

    Returns:
        An aggregation factory for `model_aggregator=`.
    """
    encoded = aggregators.EncodedSumFactory.quantize_above_threshold(quantization_bits=8, threshold=20000)
    return _bounded(_mean(weighted, encoded), zeroing, clipping)


def secure_aggregator(*, zeroing: bool = True, clipping: bool = True, weighted: bool = True):
    """The mean by secure sum, its bound adapting to twice the 95th percentile, clipped and zeroed.

    Updates are quantized into the bound and summed with `federated_secure_sum_bitwidth`: on the
    AWS executor the silos run the secure aggregation protocol, so the server reads only the sum.

    Args:
        zeroing: wrap in adaptive zeroing (updates far above the 98th percentile norm become zero).
        clipping: wrap in adaptive clipping to the 80th percentile norm.
        weighted: a weighted mean (for `build_weighted_fed_avg`) or an unweighted one.

    Returns:
        An aggregation factory for `model_aggregator=`.

    Example:
        >>> process = build_weighted_fed_avg(model_fn, opt_fn, model_aggregator=secure_aggregator())
    """
    bound = aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=50.0, target_quantile=0.95, learning_rate=1.0, multiplier=2.0)
    return _bounded(_mean(weighted, aggregators.SecureSumFactory(bound)), zeroing, clipping)
