"""`stochastic_quantization_factory`: k-bit unbiased quantization of client values.

Each client maps every leaf onto `2**bits` evenly spaced levels between the leaf's min and
max and rounds each coordinate up or down at random, with probabilities that make the rounded
value equal the original in expectation (`floor(y + u)`, `u ~ U[0, 1)`). What crosses the
network is the integer codes plus two floats per leaf; the server decodes and hands the values
to the inner factory. The error of one client is at most one level spacing per coordinate and
averages out over clients and rounds.

Example::

    factory = stochastic_quantization_factory(8, fedsim.aggregators.MeanFactory())
"""

from __future__ import annotations

from typing import Optional

import numpy as np
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
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.placements import SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["stochastic_quantization_factory", "quantize", "dequantize", "check_bits"]


def check_bits(bits: int, name: str) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
        raise ValueError(f"{name}: bits must be an int from 1 to 16, got {bits!r}")
    return bits


def quantize(leaf: tf.Tensor, bits: int) -> tuple:
    """`(codes, low, spacing)`: unbiased stochastic rounding onto `2**bits` levels in [min, max]."""
    levels = 2**bits - 1
    low, high = tf.reduce_min(leaf), tf.reduce_max(leaf)
    spacing = (high - low) / levels
    position = tf.math.divide_no_nan(leaf - low, spacing)
    code = tf.floor(position + tf.random.uniform(tf.shape(leaf), dtype=leaf.dtype))
    return tf.cast(tf.clip_by_value(code, 0, levels), tf.uint8 if bits <= 8 else tf.uint16), low, spacing


def dequantize(code: tf.Tensor, low: tf.Tensor, spacing: tf.Tensor) -> tf.Tensor:
    return low + tf.cast(code, low.dtype) * spacing


def stochastic_quantization_factory(bits: int, inner_agg_factory: Factory) -> Factory:
    """Quantizes each client's value to `bits` bits per coordinate (1..16), unbiased.

    Measurements: `bits`, `compression_ratio` (bits of the raw value over bits sent), and the
    inner measurements under `agg_process`. State: the inner state.

    Args:
        bits: bits per coordinate, 1 to 16.
        inner_agg_factory: the factory that aggregates the dequantized values.

    Returns:
        A factory of the same kind as `inner_agg_factory`.

    Raises:
        ValueError: if `bits` is out of range.
        TypeError: if `inner_agg_factory` is not an aggregation factory.
    """
    check_bits(bits, "stochastic_quantization_factory")
    check_inner(inner_agg_factory, "stochastic_quantization_factory")

    def create(value_type: ft.Type, weight_type: Optional[ft.Type]) -> AggregationProcess:
        value_type = check_value_type(value_type, "stochastic_quantization_factory", floating=True)
        leaves = ft.flatten_type(value_type)
        raw_bits = sum(int(np.prod(leaf.shape)) * leaf.dtype.size * 8 for leaf in leaves)
        sent_bits = sum(int(np.prod(leaf.shape)) * bits + 2 * leaf.dtype.size * 8 for leaf in leaves)
        inner_process = create_inner(inner_agg_factory, value_type, weight_type)

        @tf_computation(value_type)
        def encode(value):
            return tuple(quantize(leaf, bits) for leaf in structure.flatten_value(value, value_type))

        @tf_computation(encode.type_signature.result)
        def decode(encoded):
            return structure.unflatten_value(value_type, [dequantize(*parts) for parts in encoded])

        def body(state, value, weight):
            decoded = intrinsics.federated_map(decode, intrinsics.federated_map(encode, value))
            inner_output = inner_next(inner_process, state, decoded, weight)
            return MeasuredProcessOutput(
                state=inner_output.state,
                result=inner_output.result,
                measurements=intrinsics.federated_zip({
                    "agg_process": inner_output.measurements,
                    "bits": intrinsics.federated_value(np.int32(bits), SERVER),
                    "compression_ratio": intrinsics.federated_value(np.float32(raw_bits / sent_bits), SERVER),
                }),
            )

        state_type = inner_process.initialize.type_signature.result
        return AggregationProcess(inner_process.initialize, define_next(state_type, value_type, weight_type, body))

    return wrapper_factory(inner_agg_factory, create)


