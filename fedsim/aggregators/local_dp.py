"""Local differential privacy: each client noises its own value before it leaves the client.

The server never holds a client's value without its noise, so no trust in the server (or in the
aggregation) is needed; the price is noise on every client's value instead of once on the sum.

- `local_gaussian_factory(noise_multiplier, clip, inner)`: floating-point values are clipped to
  global L2 norm `clip` and get Gaussian noise of stddev `noise_multiplier * clip` per coordinate.
- `local_discrete_laplace_factory(noise_parameter, l1_bound, inner)`: integer values (counts,
  histograms) are clipped to L1 norm `l1_bound` (scaled and rounded toward zero, so they stay
  integers) and get discrete Laplace noise DLap(a), P(k) proportional to exp(-a |k|).

The noise is drawn on the client from its own entropy: the random ops carry no seed (neither the
op's nor a global one), so the server, which holds the graph, cannot regenerate it. Then `inner`
aggregates what the server received.

Accounting is per silo, for local DP's neighbouring relation (any two values of one client: the
L2 or L1 distance is at most twice the bound). Each round a client takes part costs it a
Gaussian mechanism of noise multiplier `noise_multiplier / 2`, or a discrete Laplace mechanism of
parameter `a` and sensitivity `2 * l1_bound`. The factories declare this in their state and
report it in their measurements (`local_dp_noise_multiplier`, `local_dp_discrete_laplace` =
`[a, sensitivity]`), and `PrivacyLedger` reports `privacy/local_epsilon`: what a client that
took part in every round so far has spent.

Example::

    aggregator = local_gaussian_factory(noise_multiplier=2.0, clip=1.0, inner_agg_factory=MeanFactory())
    process = fedsim.learning.build_weighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=aggregator)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import tensorflow as tf

from fedsim.aggregators.factory import Factory, check_inner, check_value_type, create_inner, define_next, inner_next, wrapper_factory
from fedsim.aggregators.robustness import clip_by_global_l2
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.placements import SERVER
from fedsim.core.wrappers import federated_computation, tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["local_discrete_laplace_factory", "local_gaussian_factory"]


def _positive(value: Any, name: str, zero_allowed: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < 0 if zero_allowed else value <= 0):
        raise ValueError(f"{name} must be a {'non-negative' if zero_allowed else 'positive'} finite number, got {value!r}")
    return float(value)


def _client_entropy_normal(like: tf.Tensor) -> tf.Tensor:
    """Standard normal noise shaped like `like`, from the client's own entropy: seed and seed2
    are 0, which makes the kernel seed itself from the operating system, whatever global seed the
    author of the computation set."""
    return tf.raw_ops.RandomStandardNormal(shape=tf.shape(like), dtype=tf.float64, seed=0, seed2=0)


def _client_entropy_uniform(like: tf.Tensor) -> tf.Tensor:
    """Uniform noise in [0, 1) shaped like `like`, from the client's own entropy (as above)."""
    return tf.raw_ops.RandomUniform(shape=tf.shape(like), dtype=tf.float64, seed=0, seed2=0)


def _gaussian_noised(noise_multiplier: float) -> Callable:
    def privatize(value: Any, bound: float) -> Any:
        clipped, _, _ = clip_by_global_l2(value, tf.constant(bound, tf.float32))
        stddev = noise_multiplier * bound
        return structure.map_leaves(
            lambda leaf: leaf + tf.cast(stddev * _client_entropy_normal(leaf), leaf.dtype), clipped)

    return privatize


def _discrete_laplace_noised(noise_parameter: float) -> Callable:
    def two_sided_geometric(leaf: tf.Tensor) -> tf.Tensor:
        # G = floor(-log(U) / a) is geometric with P(G = k) = exp(-a k) (1 - exp(-a)); the
        # difference of two independent ones is DLap(a).
        first = tf.floor(-tf.math.log1p(-_client_entropy_uniform(leaf)) / noise_parameter)
        second = tf.floor(-tf.math.log1p(-_client_entropy_uniform(leaf)) / noise_parameter)
        return tf.cast(first - second, leaf.dtype)

    def privatize(value: Any, bound: float) -> Any:
        leaves = structure.leaves(value)
        l1 = tf.add_n([tf.reduce_sum(tf.abs(tf.cast(leaf, tf.float64))) for leaf in leaves]) if leaves else tf.constant(0.0, tf.float64)
        scale = tf.minimum(tf.constant(1.0, tf.float64), bound / tf.maximum(l1, 1.0))

        def clip(leaf):  # scaled into the L1 ball and rounded toward zero: still integers, still inside
            return tf.cast(tf.sign(tf.cast(leaf, tf.float64)) * tf.floor(tf.abs(tf.cast(leaf, tf.float64)) * scale), leaf.dtype)

        return structure.map_leaves(lambda leaf: clip(leaf) + two_sided_geometric(leaf), value)

    return privatize


