"""The factory -> process pattern: a factory knows *how* to aggregate; `create` makes the
process for a given value type, so one factory serves any model. Factories nest: a wrapper
(clipping, zeroing, differential privacy) takes an inner factory and delegates to it.

Example::

    factory = fedsim.aggregators.clipping_factory(1.0, fedsim.aggregators.MeanFactory())
    process = factory.create(value_type, fedsim.TensorType(tf.float32))
    state = process.initialize()
    output = process.next(state, client_values, client_weights)
"""

from __future__ import annotations

import abc

from fedsim.core import types as ft
from fedsim.templates import AggregationProcess

__all__ = ["AggregationFactoryError", "UnweightedAggregationFactory", "WeightedAggregationFactory", "check_value_type"]


class AggregationFactoryError(TypeError):
    """A factory was asked to aggregate values it cannot handle."""


class UnweightedAggregationFactory(abc.ABC):
    @abc.abstractmethod
    def create(self, value_type: ft.Type) -> AggregationProcess:
        """`next(state, value@CLIENTS)`."""


class WeightedAggregationFactory(abc.ABC):
    @abc.abstractmethod
    def create(self, value_type: ft.Type, weight_type: ft.Type) -> AggregationProcess:
        """`next(state, value@CLIENTS, weight@CLIENTS)`."""


def check_value_type(value_type: ft.Type, factory: str, floating: bool) -> ft.Type:
    """Refuses, at create time, value types the factory cannot aggregate."""
    value_type = ft.to_type(value_type)
    for leaf in ft.flatten_type(value_type):
        ok = isinstance(leaf, ft.TensorType) and (leaf.dtype.is_floating or (not floating and leaf.dtype.is_integer))
        if not ok:
            kind = "floating-point" if floating else "numeric"
            raise AggregationFactoryError(f"{factory} aggregates {kind} tensors, but the value type {value_type} contains {leaf}")
    return value_type


def check_weight_type(weight_type: ft.Type, factory: str) -> ft.Type:
    weight_type = ft.to_type(weight_type)
    if not (isinstance(weight_type, ft.TensorType) and weight_type.shape == () and weight_type.dtype.is_floating):
        raise AggregationFactoryError(f"{factory} needs a floating-point scalar weight, got {weight_type}")
    return weight_type
