"""Each aggregator against a numpy reference, on nested values of several shapes and dtypes."""

import math

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators, learning
from fedsim.learning import optimizers

# Keys out of sorted order: leaves must follow the type, not tf.nest's sorted order.
VALUE_TYPE = fedsim.to_type({"b": (tf.float64, [4]), "a": (tf.float32, [2, 3])})
WEIGHT_TYPE = fedsim.TensorType(tf.float32)
NUM_CLIENTS = 6


@pytest.fixture(scope="module")
def values():
    rng = np.random.RandomState(11)
    return [{"a": (rng.randn(2, 3) * (i + 1)).astype(np.float32), "b": rng.randn(4) * (i + 1)} for i in range(NUM_CLIENTS)]


@pytest.fixture(scope="module")
def weights():
    return [np.float32(w) for w in np.random.RandomState(12).uniform(0.5, 3.0, NUM_CLIENTS)]


def _stack(values, key):
    return np.stack([v[key] for v in values]).astype(np.float64)


def _global_l2(value):
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in value.values()))


def _check(result, expected, rtol=1e-5):
    for key in ("a", "b"):
        np.testing.assert_allclose(result[key], expected[key], rtol=rtol, atol=1e-6)
    assert result["a"].dtype == np.float32 and result["b"].dtype == np.float64


def test_sum(values):
    process = aggregators.SumFactory().create(VALUE_TYPE)
    output = process.next(process.initialize(), values)
    _check(output.result, {k: _stack(values, k).sum(0) for k in ("a", "b")})


def test_weighted_mean(values, weights):
    process = aggregators.MeanFactory().create(VALUE_TYPE, WEIGHT_TYPE)
    output = process.next(process.initialize(), values, weights)
    w = np.asarray(weights, np.float64)
    expected = {k: np.tensordot(w, _stack(values, k), axes=1) / w.sum() for k in ("a", "b")}
    _check(output.result, expected)
    assert output.measurements == {"mean_value": (), "mean_weight": ()}
    assert set(output.state) == {"value_sum_process", "weight_sum_process"}


def test_mean_no_nan_division(values):
    zero_weights = [np.float32(0.0)] * NUM_CLIENTS
    plain = aggregators.MeanFactory().create(VALUE_TYPE, WEIGHT_TYPE)
    safe = aggregators.MeanFactory(no_nan_division=True).create(VALUE_TYPE, WEIGHT_TYPE)
    assert np.isnan(plain.next(plain.initialize(), values, zero_weights).result["a"]).all()
    assert (safe.next(safe.initialize(), values, zero_weights).result["a"] == 0).all()


def test_unweighted_mean(values):
    process = aggregators.UnweightedMeanFactory().create(VALUE_TYPE)
    _check(process.next(process.initialize(), values).result, {k: _stack(values, k).mean(0) for k in ("a", "b")})


@pytest.mark.parametrize("weighted", [True, False])
def test_clipping(values, weights, weighted):
    norm = 2.0
    inner = aggregators.MeanFactory() if weighted else aggregators.UnweightedMeanFactory()
    factory = aggregators.clipping_factory(norm, inner)
    process = factory.create(VALUE_TYPE, WEIGHT_TYPE) if weighted else factory.create(VALUE_TYPE)
    args = (values, weights) if weighted else (values,)
    output = process.next(process.initialize(), *args)
    scales = [min(1.0, norm / _global_l2(v)) for v in values]
    w = np.asarray(weights if weighted else [1.0] * NUM_CLIENTS, np.float64)
    expected = {k: sum(wi * s * np.asarray(v[k], np.float64) for wi, s, v in zip(w, scales, values)) / w.sum() for k in ("a", "b")}
    _check(output.result, expected)
    assert output.measurements["clipped_count"] == sum(_global_l2(v) > norm for v in values) > 0
    assert output.measurements["clipping_norm"] == norm
    assert "agg_process" in output.measurements


@pytest.mark.parametrize("order", [math.inf, 2.0])
def test_zeroing(values, order):
    bound = 3.0
    process = aggregators.zeroing_factory(bound, aggregators.SumFactory(), norm_order=order).create(VALUE_TYPE)
    output = process.next(process.initialize(), values)

    def norm(v):
        if math.isinf(order):
            return max(float(np.max(np.abs(x))) for x in v.values())
        return _global_l2(v)

    kept = [v for v in values if norm(v) <= bound]
    assert output.measurements["zeroed_count"] == NUM_CLIENTS - len(kept) > 0
    _check(output.result, {k: sum(np.asarray(v[k], np.float64) for v in kept) for k in ("a", "b")})


