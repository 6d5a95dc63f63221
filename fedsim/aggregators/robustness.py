"""Norm-bounding wrappers: `clipping_factory` (scale down) and `zeroing_factory` (drop).

Each wraps an inner factory, weighted or unweighted, and bounds every client's value before
the inner aggregation sees it. The norm is a number, or an `AdaptiveNorm` that tracks a
quantile of the clients' norms round by round. State: `<norm_process, inner_agg_process>`;
measurements: the norm used this round, how many clients it hit, and the inner measurements
under `agg_process`.

Example::

    adaptive = fedsim.aggregators.AdaptiveNorm(initial_estimate=1.0, target_quantile=0.8)
    factory = fedsim.aggregators.clipping_factory(adaptive, fedsim.aggregators.MeanFactory())
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import tensorflow as tf

from fedsim.aggregators.factory import (
    Factory,
    check_inner,
    check_value_type,
    create_inner,
    define_next,
    inner_next,
    wrapper_factory,
)
from fedsim.aggregators.quantile_estimation import AdaptiveNorm, build_norm_process
from fedsim.core import structure
from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["clipping_factory", "zeroing_factory", "global_norm", "clip_by_global_l2"]

Norm = Union[float, AdaptiveNorm]


def global_norm(value, order: float) -> tf.Tensor:
    """The L2 or L-inf norm of all the leaves of `value` taken together, as float32."""
    leaves = [tf.cast(tf.reshape(leaf, [-1]), tf.float32) for leaf in structure.leaves(value)]
    if not leaves:
        return tf.constant(0.0)
    flat = tf.concat(leaves, axis=0)
    if math.isinf(order):
        return tf.reduce_max(tf.abs(flat))
    return tf.norm(flat, ord=2)


def clip_by_global_l2(value, bound: tf.Tensor):
    """`(clipped value, was it clipped, its norm before)`: scales `value` into the L2 ball."""
    value_norm = global_norm(value, 2.0)
    scale = tf.minimum(1.0, bound / tf.maximum(value_norm, 1e-30))
    return structure.map_leaves(lambda v: v * tf.cast(scale, v.dtype), value), value_norm > bound, value_norm


def _zero_if_above(order: float) -> Callable:
    def zero(value, bound):
        value_norm = global_norm(value, order)
        too_large = value_norm > bound
        return structure.map_leaves(lambda v: tf.where(too_large, tf.zeros_like(v), v), value), too_large, value_norm

    return zero


def _check_norm(norm: Norm, name: str) -> Norm:
    if isinstance(norm, AdaptiveNorm):
        return norm
    if not isinstance(norm, (int, float)) or isinstance(norm, bool) or not norm > 0 or math.isinf(norm):
        raise ValueError(f"{name} must be a positive finite number or an AdaptiveNorm, got {norm!r}")
    return float(norm)


def _bounding_factory(norm: Norm, inner: Factory, bound_fn: Callable, name: str, norm_name: str, count_name: str) -> Factory:
    check_inner(inner, name)

    def create(value_type: ft.Type, weight_type: Optional[ft.Type]) -> AggregationProcess:
        value_type = check_value_type(value_type, name, floating=True)
        inner_process = create_inner(inner, value_type, weight_type)
        norm_process = build_norm_process(norm)

        @tf_computation(value_type, tf.float32)
        def bound(value, bound_norm):
            bounded, hit, value_norm = bound_fn(value, bound_norm)
            return bounded, tf.cast(hit, tf.int32), value_norm

        @federated_computation
        def initialize():
            return intrinsics.federated_zip(
                {"norm_process": norm_process.initialize(), "inner_agg_process": inner_process.initialize()}
            )

        def body(state, value, weight):
            norm_now = intrinsics.federated_map(norm_process.report, state.norm_process)
            bounded = intrinsics.federated_map(bound, (value, intrinsics.federated_broadcast(norm_now)))
            inner_output = inner_next(inner_process, state.inner_agg_process, bounded[0], weight)
            return MeasuredProcessOutput(
                state=intrinsics.federated_zip({
                    "norm_process": norm_process.next(state.norm_process, bounded[2]),
                    "inner_agg_process": inner_output.state,
                }),
                result=inner_output.result,
                measurements=intrinsics.federated_zip({
                    "agg_process": inner_output.measurements,
                    norm_name: norm_now,
                    count_name: intrinsics.federated_sum(bounded[1]),
                }),
            )

        return AggregationProcess(initialize, define_next(initialize.type_signature.result, value_type, weight_type, body))

    return wrapper_factory(inner, create)


def clipping_factory(clipping_norm: Norm, inner_agg_factory: Factory) -> Factory:
    """Scales each client's value down to global L2 norm `clipping_norm` (if it is above it).

    Measurements: `clipping_norm`, `clipped_count`, and the inner ones under `agg_process`.

    Args:
        clipping_norm: a positive number or an `AdaptiveNorm`.
        inner_agg_factory: the factory that aggregates the clipped values (weighted or not).

    Returns:
        A factory of the same kind (weighted or unweighted) as `inner_agg_factory`.

    Raises:
        ValueError: if `clipping_norm` is not a positive finite number or an `AdaptiveNorm`.
        TypeError: if `inner_agg_factory` is not an aggregation factory.

    Example:
        >>> factory = fedsim.aggregators.clipping_factory(1.0, fedsim.aggregators.MeanFactory())
    """
    norm = _check_norm(clipping_norm, "clipping_norm")
    return _bounding_factory(norm, inner_agg_factory, clip_by_global_l2, "clipping_factory", "clipping_norm", "clipped_count")


def zeroing_factory(zeroing_norm: Norm, inner_agg_factory: Factory, norm_order: float = math.inf) -> Factory:
    """Replaces by zeros each client's value whose norm (L-inf by default, or L2) exceeds `zeroing_norm`.

    Measurements: `zeroing_norm`, `zeroed_count`, and the inner ones under `agg_process`.

    Args:
        zeroing_norm: a positive number or an `AdaptiveNorm` (typically a high quantile with a
            multiplier and increment as margin).
        inner_agg_factory: the factory that aggregates the values (weighted or not).
        norm_order: `math.inf` (default) or 2.0.

    Returns:
        A factory of the same kind as `inner_agg_factory`.

    Raises:
        ValueError: if `zeroing_norm` or `norm_order` is invalid.
        TypeError: if `inner_agg_factory` is not an aggregation factory.
    """
    norm = _check_norm(zeroing_norm, "zeroing_norm")
    if norm_order not in (2.0, math.inf):
        raise ValueError(f"norm_order must be 2.0 or math.inf, got {norm_order!r}")
    return _bounding_factory(norm, inner_agg_factory, _zero_if_above(norm_order), "zeroing_factory", "zeroing_norm", "zeroed_count")
