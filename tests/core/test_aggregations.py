"""Sums and means streamed in numpy (the local context) give the bits the same definitions give
when traced into a TensorFlow graph (the compiled rounds, the serverless server)."""

import numpy as np
import pytest
import tensorflow as tf

from fedsim.core import aggregations
from fedsim.core import types as ft

SHAPES = [(7, 5), (5,), ()]


def _clients(dtype, n=9, seed=0):
    rng = np.random.RandomState(seed)
    if dtype == np.int32:
        return [[rng.randint(-1000, 1000, s).astype(np.int32) for s in SHAPES] for _ in range(n)]
    return [[np.asarray(rng.randn(*s) * 10 ** rng.uniform(-3, 3)).astype(dtype) for s in SHAPES] for _ in range(n)]


def _value_type(dtype):
    return ft.StructType([(None, ft.TensorType(tf.as_dtype(dtype), s)) for s in SHAPES], container=list)


def _in_tensorflow(definition, inputs):
    """zero, accumulate (one call per client) and report as TensorFlow graphs: how the compiled
    round's phases and the serverless server run them."""
    zero = tf.function(definition.zero, autograph=False)
    accumulate = tf.function(definition.accumulate, autograph=False)
    report = tf.function(definition.report, autograph=False)
    accumulator = zero()
    for client_input in inputs:
        accumulator = accumulate(accumulator, client_input)
    return [np.asarray(leaf) for leaf in tf.nest.flatten(report(accumulator))]


def _streamed(definition, inputs):
    stream = aggregations.streaming(definition)
    for client_input in inputs:
        stream.add(client_input)
    return [np.asarray(leaf) for leaf in tf.nest.flatten(stream.result())]


CASES = {
    "sum float32": (lambda: aggregations.Sum(_value_type(np.float32)), np.float32, None),
    "sum int32": (lambda: aggregations.Sum(_value_type(np.int32)), np.int32, None),
    "mean float32": (lambda: aggregations.Mean(_value_type(np.float32)), np.float32, None),
    "mean float64": (lambda: aggregations.Mean(_value_type(np.float64)), np.float64, None),
    "weighted mean, float32 weights": (
        lambda: aggregations.WeightedMean(_value_type(np.float32), ft.TensorType(tf.float32, [])), np.float32, np.float32),
    "weighted mean, int64 weights": (
        lambda: aggregations.WeightedMean(_value_type(np.float32), ft.TensorType(tf.int64, [])), np.float32, np.int64),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_in_numpy_equals_the_traced_definition_bit_for_bit(name):
    make, dtype, weight_dtype = CASES[name]
    definition = make()
    assert definition.streams_in_numpy
    values = _clients(dtype)
    rng = np.random.RandomState(1)
    inputs = values if weight_dtype is None else [
        (value, np.asarray(rng.randint(1, 300), weight_dtype)) for value in values]
    streamed = _streamed(definition, inputs)
    traced = _in_tensorflow(definition, inputs)
    for got, want in zip(streamed, traced):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    # and what the definitions mean, computed independently in float64
    weights = np.ones(len(values)) if weight_dtype is None else np.array([float(w) for _, w in inputs])
    for leaf, got in enumerate(streamed):
        column = np.stack([v[leaf].astype(np.float64) for v in values])
        want = (column * weights.reshape(-1, *[1] * (column.ndim - 1))).sum(0)
        if definition.kind != "sum":
            want = want / weights.sum()
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-5, atol=1e-4 * np.abs(column).max())


def test_a_streamed_mean_over_zero_clients_is_an_error_and_a_sum_is_zero():
    with pytest.raises(ValueError, match="zero clients"):
        aggregations.streaming(aggregations.Mean(_value_type(np.float32))).result()
    total = aggregations.streaming(aggregations.Sum(_value_type(np.int32))).result()
    assert [np.asarray(t).tolist() for t in total] == [np.zeros(s, np.int32).tolist() for s in SHAPES]
