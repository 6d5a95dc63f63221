"""`SumFactory`, `MeanFactory` (weighted) and `UnweightedMeanFactory`."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from fedsim.aggregators.factory import (
    UnweightedAggregationFactory,
    WeightedAggregationFactory,
    check_value_type,
    check_weight_type,
)
from fedsim.core import structure
from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["SumFactory", "MeanFactory", "UnweightedMeanFactory", "no_state", "no_measurements"]


@federated_computation
def no_state():
    """The initialize of a stateless process: `<>@SERVER`."""
    return intrinsics.federated_value((), SERVER)


def no_measurements():
    return intrinsics.federated_value((), SERVER)


class SumFactory(UnweightedAggregationFactory):
    """The plain sum at the server. Stateless; no measurements."""

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "SumFactory", floating=False)

        @federated_computation(no_state.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            return MeasuredProcessOutput(state=state, result=intrinsics.federated_sum(value), measurements=no_measurements())

        return AggregationProcess(no_state, next_fn)


def _divide(no_nan_division: bool):
    divide = tf.math.divide_no_nan if no_nan_division else tf.math.divide
    return lambda total, count: structure.map_leaves(lambda t: divide(t, tf.cast(count, t.dtype)), total)


class MeanFactory(WeightedAggregationFactory):
    """The weighted mean: sum(w * v) / sum(w), each sum by its own (nestable) factory.

    State: `<value_sum_process, weight_sum_process>`; measurements: `<mean_value, mean_weight>`.

    Args:
        value_sum_factory: sums the weighted values (`SumFactory` by default), e.g. a `SecureSumFactory`.
        weight_sum_factory: sums the weights (`SumFactory` by default).
        no_nan_division: give 0 instead of NaN when the weights sum to 0.

    Raises:
        TypeError: if a sum factory is not an `UnweightedAggregationFactory`.

    Example:
        >>> process = fedsim.aggregators.MeanFactory().create(value_type, tf.float32)
    """

    def __init__(
        self,
        value_sum_factory: Optional[UnweightedAggregationFactory] = None,
        weight_sum_factory: Optional[UnweightedAggregationFactory] = None,
        no_nan_division: bool = False,
    ):
        for name, factory in (("value_sum_factory", value_sum_factory), ("weight_sum_factory", weight_sum_factory)):
            if factory is not None and not isinstance(factory, UnweightedAggregationFactory):
                raise TypeError(f"{name} must be an UnweightedAggregationFactory, got {type(factory).__name__}")
        self._value_sum_factory = value_sum_factory or SumFactory()
        self._weight_sum_factory = weight_sum_factory or SumFactory()
        self._no_nan_division = no_nan_division

    def create(self, value_type: ft.Type, weight_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process: `next(state, value@CLIENTS, weight@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).
            weight_type: the type of one client's weight (a floating-point scalar).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values or weights of these types.
        """
        value_type = check_value_type(value_type, "MeanFactory", floating=True)
        weight_type = check_weight_type(weight_type, "MeanFactory")
        value_sum = self._value_sum_factory.create(value_type)
        weight_sum = self._weight_sum_factory.create(weight_type)
        divide_fn = _divide(self._no_nan_division)

        @tf_computation(value_type, weight_type)
        def multiply(value, weight):
            return structure.map_leaves(lambda v: v * tf.cast(weight, v.dtype), value)

        @tf_computation(value_type, weight_type)
        def divide(total, weight_total):
            return divide_fn(total, weight_total)

        @federated_computation
        def initialize():
            return intrinsics.federated_zip(
                {"value_sum_process": value_sum.initialize(), "weight_sum_process": weight_sum.initialize()}
            )

        @federated_computation(
            initialize.type_signature.result, ft.FederatedType(value_type, CLIENTS), ft.FederatedType(weight_type, CLIENTS)
        )
        def next_fn(state, value, weight):
            value_output = value_sum.next(state.value_sum_process, intrinsics.federated_map(multiply, (value, weight)))
            weight_output = weight_sum.next(state.weight_sum_process, weight)
            return MeasuredProcessOutput(
                state=intrinsics.federated_zip({"value_sum_process": value_output.state, "weight_sum_process": weight_output.state}),
                result=intrinsics.federated_map(divide, (value_output.result, weight_output.result)),
                measurements=intrinsics.federated_zip({"mean_value": value_output.measurements, "mean_weight": weight_output.measurements}),
            )

        return AggregationProcess(initialize, next_fn)


class UnweightedMeanFactory(UnweightedAggregationFactory):
    """The mean over clients, each counting once: sum(v) / number of clients.

    Args:
        value_sum_factory: sums the values (`SumFactory` by default).

    Raises:
        TypeError: if `value_sum_factory` is not an `UnweightedAggregationFactory`.
    """

    def __init__(self, value_sum_factory: Optional[UnweightedAggregationFactory] = None):
        if value_sum_factory is not None and not isinstance(value_sum_factory, UnweightedAggregationFactory):
            raise TypeError(f"value_sum_factory must be an UnweightedAggregationFactory, got {type(value_sum_factory).__name__}")
        self._value_sum_factory = value_sum_factory or SumFactory()

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "UnweightedMeanFactory", floating=True)
        value_sum = self._value_sum_factory.create(value_type)
        divide_fn = _divide(False)

        @tf_computation(value_type)
        def one(value):
            del value
            return tf.constant(1.0)

        @tf_computation(value_type, tf.float32)
        def divide(total, count):
            return divide_fn(total, count)

        @federated_computation(value_sum.initialize.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            output = value_sum.next(state, value)
            count = intrinsics.federated_sum(intrinsics.federated_map(one, value))
            return MeasuredProcessOutput(
                state=output.state,
                result=intrinsics.federated_map(divide, (output.result, count)),
                measurements=intrinsics.federated_zip({"mean_value": output.measurements}),
            )

        return AggregationProcess(value_sum.initialize, next_fn)

