"""`SecureSumFactory`: a sum computed by the secure-sum intrinsic.

Each client clips its value to `[lower, upper]`, shifts it to start at 0 and (for floats)
quantizes it to integers of `bitwidth` bits; the integers are summed by
`federated_secure_sum_bitwidth` (a secure aggregation protocol in a deployment, an exact sum
with range checks in simulation); the server undoes the shift and the scale. For floats the
result differs from the plain sum of the clipped values by at most
`clients * (upper - lower) / (2 * (2**bitwidth - 1))`.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.aggregators.quantile_estimation import AdaptiveNorm, build_norm_process
from fedsim.aggregators.sum_and_mean import no_state
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["SecureSumFactory"]


def _encode(value: Any, lower: tf.Tensor, upper: tf.Tensor, scale: tf.Tensor) -> dict:
    """Clip to [lower, upper], shift to start at 0, scale to integers (float64 arithmetic)."""
    values = structure.leaves(value)
    above = tf.add_n([tf.cast(tf.reduce_any(tf.cast(v, tf.float64) > upper), tf.int32) for v in values])
    below = tf.add_n([tf.cast(tf.reduce_any(tf.cast(v, tf.float64) < lower), tf.int32) for v in values])

    def to_int(v):
        shifted = tf.clip_by_value(tf.cast(v, tf.float64), lower, upper) - lower
        return tf.cast(tf.round(shifted * scale), tf.int64)

    return {
        "encoded": structure.map_leaves(to_int, value),
        "upper_clipped": tf.minimum(above, 1),
        "lower_clipped": tf.minimum(below, 1),
        "one": tf.constant(1, tf.int64),
        "max_abs": tf.cast(tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(tf.cast(v, tf.float32))) for v in values])), tf.float32),
    }


def _decode(total: Any, encoded_type: ft.Type, value_type: ft.Type, clients: tf.Tensor, lower: tf.Tensor, scale: tf.Tensor) -> Any:
    leaves = ft.flatten_type(value_type)
    return structure.unflatten_value(value_type, [
        tf.cast(tf.cast(t, tf.float64) / scale + tf.cast(clients, tf.float64) * lower, leaf.dtype)
        for t, leaf in zip(structure.flatten_value(total, encoded_type), leaves)
    ])


class SecureSumFactory(UnweightedAggregationFactory):
    """Secure sum of values clipped to `[lower_bound_threshold, upper_bound_threshold]`.

    Values are quantized into the range and summed with `federated_secure_sum_bitwidth`; on the
    AWS executor the silos run the secure aggregation protocol, so the server reads only the sum.
    `upper_bound_threshold` may be an `AdaptiveNorm` (TFF's `PrivateQuantileEstimationProcess`):
    the bound then follows a quantile of the clients' largest absolute values, the lower bound
    is its negative, and the estimate is the process state. Measurements: the thresholds and
    how many clients had values clipped at either bound.

    Args:
        upper_bound_threshold: the upper bound, or an `AdaptiveNorm`.
        lower_bound_threshold: the lower bound (default: `-upper` for floats, 0 for integers).
        bitwidth: bits per quantized coordinate, 1 to 62.

    Raises:
        ValueError: if the bounds or `bitwidth` are invalid.

    Example:
        >>> factory = fedsim.aggregators.MeanFactory(fedsim.aggregators.SecureSumFactory(1.0))
    """

    def __init__(self, upper_bound_threshold: Union[float, AdaptiveNorm], lower_bound_threshold: Optional[float] = None,
                 bitwidth: int = 24):
        if not isinstance(bitwidth, int) or not 1 <= bitwidth <= 62:
            raise ValueError(f"bitwidth must be an int from 1 to 62, got {bitwidth!r}")
        if isinstance(upper_bound_threshold, AdaptiveNorm):
            if lower_bound_threshold is not None:
                raise ValueError("with an adaptive upper_bound_threshold the lower bound is its negative; leave lower_bound_threshold None")
        elif not math.isfinite(upper_bound_threshold):
            raise ValueError(f"upper_bound_threshold must be finite, got {upper_bound_threshold}")
        elif lower_bound_threshold is not None and not lower_bound_threshold < upper_bound_threshold:
            raise ValueError(
                f"lower_bound_threshold ({lower_bound_threshold}) must be below upper_bound_threshold ({upper_bound_threshold})"
            )
        self._upper = upper_bound_threshold
        self._lower = lower_bound_threshold
        self._bitwidth = bitwidth

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "SecureSumFactory", floating=False)
        floating = {leaf.dtype.is_floating for leaf in ft.flatten_type(value_type)}
        if len(floating) != 1:
            raise ValueError(f"SecureSumFactory needs all-float or all-integer values, got {value_type}")
        floating = floating.pop()
        if isinstance(self._upper, AdaptiveNorm):
            if not floating:
                raise ValueError(f"SecureSumFactory: an adaptive bound needs floating-point values, got {value_type}")
            return self._create_adaptive(value_type)
        return self._create_fixed(value_type, floating)

    def _create_fixed(self, value_type: ft.Type, floating: bool) -> AggregationProcess:
        upper = self._upper
        lower = (-upper if floating else 0) if self._lower is None else self._lower
        if not lower < upper:
            raise ValueError(f"the lower bound {lower} must be below the upper bound {upper}")
        if floating:
            bitwidth = self._bitwidth
            scale = (2.0**bitwidth - 1) / (upper - lower)
        else:
            bitwidth = max(1, math.ceil(math.log2(int(upper) - int(lower) + 1)))
            if bitwidth > 62:
                raise ValueError(f"the integer range [{lower}, {upper}] needs more than 62 bits")
            scale = 1.0

        @tf_computation(value_type)
        def encode(value):
            return _encode(value, tf.constant(lower, tf.float64), tf.constant(upper, tf.float64), tf.constant(scale, tf.float64))

        encoded_type = encode.type_signature.result["encoded"]

        @tf_computation(encoded_type, tf.int64)
        def decode(total, clients):
            return _decode(total, encoded_type, value_type, clients, tf.constant(lower, tf.float64), tf.constant(scale, tf.float64))

        @federated_computation(no_state.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            encoded = intrinsics.federated_map(encode, value)
            total = intrinsics.federated_secure_sum_bitwidth(encoded.encoded, bitwidth)
            clients = intrinsics.federated_sum(encoded.one)
            return MeasuredProcessOutput(
                state=state,
                result=intrinsics.federated_map(decode, (total, clients)),
                measurements=_measurements(intrinsics.federated_value(np.float64(upper), SERVER),
                                           intrinsics.federated_value(np.float64(lower), SERVER), encoded),
            )

        return AggregationProcess(no_state, next_fn)

    def _create_adaptive(self, value_type: ft.Type) -> AggregationProcess:
        norm_process = build_norm_process(self._upper)
        bitwidth = self._bitwidth
        levels = 2.0**bitwidth - 1

        @tf_computation(value_type, tf.float32)
        def encode(value, upper):
            upper = tf.cast(upper, tf.float64)
            return _encode(value, -upper, upper, levels / (2.0 * upper))

        encoded_type = encode.type_signature.result["encoded"]

        @tf_computation(encoded_type, tf.int64, tf.float32)
        def decode(total, clients, upper):
            upper = tf.cast(upper, tf.float64)
            return _decode(total, encoded_type, value_type, clients, -upper, levels / (2.0 * upper))

        @tf_computation(tf.float32)
        def thresholds(upper):
            return tf.cast(upper, tf.float64), -tf.cast(upper, tf.float64)

        state_type = norm_process.initialize.type_signature.result

        @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            upper = intrinsics.federated_map(norm_process.report, state)
            encoded = intrinsics.federated_map(encode, (value, intrinsics.federated_broadcast(upper)))
            total = intrinsics.federated_secure_sum_bitwidth(encoded.encoded, bitwidth)
            clients = intrinsics.federated_sum(encoded.one)
            shown = intrinsics.federated_map(thresholds, upper)
            return MeasuredProcessOutput(
                state=norm_process.next(state, encoded.max_abs),
                result=intrinsics.federated_map(decode, (total, clients, upper)),
                measurements=_measurements(shown[0], shown[1], encoded),
            )

        return AggregationProcess(norm_process.initialize, next_fn)


def _measurements(upper: Any, lower: Any, encoded: Any) -> Any:
    return intrinsics.federated_zip({
        "secure_upper_threshold": upper,
        "secure_lower_threshold": lower,
        "secure_upper_clipped_count": intrinsics.federated_sum(encoded.upper_clipped),
        "secure_lower_clipped_count": intrinsics.federated_sum(encoded.lower_clipped),
    })
