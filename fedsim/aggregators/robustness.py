"""Norm-bounding wrappers: `clipping_factory` (scale down) and `zeroing_factory` (drop).

Each wraps an inner factory, weighted or unweighted, and bounds every client's value before
the inner aggregation sees it; the measurements report the norm and how many clients it hit,
with the inner measurements under `agg_process`.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, WeightedAggregationFactory, check_value_type
from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.federated_tracing import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.tensorflow_computation import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["clipping_factory", "zeroing_factory"]

Factory = Union[UnweightedAggregationFactory, WeightedAggregationFactory]


def _global_norm(value, order: float) -> tf.Tensor:
    leaves = [tf.cast(tf.reshape(leaf, [-1]), tf.float32) for leaf in tf.nest.flatten(value)]
    flat = tf.concat(leaves, axis=0)
    if math.isinf(order):
        return tf.reduce_max(tf.abs(flat)) if leaves else tf.constant(0.0)
    return tf.norm(flat, ord=2)


def _check_norm(norm: float, name: str) -> float:
    if not isinstance(norm, (int, float)) or isinstance(norm, bool) or not norm > 0 or math.isinf(norm):
        raise ValueError(f"{name} must be a positive finite number, got {norm!r}")
    return float(norm)


class _BoundingFactory:
    """Shared create(): bound each client's value with `bound_fn`, then aggregate by `inner`."""

    norm_name: str
    count_name: str

    def __init__(self, norm: float, inner: Factory, bound_fn: Callable, name: str):
        if not isinstance(inner, (UnweightedAggregationFactory, WeightedAggregationFactory)):
            raise TypeError(f"{name}: the inner factory must be an aggregation factory, got {type(inner).__name__}")
        self._norm = norm
        self._inner = inner
        self._bound_fn = bound_fn
        self._name = name

    def _create(self, value_type: ft.Type, weight_type=None) -> AggregationProcess:
        value_type = check_value_type(value_type, self._name, floating=True)
        inner = self._inner.create(value_type) if weight_type is None else self._inner.create(value_type, weight_type)
        bound_fn, norm = self._bound_fn, self._norm

        @tf_computation(value_type)
        def bound(value):
            bounded, hit = bound_fn(value, norm)
            return bounded, tf.cast(hit, tf.int32)

        norm_name, count_name = self.norm_name, self.count_name

        def outputs(inner_output, bounded):
            return MeasuredProcessOutput(
                state=inner_output.state,
                result=inner_output.result,
                measurements=intrinsics.federated_zip({
                    "agg_process": inner_output.measurements,
                    norm_name: intrinsics.federated_value(np.float32(norm), SERVER),
                    count_name: intrinsics.federated_sum(bounded[1]),
                }),
            )

        state_type = inner.initialize.type_signature.result
        if weight_type is None:

            @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS))
            def next_fn(state, value):
                bounded = intrinsics.federated_map(bound, value)
                return outputs(inner.next(state, bounded[0]), bounded)

        else:

            @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS), ft.FederatedType(weight_type, CLIENTS))
            def next_fn(state, value, weight):
                bounded = intrinsics.federated_map(bound, value)
                return outputs(inner.next(state, bounded[0], weight), bounded)

        return AggregationProcess(inner.initialize, next_fn)


class _UnweightedBounding(_BoundingFactory, UnweightedAggregationFactory):
    def create(self, value_type: ft.Type) -> AggregationProcess:
        return self._create(value_type)


class _WeightedBounding(_BoundingFactory, WeightedAggregationFactory):
    def create(self, value_type: ft.Type, weight_type: ft.Type) -> AggregationProcess:
        return self._create(value_type, weight_type)


def _make(norm: float, inner: Factory, bound_fn: Callable, name: str, norm_name: str, count_name: str) -> Factory:
    cls = _WeightedBounding if isinstance(inner, WeightedAggregationFactory) else _UnweightedBounding
    factory = cls(norm, inner, bound_fn, name)
    factory.norm_name, factory.count_name = norm_name, count_name
    return factory


def clipping_factory(clipping_norm: float, inner_agg_factory: Factory) -> Factory:
    """Scales each client's value down to global L2 norm `clipping_norm` (if it is above it).

    Measurements: `clipping_norm`, `clipped_count`, and the inner ones under `agg_process`.
    """
    norm = _check_norm(clipping_norm, "clipping_norm")

    def clip(value, bound):
        value_norm = _global_norm(value, 2.0)
        scale = tf.minimum(1.0, bound / tf.maximum(value_norm, 1e-30))
        return tf.nest.map_structure(lambda v: v * tf.cast(scale, v.dtype), value), value_norm > bound

    return _make(norm, inner_agg_factory, clip, "clipping_factory", "clipping_norm", "clipped_count")


def zeroing_factory(zeroing_norm: float, inner_agg_factory: Factory, norm_order: float = math.inf) -> Factory:
    """Replaces by zeros each client's value whose norm (L-inf by default, or L2) exceeds `zeroing_norm`.

    Measurements: `zeroing_norm`, `zeroed_count`, and the inner ones under `agg_process`.
    """
    norm = _check_norm(zeroing_norm, "zeroing_norm")
    if norm_order not in (2.0, math.inf):
        raise ValueError(f"norm_order must be 2.0 or math.inf, got {norm_order!r}")

    def zero(value, bound):
        too_large = _global_norm(value, norm_order) > bound
        return tf.nest.map_structure(lambda v: tf.where(too_large, tf.zeros_like(v), v), value), too_large

    return _make(norm, inner_agg_factory, zero, "zeroing_factory", "zeroing_norm", "zeroed_count")
