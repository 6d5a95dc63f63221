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
from typing import Any, Callable, Optional, Union

from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS
from fedsim.templates import AggregationProcess

__all__ = [
    "AggregationFactoryError",
    "UnweightedAggregationFactory",
    "WeightedAggregationFactory",
    "check_inner",
    "check_value_type",
    "check_weight_type",
    "create_inner",
    "define_next",
    "inner_next",
    "wrapper_factory",
]


class AggregationFactoryError(TypeError):
    """A factory was asked to aggregate values it cannot handle."""


class UnweightedAggregationFactory(abc.ABC):
    @abc.abstractmethod
    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """


class WeightedAggregationFactory(abc.ABC):
    @abc.abstractmethod
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


Factory = Union[UnweightedAggregationFactory, WeightedAggregationFactory]


def check_inner(inner: Any, name: str) -> Factory:
    if not isinstance(inner, (UnweightedAggregationFactory, WeightedAggregationFactory)):
        raise TypeError(f"{name}: the inner factory must be an aggregation factory, got {type(inner).__name__}")
    return inner


class _UnweightedWrapper(UnweightedAggregationFactory):
    def __init__(self, create_fn: Callable):
        self._create_fn = create_fn

    def create(self, value_type: ft.Type) -> AggregationProcess:
        return self._create_fn(value_type, None)


class _WeightedWrapper(WeightedAggregationFactory):
    def __init__(self, create_fn: Callable):
        self._create_fn = create_fn

    def create(self, value_type: ft.Type, weight_type: ft.Type) -> AggregationProcess:
        return self._create_fn(value_type, weight_type)


def wrapper_factory(inner: Factory, create_fn: Callable[[ft.Type, Optional[ft.Type]], AggregationProcess]) -> Factory:
    """A factory of the same kind (weighted or not) as `inner`, whose processes `create_fn` builds.

    `create_fn(value_type, weight_type)` gets `weight_type=None` for an unweighted inner.
    """
    if isinstance(inner, WeightedAggregationFactory):
        return _WeightedWrapper(create_fn)
    return _UnweightedWrapper(create_fn)


def create_inner(inner: Factory, value_type: ft.Type, weight_type: Optional[ft.Type]) -> AggregationProcess:
    return inner.create(value_type) if weight_type is None else inner.create(value_type, weight_type)


def define_next(state_type: ft.Type, value_type: ft.Type, weight_type: Optional[ft.Type], body: Callable) -> Any:
    """The `next` federated computation, with or without a weight parameter.

    `body(state, value, weight)` is traced with `weight=None` when `weight_type` is None, so
    one body serves a wrapper around a weighted or an unweighted inner factory.
    """
    if weight_type is None:

        @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            return body(state, value, None)

        return next_fn

    @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS), ft.FederatedType(weight_type, CLIENTS))
    def weighted_next_fn(state, value, weight):
        return body(state, value, weight)

    return weighted_next_fn


def inner_next(process: AggregationProcess, state: Any, value: Any, weight: Any) -> Any:
    return process.next(state, value) if weight is None else process.next(state, value, weight)
