"""Each functional optimizer against Keras' own optimizer (or numpy for Yogi) on the same gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim.learning import optimizers

SHAPES = [(3, 4), (4,)]
STEPS = 6


def _gradients(step):
    rng = np.random.RandomState(100 + step)
    return [rng.randn(*s).astype(np.float32) for s in SHAPES]


def _initial():
    rng = np.random.RandomState(7)
    return [rng.randn(*s).astype(np.float32) for s in SHAPES]


def _run_functional(optimizer):
    weights = [tf.constant(w) for w in _initial()]
    state = optimizer.initialize([tf.TensorSpec(s) for s in SHAPES])
    for step in range(STEPS):
        state, weights = optimizer.next(state, weights, _gradients(step))
    return [w.numpy() for w in weights], state


def _run_keras(optimizer):
    variables = [keras.Variable(w) for w in _initial()]
    for step in range(STEPS):
        optimizer.apply_gradients(zip([tf.constant(g) for g in _gradients(step)], variables))
    return [v.numpy() for v in variables]


@pytest.mark.parametrize(
    "functional, reference",
    [
        (lambda: optimizers.build_sgdm(0.1), lambda: keras.optimizers.SGD(0.1)),
        (lambda: optimizers.build_sgdm(0.1, momentum=0.9), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
        (lambda: optimizers.build_adam(0.05), lambda: keras.optimizers.Adam(0.05)),
        (lambda: optimizers.build_adagrad(0.3), lambda: keras.optimizers.Adagrad(0.3)),
        (lambda: optimizers.build_rmsprop(0.01), lambda: keras.optimizers.RMSprop(0.01)),
    ],
    ids=["sgd", "sgdm", "adam", "adagrad", "rmsprop"],
)
def test_matches_keras(functional, reference):
    got, state = _run_functional(functional())
    expected = _run_keras(reference())
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-6)
    assert int(state["step"]) == STEPS


def test_yogi_matches_numpy_transcription():
    got, _ = _run_functional(optimizers.build_yogi(0.1))
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-3
    weights = [w.astype(np.float64) for w in _initial()]
    m = [np.zeros_like(w) for w in weights]
    v = [np.full_like(w, 1e-6) for w in weights]
    for step in range(STEPS):
        t = step + 1
        for i, g in enumerate(_gradients(step)):
            g = g.astype(np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = v[i] - (1 - b2) * np.sign(v[i] - g * g) * g * g
            weights[i] = weights[i] - lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
    for g, e in zip(got, weights):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_learning_rate_schedule_by_step():
    optimizer = optimizers.build_sgdm(lambda step: 0.5 / tf.cast(step + 1, tf.float32))
    weights = [tf.constant(np.zeros(2, np.float32))]
    state = optimizer.initialize([tf.TensorSpec([2])])
    for _ in range(3):
        state, weights = optimizer.next(state, weights, [np.ones(2, np.float32)])
    np.testing.assert_allclose(weights[0].numpy(), -(0.5 + 0.25 + 0.5 / 3) * np.ones(2), rtol=1e-6)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="learning_rate must be non-negative"):
        optimizers.build_sgdm(-1.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        optimizers.build_sgdm(0.1, momentum=1.5)
