"""`EncodedSumFactory`: a sum whose large client values cross the network compressed.

TFF's `EncodedSumFactory.quantize_above_threshold(quantization_bits, threshold)`: each leaf with
more than `threshold` elements is stochastically quantized to `quantization_bits` bits per
coordinate (unbiased, between the leaf's min and max, as `stochastic_quantization_factory`
does); smaller leaves (biases, ...) travel as they are, where compressing would save little.
The server decodes each client's value and sums. TFF builds this on the TF Model Optimization
toolkit's encoders; fedsim needs no extra package.

Example::

    factory = fedsim.aggregators.MeanFactory(
        fedsim.aggregators.EncodedSumFactory.quantize_above_threshold(quantization_bits=8, threshold=20000))
"""

from __future__ import annotations

import numpy as np

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.aggregators.quantization import check_bits, dequantize, quantize
from fedsim.aggregators.sum_and_mean import no_state
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import federated_computation, tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["EncodedSumFactory"]


class EncodedSumFactory(UnweightedAggregationFactory):
    """A sum of values encoded on the clients and decoded at the server (stateless).

    Args:
        quantization_bits: bits per coordinate of a quantized leaf.
        threshold: leaves with more elements than this are quantized; smaller ones go as they are.

    Raises:
        ValueError: if `threshold` is negative or `quantization_bits` out of range.

    Example:
        >>> factory = fedsim.aggregators.EncodedSumFactory.quantize_above_threshold(8, 20000)
    """

    def __init__(self, quantization_bits: int, threshold: int):
        self._bits = check_bits(quantization_bits, "EncodedSumFactory")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
            raise ValueError(f"EncodedSumFactory: threshold must be a non-negative int, got {threshold!r}")
        self._threshold = threshold

    @classmethod
    def quantize_above_threshold(cls, quantization_bits: int = 8, threshold: int = 20000) -> "EncodedSumFactory":
        """Quantizes leaves of more than `threshold` elements to `quantization_bits` bits."""
        return cls(quantization_bits, threshold)

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "EncodedSumFactory", floating=True)
        leaves = ft.flatten_type(value_type)
        compressed = [int(np.prod(leaf.shape)) > self._threshold for leaf in leaves]
        bits = self._bits

        @tf_computation(value_type)
        def encode(value):
            return tuple(quantize(leaf, bits) if squeeze else leaf
                         for leaf, squeeze in zip(structure.flatten_value(value, value_type), compressed))

        @tf_computation(encode.type_signature.result)
        def decode(encoded):
            return structure.unflatten_value(value_type, [dequantize(*part) if squeeze else part
                                                          for part, squeeze in zip(encoded, compressed)])

        @federated_computation(no_state.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            decoded = intrinsics.federated_map(decode, intrinsics.federated_map(encode, value))
            return MeasuredProcessOutput(state=state, result=intrinsics.federated_sum(decoded),
                                         measurements=intrinsics.federated_value((), SERVER))

        return AggregationProcess(no_state, next_fn)
