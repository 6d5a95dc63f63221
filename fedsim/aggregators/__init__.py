"""Aggregators as factories -> processes: sums, means, and norm-bounding wrappers.

Example::

    aggregator = fedsim.aggregators.clipping_factory(1.0, fedsim.aggregators.MeanFactory())
    process = fedsim.learning.build_weighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=aggregator)
"""

from fedsim.aggregators.factory import AggregationFactoryError, UnweightedAggregationFactory, WeightedAggregationFactory
from fedsim.aggregators.robustness import clipping_factory, zeroing_factory
from fedsim.aggregators.secure import SecureSumFactory
from fedsim.aggregators.sum_and_mean import MeanFactory, SumFactory, UnweightedMeanFactory

__all__ = [
    "AggregationFactoryError",
    "MeanFactory",
    "SecureSumFactory",
    "SumFactory",
    "UnweightedAggregationFactory",
    "UnweightedMeanFactory",
    "WeightedAggregationFactory",
    "clipping_factory",
    "zeroing_factory",
]
