"""TFF's aggregator spellings: PrivateQuantileEstimationProcess, EncodedSumFactory, adaptive SecureSumFactory,
and the recommended model-update aggregators, each against a numpy transcription of its arithmetic."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff

VALUE_TYPE = tff.to_type(collections.OrderedDict(w=(tf.float32, [4]), b=(tf.float32, [2])))


def _clients(seed=0, scale=1.0, count=5):
    rng = np.random.RandomState(seed)
    return [collections.OrderedDict(w=(rng.randn(4) * scale * (i + 1)).astype(np.float32),
                                    b=(rng.randn(2) * scale).astype(np.float32)) for i in range(count)]


def _flat(value):
    return np.concatenate([np.ravel(value["w"]), np.ravel(value["b"])]).astype(np.float64)


def test_robust_aggregator_zeroes_clips_and_adapts_like_tff():
    process = tff.learning.robust_aggregator().create(VALUE_TYPE, tff.TensorType(tf.float32))
    clients = _clients(scale=0.6)
    clients[4] = collections.OrderedDict(w=np.full(4, 30.0, np.float32), b=np.zeros(2, np.float32))  # corrupted: zeroed
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    state = process.initialize()
    output = process.next(state, clients, weights)

    zeroing_norm, clip = 2.0 * 10.0 + 1.0, 1.0
    kept = [(_flat(c), w) for c, w in zip(clients, weights)]
    kept = [(v if np.abs(v).max() <= zeroing_norm else np.zeros_like(v), w) for v, w in kept]
    clipped = [(v * min(1.0, clip / max(np.linalg.norm(v), 1e-12)), w) for v, w in kept]
    expected = sum(v * w for v, w in clipped) / sum(weights)
    np.testing.assert_allclose(_flat(output.result), expected, rtol=1e-5, atol=1e-6)
    measurements = output.measurements
    assert measurements["zeroed_count"] == 1 and measurements["zeroing_norm"] == pytest.approx(zeroing_norm)
    assert measurements["agg_process"]["clipping_norm"] == pytest.approx(clip)
    assert measurements["agg_process"]["clipped_count"] == sum(np.linalg.norm(v) > clip for v, _ in kept)

    # Next round's norms follow the geometric update with TFF's constants.
    linf = [np.abs(_flat(c)).max() for c in clients]
    zero_estimate = 10.0 * math.exp(-math.log(10.0) * (np.mean([n <= 10.0 for n in linf]) - 0.98))
    l2 = [np.linalg.norm(v) for v, _ in kept]
    clip_estimate = 1.0 * math.exp(-0.2 * (np.mean([n <= 1.0 for n in l2]) - 0.8))
    second = process.next(output.state, clients, weights).measurements
    assert second["zeroing_norm"] == pytest.approx(2.0 * zero_estimate + 1.0, rel=1e-5)
    assert second["agg_process"]["clipping_norm"] == pytest.approx(clip_estimate, rel=1e-5)


def test_secure_estimation_gives_the_same_norms():
    plain = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(1.0, 0.5, 0.3)
    secure = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(1.0, 0.5, 0.3, secure_estimation=True)
    clients = _clients(seed=3)
    norms = []
    for norm in (plain, secure):
        process = tff.aggregators.clipping_factory(norm, tff.aggregators.SumFactory()).create(VALUE_TYPE)
        state = process.initialize()
        for _ in range(3):
            output = process.next(state, clients)
            state = output.state
        norms.append(output.measurements["clipping_norm"])
    assert norms[0] == pytest.approx(norms[1]) and norms[0] != pytest.approx(1.0)


def test_encoded_sum_quantizes_only_large_leaves():
    factory = tff.aggregators.EncodedSumFactory.quantize_above_threshold(quantization_bits=6, threshold=3)
    process = factory.create(VALUE_TYPE)
    clients = _clients(seed=5, count=4)
    result = process.next(process.initialize(), clients).result
    np.testing.assert_allclose(result["b"], np.sum([c["b"] for c in clients], axis=0), rtol=1e-6)  # 2 elements: exact
    spacing = sum((c["w"].max() - c["w"].min()) / 63 for c in clients)
    assert np.abs(result["w"] - np.sum([c["w"] for c in clients], axis=0)).max() <= spacing + 1e-6
    assert not np.allclose(result["w"], np.sum([c["w"] for c in clients], axis=0), atol=1e-7)  # it did quantize


def test_secure_sum_with_an_adaptive_bound():
    bound = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(
        initial_estimate=2.0, target_quantile=0.5, learning_rate=1.0, multiplier=2.0)
    process = tff.aggregators.SecureSumFactory(bound, bitwidth=20).create(VALUE_TYPE)
    clients = _clients(seed=7, scale=0.8)
    state = process.initialize()
    output = process.next(state, clients)
    upper = 4.0  # multiplier * estimate
    expected = sum(np.clip(_flat(c), -upper, upper) for c in clients)
    np.testing.assert_allclose(_flat(output.result), expected, atol=len(clients) * 2 * upper / (2**20 - 1) + 1e-6)
    assert output.measurements["secure_upper_threshold"] == pytest.approx(upper)
    assert output.measurements["secure_lower_threshold"] == pytest.approx(-upper)
    assert output.measurements["secure_upper_clipped_count"] == sum((_flat(c) > upper).any() for c in clients)
    max_abs = [np.abs(_flat(c)).max() for c in clients]
    estimate = 2.0 * math.exp(-1.0 * (np.mean([m <= 2.0 for m in max_abs]) - 0.5))
    assert process.next(output.state, clients).measurements["secure_upper_threshold"] == pytest.approx(2.0 * estimate, rel=1e-5)


@pytest.mark.parametrize("name", ["robust_aggregator", "compression_aggregator", "secure_aggregator", "dp_aggregator"])
def test_recommended_aggregators_train_fed_avg(name):
    import keras

    def model_fn():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        spec = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))
        return tff.learning.models.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec)

    aggregator = getattr(tff.learning.model_update_aggregator, name)
    factory = aggregator(noise_multiplier=0.1, clients_per_round=3) if name == "dp_aggregator" else aggregator()
    process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, lambda: keras.optimizers.SGD(0.5), model_aggregator=factory)
    rng = np.random.RandomState(0)
    data = []
    for _ in range(3):
        x = rng.randn(12, 3).astype(np.float32)
        data.append(tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=(x[:, 0] > 0).astype(np.int32))).batch(4))
    state = process.initialize()
    start = [np.array(w) for w in process.get_model_weights(state).trainable]
    for _ in range(3):
        output = process.next(state, data)
        state = output.state
    moved = max(np.abs(np.asarray(a) - b).max() for a, b in zip(process.get_model_weights(state).trainable, start))
    assert moved > 1e-3
    assert output.metrics["finalizer"]["update_non_finite"] == 0
    assert "zeroing_norm" in output.metrics["aggregator"]
