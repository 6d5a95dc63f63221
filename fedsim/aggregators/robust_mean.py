"""`RobustMeanFactory`: coordinate-wise median or trimmed mean over the clients.

A mean moves arbitrarily far when one client sends a huge update; the coordinate-wise median
and the trimmed mean (drop the `trim_fraction` largest and smallest values of every coordinate,
average the rest) do not, as long as fewer than half (resp. `trim_fraction`) of the clients
misbehave. Both need every client's value at once, so the accumulator of the
`federated_aggregate` below stacks them: server memory is O(clients x value size), unlike the
streaming means. Unweighted: in weighted FedAvg the clients' weights are not used.

Example::

    factory = RobustMeanFactory("trimmed_mean", trim_fraction=0.2)
    process = fedsim.learning.build_weighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=factory)
"""

from __future__ import annotations

import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.aggregators.sum_and_mean import no_state
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["RobustMeanFactory"]

METHODS = ("median", "trimmed_mean")


def _median(stacked: tf.Tensor) -> tf.Tensor:
    ordered = tf.sort(stacked, axis=0)
    count = tf.shape(ordered)[0]
    upper = tf.gather(ordered, count // 2, axis=0)
    lower = tf.gather(ordered, (count - 1) // 2, axis=0)
    return (upper + lower) / 2


def _trimmed_mean(stacked: tf.Tensor, trim_fraction: float) -> tf.Tensor:
    ordered = tf.sort(stacked, axis=0)
    count = tf.shape(ordered)[0]
    trimmed = tf.cast(tf.floor(tf.cast(count, tf.float64) * trim_fraction), tf.int32)
    return tf.reduce_mean(ordered[trimmed : count - trimmed], axis=0)


class RobustMeanFactory(UnweightedAggregationFactory):
    """`method="median"` or `"trimmed_mean"` (dropping `floor(trim_fraction * clients)` per side).

    Measurements: `num_clients` and `trimmed_per_side` (0 for the median).

    Args:
        method: `"median"` (coordinate-wise) or `"trimmed_mean"`.
        trim_fraction: the fraction of clients dropped on each side, in [0, 0.5).

    Raises:
        ValueError: if `method` or `trim_fraction` is invalid.
    """

    def __init__(self, method: str = "median", trim_fraction: float = 0.1):
        if method not in METHODS:
            raise ValueError(f"RobustMeanFactory: method must be one of {METHODS}, got {method!r}")
        if not (isinstance(trim_fraction, (int, float)) and 0.0 <= trim_fraction < 0.5):
            raise ValueError(f"RobustMeanFactory: trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
        self._method = method
        self._trim_fraction = float(trim_fraction)

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "RobustMeanFactory", floating=True)
        leaves = ft.flatten_type(value_type)
        stacked_types = [ft.TensorType(leaf.dtype, (None,) + tuple(leaf.shape)) for leaf in leaves]
        method, trim_fraction = self._method, self._trim_fraction

        @tf_computation
        def zero():
            # An empty stack whose first dimension is left unknown, so that it can grow.
            return tuple(
                tf.raw_ops.PlaceholderWithDefault(input=tf.zeros((0,) + tuple(t.shape[1:]), t.dtype), shape=t.shape)
                for t in stacked_types
            )

        accumulator_type = zero.type_signature.result

        @tf_computation(accumulator_type, value_type)
        def accumulate(stacks, value):
            return tuple(tf.concat([s, v[tf.newaxis]], axis=0) for s, v in zip(stacks, structure.flatten_value(value, value_type)))

        @tf_computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return tuple(tf.concat([a, b], axis=0) for a, b in zip(first, second))

        @tf_computation(accumulator_type)
        def report(stacks):
            if method == "median":
                robust = [_median(s) for s in stacks]
                trimmed = tf.constant(0)
            else:
                robust = [_trimmed_mean(s, trim_fraction) for s in stacks]
                trimmed = tf.cast(tf.floor(tf.cast(tf.shape(stacks[0])[0], tf.float64) * trim_fraction), tf.int32)
            return structure.unflatten_value(value_type, robust), tf.shape(stacks[0])[0], trimmed

        @federated_computation(no_state.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            reported = intrinsics.federated_aggregate(value, zero(), accumulate, merge, report)
            return MeasuredProcessOutput(
                state=state,
                result=reported[0],
                measurements=intrinsics.federated_zip({"num_clients": reported[1], "trimmed_per_side": reported[2]}),
            )

        return AggregationProcess(no_state, next_fn)
