"""DP-SGD as a client optimizer: per-example clipping and noise inside each client's training.

References: plain TensorFlow (a tape per example, clipped and averaged by hand; plain SGD when
nothing is clipped), numpy for the noise's spread, and dp-accounting for the epsilon.
"""

import collections
import math

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import learning
from fedsim.learning import optimizers

SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32))
LR, BATCH = 0.1, 8


def _keras():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])


def _model_fn():
    return learning.from_keras_model(_keras(), input_spec=SPEC, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _data(n=24, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 5).astype(np.float32) * 3, rng.randint(0, 3, n).astype(np.int32)


def _one_round(optimizer_fn, x, y):
    process = learning.build_unweighted_fed_avg(_model_fn, optimizer_fn)
    state = process.initialize()
    dataset = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)
    before = [np.array(w) for w in process.get_model_weights(state).trainable]
    after = process.next(state, [dataset]).state
    return before, [np.array(w) for w in process.get_model_weights(after).trainable]


def _reference(x, y, clip):
    """Plain TF: each example's gradient from its own tape, clipped to `clip`, averaged per batch, SGD."""
    model = _keras()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for start in range(0, len(y), BATCH):
        grads = []
        for i in range(start, min(start + BATCH, len(y))):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[i:i + 1], model(x[i:i + 1], training=True))
            g = [t.numpy() for t in tape.gradient(loss, model.trainable_variables)]
            norm = math.sqrt(sum(float((t**2).sum()) for t in g))
            grads.append([t * min(1.0, clip / norm) for t in g])
        mean = [np.mean([g[k] for g in grads], axis=0) for k in range(len(grads[0]))]
        for variable, gradient in zip(model.trainable_variables, mean):
            variable.assign_sub(LR * gradient)
    return [v.numpy() for v in model.trainable_variables]


@pytest.mark.parametrize("clip", [1e6, 0.05])
def test_without_noise_dp_sgd_is_sgd_on_clipped_per_example_gradients(clip):
    x, y = _data()
    _, trained = _one_round(lambda: optimizers.build_dp_sgd(LR, l2_norm_clip=clip, noise_multiplier=0.0), x, y)
    for got, want in zip(trained, _reference(x, y, clip)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if clip > 1e5:  # nothing clipped: the same as plain SGD
        _, plain = _one_round(lambda: optimizers.build_sgdm(LR), x, y)
        for got, want in zip(trained, plain):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_noise_of_one_step_has_stddev_lr_times_z_times_clip_over_the_batch():
    z, clip = 50.0, 1.0
    x, y = _data(n=BATCH)  # one batch: one step
    before, trained = _one_round(lambda: optimizers.build_dp_sgd(LR, l2_norm_clip=clip, noise_multiplier=z), x, y)
    change = np.concatenate([(a - b).ravel() for a, b in zip(trained, before)])
    expected = LR * z * clip / BATCH  # the clipped gradients move the weights by at most LR * clip in norm, in total
    assert abs(change.std() / expected - 1) < 0.25  # 163 coordinates: 4.5 standard errors of the stddev
    assert np.linalg.norm(change) > 5 * LR * clip


def test_the_record_level_epsilon_is_dp_accountings_poisson_sampled_gaussian_over_every_step():
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(32 / 1000, dp_accounting.GaussianDpEvent(1.1)), 10 * 2 * 32)
    assert optimizers.dp_sgd_epsilon(1.1, 32, 1000, 2, 10, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-9)
    with pytest.raises(ValueError, match="out of range"):
        optimizers.dp_sgd_epsilon(1.1, 64, 32, 1, 1, 1e-5)
