"""Adaptive norms (Andrew et al. 2021), the Gaussian mechanism, and the accountant."""

import math

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators

VECTOR = fedsim.TensorType(tf.float32, [3])


def _values_with_norms(norms, seed=0):
    directions = np.random.RandomState(seed).randn(len(norms), 3)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return [(d * n).astype(np.float32) for d, n in zip(directions, norms)]


def test_adaptive_norm_follows_the_geometric_update_of_the_paper():
    """Five rounds against a numpy transcription of C <- C exp(-lr (below - target))."""
    spec = aggregators.AdaptiveNorm(initial_estimate=2.0, target_quantile=0.7, learning_rate=0.3, multiplier=1.5, increment=0.25)
    process = aggregators.zeroing_factory(spec, aggregators.SumFactory(), norm_order=2.0).create(VECTOR)
    state = process.initialize()
    estimate = 2.0
    rng = np.random.RandomState(1)
    for _ in range(5):
        norms = rng.uniform(0.5, 6.0, 9)
        values = _values_with_norms(norms, seed=int(rng.randint(1000)))
        output = process.next(state, values)
        bound = 1.5 * estimate + 0.25
        np.testing.assert_allclose(output.measurements["zeroing_norm"], bound, rtol=1e-5)
        assert output.measurements["zeroed_count"] == int(np.sum(norms > bound))
        kept = sum(v for v, n in zip(values, norms) if n <= bound)
        np.testing.assert_allclose(output.result, kept if not np.isscalar(kept) else np.zeros(3), rtol=1e-5, atol=1e-5)
        estimate *= math.exp(-0.3 * (np.mean(norms <= estimate) - 0.7))  # the estimate, not the bound, is compared
        state = output.state
    np.testing.assert_allclose(state["norm_process"]["estimate"], estimate, rtol=1e-5)


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_adaptive_clipping_converges_to_the_target_quantile(target):
    norms = np.arange(1.0, 42.0)  # 41 clients, norms 1..41, the same every round
    values = _values_with_norms(norms)
    factory = aggregators.clipping_factory(
        aggregators.AdaptiveNorm(initial_estimate=1.0, target_quantile=target, learning_rate=0.2), aggregators.UnweightedMeanFactory()
    )
    process = factory.create(VECTOR)
    state = process.initialize()
    history = []
    for _ in range(70):
        output = process.next(state, values)
        state = output.state
        history.append(float(output.measurements["clipping_norm"]))
    expected = np.quantile(norms, target)
    final = np.mean(history[-10:])
    assert abs(final - expected) / expected < 0.1, (final, expected)
    assert abs(history[0] - 1.0) < 1e-6 and history[-1] > 10  # it moved from the initial estimate
    unclipped = np.mean(norms <= history[-1])
    assert abs(unclipped - target) < 0.1


# Keys out of sorted order: leaves must follow the type, not tf.nest's sorted order.
VALUE_TYPE = fedsim.to_type({"b": (tf.float64, [4]), "a": (tf.float32, [2, 3])})


@pytest.fixture(scope="module")
def values():
    rng = np.random.RandomState(5)
    return [{"a": (rng.randn(2, 3) * (i + 1)).astype(np.float32), "b": rng.randn(4) * (i + 1)} for i in range(6)]


def _global_l2(value):
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in value.values()))


def test_dp_without_noise_is_the_clipped_mean(values):
    clip = 3.0
    process = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(0.0, clients_per_round=len(values), clip=clip).create(VALUE_TYPE)
    output = process.next(process.initialize(), values)
    scales = [min(1.0, clip / _global_l2(v)) for v in values]
    for key in ("a", "b"):
        expected = sum(s * np.asarray(v[key], np.float64) for s, v in zip(scales, values)) / len(values)
        np.testing.assert_allclose(output.result[key], expected, rtol=1e-5, atol=1e-6)
    assert output.result["a"].dtype == np.float32 and output.result["b"].dtype == np.float64
    assert output.measurements["clipped_count"] == sum(_global_l2(v) > clip for v in values) > 0
    assert output.measurements["clip"] == np.float32(clip) and output.measurements["noise_stddev"] == 0


def test_dp_noise_has_the_stated_stddev():
    noise_multiplier, clip, clients = 1.3, 2.0, 4
    expected = noise_multiplier * clip / clients
    value_type = fedsim.to_type({"w": (tf.float32, [5000]), "b": (tf.float64, [3000])})
    zeros = [{"w": np.zeros(5000, np.float32), "b": np.zeros(3000)} for _ in range(clients)]
    process = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier, clients, clip).create(value_type)
    state = process.initialize()
    draws = []
    for _ in range(3):
        output = process.next(state, zeros)
        state = output.state
        draws.append(np.concatenate([output.result["w"], output.result["b"]]))
        np.testing.assert_allclose(output.measurements["noise_stddev"], expected, rtol=1e-6)
    samples = np.concatenate(draws)
    assert abs(samples.std() / expected - 1) < 0.05, samples.std()
    assert abs(samples.mean()) < 4 * expected / math.sqrt(samples.size)
    assert not np.allclose(draws[0], draws[1])  # fresh noise each round
    assert abs(np.corrcoef(draws[0][:3000], draws[0][5000:])[0, 1]) < 0.1  # leaves get independent noise


def test_dp_noise_seed_reproduces_a_run(values):
    def run(seed):
        process = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(1.0, 6, 1.0, noise_seed=seed).create(VALUE_TYPE)
        return process.next(process.initialize(), values).result["a"]

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.allclose(run(7), run(8))