def test_bad_inputs_are_refused_at_create_time():
    with pytest.raises(aggregators.AggregationFactoryError, match=r"floating-point tensors.*str\[2\]"):
        aggregators.MeanFactory().create(fedsim.TensorType(tf.string, [2]), WEIGHT_TYPE)
    with pytest.raises(aggregators.AggregationFactoryError, match="floating-point tensors"):
        aggregators.UnweightedMeanFactory().create(fedsim.TensorType(tf.int32, [2]))
    with pytest.raises(aggregators.AggregationFactoryError, match="scalar weight"):
        aggregators.MeanFactory().create(VALUE_TYPE, fedsim.TensorType(tf.float32, [2]))
    with pytest.raises(ValueError, match="clipping_norm must be a positive"):
        aggregators.clipping_factory(-1.0, aggregators.MeanFactory())
    with pytest.raises(ValueError, match="zeroing_norm must be a positive"):
        aggregators.zeroing_factory(0.0, aggregators.SumFactory())
    with pytest.raises(TypeError, match="inner factory must be an aggregation factory"):
        aggregators.clipping_factory(1.0, object())


def test_plugged_into_fed_avg():
    from tests.learning.test_fed_avg import _datasets, model_fn

    rng = np.random.RandomState(3)
    client_arrays = [(rng.randn(n, 5).astype(np.float32), rng.randint(0, 3, n).astype(np.int32)) for n in (7, 12, 20)]
    clipped = learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=aggregators.clipping_factory(1e-3, aggregators.MeanFactory())
    )
    plain = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=aggregators.MeanFactory())
    default = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    state = default.initialize()
    datasets = _datasets(client_arrays)
    output = clipped.next(clipped.set_model_weights(clipped.initialize(), state.global_model_weights), datasets)
    assert output.metrics["aggregator"]["clipped_count"] == 3
    assert output.metrics["aggregator"]["clipping_norm"] == np.float32(1e-3)
    moved = [np.linalg.norm(a - b) for a, b in zip(output.state.global_model_weights.trainable, state.global_model_weights.trainable)]
    assert math.sqrt(sum(m**2 for m in moved)) <= 1e-3 * 1.0001  # a mean of clipped deltas stays within the clip
    plain_weights = plain.next(plain.set_model_weights(plain.initialize(), state.global_model_weights), datasets).state.global_model_weights
    default_weights = default.next(state, datasets).state.global_model_weights
    for a, b in zip(plain_weights.trainable, default_weights.trainable):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_secure_sum_of_floats_equals_plain_sum_within_quantization(values):
    bound, bitwidth = 4.0, 20
    process = aggregators.SecureSumFactory(bound, bitwidth=bitwidth).create(VALUE_TYPE)
    output = process.next(process.initialize(), values)
    clipped = {k: np.clip(_stack(values, k), -bound, bound).sum(0) for k in ("a", "b")}
    tolerance = NUM_CLIENTS * (2 * bound) / (2 * (2**bitwidth - 1))
    for key in ("a", "b"):
        assert np.max(np.abs(output.result[key] - clipped[key])) <= tolerance * 1.01
    assert output.result["a"].dtype == np.float32 and output.result["b"].dtype == np.float64
    over = sum(any(np.max(v[k]) > bound for k in ("a", "b")) for v in values)
    assert output.measurements["secure_upper_clipped_count"] == over > 0
    assert output.measurements["secure_lower_threshold"] == -bound


def test_secure_sum_of_integers_is_exact():
    process = aggregators.SecureSumFactory(100, 0).create(fedsim.TensorType(tf.int32, [3]))
    client_values = [np.array([1, 50, 99], np.int32), np.array([7, 0, 100], np.int32), np.array([250, 3, 4], np.int32)]
    output = process.next(process.initialize(), client_values)
    np.testing.assert_array_equal(output.result, np.clip(client_values, 0, 100).sum(0))
    assert output.measurements["secure_upper_clipped_count"] == 1


def test_secure_sum_bad_bounds():
    with pytest.raises(ValueError, match="must be below"):
        aggregators.SecureSumFactory(1.0, 2.0)
    with pytest.raises(ValueError, match="bitwidth"):
        aggregators.SecureSumFactory(1.0, bitwidth=80)
    with pytest.raises(aggregators.AggregationFactoryError, match="numeric tensors"):
        aggregators.SecureSumFactory(1.0).create(fedsim.TensorType(tf.string))


def test_secure_sum_nests_inside_the_mean(values, weights):
    factory = aggregators.MeanFactory(value_sum_factory=aggregators.SecureSumFactory(50.0, bitwidth=30))
    process = factory.create(VALUE_TYPE, WEIGHT_TYPE)
    output = process.next(process.initialize(), values, weights)
    w = np.asarray(weights, np.float64)
    expected = {k: np.tensordot(w, _stack(values, k), axes=1) / w.sum() for k in ("a", "b")}
    _check(output.result, expected, rtol=1e-4)
    assert output.measurements["mean_value"]["secure_upper_clipped_count"] == 0