def _local_factory(inner: Factory, name: str, floating: bool, privatize: Callable, bound: float,
                   measurement: str, mechanism: list) -> Factory:
    check_inner(inner, name)

    def create(value_type: ft.Type, weight_type: Optional[ft.Type]) -> AggregationProcess:
        value_type = check_value_type(value_type, name, floating=floating)
        if not floating and any(not leaf.dtype.is_integer for leaf in ft.flatten_type(value_type)):
            raise ValueError(f"{name} noises integer values; the value type {value_type} has others (use local_gaussian_factory)")
        inner_process = create_inner(inner, value_type, weight_type)

        @tf_computation(value_type)
        def noised_on_client(value):
            return privatize(value, bound)

        @tf_computation
        def declared_mechanism():
            return tf.constant(mechanism[0] if len(mechanism) == 1 else mechanism, tf.float64)

        @federated_computation
        def initialize():
            return intrinsics.federated_zip({"inner_agg_process": inner_process.initialize(),
                                             measurement: intrinsics.federated_eval(declared_mechanism, SERVER)})

        def body(state, value, weight):
            noised = intrinsics.federated_map(noised_on_client, value)  # runs on each client: the server sees only this
            inner_output = inner_next(inner_process, state.inner_agg_process, noised, weight)
            return MeasuredProcessOutput(
                state=intrinsics.federated_zip({"inner_agg_process": inner_output.state, measurement: getattr(state, measurement)}),
                result=inner_output.result,
                measurements=intrinsics.federated_zip({"agg_process": inner_output.measurements, measurement: getattr(state, measurement)}),
            )

        return AggregationProcess(initialize, define_next(initialize.type_signature.result, value_type, weight_type, body))

    return wrapper_factory(inner, create)


def local_gaussian_factory(noise_multiplier: float, clip: float, inner_agg_factory: Factory) -> Factory:
    """Local DP for floating-point values: clip to L2 norm `clip`, add Gaussian noise on the client.

    Args:
        noise_multiplier: the noise's standard deviation over `clip` (>= 0).
        clip: the L2 norm each client's value is clipped to (> 0).
        inner_agg_factory: aggregates the noised values on the server (weighted or not).

    Returns:
        A factory of the same kind as `inner_agg_factory`. Measurements: the inner ones under
        `agg_process`, and `local_dp_noise_multiplier` (`noise_multiplier / 2`: one client's
        cost per round, for the ledger).

    Raises:
        ValueError: a number is out of range.
        TypeError: `inner_agg_factory` is not an aggregation factory.

    Example:
        >>> local_gaussian_factory(2.0, 1.0, fedsim.aggregators.MeanFactory())
    """
    noise_multiplier = _positive(noise_multiplier, "local_gaussian_factory: noise_multiplier", zero_allowed=True)
    clip = _positive(clip, "local_gaussian_factory: clip")
    return _local_factory(inner_agg_factory, "local_gaussian_factory", True, _gaussian_noised(noise_multiplier), clip,
                          "local_dp_noise_multiplier", [noise_multiplier / 2])


def local_discrete_laplace_factory(noise_parameter: float, l1_bound: int, inner_agg_factory: Factory) -> Factory:
    """Local DP for integer values: clip to L1 norm `l1_bound`, add discrete Laplace noise on the client.

    Args:
        noise_parameter: `a` of DLap(a), P(k) proportional to exp(-a |k|) (> 0); one round costs a
            client pure epsilon `2 * l1_bound * a`.
        l1_bound: the L1 norm each client's value is clipped to (a positive int).
        inner_agg_factory: aggregates the noised values on the server (e.g. `SumFactory()`).

    Returns:
        A factory of the same kind as `inner_agg_factory`. Measurements: the inner ones under
        `agg_process`, and `local_dp_discrete_laplace` (`[a, 2 * l1_bound]`, for the ledger).

    Raises:
        ValueError: a number is out of range, or the values are not integers.
        TypeError: `inner_agg_factory` is not an aggregation factory.

    Example:
        >>> local_discrete_laplace_factory(0.5, 10, fedsim.aggregators.SumFactory())
    """
    noise_parameter = _positive(noise_parameter, "local_discrete_laplace_factory: noise_parameter")
    if not (isinstance(l1_bound, int) and not isinstance(l1_bound, bool) and l1_bound >= 1):
        raise ValueError(f"local_discrete_laplace_factory: l1_bound must be a positive int, got {l1_bound!r}")
    return _local_factory(inner_agg_factory, "local_discrete_laplace_factory", False, _discrete_laplace_noised(noise_parameter),
                          float(l1_bound), "local_dp_discrete_laplace", [noise_parameter, 2.0 * l1_bound])
