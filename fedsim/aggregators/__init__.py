"""Aggregators as factories -> processes: sums, means, bounding, privacy, robustness, compression.

A factory's `create(value_type[, weight_type])` gives an `AggregationProcess`; wrappers take
an inner factory, so they stack.

Example::

    aggregator = fedsim.aggregators.clipping_factory(
        fedsim.aggregators.AdaptiveNorm(initial_estimate=1.0, target_quantile=0.8),
        fedsim.aggregators.MeanFactory(),
    )
    process = fedsim.learning.build_weighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=aggregator)
"""

from fedsim.aggregators.accounting import PrivacyBudget, PrivacyLedger, dp_epsilon
from fedsim.aggregators.differential_privacy import DifferentiallyPrivateFactory
from fedsim.aggregators.distributed_dp import DistributedDpSumFactory
from fedsim.aggregators.encoded import EncodedSumFactory
from fedsim.aggregators.local_dp import local_discrete_laplace_factory, local_gaussian_factory
from fedsim.aggregators.factory import AggregationFactoryError, UnweightedAggregationFactory, WeightedAggregationFactory
from fedsim.aggregators.quantile_estimation import AdaptiveNorm, PrivateQuantileEstimationProcess
from fedsim.aggregators.quantization import stochastic_quantization_factory
from fedsim.aggregators.robust_mean import RobustMeanFactory
from fedsim.aggregators.robustness import clipping_factory, zeroing_factory
from fedsim.aggregators.secure import SecureSumFactory
from fedsim.aggregators.sum_and_mean import MeanFactory, SumFactory, UnweightedMeanFactory

__all__ = [
    "AdaptiveNorm",
    "AggregationFactoryError",
    "DifferentiallyPrivateFactory",
    "DistributedDpSumFactory",
    "EncodedSumFactory",
    "MeanFactory",
    "PrivateQuantileEstimationProcess",
    "RobustMeanFactory",
    "SecureSumFactory",
    "SumFactory",
    "UnweightedAggregationFactory",
    "UnweightedMeanFactory",
    "WeightedAggregationFactory",
    "clipping_factory",
    "dp_epsilon",
    "PrivacyBudget",
    "PrivacyLedger",
    "local_discrete_laplace_factory",
    "local_gaussian_factory",
    "stochastic_quantization_factory",
    "zeroing_factory",
]