def test_dp_adaptive_clip_moves_and_stays_private():
    norms = np.linspace(0.5, 10.0, 20)
    values = _values_with_norms(norms, seed=3)
    factory = aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
        noise_multiplier=0.5, clients_per_round=20, initial_l2_norm_clip=1.0, target_unclipped_quantile=0.5, noise_seed=1
    )
    process = factory.create(VECTOR)
    state = process.initialize()
    clips = []
    for _ in range(50):
        output = process.next(state, values)
        state = output.state
        clips.append(float(output.measurements["clip"]))
    assert clips[0] == pytest.approx(1.0)
    assert 3.0 < np.mean(clips[-5:]) < 8.0  # near the median norm, 5.25, despite the count noise
    # The value noise is raised so that the count release is paid for: z_value > z.
    assert output.measurements["noise_stddev"] > 0.5 * clips[-1] / 20


def test_dp_aggregator_at_a_small_cohort_follows_tffs_query():
    """TFF's dp_aggregator noises values with noise_multiplier * clip (no split) at any cohort size;
    gaussian_adaptive refuses the same arguments at a small cohort, as TFF's does."""
    from fedsim import learning

    norms = np.linspace(0.5, 2.0, 5)
    factory = learning.model_update_aggregator.dp_aggregator(noise_multiplier=1.0, clients_per_round=5, zeroing=False)
    process = factory.create(VECTOR)
    output = process.next(process.initialize(), _values_with_norms(norms, seed=4))
    clip = 0.1  # TFF's initial clip
    assert output.measurements["clip"] == pytest.approx(clip)
    np.testing.assert_allclose(output.measurements["noise_stddev"], 1.0 * clip / 5, rtol=1e-6)
    assert learning.model_update_aggregator.dp_aggregator(1.0, 5).create(VECTOR) is not None  # with zeroing too
    with pytest.raises(ValueError, match="default clipped_count_stddev is 0.05 \\* clients_per_round"):
        aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(noise_multiplier=1.0, clients_per_round=10)


def test_dp_bad_parameters():
    with pytest.raises(ValueError, match="noise_multiplier must be a non-negative"):
        aggregators.DifferentiallyPrivateFactory.gaussian_fixed(-1.0, 10, 1.0)
    with pytest.raises(ValueError, match="clip must be a positive"):
        aggregators.DifferentiallyPrivateFactory.gaussian_fixed(1.0, 10, 0.0)
    with pytest.raises(ValueError, match="2 \\* clipped_count_stddev"):
        aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(5.0, 10, clipped_count_stddev=1.0)
    with pytest.raises(ValueError, match="target_quantile must be in"):
        aggregators.AdaptiveNorm(initial_estimate=1.0, target_quantile=1.5)
    with pytest.raises(ValueError, match="initial_estimate must be a positive"):
        aggregators.AdaptiveNorm(initial_estimate=-1.0)
    with pytest.raises(aggregators.AggregationFactoryError, match="floating-point"):
        aggregators.DifferentiallyPrivateFactory.gaussian_fixed(1.0, 10, 1.0).create(fedsim.TensorType(tf.string))


def test_dp_epsilon_of_the_plain_gaussian_matches_the_rdp_formula():
    """Without subsampling, T rounds of the Gaussian mechanism have RDP T*a/(2 z^2)."""
    z, rounds, delta = 2.0, 50, 1e-5
    alphas = np.linspace(1.02, 300, 200000)
    rdp = rounds * alphas / (2 * z**2)
    reference = np.min(rdp + np.log1p(-1 / alphas) - np.log(delta * alphas) / (alphas - 1))
    epsilon = aggregators.dp_epsilon(z, 1.0, rounds, delta)
    assert reference <= epsilon <= reference * 1.02
    assert aggregators.dp_epsilon(z, 0.01, rounds, delta) < epsilon / 10  # subsampling amplifies privacy
    assert aggregators.dp_epsilon(2 * z, 1.0, rounds, delta) < epsilon
    with pytest.raises(ValueError, match="sampling_rate"):
        aggregators.dp_epsilon(1.0, 0.0, 10, 1e-5)


def test_private_and_robust_aggregators_serialize(values):
    """The bytes run the same: what the AWS aggregation phase will receive."""
    for factory in (
        aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(0.5, 6, initial_l2_norm_clip=2.0, noise_seed=11),
        aggregators.RobustMeanFactory("trimmed_mean", 0.2),
    ):
        process = factory.create(VALUE_TYPE)
        state = process.initialize()
        restored = fedsim.deserialize_computation(fedsim.serialize_computation(process.next))
        expected, got = process.next(state, values), restored(state, values)
        for key in ("a", "b"):
            np.testing.assert_array_equal(got.result[key], expected.result[key])
        assert tf.nest.map_structure(float, dict(got.measurements)) == tf.nest.map_structure(float, dict(expected.measurements))


def test_dp_sum_nests_inside_the_weighted_mean(values):
    """Without clients_per_round the DP factory is a (noised) sum, so MeanFactory can wrap it."""
    weights = [np.float32(w) for w in (1.0, 2.0, 0.5, 1.5, 3.0, 1.0)]
    clip = 4.0
    factory = aggregators.MeanFactory(value_sum_factory=aggregators.DifferentiallyPrivateFactory(0.0, clip=clip))
    process = factory.create(VALUE_TYPE, fedsim.TensorType(tf.float32))
    output = process.next(process.initialize(), values, weights)
    weighted = [{k: np.asarray(v[k], np.float64) * w for k in v} for v, w in zip(values, weights)]
    scales = [min(1.0, clip / _global_l2(v)) for v in weighted]
    for key in ("a", "b"):
        expected = sum(s * v[key] for s, v in zip(scales, weighted)) / sum(weights)
        np.testing.assert_allclose(output.result[key], expected, rtol=1e-5, atol=1e-6)
    assert output.measurements["mean_value"]["clipped_count"] == sum(s < 1 for s in scales) > 0
