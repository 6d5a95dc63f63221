"""Coordinate-wise median / trimmed mean, stochastic quantization, and these inside FedAvg."""

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators, learning
from fedsim.learning import optimizers

# Keys out of sorted order: leaves must follow the type, not tf.nest's sorted order.
VALUE_TYPE = fedsim.to_type({"b": (tf.float64, [4]), "a": (tf.float32, [2, 3])})


@pytest.fixture(scope="module")
def values():
    rng = np.random.RandomState(21)
    return [{"a": rng.randn(2, 3).astype(np.float32), "b": rng.randn(4) * 3} for _ in range(9)]


def _trimmed_mean(stacked, fraction):
    ordered = np.sort(stacked, axis=0)
    cut = int(np.floor(len(ordered) * fraction))
    return ordered[cut : len(ordered) - cut].mean(axis=0)


@pytest.mark.parametrize("count", [9, 8])
def test_median_and_trimmed_mean_against_numpy(values, count):
    values = values[:count]
    for method, reference in (("median", lambda s: np.median(s, axis=0)), ("trimmed_mean", lambda s: _trimmed_mean(s, 0.25))):
        process = aggregators.RobustMeanFactory(method, trim_fraction=0.25).create(VALUE_TYPE)
        output = process.next(process.initialize(), values)
        for key in ("a", "b"):
            stacked = np.stack([np.asarray(v[key], np.float64) for v in values])
            np.testing.assert_allclose(output.result[key], reference(stacked), rtol=1e-6)
        assert output.result["a"].dtype == np.float32 and output.result["b"].dtype == np.float64
        assert output.measurements["num_clients"] == count
        assert output.measurements["trimmed_per_side"] == (0 if method == "median" else count // 4)


def test_robust_means_resist_a_huge_update(values):
    honest = values[:9]
    attacked = honest + [{"a": np.full((2, 3), 1e6, np.float32), "b": np.full(4, 1e6)}]
    honest_b = np.stack([v["b"] for v in honest])
    mean = aggregators.UnweightedMeanFactory().create(VALUE_TYPE)
    assert np.min(mean.next(mean.initialize(), attacked).result["b"]) > 1e4  # the mean is dragged away
    for factory in (aggregators.RobustMeanFactory("median"), aggregators.RobustMeanFactory("trimmed_mean", 0.1)):
        process = factory.create(VALUE_TYPE)
        result = process.next(process.initialize(), attacked).result["b"]
        assert np.all(result >= honest_b.min(0)) and np.all(result <= honest_b.max(0))  # within the honest range
        assert np.max(np.abs(result - np.median(honest_b, 0))) < 3.0


def test_robust_bad_parameters():
    with pytest.raises(ValueError, match="method must be one of"):
        aggregators.RobustMeanFactory("mode")
    with pytest.raises(ValueError, match="trim_fraction must be in"):
        aggregators.RobustMeanFactory("trimmed_mean", 0.5)
    with pytest.raises(aggregators.AggregationFactoryError, match="floating-point"):
        aggregators.RobustMeanFactory().create(fedsim.TensorType(tf.int32, [3]))


def test_stochastic_quantization_is_unbiased():
    """Levels 0,1,2,3 (2 bits over [0, 3]): 1.3 rounds to 1 or 2, and is 1.3 on average."""
    value = np.array([0.0, 1.3, 2.7, 3.0, 0.5], np.float32)
    clients = 1000
    factory = aggregators.stochastic_quantization_factory(2, aggregators.UnweightedMeanFactory())
    process = factory.create(fedsim.TensorType(tf.float32, [5]))
    output = process.next(process.initialize(), [value] * clients)
    # Each client's coordinate is a Bernoulli between two levels: stddev <= 0.5 / sqrt(clients).
    np.testing.assert_allclose(output.result, value, atol=4 * 0.5 / np.sqrt(clients))
    assert abs(output.result[1] - 1.0) > 0.2  # rounding to the nearest level would give 1.0 exactly
    assert output.measurements["bits"] == 2
    np.testing.assert_allclose(output.measurements["compression_ratio"], (5 * 32) / (5 * 2 + 64))


def test_quantization_error_is_within_one_level(values):
    bits = 6
    process = aggregators.stochastic_quantization_factory(bits, aggregators.SumFactory()).create(VALUE_TYPE)
    single = values[:1]
    result = process.next(process.initialize(), single).result
    for key in ("a", "b"):
        leaf = np.asarray(single[0][key], np.float64)
        spacing = (leaf.max() - leaf.min()) / (2**bits - 1)
        assert np.max(np.abs(result[key] - leaf)) <= spacing * 1.0001
    assert result["a"].dtype == np.float32 and result["b"].dtype == np.float64


def test_quantization_bad_parameters():
    with pytest.raises(ValueError, match="bits must be an int from 1 to 16"):
        aggregators.stochastic_quantization_factory(0, aggregators.MeanFactory())
    with pytest.raises(TypeError, match="inner factory"):
        aggregators.stochastic_quantization_factory(8, "mean")


@pytest.fixture(scope="module")
def fed_avg_setup():
    from tests.learning.test_fed_avg import _datasets, model_fn

    rng = np.random.RandomState(4)
    client_arrays = [(rng.randn(n, 5).astype(np.float32), rng.randint(0, 3, n).astype(np.int32)) for n in (6, 9, 11, 8, 10)]
    return model_fn, _datasets(client_arrays)


@pytest.mark.parametrize(
    "factory, keys",
    [
        (aggregators.DifferentiallyPrivateFactory.gaussian_fixed(0.1, 5, 0.5, noise_seed=3), {"clip", "noise_stddev", "clipped_count", "dp_noise_multiplier"}),
        (aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(0.1, 5, noise_seed=3), {"clip", "noise_stddev", "clipped_count", "dp_noise_multiplier"}),
        (aggregators.RobustMeanFactory("trimmed_mean", 0.2), {"num_clients", "trimmed_per_side"}),
        (aggregators.stochastic_quantization_factory(8, aggregators.MeanFactory()), {"bits", "compression_ratio", "agg_process"}),
        (aggregators.clipping_factory(aggregators.AdaptiveNorm(0.1), aggregators.MeanFactory()), {"clipping_norm", "clipped_count", "agg_process"}),
    ],
)
def test_plugged_into_fed_avg(fed_avg_setup, factory, keys):
    model_fn, datasets = fed_avg_setup
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)
    state = process.initialize()
    losses = []
    for _ in range(3):
        output = process.next(state, datasets)
        state = output.state
        losses.append(output.metrics["client_work"]["train"]["loss"])
    assert set(output.metrics["aggregator"]) == keys
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
