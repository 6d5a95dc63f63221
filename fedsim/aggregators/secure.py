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
from typing import Optional

import numpy as np
import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.aggregators.sum_and_mean import no_state
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["SecureSumFactory"]


class SecureSumFactory(UnweightedAggregationFactory):
    """Secure sum of values clipped to `[lower_bound_threshold, upper_bound_threshold]`.

    `lower_bound_threshold` defaults to `-upper_bound_threshold` for floats and 0 for integers.
    Measurements: the thresholds and how many clients had values clipped at either bound.
    """

    def __init__(self, upper_bound_threshold: float, lower_bound_threshold: Optional[float] = None, bitwidth: int = 24):
        if not isinstance(bitwidth, int) or not 1 <= bitwidth <= 62:
            raise ValueError(f"bitwidth must be an int from 1 to 62, got {bitwidth!r}")
        if not math.isfinite(upper_bound_threshold):
            raise ValueError(f"upper_bound_threshold must be finite, got {upper_bound_threshold}")
        if lower_bound_threshold is not None and not lower_bound_threshold < upper_bound_threshold:
            raise ValueError(
                f"lower_bound_threshold ({lower_bound_threshold}) must be below upper_bound_threshold ({upper_bound_threshold})"
            )
        self._upper = upper_bound_threshold
        self._lower = lower_bound_threshold
        self._bitwidth = bitwidth

    def create(self, value_type: ft.Type) -> AggregationProcess:
        value_type = check_value_type(value_type, "SecureSumFactory", floating=False)
        leaves = ft.flatten_type(value_type)
        floating = {leaf.dtype.is_floating for leaf in leaves}
        if len(floating) != 1:
            raise ValueError(f"SecureSumFactory needs all-float or all-integer values, got {value_type}")
        floating = floating.pop()
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
            above = tf.add_n([tf.cast(tf.reduce_any(v > upper), tf.int32) for v in structure.leaves(value)])
            below = tf.add_n([tf.cast(tf.reduce_any(v < lower), tf.int32) for v in structure.leaves(value)])

            def to_int(v):
                shifted = tf.cast(tf.clip_by_value(v, tf.cast(lower, v.dtype), tf.cast(upper, v.dtype)), tf.float64) - lower
                return tf.cast(tf.round(shifted * scale), tf.int64)

            return {
                "encoded": structure.map_leaves(to_int, value),
                "upper_clipped": tf.minimum(above, 1),
                "lower_clipped": tf.minimum(below, 1),
                "one": tf.constant(1, tf.int64),
            }

        encoded_type = encode.type_signature.result["encoded"]

        @tf_computation(encoded_type, tf.int64)
        def decode(total, clients):
            return structure.unflatten_value(
                value_type,
                [
                    tf.cast(tf.cast(t, tf.float64) / scale + tf.cast(clients, tf.float64) * lower, leaf.dtype)
                    for t, leaf in zip(structure.flatten_value(total, encoded_type), leaves)
                ],
            )

        @federated_computation(no_state.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            encoded = intrinsics.federated_map(encode, value)
            total = intrinsics.federated_secure_sum_bitwidth(encoded.encoded, bitwidth)
            clients = intrinsics.federated_sum(encoded.one)
            return MeasuredProcessOutput(
                state=state,
                result=intrinsics.federated_map(decode, (total, clients)),
                measurements=intrinsics.federated_zip({
                    "secure_upper_threshold": intrinsics.federated_value(np.float64(upper), SERVER),
                    "secure_lower_threshold": intrinsics.federated_value(np.float64(lower), SERVER),
                    "secure_upper_clipped_count": intrinsics.federated_sum(encoded.upper_clipped),
                    "secure_lower_clipped_count": intrinsics.federated_sum(encoded.lower_clipped),
                }),
            )

        return AggregationProcess(no_state, next_fn)

